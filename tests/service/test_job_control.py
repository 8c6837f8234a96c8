"""Job control: disable (requeue / terminate / wait), enable, terminate, delete, update, replace.

One node with one slot, so "no new task starts while disabled" can be shown without waiting: a
*sentinel* task of a later job of equal priority would run only after the disabled job's queued
task, had that task been queued; when the sentinel completes, the slot was free and unused.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchJob,
    BatchNotFoundError,
)
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

POOL = "jobctl"
KILLED_EXIT_CODE = 0xC000013A


@pytest.fixture(scope="module", autouse=True)
def pool(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 1}
    )
    wait_for_nodes(client, POOL, 1, timeout=30)


def wait_for_job_state(client: BatchClient, job: str, state: str) -> BatchJob:
    return wait_until(
        lambda: (j := client.get_job(job)).state == state and j,
        timeout=20,
        message=f"job {job} {state}",
    )


def _sentinel_runs(client: BatchClient, make_job: Callable[..., str]) -> None:
    """Run one task of a fresh job on the pool and wait for it."""
    job = make_job(POOL)
    client.create_task(job, {"id": "sentinel", "commandLine": "true"})
    wait_for_task(client, job, "sentinel")


def _blocks_once(marker: Path) -> str:
    """Blocks (sleep 30) the first time, succeeds at once on later runs."""
    return f"/bin/sh -c 'if [ -e {marker} ]; then exit 0; fi; touch {marker}; exec sleep 30'"


def test_disable_requeue_requeues_the_running_task(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": _blocks_once(tmp_path / "m"),
            "constraints": {"maxTaskRetryCount": 3},
        },
    )
    wait_for_task(client, job, "t", "running")
    wait_until((tmp_path / "m").exists, timeout=10, message="task started its command")
    client.disable_job(job, "requeue")
    got = wait_for_job_state(client, job, "disabled")
    assert got.previous_state == "disabling"
    task = client.get_task(job, "t")
    assert task.state == "active"
    assert task.execution_info.requeue_count == 1
    assert task.execution_info.retry_count == 0
    assert task.execution_info.last_requeue_time is not None
    assert client.get_job_task_counts(job).task_counts.active == 1
    # A task added while the job is disabled waits too.
    client.create_task(job, {"id": "added-while-disabled", "commandLine": "true"})
    _sentinel_runs(client, make_job)
    assert client.get_task(job, "t").state == "active"
    assert client.get_task(job, "added-while-disabled").execution_info is None

    client.enable_job(job)
    assert wait_for_task(client, job, "added-while-disabled").execution_info.result == "success"
    assert client.get_job(job).state == "active"
    done = wait_for_task(client, job, "t")
    assert done.execution_info.result == "success"
    assert done.execution_info.requeue_count == 1
    assert done.execution_info.retry_count == 0


def test_disable_terminate_fails_the_running_task_and_keeps_queued_ones(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL)
    client.create_tasks(
        job,
        [
            {"id": "running", "commandLine": gate_command(gate)},
            {"id": "queued", "commandLine": "true"},
        ],
    )
    wait_for_task(client, job, "running", "running")
    client.disable_job(job, {"disableTasks": "terminate"})
    wait_for_job_state(client, job, "disabled")
    ended = client.get_task(job, "running")
    assert ended.state == "completed"
    assert ended.execution_info.result == "failure"
    assert ended.execution_info.exit_code == KILLED_EXIT_CODE
    assert ended.execution_info.failure_info.code == "TaskEnded"
    assert client.get_task(job, "queued").state == "active"
    _sentinel_runs(client, make_job)
    assert client.get_task(job, "queued").execution_info is None

    client.enable_job(job)
    assert wait_for_task(client, job, "queued").execution_info.result == "success"


def test_disable_wait_lets_the_running_task_finish_and_starts_nothing(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL)
    client.create_tasks(
        job,
        [
            {"id": "running", "commandLine": gate_command(gate)},
            {"id": "queued", "commandLine": "true"},
        ],
    )
    wait_for_task(client, job, "running", "running")
    client.disable_job(job, "wait")
    # Azure: the job stays "disabling" until its running tasks are dealt with.
    assert client.get_job(job).state == "disabling"
    assert client.get_task(job, "running").state == "running"
    gate.touch()
    finished = wait_for_task(client, job, "running")
    assert finished.execution_info.result == "success"
    assert finished.execution_info.exit_code == 0
    wait_for_job_state(client, job, "disabled")
    _sentinel_runs(client, make_job)
    queued = client.get_task(job, "queued")
    assert queued.state == "active"
    assert queued.execution_info is None

    client.enable_job(job)
    assert wait_for_task(client, job, "queued").execution_info.result == "success"


def test_disable_and_enable_refused_in_the_wrong_state(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)
    with pytest.raises(BatchConflictError):
        client.enable_job(job)
    client.disable_job(job, "requeue")
    wait_for_job_state(client, job, "disabled")
    with pytest.raises(BatchConflictError) as err:
        client.disable_job(job, "requeue")
    assert err.value.code == "JobDisabled"
    with pytest.raises(BatchInvalidRequestError):
        client.disable_job(job, "sometimes")
    client.enable_job(job)
    client.terminate_job(job)
    with pytest.raises(BatchConflictError):
        client.disable_job(job, "wait")


def test_terminate_job_ends_running_tasks_with_user_reason(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL)
    client.create_tasks(
        job,
        [
            {"id": "running", "commandLine": gate_command(gate)},
            {"id": "queued", "commandLine": "true"},
        ],
    )
    wait_for_task(client, job, "running", "running")
    client.terminate_job(job)
    got = wait_for_job_state(client, job, "completed")
    assert got.execution_info.termination_reason == "UserTerminate"
    assert got.execution_info.end_time is not None
    ended = client.get_task(job, "running").execution_info
    assert (ended.result, ended.exit_code) == ("failure", KILLED_EXIT_CODE)
    assert client.get_task(job, "queued").execution_info is None
    with pytest.raises(BatchConflictError) as err:
        client.terminate_job(job)
    assert err.value.code == "JobCompleted"
    with pytest.raises(BatchConflictError) as err:
        client.update_job(job, {"priority": 1})
    assert err.value.code == "JobCompleted"


def test_terminate_job_with_own_reason(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job(POOL)
    client.terminate_job(job, {"terminateReason": "NoLongerNeeded"})
    got = wait_for_job_state(client, job, "completed")
    assert got.execution_info.termination_reason == "NoLongerNeeded"


def test_delete_job_removes_it_with_its_tasks_and_files(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL)
    client.create_tasks(
        job,
        [
            {"id": "done", "commandLine": "echo hi"},
            {"id": "running", "commandLine": gate_command(gate)},
            {"id": "queued", "commandLine": "true"},
        ],
    )
    wait_for_task(client, job, "running", "running")
    node = client.get_task(job, "done").node_info.node_id
    assert client.get_node_file(POOL, node, f"{job}/done/stdout.txt") == b"hi\n"
    client.delete_job(job)

    def gone() -> bool:
        try:
            client.get_job(job)
        except BatchNotFoundError:
            return True
        return False

    wait_until(gone, timeout=20, message="job deleted")
    assert job not in [j.id for j in client.list_jobs()]
    with pytest.raises(BatchNotFoundError) as err:
        client.list_tasks(job)
    assert err.value.code == "JobNotFound"
    wait_until(
        lambda: job not in [f.name for f in client.list_node_files(POOL, node)],
        timeout=20,
        message="job directory removed from the node",
    )
    # The id is free again.
    client.create_job({"id": job, "poolInfo": {"poolId": POOL}})
    assert client.list_tasks(job) == []
    client.delete_job(job)


def test_update_job_patches_only_what_is_given(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(
        POOL,
        priority=10,
        maxParallelTasks=2,
        constraints={"maxTaskRetryCount": 2},
        metadata=[{"name": "k", "value": "v"}],
    )
    before = client.get_job(job)
    client.update_job(job, {"priority": 20})
    got = client.get_job(job)
    assert got.priority == 20
    assert got.max_parallel_tasks == 2
    assert got.constraints.max_task_retry_count == 2
    assert [(m.name, m.value) for m in got.metadata] == [("k", "v")]
    assert got.etag != before.etag
    client.update_job(job, {"onAllTasksComplete": "terminatejob"})
    assert client.get_job(job).all_tasks_complete_mode == "terminatejob"
    with pytest.raises(BatchInvalidRequestError) as err:
        client.update_job(job, {"onAllTasksComplete": "noaction"})
    assert err.value.values["PropertyName"] == "onAllTasksComplete"
    assert client.get_job(job).all_tasks_complete_mode == "terminatejob"


def test_replace_job_resets_what_is_not_given(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(
        POOL,
        priority=10,
        maxParallelTasks=2,
        constraints={"maxTaskRetryCount": 2, "maxWallClockTime": "PT1H"},
        metadata=[{"name": "k", "value": "v"}],
    )
    client.replace_job(job, {"poolInfo": {"poolId": POOL}, "priority": 5})
    got = client.get_job(job)
    assert got.priority == 5
    assert got.max_parallel_tasks == -1
    assert not got.metadata
    assert got.constraints is None or (
        not got.constraints.max_task_retry_count and got.constraints.max_wall_clock_time is None
    )
    assert got.all_tasks_complete_mode == "noaction"
    # A task added now inherits the reset job retry count (0).
    client.create_task(job, {"id": "t", "commandLine": "false"})
    assert client.get_task(job, "t").constraints.max_task_retry_count == 0


def test_replace_job_cannot_drop_terminatejob(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, onAllTasksComplete="terminatejob", priority=3)
    with pytest.raises(BatchInvalidRequestError):
        client.replace_job(job, {"poolInfo": {"poolId": POOL}})
    assert client.get_job(job).priority == 3


def test_pool_can_change_only_while_disabled(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job("no-such-pool-yet")  # a job may name a pool that does not exist
    client.create_task(job, {"id": "t", "commandLine": "true"})
    with pytest.raises(BatchConflictError):
        client.update_job(job, {"poolInfo": {"poolId": POOL}})
    client.disable_job(job, "requeue")
    wait_for_job_state(client, job, "disabled")
    client.update_job(job, {"poolInfo": {"poolId": POOL}})
    client.enable_job(job)
    assert client.get_job(job).pool_info.pool_id == POOL
    assert wait_for_task(client, job, "t").execution_info.result == "success"
