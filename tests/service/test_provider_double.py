"""The provider contract driven the way a cloud drives it, through the public client.

The ``double`` kind (``prefect_batch.testing.providers``) runs real local agents on machines
that take time to boot, run out, hit a quota, vanish and get preempted. These tests register it
like any node source and check what a user of the pools sees: node states, ``resizeErrors``,
tasks requeued (``requeueCount`` + 1, ``retryCount`` unchanged), files read through the node's
agent, and every node released exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchClient, BatchInvalidRequestError
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until
from prefect_batch.testing.providers import DoubleCloud, cloud_of, install


@pytest.fixture(autouse=True)
def _double_kind() -> None:
    install()


@pytest.fixture
def client(client_factory: Callable[..., BatchClient]) -> Iterator[BatchClient]:
    yield client_factory(node_unreachable_grace_seconds=300)


def _source(client: BatchClient, tmp_path: Path, **spec: Any) -> tuple[str, DoubleCloud]:
    name = f"c{uuid.uuid4().hex[:8]}"
    client.create_node_source(
        {"kind": "double", "name": name, "root": str(tmp_path / "machines"), **spec}
    )
    return name, cloud_of(client.account_name, name)


def _pool(client: BatchClient, pool_id: str, source: str, nodes: int, low: int = 0) -> None:
    client.create_pool(
        {
            "id": pool_id,
            "vmSize": "double-1",
            "targetDedicatedNodes": nodes,
            "targetLowPriorityNodes": low,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "double", "sku": source},
                "nodeAgentSKUId": f"batch.node.double.{source}",
            },
        }
    )


def _steady(client: BatchClient, pool_id: str) -> Any:
    pool = client.get_pool(pool_id)
    return pool if pool.allocation_state == "steady" else None


def _pool_passes(client: BatchClient, count: int) -> None:
    """Wake the engine and wait for ``count`` passes over its pools, one at a time."""
    engine = client._engine
    assert engine is not None
    for _ in range(count):
        client.service.wake(pools=True)
        wait_until(
            lambda passes=engine.pool_passes: engine.pool_passes > passes,
            timeout=10,
            message="a pool pass",
        )


def _delete_and_check_releases(client: BatchClient, pool_id: str, cloud: DoubleCloud) -> None:
    placed = {m.node_id for m in cloud.machines.values()} | set(cloud.releases)
    client.delete_pool(pool_id)
    wait_until(lambda: not client.pool_exists(pool_id), timeout=30, message="pool gone")
    wait_until(lambda: set(cloud.releases) == placed, timeout=30, message="every node released")
    assert set(cloud.releases.values()) == {1}, cloud.releases
    assert not cloud.machines


def test_a_registration_is_checked_field_by_field(client: BatchClient) -> None:
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_node_source({"kind": "double", "name": "d", "bootSeconds": -1})
    assert err.value.values["PropertyName"] == "bootSeconds"
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_node_source({"kind": "double", "name": "d", "capacity": "many"})
    assert err.value.values["PropertyName"] == "capacity"
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_node_source({"kind": "nosuchkind", "name": "d"})
    assert err.value.values["PropertyName"] == "kind"
    assert client.list_node_sources() == []  # nothing half-registered


def test_nodes_boot_then_run_tasks_and_serve_files_through_their_agents(
    client: BatchClient, tmp_path: Path
) -> None:
    name, cloud = _source(client, tmp_path, bootSeconds=1.5)
    assert f"batch.node.double.{name}" in [
        i.node_agent_sku_id for i in client.list_supported_images()
    ]
    source = client.get_node_source(name)
    assert source.kind == "double" and source.spec is not None
    assert source.spec["bootSeconds"] == 1.5
    _pool(client, "boot", name, 2)
    seen: set[str] = set()

    def idle() -> bool:
        states = [n.state for n in client.list_nodes("boot")]
        seen.update(states)
        return states == ["idle", "idle"]

    wait_until(idle, timeout=60, message="two idle nodes")
    assert "starting" in seen  # the machines took their time to boot
    nodes = client.list_nodes("boot")
    assert {n.ip_address for n in nodes} == {"127.0.0.1"}
    assert all(n.id in {m.node_id for m in cloud.machines.values()} for n in nodes)
    client.create_job({"id": "j", "poolInfo": {"poolId": "boot"}})
    client.create_task("j", {"id": "t", "commandLine": "/bin/sh -c 'echo from-$AZ_BATCH_NODE_ID'"})
    task = wait_for_task(client, "j", "t", timeout=60)
    assert task.execution_info.exit_code == 0
    out = client.get_task_file("j", "t", "stdout.txt").decode()
    assert out.strip() == f"from-{task.node_info.node_id}"
    _delete_and_check_releases(client, "boot", cloud)


def test_a_quota_error_becomes_the_pools_resize_error_without_a_retry_storm(
    client: BatchClient, tmp_path: Path
) -> None:
    name, cloud = _source(client, tmp_path, quotaNodes=2)
    _pool(client, "quota", name, 3)
    pool = wait_until(lambda: _steady(client, "quota"), timeout=60, message="steady")
    assert [e.code for e in pool.resize_errors or []] == ["AccountCoreQuotaReached"]
    wait_for_nodes(client, "quota", 2, timeout=60)
    calls = cloud.place_calls
    _pool_passes(client, 5)  # more passes over the pool ask the provider nothing more
    assert cloud.place_calls == calls
    assert len(client.list_nodes("quota")) == 2
    client.resize_pool("quota", {"targetDedicatedNodes": 4})  # a new resize asks again
    wait_until(lambda: cloud.place_calls > calls, timeout=30, message="placed again")
    pool = wait_until(lambda: _steady(client, "quota"), timeout=60, message="steady again")
    assert [e.code for e in pool.resize_errors or []] == ["AccountCoreQuotaReached"]
    _delete_and_check_releases(client, "quota", cloud)


def test_a_partial_allocation_keeps_the_nodes_it_got(client: BatchClient, tmp_path: Path) -> None:
    name, cloud = _source(client, tmp_path, capacity=1)
    _pool(client, "partial", name, 3)
    pool = wait_until(lambda: _steady(client, "partial"), timeout=60, message="steady")
    assert [e.code for e in pool.resize_errors or []] == ["AllocationFailed"]
    assert "capacity 1" in pool.resize_errors[0].message
    assert pool.target_dedicated_nodes == 3
    wait_for_nodes(client, "partial", 1, timeout=60)
    _delete_and_check_releases(client, "partial", cloud)


def _running_task(client: BatchClient, pool_id: str, gate: Path) -> tuple[str, str]:
    client.create_job({"id": f"{pool_id}-job", "poolInfo": {"poolId": pool_id}})
    client.create_task(
        f"{pool_id}-job",
        {
            "id": "t",
            "commandLine": gate_command(gate, then="echo done-$AZ_BATCH_NODE_ID"),
            "constraints": {"maxTaskRetryCount": 0},
        },
    )
    task = wait_for_task(client, f"{pool_id}-job", "t", "running", timeout=60)
    return f"{pool_id}-job", task.node_info.node_id


def _requeued(client: BatchClient, job_id: str, task_id: str) -> Any:
    task = client.get_task(job_id, task_id)
    info = task.execution_info
    return task if info is not None and info.requeue_count == 1 else None


def test_a_machine_that_vanishes_loses_its_node_and_its_task_runs_again(
    client: BatchClient, tmp_path: Path
) -> None:
    name, cloud = _source(client, tmp_path)
    _pool(client, "vanish", name, 1)
    wait_for_nodes(client, "vanish", 1, timeout=60)
    gate = tmp_path / "gate"
    job, first = _running_task(client, "vanish", gate)
    cloud.vanish(first)
    # Requeued at once (not after the 300 s unreachable grace) and run on a replacement.
    task = wait_until(lambda: _requeued(client, job, "t"), timeout=30, message="the task requeued")
    assert task.execution_info.retry_count == 0
    nodes = wait_for_nodes(client, "vanish", 1, timeout=60, states=("idle", "running"))
    assert nodes[0].id != first
    assert cloud.releases[first] == 1
    gate.touch()
    task = wait_for_task(client, job, "t", timeout=60)
    assert task.execution_info.exit_code == 0
    assert task.node_info.node_id == nodes[0].id
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    _delete_and_check_releases(client, "vanish", cloud)


def test_a_preempted_node_shows_preempted_and_its_task_is_not_charged_a_retry(
    client: BatchClient, tmp_path: Path
) -> None:
    name, cloud = _source(client, tmp_path)
    _pool(client, "spot", name, 0, low=1)
    wait_for_nodes(client, "spot", 1, timeout=60)
    gate = tmp_path / "gate"
    job, first = _running_task(client, "spot", gate)
    cloud.preempt(first)

    def replaced() -> list[Any] | None:
        found = {n.id: n for n in client.list_nodes("spot")}
        others = [n for i, n in found.items() if i != first and n.state in ("idle", "running")]
        return others if first in found and found[first].state == "preempted" and others else None

    replacement = wait_until(replaced, timeout=60, message="preempted node and a replacement")
    preempted = client.get_node("spot", first)
    assert [e.code for e in preempted.errors or []] == ["NodePreempted"]
    pool = client.get_pool("spot")
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (0, 1)
    assert replacement[0].is_dedicated is False
    gate.touch()
    task = wait_for_task(client, job, "t", timeout=60)
    assert task.execution_info.exit_code == 0
    assert task.node_info.node_id == replacement[0].id
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    assert cloud.releases[first] == 1
    _delete_and_check_releases(client, "spot", cloud)


def test_removed_nodes_are_released_once(client: BatchClient, tmp_path: Path) -> None:
    name, cloud = _source(client, tmp_path, bootSeconds=0.2)
    _pool(client, "shrink", name, 3)
    nodes = wait_for_nodes(client, "shrink", 3, timeout=60)
    client.remove_nodes("shrink", {"nodeList": [nodes[0].id]})
    wait_for_nodes(client, "shrink", 2, timeout=60)
    assert cloud.releases[nodes[0].id] == 1
    client.resize_pool("shrink", {"targetDedicatedNodes": 1})
    wait_for_nodes(client, "shrink", 1, timeout=60)
    assert sum(cloud.releases.values()) == 2
    _delete_and_check_releases(client, "shrink", cloud)


def test_low_priority_nodes_are_counted_apart_and_told_to_their_tasks(
    client: BatchClient, tmp_path: Path
) -> None:
    name, cloud = _source(client, tmp_path)
    _pool(client, "mixed", name, 1, low=2)
    nodes = wait_for_nodes(client, "mixed", 3, timeout=60)
    assert sorted(n.is_dedicated for n in nodes) == [False, False, True]
    pool = client.get_pool("mixed")
    assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (1, 2)
    (counts,) = [c for c in client.list_pool_node_counts() if c.pool_id == "mixed"]
    assert (counts.dedicated.total, counts.low_priority.total) == (1, 2)
    assert counts.low_priority.idle == 2
    assert client.get_account_quotas()["lowPriorityNodes"] == 2
    client.create_job({"id": "mj", "poolInfo": {"poolId": "mixed"}})
    client.create_tasks(
        "mj",
        [
            {"id": f"t{i}", "commandLine": "/bin/sh -c 'echo $AZ_BATCH_NODE_IS_DEDICATED'"}
            for i in range(6)
        ],
    )
    told = {}
    for i in range(6):
        task = wait_for_task(client, "mj", f"t{i}", timeout=60)
        told[task.node_info.node_id] = client.get_task_file("mj", f"t{i}", "stdout.txt").strip()
    by_node = {n.id: n.is_dedicated for n in nodes}
    assert all(text == (b"true" if by_node[node] else b"false") for node, text in told.items())
    # The low-priority quota caps the low-priority nodes alone.
    client.set_account_quota(low_priority_nodes=3)
    client.resize_pool("mixed", {"targetDedicatedNodes": 2, "targetLowPriorityNodes": 5})
    pool = wait_until(lambda: _steady(client, "mixed"), timeout=60, message="steady")
    assert [e.code for e in pool.resize_errors or []] == ["AccountLowPriorityCoreQuotaReached"]
    nodes = wait_for_nodes(client, "mixed", 5, timeout=60)
    assert sorted(n.is_dedicated for n in nodes) == [False, False, False, True, True]
    _delete_and_check_releases(client, "mixed", cloud)


def test_low_priority_nodes_are_refused_for_a_source_without_them(client: BatchClient) -> None:
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_pool(
            {
                "id": "nolow",
                "vmSize": "local",
                "targetDedicatedNodes": 1,
                "targetLowPriorityNodes": 1,
            }
        )
    assert err.value.values["PropertyName"] == "targetLowPriorityNodes"
    assert not client.pool_exists("nolow")
    client.create_pool({"id": "nolow", "vmSize": "local", "targetDedicatedNodes": 0})
    with pytest.raises(BatchInvalidRequestError) as err:
        client.resize_pool("nolow", {"targetLowPriorityNodes": 2})
    assert err.value.values["PropertyName"] == "targetLowPriorityNodes"
    assert client.get_pool("nolow").allocation_state == "steady"


def test_a_launch_refused_after_placement_ends_the_resize_with_its_error(
    client: BatchClient, tmp_path: Path
) -> None:
    name, cloud = _source(client, tmp_path, bootSeconds=2.0)
    _pool(client, "refused", name, 2)
    first = wait_until(
        lambda: [n.id for n in client.list_nodes("refused") if n.state == "starting"],
        timeout=30,
        message="a node starting",
    )[0]
    cloud.fail(first)
    pool = wait_until(
        lambda: (p := _steady(client, "refused")) is not None and p.resize_errors and p,
        timeout=30,
        message="steady with a resize error",
    )
    (error,) = pool.resize_errors
    assert error.code == "AllocationFailed"
    assert {v.name: v.value for v in error.error_values or []} == {
        "code": "InsufficientInstanceCapacity"
    }
    nodes = wait_for_nodes(client, "refused", 1, timeout=60)
    assert first not in {n.id for n in nodes}
    assert cloud.releases[first] == 1
    calls = cloud.place_calls
    _pool_passes(client, 3)  # the pool is not grown again until its next resize
    assert cloud.place_calls == calls
    assert client.get_pool("refused").target_dedicated_nodes == 2
    _delete_and_check_releases(client, "refused", cloud)
