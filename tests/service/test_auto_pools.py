"""Auto pools: a pool the service creates for a job (or a schedule's jobs) and ends with it.

An engine is driven by hand (``step()``) on a fake clock; the pools have no nodes (target 0), so
nothing waits for processes: what is checked is which pools exist, their ids and bodies, and the
jobs' pool and scheduling error. A pool at the end of its lifetime is ``deleting`` at once and
gone after the engine's next step.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchConflictError, BatchInvalidRequestError
from prefect_batch.service import BatchService
from prefect_batch.service.engine import Engine
from prefect_batch.store import Store

T0 = 1_750_000_000.0
GUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def auto(lifetime: str = "job", prefix: str | None = "batch", **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "poolLifetimeOption": lifetime,
        "pool": {
            "vmSize": "standard_d2s_v3",
            "taskSlotsPerNode": 2,
            "metadata": [{"name": "kind", "value": "auto"}],
        },
        **extra,
    }
    if prefix is not None:
        spec["autoPoolIdPrefix"] = prefix
    return {"poolInfo": {"autoPoolSpecification": spec}}


class Harness:
    """A service and an engine on one store, sharing a clock the test moves."""

    def __init__(self, store: Store, root: Path) -> None:
        self.now = T0
        self.engine = Engine(store, {}, root, clock=lambda: self.now)
        self.svc = BatchService(store, "acct", clock=lambda: self.now, wake=self.engine.wake)

    def step(self, seconds: float = 1.0) -> None:
        self.now += seconds
        self.engine.step()

    def pools(self) -> dict[str, str]:
        return {p.id: p.state for p in self.svc.list_pools()}


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    store = Store(f"sqlite:///{tmp_path / 'batch.db'}")
    yield Harness(store, tmp_path / "nodes")
    store.dispose()


def test_a_job_gets_its_own_pool_which_goes_when_the_job_completes(h: Harness) -> None:
    h.svc.create_job({"id": "j", **auto()})
    job = h.svc.get_job("j")
    pool_id = job.execution_info.pool_id
    assert re.fullmatch(f"batch_{GUID}", pool_id)
    assert job.pool_info.auto_pool_specification.auto_pool_id_prefix == "batch"
    assert job.pool_info.pool_id is None  # Azure: poolInfo is what was asked
    pool = h.svc.get_pool(pool_id)
    assert pool.vm_size == "standard_d2s_v3"
    assert pool.task_slots_per_node == 2
    assert pool.metadata[0].value == "auto"
    assert h.pools() == {pool_id: "active"}

    h.svc.terminate_job("j")
    assert h.svc.get_job("j").state == "completed"
    assert h.pools() == {pool_id: "deleting"}
    h.step()
    assert h.pools() == {}


def test_deleting_the_job_deletes_its_pool_and_keep_alive_keeps_it(h: Harness) -> None:
    h.svc.create_job({"id": "gone", **auto(prefix=None)})
    h.svc.create_job({"id": "kept", **auto(keepAlive=True)})
    gone = h.svc.get_job("gone").execution_info.pool_id
    kept = h.svc.get_job("kept").execution_info.pool_id
    assert re.fullmatch(GUID, gone)  # no prefix: a bare guid
    h.svc.delete_job("gone")
    h.svc.terminate_job("kept")
    h.step()
    assert h.pools() == {kept: "active"}
    h.svc.delete_job("kept")
    h.step()
    assert h.pools() == {kept: "active"}  # keepAlive: the user deletes it


def test_a_pool_that_cannot_be_created_completes_the_job_with_a_scheduling_error(
    h: Harness,
) -> None:
    bad_source = auto()
    bad_source["poolInfo"]["autoPoolSpecification"]["pool"]["virtualMachineConfiguration"] = {
        "nodeAgentSKUId": "batch.node.ssh.nosuchgroup",
        "imageReference": {"publisher": "p", "offer": "o", "sku": "s"},
    }
    h.svc.create_job({"id": "j", **bad_source, "jobManagerTask": {"id": "m", "commandLine": "x"}})
    job = h.svc.get_job("j")
    assert job.state == "completed"
    assert job.execution_info.end_time is not None
    assert job.execution_info.pool_id is None
    error = job.execution_info.scheduling_error
    assert error.category == "usererror"
    assert error.code == "InvalidPropertyValue"
    details = {d.name: d.value for d in error.details}
    assert details["PropertyName"] == (
        "poolInfo.autoPoolSpecification.pool.virtualMachineConfiguration.nodeAgentSKUId"
    )
    assert h.pools() == {}
    assert h.svc.list_tasks("j") == []  # the job manager never queued

    formula = auto()
    formula["poolInfo"]["autoPoolSpecification"]["pool"].update(
        enableAutoScale=True, autoScaleFormula="$TargetDedicatedNodes = ("
    )
    h.svc.create_job({"id": "f", **formula})
    error = h.svc.get_job("f").execution_info.scheduling_error
    assert error.code == "InvalidAutoScaleFormulaInAutoPool"
    assert h.pools() == {}


@pytest.mark.parametrize(
    "body, code, prop",
    [
        (auto("jobschedule"), "InvalidPropertyValue", "autoPoolSpecification.poolLifetimeOption"),
        (auto(prefix="x" * 21), "InvalidPropertyValue", "autoPoolSpecification.autoPoolIdPrefix"),
        (auto(prefix="a b"), "InvalidPropertyValue", "autoPoolSpecification.autoPoolIdPrefix"),
        (auto("forever"), "InvalidPropertyValue", "autoPoolSpecification.poolLifetimeOption"),
        (
            {"poolInfo": {"autoPoolSpecification": {"poolLifetimeOption": "job"}}},
            "MissingRequiredProperty",
            "autoPoolSpecification.pool",
        ),
        (
            {"poolInfo": {"poolId": "p", **auto()["poolInfo"]}},
            "InvalidPropertyValue",
            "poolInfo",
        ),
    ],
)
def test_bad_auto_pools_are_refused_and_nothing_is_created(
    h: Harness, body: dict[str, Any], code: str, prop: str
) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        h.svc.create_job({"id": "j", **body})
    assert info.value.code == code
    assert info.value.values["PropertyName"].endswith(prop)
    assert h.svc.list_jobs() == []
    assert h.pools() == {}


def test_a_schedule_shares_one_pool_between_its_jobs_until_it_is_deleted(h: Harness) -> None:
    h.svc.create_job_schedule(
        {
            "id": "s",
            "schedule": {"recurrenceInterval": "PT1M"},
            "jobSpecification": auto("jobschedule", prefix="nightly"),
        }
    )
    h.step()
    first = h.svc.get_job("s:job-1").execution_info.pool_id
    assert re.fullmatch(f"nightly_{GUID}", first)
    h.svc.terminate_job("s:job-1")
    h.step(61)
    assert h.svc.get_job("s:job-2").execution_info.pool_id == first
    assert h.pools() == {first: "active"}  # a job's end is not the pool's
    h.svc.delete_job_schedule("s")
    h.step()
    assert h.pools() == {}
    assert h.svc.list_jobs() == []


def test_a_schedule_with_pools_per_job_ends_each_with_its_job(h: Harness) -> None:
    h.svc.create_job_schedule(
        {"id": "s", "schedule": {"recurrenceInterval": "PT1M"}, "jobSpecification": auto()}
    )
    h.step()
    first = h.svc.get_job("s:job-1").execution_info.pool_id
    h.svc.terminate_job("s:job-1")
    h.step(61)
    second = h.svc.get_job("s:job-2").execution_info.pool_id
    assert second != first
    assert h.pools() == {second: "active"}
    h.svc.terminate_job_schedule("s")  # its active job is terminated with it
    h.step()
    assert h.svc.get_job_schedule("s").state == "completed"
    assert h.pools() == {}


def test_terminating_a_schedule_ends_its_shared_pool(h: Harness) -> None:
    h.svc.create_job_schedule({"id": "s", "schedule": {}, "jobSpecification": auto("jobschedule")})
    h.step()
    pool_id = h.svc.get_job("s:job-1").execution_info.pool_id
    h.svc.terminate_job_schedule("s")
    h.step()
    h.step()
    assert h.svc.get_job_schedule("s").state == "completed"
    assert pool_id not in h.pools()


def test_patch_and_put_never_move_a_job_off_or_onto_an_auto_pool(h: Harness) -> None:
    h.svc.create_job({"id": "j", **auto()})
    h.svc.create_job({"id": "named", "poolInfo": {"poolId": "p"}})
    pool_id = h.svc.get_job("j").execution_info.pool_id
    h.svc.disable_job("j", "requeue")
    h.svc.disable_job("named", "requeue")
    assert h.svc.get_job("j").state == "disabled"

    for change in (h.svc.update_job, h.svc.replace_job):
        with pytest.raises(BatchInvalidRequestError) as info:
            change("j", {"poolInfo": {"poolId": "other"}})
        assert info.value.values["PropertyName"] == "poolInfo.poolId"
    with pytest.raises(BatchInvalidRequestError) as info:
        h.svc.update_job("named", auto())
    assert info.value.values["PropertyName"] == "poolInfo.autoPoolSpecification"
    other = auto()
    other["poolInfo"]["autoPoolSpecification"]["pool"]["taskSlotsPerNode"] = 3
    with pytest.raises(BatchInvalidRequestError) as info:
        h.svc.update_job("j", other)
    assert "only keepAlive" in info.value.message
    job = h.svc.get_job("j")
    assert job.execution_info.pool_id == pool_id  # the pool is kept
    assert h.pools() == {pool_id: "active"}

    # keepAlive may change, only while the job is disabled.
    h.svc.enable_job("j")
    with pytest.raises(BatchConflictError) as conflict:
        h.svc.update_job("j", auto(keepAlive=True))
    assert conflict.value.code == "OperationInvalidForCurrentState"
    h.svc.disable_job("j", "requeue")
    h.svc.update_job("j", auto(keepAlive=True))
    assert h.svc.get_job("j").pool_info.auto_pool_specification.keep_alive is True
    h.svc.update_job("j", {"priority": 5})  # other properties as usual
    h.svc.terminate_job("j")
    h.step()
    assert h.pools() == {pool_id: "active"}


def test_an_auto_pool_with_a_bad_certificate_reference_is_a_scheduling_error(
    h: Harness,
) -> None:
    from prefect_batch.testing.certificates import make_certificate

    unknown = auto()
    ref = {"thumbprint": "ab" * 20, "thumbprintAlgorithm": "sha1"}
    unknown["poolInfo"]["autoPoolSpecification"]["pool"]["certificateReferences"] = [ref]
    h.svc.create_job({"id": "c1", **unknown})
    error = h.svc.get_job("c1").execution_info.scheduling_error
    assert error.code == "InvalidCertificatesInAutoPool"
    details = {d.name: d.value for d in error.details}
    assert details["PropertyName"].endswith("pool.certificateReferences[0].thumbprint")

    c = make_certificate("auto")
    h.svc.create_certificate(c.cer_body())
    h.svc.create_pool(
        {
            "id": "holder",
            "vmSize": "local",
            "certificateReferences": [{"thumbprint": c.thumbprint, "thumbprintAlgorithm": "sha1"}],
        }
    )
    h.svc.delete_certificate("sha1", c.thumbprint)  # fails: deletefailed
    deleting = auto()
    deleting["poolInfo"]["autoPoolSpecification"]["pool"]["certificateReferences"] = [
        {"thumbprint": c.thumbprint, "thumbprintAlgorithm": "sha1"}
    ]
    h.svc.create_job({"id": "c2", **deleting})
    error = h.svc.get_job("c2").execution_info.scheduling_error
    assert error.code == "InvalidCertificatesInAutoPool"
    assert {d.name: d.value for d in error.details}["Reason"] == "CertificateBeingDeleted"
    assert set(h.pools()) == {"holder"}
