"""Retries (maxTaskRetryCount) and wall-clock limits (task and job maxWallClockTime).

One node (so a counter file in ``$AZ_BATCH_NODE_SHARED_DIR`` sees every attempt of a task) with
two slots.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task

POOL = "retries"
KILLED_EXIT_CODE = 0xC000013A  # 3221225786


@pytest.fixture(scope="module", autouse=True)
def pool(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 2}
    )
    wait_for_nodes(client, POOL, 1, timeout=30)


def _succeed_on_attempt(n: int, name: str) -> str:
    """Fail (exit 7) until the ``n``-th attempt; count attempts in the node's shared dir."""
    f = f'"$AZ_BATCH_NODE_SHARED_DIR/{name}"'
    return f"/bin/sh -c 'echo x >> {f}; [ $(wc -l < {f}) -ge {n} ] || exit 7'"


def test_retries_are_capped_and_the_last_exit_code_is_kept(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "fails",
            "commandLine": "/bin/sh -c 'exit 3'",
            "constraints": {"maxTaskRetryCount": 2},
        },
    )
    client.wait_for_job(job, timeout=30)
    info = client.get_task(job, "fails").execution_info
    assert info.retry_count == 2
    assert info.result == "failure"
    assert info.exit_code == 3
    assert info.failure_info.category == "usererror"
    assert info.failure_info.code == "FailureExitCode"
    assert info.last_retry_time is not None
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.completed, counts.failed, counts.succeeded) == (1, 1, 0)


def test_unlimited_retries_until_success(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "third",
            "commandLine": _succeed_on_attempt(3, f"{job}-n"),
            "constraints": {"maxTaskRetryCount": -1},
        },
    )
    client.wait_for_job(job, timeout=30)
    task = client.get_task(job, "third")
    assert task.constraints.max_task_retry_count == -1
    assert task.execution_info.retry_count == 2
    assert task.execution_info.result == "success"
    assert task.execution_info.exit_code == 0
    assert task.execution_info.failure_info is None
    node = task.node_info.node_id
    assert client.get_node_file(POOL, node, f"shared/{job}-n") == b"x\nx\nx\n"


def test_job_default_retry_count_applies_to_tasks_without_their_own(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, constraints={"maxTaskRetryCount": 1})
    client.create_tasks(
        job,
        [
            {"id": "inherits", "commandLine": "false"},
            {"id": "own", "commandLine": "false", "constraints": {"maxTaskRetryCount": 0}},
            {"id": "more", "commandLine": "false", "constraints": {"maxTaskRetryCount": 2}},
        ],
    )
    client.wait_for_job(job, timeout=30)
    got = {
        t.id: (t.constraints.max_task_retry_count, t.execution_info.retry_count)
        for t in client.list_tasks(job)
    }
    assert got == {"inherits": (1, 1), "own": (0, 0), "more": (2, 2)}


def test_task_wall_clock_ends_the_task(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job(POOL)
    client.create_task(
        job,
        {
            "id": "slow",
            "commandLine": "sleep 30",
            "constraints": {"maxWallClockTime": "PT1S", "maxTaskRetryCount": 3},
        },
    )
    client.wait_for_job(job, timeout=30)
    task = client.get_task(job, "slow")
    assert task.state == "completed"
    info = task.execution_info
    assert info.exit_code == KILLED_EXIT_CODE == 3221225786
    assert info.result == "failure"
    assert info.failure_info.category == "servererror"
    assert info.failure_info.code == "TaskEnded"
    assert info.retry_count == 0  # a timeout is not an application failure: never retried
    assert task.constraints.max_wall_clock_time.total_seconds() == 1


def test_job_wall_clock_terminates_the_job_and_its_running_tasks(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL, constraints={"maxWallClockTime": "PT2S"})
    client.create_tasks(
        job,
        [
            {"id": "running", "commandLine": gate_command(gate)},
            {"id": "also-running", "commandLine": "sleep 30"},
            {"id": "queued", "commandLine": "true"},  # no slot left for it before the deadline
        ],
    )
    wait_for_task(client, job, "running", "running")
    client.wait_for_job(job, timeout=30)
    got = client.get_job(job)
    assert got.state == "completed"
    assert got.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert got.execution_info.end_time is not None
    for tid in ("running", "also-running"):
        task = client.get_task(job, tid)
        assert task.state == "completed", tid
        assert task.execution_info.result == "failure"
        assert task.execution_info.exit_code == KILLED_EXIT_CODE
        assert task.execution_info.failure_info.code == "TaskEnded"
    queued = client.get_task(job, "queued")
    assert queued.state == "active"
    assert queued.execution_info is None  # it never started
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.active, counts.running, counts.failed) == (1, 0, 2)


def test_job_wall_clock_set_by_update_counts_from_job_creation(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL)
    client.create_task(job, {"id": "running", "commandLine": gate_command(gate)})
    wait_for_task(client, job, "running", "running")
    client.update_job(job, {"constraints": {"maxWallClockTime": "PT1S"}})
    client.wait_for_job(job, timeout=30)
    got = client.get_job(job)
    assert got.state == "completed"
    assert got.execution_info.termination_reason == "MaxWallClockTimeExpiry"
    assert client.get_task(job, "running").execution_info.exit_code == KILLED_EXIT_CODE
