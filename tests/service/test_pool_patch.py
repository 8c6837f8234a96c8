"""PATCH of a pool applies every property it accepts, or refuses it naming the property.

Properties that shape the nodes (size, slots, fill type, image, inter-node communication) change
only while the pool has no nodes; the ones this service does not act on are refused. Also: a job
asking for task preemption is refused, not accepted and ignored.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from prefect_batch import BatchConflictError, BatchInvalidRequestError
from prefect_batch.service import BatchService
from prefect_batch.store import Store


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[BatchService]:
    store = Store(f"sqlite:///{tmp_path / 'batch.db'}")
    yield BatchService(store, "acct", clock=lambda: 1_750_000_000.0)
    store.dispose()


def test_node_shape_changes_apply_while_the_pool_is_empty(svc: BatchService) -> None:
    svc.create_pool({"id": "p", "vmSize": "small"})
    svc.update_pool(
        "p",
        {
            "displayName": "renamed",
            "vmSize": "large",
            "taskSlotsPerNode": 4,
            "taskSchedulingPolicy": {"nodeFillType": "pack"},
            "enableInterNodeCommunication": True,
        },
    )
    pool = svc.get_pool("p")
    assert pool.display_name == "renamed"
    assert pool.vm_size == "large"
    assert pool.task_slots_per_node == 4
    assert pool.task_scheduling_policy.node_fill_type == "pack"
    assert pool.enable_inter_node_communication is True


def test_node_shape_changes_are_refused_on_a_pool_with_nodes(svc: BatchService) -> None:
    svc.create_pool({"id": "p", "vmSize": "small", "targetDedicatedNodes": 1})
    before = svc.get_pool("p")
    with pytest.raises(BatchConflictError) as info:
        svc.update_pool("p", {"taskSlotsPerNode": 4, "metadata": [{"name": "a", "value": "b"}]})
    assert info.value.code == "OperationInvalidForCurrentState"
    assert info.value.values["PropertyName"] == "taskSlotsPerNode"
    after = svc.get_pool("p")
    assert after.task_slots_per_node == 1 and after.metadata is None  # nothing half-applied
    assert after.etag == before.etag


@pytest.mark.parametrize(
    "body, prop",
    [
        ({"userAccounts": [{"name": "u", "password": "p"}]}, "userAccounts"),
        ({"mountConfiguration": [{"nfsMountConfiguration": {}}]}, "mountConfiguration"),
        ({"networkConfiguration": {"subnetId": "x"}}, "networkConfiguration"),
        (
            {"applicationPackageReferences": [{"applicationId": "a"}]},
            "applicationPackageReferences",
        ),
        ({"taskSlotsPerNode": 300}, "taskSlotsPerNode"),
        (
            {
                "virtualMachineConfiguration": {
                    "nodeAgentSKUId": "batch.node.ssh.none",
                    "imageReference": {"publisher": "p", "offer": "o", "sku": "s"},
                }
            },
            "virtualMachineConfiguration.nodeAgentSKUId",
        ),
    ],
)
def test_properties_not_acted_on_are_refused_by_name(
    svc: BatchService, body: dict, prop: str
) -> None:
    svc.create_pool({"id": "p", "vmSize": "small"})
    before = svc.get_pool("p").etag
    with pytest.raises(BatchInvalidRequestError) as info:
        svc.update_pool("p", body)
    assert info.value.values["PropertyName"] == prop
    assert svc.get_pool("p").etag == before  # nothing written


def test_task_preemption_is_refused_on_create_and_update(svc: BatchService) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        svc.create_job({"id": "j", "poolInfo": {"poolId": "p"}, "allowTaskPreemption": True})
    assert info.value.values["PropertyName"] == "allowTaskPreemption"
    assert svc.list_jobs() == []
    svc.create_job({"id": "j", "poolInfo": {"poolId": "p"}, "allowTaskPreemption": False})
    with pytest.raises(BatchInvalidRequestError):
        svc.update_job("j", {"allowTaskPreemption": True})
