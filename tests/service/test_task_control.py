"""Task control: terminate (queued or running), reactivate, delete, update constraints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, BatchConflictError, BatchNotFoundError
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

POOL = "taskctl"
KILLED_EXIT_CODE = 0xC000013A


@pytest.fixture(scope="module", autouse=True)
def pool(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 1}
    )
    wait_for_nodes(client, POOL, 1, timeout=30)


def _counts(client: BatchClient, job: str) -> tuple[int, int, int, int]:
    c = client.get_job_task_counts(job).task_counts
    return c.active, c.running, c.succeeded, c.failed


def test_terminate_queued_and_running_tasks(
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

    client.terminate_task(job, "queued")
    queued = client.get_task(job, "queued")
    assert queued.state == "completed"
    assert queued.execution_info.result == "failure"
    assert queued.execution_info.failure_info.code == "TaskEnded"
    assert queued.execution_info.start_time is None  # it never ran

    client.terminate_task(job, "running")
    running = wait_for_task(client, job, "running")
    assert running.execution_info.result == "failure"
    assert running.execution_info.exit_code == KILLED_EXIT_CODE == 3221225786
    assert running.execution_info.failure_info.code == "TaskEnded"
    assert _counts(client, job) == (0, 0, 0, 2)
    # Terminating a completed task changes nothing.
    etag = client.get_task(job, "running").etag
    client.terminate_task(job, "running")
    assert client.get_task(job, "running").etag == etag


def test_terminated_queued_task_blocks_its_dependents(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    holder = make_job(POOL)
    client.create_task(holder, {"id": "hold", "commandLine": gate_command(gate)})
    wait_for_task(client, holder, "hold", "running")
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {"id": "parent", "commandLine": "true"},
            {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["parent"]}},
            {"id": "sentinel", "commandLine": "true"},
        ],
    )
    client.terminate_task(job, "parent")
    gate.touch()
    wait_for_task(client, job, "sentinel")
    assert client.get_task(job, "child").state == "active"
    assert client.get_task(job, "child").execution_info is None


def test_reactivate_a_failed_task_runs_it_again(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    job = make_job(POOL)
    marker = tmp_path / "second-time"
    client.create_task(
        job,
        {
            "id": "flaky",
            "commandLine": f"/bin/sh -c '[ -e {marker} ] || exit 9'",
            "constraints": {"maxTaskRetryCount": 1},
        },
    )
    failed = wait_for_task(client, job, "flaky")
    assert (failed.execution_info.result, failed.execution_info.retry_count) == ("failure", 1)
    assert _counts(client, job) == (0, 0, 0, 1)

    marker.touch()
    client.reactivate_task(job, "flaky")
    again = client.get_task(job, "flaky")
    assert again.state in ("active", "preparing", "running", "completed")
    assert again.previous_state == "completed" or again.state != "active"
    done = wait_for_task(client, job, "flaky")
    assert done.execution_info.result == "success"
    assert done.execution_info.retry_count == 0  # reset by reactivation
    assert done.execution_info.exit_code == 0
    assert done.execution_info.failure_info is None
    assert _counts(client, job) == (0, 0, 1, 0)


def test_reactivate_refuses_succeeded_and_unfinished_tasks(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL)
    client.create_task(job, {"id": "ok", "commandLine": "true"})
    wait_for_task(client, job, "ok")
    with pytest.raises(BatchConflictError) as err:
        client.reactivate_task(job, "ok")
    assert err.value.code == "TaskSucceeded"
    client.create_task(job, {"id": "running", "commandLine": gate_command(gate)})
    wait_for_task(client, job, "running", "running")
    with pytest.raises(BatchConflictError) as err:
        client.reactivate_task(job, "running")
    assert err.value.code == "TaskNotCompleted"
    gate.touch()
    wait_for_task(client, job, "running")


def test_reactivated_parent_that_succeeds_releases_its_dependent(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    marker = tmp_path / "fixed"
    client.create_tasks(
        job,
        [
            {"id": "parent", "commandLine": f"/bin/sh -c '[ -e {marker} ] || exit 9'"},
            {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["parent"]}},
        ],
    )
    assert wait_for_task(client, job, "parent").execution_info.result == "failure"
    assert client.get_task(job, "child").state == "active"
    marker.touch()
    client.reactivate_task(job, "parent")
    assert wait_for_task(client, job, "parent").execution_info.result == "success"
    assert wait_for_task(client, job, "child").execution_info.result == "success"


def test_delete_tasks(client: BatchClient, make_job: Callable[..., str], gate: Path) -> None:
    job = make_job(POOL)
    client.create_tasks(
        job,
        [
            {"id": "done", "commandLine": "echo x"},
            {"id": "running", "commandLine": gate_command(gate)},
            {"id": "queued", "commandLine": "true"},
        ],
    )
    wait_for_task(client, job, "running", "running")
    node = client.get_task(job, "done").node_info.node_id
    client.delete_task(job, "queued")
    client.delete_task(job, "done")
    with pytest.raises(BatchNotFoundError) as err:
        client.get_task(job, "done")
    assert err.value.code == "TaskNotFound"
    assert _counts(client, job) == (0, 1, 0, 0)
    client.delete_task(job, "running")

    def gone() -> bool:
        return client.list_tasks(job) == []

    wait_until(gone, timeout=20, message="running task deleted")
    assert _counts(client, job) == (0, 0, 0, 0)
    wait_until(
        lambda: not [f for f in client.list_node_files(POOL, node, path=job)],
        timeout=20,
        message="task directories removed",
    )
    # The slot is free again.
    client.create_task(job, {"id": "after", "commandLine": "true"})
    assert wait_for_task(client, job, "after").execution_info.result == "success"


def test_update_constraints_of_a_queued_task(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    holder = make_job(POOL)
    client.create_task(holder, {"id": "hold", "commandLine": gate_command(gate)})
    wait_for_task(client, holder, "hold", "running")
    job = make_job(POOL)
    client.create_task(
        job, {"id": "t", "commandLine": "sleep 30", "constraints": {"maxTaskRetryCount": 0}}
    )
    client.update_task(
        job, "t", {"constraints": {"maxTaskRetryCount": 2, "maxWallClockTime": "PT1S"}}
    )
    got = client.get_task(job, "t")
    assert got.constraints.max_task_retry_count == 2
    assert got.constraints.max_wall_clock_time.total_seconds() == 1
    gate.touch()
    done = wait_for_task(client, job, "t", timeout=30)
    assert done.execution_info.failure_info.code == "TaskEnded"  # the new wall clock applied
    with pytest.raises(BatchConflictError) as err:
        client.update_task(job, "t", {"constraints": {"maxTaskRetryCount": 1}})
    assert err.value.code == "TaskCompleted"


def test_update_constraints_replaces_them(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job("no-nodes-here")
    client.create_task(
        job,
        {
            "id": "t",
            "commandLine": "true",
            "constraints": {
                "maxWallClockTime": "PT1H",
                "retentionTime": "PT2H",
                "maxTaskRetryCount": 3,
            },
        },
    )
    client.update_task(job, "t", {"constraints": {"maxTaskRetryCount": 1}})
    got = client.get_task(job, "t").constraints
    assert got.max_task_retry_count == 1
    # Replaced, not merged: what was not given is back to its default.
    assert got.max_wall_clock_time is None
    assert got.retention_time.total_seconds() == 7 * 24 * 3600


def test_dependent_added_after_its_parent_failed_runs_once_the_parent_is_fixed(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    marker = tmp_path / "fixed"
    client.create_task(
        job, {"id": "parent", "commandLine": f"/bin/sh -c '[ -e {marker} ] || exit 9'"}
    )
    assert wait_for_task(client, job, "parent").execution_info.result == "failure"
    client.create_task(
        job, {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["parent"]}}
    )
    client.create_task(job, {"id": "sentinel", "commandLine": "true"})
    wait_for_task(client, job, "sentinel")
    assert client.get_task(job, "child").state == "active"  # blocked by the failed parent
    marker.touch()
    client.reactivate_task(job, "parent")
    assert wait_for_task(client, job, "child").execution_info.result == "success"
