"""Ids: at most 64 of ``[A-Za-z0-9_-]``, case preserved, unique case-insensitively.

Pools, jobs and tasks all follow the same rule (Azure Batch §1.15); job ids also may not name a
node directory (``shared``, ``startup``...). No nodes are needed: the pool here has none.
"""

from __future__ import annotations

import pytest

from prefect_batch import BatchClient, BatchConflictError, BatchInvalidRequestError

POOL = "IdsPool"


@pytest.fixture(scope="module", autouse=True)
def empty_pool(client: BatchClient) -> None:
    client.create_pool({"id": POOL, "vmSize": "local", "targetDedicatedNodes": 0})


def test_pool_ids_are_unique_ignoring_case_and_keep_their_case(client: BatchClient) -> None:
    client.create_pool({"id": "MyPool", "vmSize": "local", "targetDedicatedNodes": 0})
    with pytest.raises(BatchConflictError) as err:
        client.create_pool({"id": "mypool", "vmSize": "local", "targetDedicatedNodes": 0})
    assert err.value.code == "PoolExists"
    assert err.value.status_code == 409
    assert client.get_pool("MYPOOL").id == "MyPool"
    assert client.pool_exists("mYpOoL")
    assert [p.id for p in client.list_pools()].count("MyPool") == 1
    assert "mypool" not in [p.id for p in client.list_pools()]


def test_job_ids_are_unique_ignoring_case_and_keep_their_case(client: BatchClient) -> None:
    client.create_job({"id": "MyJob", "poolInfo": {"poolId": POOL}})
    with pytest.raises(BatchConflictError) as err:
        client.create_job({"id": "MYJOB", "poolInfo": {"poolId": POOL}, "priority": 5})
    assert err.value.code == "JobExists"
    job = client.get_job("myjob")
    assert job.id == "MyJob"
    assert job.priority == 0  # the refused request changed nothing
    assert [j.id for j in client.list_jobs()].count("MyJob") == 1


def test_task_ids_are_unique_ignoring_case_within_a_job(client: BatchClient) -> None:
    client.create_job({"id": "TaskIdJob", "poolInfo": {"poolId": POOL}})
    client.create_job({"id": "OtherTaskIdJob", "poolInfo": {"poolId": POOL}})
    client.create_task("TaskIdJob", {"id": "MyTask", "commandLine": "true"})
    with pytest.raises(BatchConflictError) as err:
        client.create_task("TaskIdJob", {"id": "mytask", "commandLine": "false"})
    assert err.value.code == "TaskExists"
    task = client.get_task("taskidjob", "MYTASK")
    assert task.id == "MyTask"
    assert task.command_line == "true"
    # The same id in another job is a different task.
    client.create_task("OtherTaskIdJob", {"id": "mytask", "commandLine": "true"})
    assert client.get_task("OtherTaskIdJob", "MyTask").id == "mytask"


@pytest.mark.parametrize(
    "bad_id",
    ["a" * 65, "has space", "dot.ted", "slash/x", "", "ünï"],
    ids=["65-chars", "space", "dot", "slash", "empty", "non-ascii"],
)
@pytest.mark.parametrize("kind", ["pool", "job", "task"])
def test_bad_ids_are_invalid_property_values_naming_id(
    client: BatchClient, kind: str, bad_id: str
) -> None:
    holder = f"BadTaskIds-{len(client.list_jobs())}"
    client.create_job({"id": holder, "poolInfo": {"poolId": POOL}})
    jobs_before = [j.id for j in client.list_jobs()]
    pools_before = [p.id for p in client.list_pools()]
    with pytest.raises(BatchInvalidRequestError) as err:
        if kind == "pool":
            client.create_pool({"id": bad_id, "vmSize": "local", "targetDedicatedNodes": 0})
        elif kind == "job":
            client.create_job({"id": bad_id, "poolInfo": {"poolId": POOL}})
        else:
            client.create_task(holder, {"id": bad_id, "commandLine": "true"})
    assert err.value.code == "InvalidPropertyValue"
    assert err.value.values["PropertyName"] == "id"
    assert err.value.status_code == 400
    assert [j.id for j in client.list_jobs()] == jobs_before
    assert [p.id for p in client.list_pools()] == pools_before
    assert client.list_tasks(holder) == []


def test_a_64_character_id_is_accepted(client: BatchClient) -> None:
    long_id = "J" * 63 + "_"
    client.create_job({"id": long_id, "poolInfo": {"poolId": POOL}})
    client.create_task(long_id, {"id": "t" * 64, "commandLine": "true"})
    assert client.get_job(long_id.lower()).id == long_id
    assert client.get_task(long_id, "T" * 64).id == "t" * 64


@pytest.mark.parametrize("reserved", ["shared", "SHARED", "startup", "Workitems"])
def test_reserved_job_ids_are_refused(client: BatchClient, reserved: str) -> None:
    before = [j.id for j in client.list_jobs()]
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_job({"id": reserved, "poolInfo": {"poolId": POOL}})
    assert err.value.code == "InvalidPropertyValue"
    assert err.value.values["PropertyName"] == "id"
    assert [j.id for j in client.list_jobs()] == before
    # A reserved job id is an ordinary pool or task id.
    pool_id = f"{reserved}{len(client.list_pools())}"
    client.create_pool({"id": pool_id, "vmSize": "local", "targetDedicatedNodes": 0})
    assert client.get_pool(pool_id).id == pool_id
