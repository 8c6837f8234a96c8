"""Job managers as parent flows: retries resume the job without duplicating tasks, tasks added
from earlier results, the job ended on return (killJobOnCompletion), time-outs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowtest_helpers import final_task_runs

from prefect_batch import BatchClient
from prefect_batch.blocks import BatchPool
from prefect_batch.flows import BatchJobHandle, batch_job_manager
from prefect_batch.testing import check_invariants


@pytest.fixture(scope="module")
def pool(batch_client: BatchClient) -> BatchPool:
    block = BatchPool(pool_id="manager", target_dedicated_nodes=2, task_slots_per_node=4)
    block.ensure(batch_client)
    return block


def _append(log: Path) -> str:
    """A task that appends its id to ``log`` (so each run of it leaves a line)."""
    return f"/bin/sh -c 'echo $AZ_BATCH_TASK_ID >> {log}'"


def test_a_crashed_manager_retries_and_completes_without_duplicates(
    batch_client: BatchClient, pool: BatchPool, prefect_client: Any, tmp_path: Path
) -> None:
    log = tmp_path / "runs.txt"
    attempts: list[int] = []

    @batch_job_manager(pool=pool, retries=2)
    def fan_out(job: BatchJobHandle, width: int) -> int:
        attempts.append(job.attempt)
        job.add_tasks([_append(log) for _ in range(width)])
        first = job.wait()
        if job.attempt == 1:
            raise RuntimeError("the manager crashed after its first wave")
        job.add_tasks([{"id": "summary", "commandLine": _append(log)}])
        job.wait(["summary"])
        return sum(r.succeeded for r in first)

    state = fan_out(width=6, return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == 6
    assert attempts == [1, 2]

    flow_run = prefect_client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.run_count == 2
    job_id = f"fan-out-{flow_run.id.hex[:12]}"
    job = batch_client.get_job(job_id)
    assert job.state == "completed"
    assert job.execution_info is not None and job.execution_info.termination_reason == "JMComplete"
    tasks = batch_client.list_tasks(job_id)
    assert sorted(t.id for t in tasks) == sorted([f"task-{i}" for i in range(6)] + ["summary"])
    lines = log.read_text().split()
    assert sorted(lines) == sorted(t.id for t in tasks), "a task ran twice"
    runs = final_task_runs(prefect_client, flow_run.id, 7)
    assert len(runs) == 7 and all(r.state.name == "Completed" for r in runs)
    check_invariants(batch_client, job_id)


def test_tasks_added_from_earlier_results(batch_client: BatchClient, pool: BatchPool) -> None:
    @batch_job_manager(pool=pool, job_id="manager-{flow_name}-{flow_run_id}")
    def two_stages(job: BatchJobHandle) -> str:
        job.add_tasks(
            [{"id": f"count-{n}", "commandLine": f"/bin/sh -c 'echo {n * n}'"} for n in range(1, 4)]
        )
        total = sum(int(job.read_file(r.task_id).strip()) for r in job.wait())
        job.add_task({"id": "total", "commandLine": f"/bin/echo {total}"})
        job.wait(["total"])
        return job.read_file("total").strip()

    state = two_stages(return_state=True)
    assert state.result() == "14"
    flow_run_id = state.state_details.flow_run_id
    job_id = f"manager-two-stages-{flow_run_id.hex[:12]}"
    assert batch_client.get_job(job_id).state == "completed"


def test_a_failed_task_is_rerun_by_the_retry(
    batch_client: BatchClient, pool: BatchPool, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    flaky = (
        f"/bin/sh -c 'echo x >> {marks}/$AZ_BATCH_TASK_ID; "
        f"[ $(wc -l < {marks}/$AZ_BATCH_TASK_ID) -ge 2 ]'"
    )

    @batch_job_manager(pool=pool, retries=1)
    def flaky_manager(job: BatchJobHandle) -> list[str]:
        job.add_tasks([flaky, "/bin/true"])
        return [r.result or "" for r in job.wait()]

    state = flaky_manager(return_state=True)
    assert state.is_completed(), state.message
    assert state.result() == ["success", "success"]
    assert (marks / "task-0").read_text().count("x") == 2


def test_the_last_failed_attempt_fails_the_flow_and_ends_the_job(
    batch_client: BatchClient, pool: BatchPool
) -> None:
    @batch_job_manager(pool=pool, job_id="manager-fails")
    def failing(job: BatchJobHandle) -> None:
        job.add_tasks(["/bin/sh -c 'exit 4'"])

    state = failing(return_state=True)
    assert state.is_failed()
    assert "task-0: failure, exit code 4" in state.message
    job = batch_client.get_job("manager-fails")
    assert job.state == "completed"


def test_the_wall_clock_times_the_manager_out_and_ends_the_job(
    batch_client: BatchClient, pool: BatchPool
) -> None:
    @batch_job_manager(pool=pool, job_id="manager-slow", max_wall_clock=2)
    def slow(job: BatchJobHandle) -> None:
        job.add_tasks(["sleep 60"])
        job.wait()

    state = slow(return_state=True)
    assert state.is_failed()
    job = batch_client.get_job("manager-slow")
    assert job.state == "completed"
    assert job.constraints is not None and job.constraints.max_wall_clock_time is not None
    task = batch_client.get_task("manager-slow", "task-0")
    assert task.state == "completed" and task.execution_info.result == "failure"


def test_a_manager_is_a_flow_with_the_functions_parameters() -> None:
    @batch_job_manager(retries=3, max_wall_clock=60)
    def sized(job: BatchJobHandle, frames: int, quality: str = "high") -> None: ...

    assert sized.retries == 3 and sized.timeout_seconds == 60
    assert sized.name == "sized"
    assert set(sized.parameters.properties) == {"frames", "quality"}
    assert sized.parameters.required == ["frames"]
