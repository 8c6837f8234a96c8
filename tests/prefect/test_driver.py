"""The job driver flow against a real Prefect test server and real local nodes: task runs per
batch task with their states and logs, the large-job mode, failures, requeues, time-outs,
blocked dependencies, generators, retries and events."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flowtest_helpers import events_named, final_task_runs, logs_of, wait_for

from prefect_batch import BatchClient
from prefect_batch.blocks import BatchPool
from prefect_batch.flows import BatchJobFailedError, BatchJobResult, run_batch_job
from prefect_batch.testing import check_invariants, gate_command, wait_for_task


@pytest.fixture(scope="module")
def pool(batch_client: BatchClient) -> BatchPool:
    """Two local nodes with 8 slots each, shared by the module's tests."""
    block = BatchPool(pool_id="driver", target_dedicated_nodes=2, task_slots_per_node=8)
    block.ensure(batch_client)
    return block


def _state_names(runs: list[Any]) -> Counter[str]:
    return Counter(r.state.name for r in runs)


def _artifacts(prefect_client: Any, flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    found = prefect_client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    )
    return {a.type: a for a in found}


def _rows(table: Any) -> list[dict[str, Any]]:
    data = table.data
    return json.loads(data) if isinstance(data, str) else data


def test_200_tasks_show_200_task_runs_with_states_and_logs(
    batch_client: BatchClient, pool: BatchPool, prefect_client: Any
) -> None:
    commands = [
        f"/bin/sh -c 'echo out {i}; echo err {i} >&2; exit {3 if i in (17, 101) else 0}'"
        for i in range(200)
    ]
    state = run_batch_job(pool=pool, tasks=commands, fail_on_task_failure=False, return_state=True)
    assert state.is_completed(), state.message
    result: BatchJobResult = state.result()
    assert len(result.tasks) == 200
    assert result.succeeded_count == 198
    assert [t.task_id for t in result.failed_tasks] == ["task-17", "task-101"]
    assert result.terminate_reason == "AllTasksComplete"

    flow_run_id = state.state_details.flow_run_id
    runs = final_task_runs(prefect_client, flow_run_id, 200)
    assert len(runs) == 200
    assert sorted(r.name for r in runs) == sorted(f"task-{i}" for i in range(200))
    assert _state_names(runs) == {"Completed": 198, "Failed": 2}
    by_name = {r.name: r for r in runs}
    assert by_name["task-17"].state.name == "Failed"
    assert "exit code 3" in by_name["task-17"].state.message

    ok_logs = "\n".join(logs_of(prefect_client, by_name["task-42"].id, min_count=3))
    assert "exit code 0" in ok_logs and "out 42" in ok_logs and "err 42" in ok_logs
    assert "retries 0, requeues 0" in ok_logs
    bad_logs = "\n".join(logs_of(prefect_client, by_name["task-101"].id, min_count=3))
    assert "exit code 3" in bad_logs and "FailureExitCode" in bad_logs and "err 101" in bad_logs

    table = wait_for(lambda: _artifacts(prefect_client, flow_run_id).get("table"))
    assert [row["task"] for row in _rows(table)] == ["task-17", "task-101"]
    progress = _artifacts(prefect_client, flow_run_id)["progress"]
    assert float(progress.data) == 100.0
    check_invariants(batch_client, result.job_id)


def test_a_failing_task_fails_the_flow_with_a_useful_message(
    pool: BatchPool, prefect_client: Any
) -> None:
    state = run_batch_job(
        pool=pool,
        tasks=["/bin/true", "/bin/sh -c 'echo boom >&2; exit 7'", "/bin/true"],
        job_id="driver-fails",
        return_state=True,
    )
    assert state.is_failed()
    assert "batch job 'driver-fails': 1 of 3 tasks failed" in state.message
    assert "task-1: failure, exit code 7" in state.message
    assert "FailureExitCode" in state.message
    with pytest.raises(BatchJobFailedError) as info:
        state.result()
    assert [t.task_id for t in info.value.result.failed_tasks] == ["task-1"]

    failed = events_named(
        prefect_client, "prefect-batch.task.failed", "prefect-batch.task.driver-fails.task-1"
    )
    assert failed[0].payload["exitCode"] == 7
    assert {r.id for r in failed[0].related} >= {"prefect-batch.job.driver-fails"}
    done = events_named(
        prefect_client, "prefect-batch.job.completed", "prefect-batch.job.driver-fails"
    )
    assert done[0].payload["failed"] == 1 and done[0].payload["succeeded"] == 2


def test_above_the_threshold_only_failed_tasks_get_task_runs(
    batch_client: BatchClient, pool: BatchPool, prefect_client: Any
) -> None:
    commands = [f"/bin/sh -c 'exit {1 if i % 10 == 3 else 0}'" for i in range(40)]
    state = run_batch_job(
        pool=pool,
        tasks=commands,
        task_run_threshold=5,
        fail_on_task_failure=False,
        return_state=True,
    )
    result: BatchJobResult = state.result()
    assert sorted(t.task_id for t in result.failed_tasks) == [
        "task-13",
        "task-23",
        "task-3",
        "task-33",
    ]
    flow_run_id = state.state_details.flow_run_id
    runs = final_task_runs(prefect_client, flow_run_id, 4)
    assert sorted(r.name for r in runs) == ["task-13", "task-23", "task-3", "task-33"]
    assert _state_names(runs) == {"Failed": 4}
    table = wait_for(lambda: _artifacts(prefect_client, flow_run_id).get("table"))
    assert len(_rows(table)) == 4
    assert float(_artifacts(prefect_client, flow_run_id)["progress"].data) == 100.0


def test_a_requeued_task_shows_a_crashed_run_then_a_completed_one(
    batch_client: BatchClient, prefect_client: Any, tmp_path: Path
) -> None:
    pool = BatchPool(pool_id="requeue", target_dedicated_nodes=2, task_slots_per_node=1)
    gate = tmp_path / "gate"
    job_id = "driver-requeue"

    def shrink_then_open() -> None:
        # Both tasks run (one per node): remove a node, so its task is requeued; then let go.
        wait_for(lambda: job_id in {j.id for j in batch_client.list_jobs()}, what="the job")
        for task_id in ("task-0", "task-1"):
            wait_for_task(batch_client, job_id, task_id, "running", timeout=60)
        threading.Event().wait(1.0)  # the flow has seen both running
        batch_client.resize_pool(
            "requeue", {"targetDedicatedNodes": 1, "nodeDeallocationOption": "requeue"}
        )
        wait_for(
            lambda: any(
                (t.execution_info and t.execution_info.requeue_count)
                for t in batch_client.list_tasks(job_id)
            ),
            what="a requeue",
        )
        threading.Event().wait(1.0)  # the flow has seen it
        gate.touch()

    helper = threading.Thread(target=shrink_then_open, daemon=True)
    helper.start()
    state = run_batch_job(
        pool=pool, tasks=[gate_command(gate), gate_command(gate)], job_id=job_id, return_state=True
    )
    helper.join(timeout=60)
    assert state.is_completed(), state.message
    result: BatchJobResult = state.result()
    requeued = [t for t in result.tasks if t.requeue_count == 1]
    assert len(requeued) == 1
    runs = final_task_runs(prefect_client, state.state_details.flow_run_id, 3)
    assert _state_names(runs) == {"Completed": 2, "Crashed": 1}
    crashed = next(r for r in runs if r.state.name == "Crashed")
    assert crashed.name == requeued[0].task_id
    assert "requeued" in crashed.state.message


def test_a_task_over_its_wall_clock_is_timed_out(pool: BatchPool, prefect_client: Any) -> None:
    state = run_batch_job(
        pool=pool,
        tasks=[
            {"id": "slow", "commandLine": "sleep 30", "constraints": {"maxWallClockTime": "PT1S"}}
        ],
        return_state=True,
    )
    assert state.is_failed()
    assert "TaskEnded" in state.message
    runs = final_task_runs(prefect_client, state.state_details.flow_run_id, 1)
    assert runs[0].state.name == "TimedOut"


def test_tasks_blocked_by_a_failed_parent_end_the_flow(
    pool: BatchPool, prefect_client: Any
) -> None:
    state = run_batch_job(
        pool=pool,
        job={"usesTaskDependencies": True},
        tasks=[
            {"id": "parent", "commandLine": "/bin/false"},
            {"id": "child", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["parent"]}},
            {"id": "grandchild", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["child"]}},
        ],
        return_state=True,
    )
    assert state.is_failed()
    assert "2 never completed" in state.message
    runs = final_task_runs(prefect_client, state.state_details.flow_run_id, 3)
    states = {r.name: r.state for r in runs}
    assert states["parent"].name == "Failed"
    assert states["child"].name == "Cancelled"
    assert "depends on failed" in states["grandchild"].message


def test_a_generator_of_task_specs_is_streamed_not_recorded(
    pool: BatchPool, prefect_client: Any
) -> None:
    def specs() -> Any:
        for i in range(30):
            yield {"commandLine": f"/bin/sh -c 'echo {i}'", "displayName": f"item {i}"}

    state = run_batch_job(pool=pool, tasks=specs(), return_state=True)
    assert state.is_completed(), state.message
    assert len(state.result().tasks) == 30
    flow_run = prefect_client.read_flow_run(state.state_details.flow_run_id)
    assert flow_run.parameters["tasks"] == "<generator>"
    assert len(final_task_runs(prefect_client, flow_run.id, 30)) == 30


def test_a_retried_driver_reruns_only_the_failed_tasks(
    batch_client: BatchClient, pool: BatchPool, prefect_client: Any, tmp_path: Path
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    flaky = (  # fails on its first run only
        f"/bin/sh -c 'echo x >> {marks}/$AZ_BATCH_TASK_ID; "
        f"[ $(wc -l < {marks}/$AZ_BATCH_TASK_ID) -ge 2 ]'"
    )
    steady = f"/bin/sh -c 'echo x >> {marks}/$AZ_BATCH_TASK_ID'"
    state = run_batch_job.with_options(retries=1)(
        pool=pool, tasks=[steady, flaky, steady], return_state=True
    )
    assert state.is_completed(), state.message
    result: BatchJobResult = state.result()
    assert result.succeeded and result.terminate_reason == "AllTasksComplete"
    runs_per_task = {p.name: len(p.read_text().splitlines()) for p in marks.iterdir()}
    assert runs_per_task == {"task-0": 1, "task-1": 2, "task-2": 1}
    runs = final_task_runs(prefect_client, state.state_details.flow_run_id, 4)
    assert sorted((r.name, r.state.name) for r in runs) == [
        ("task-0", "Completed"),
        ("task-1", "Completed"),
        ("task-1", "Failed"),
        ("task-2", "Completed"),
    ]
    check_invariants(batch_client, result.job_id)


def test_driver_uses_the_pool_block_by_name_and_its_account(tmp_path: Path) -> None:
    from prefect_batch.blocks import BatchAccount

    account = BatchAccount(home=str(tmp_path / "own-home"))
    BatchPool(pool_id="named", target_dedicated_nodes=1, account=account).save(
        "driver-named-pool", overwrite=True
    )
    result = run_batch_job(pool="driver-named-pool", tasks=["/bin/true"])
    assert result.succeeded
    with account.get_client(engine=False) as own:
        assert own.get_job(result.job_id).pool_info.pool_id == "named"


def test_a_pool_whose_nodes_fail_their_start_task_emits_node_events(
    batch_client: BatchClient, prefect_client: Any
) -> None:
    broken = BatchPool(
        pool_id="broken-start",
        target_dedicated_nodes=1,
        start_task={"commandLine": "/bin/sh -c 'exit 3'", "waitForSuccess": True},
    )
    state = run_batch_job(
        pool=broken,
        tasks=["/bin/true"],
        job_id="driver-broken-pool",
        max_wall_clock_seconds=4,
        return_state=True,
    )
    assert state.is_failed()
    assert "MaxWallClockTimeExpiry" in state.message and "1 never completed" in state.message
    runs = final_task_runs(prefect_client, state.state_details.flow_run_id, 1)
    assert runs[0].state.name == "Cancelled" and "never ran" in runs[0].state.message
    node = batch_client.list_nodes("broken-start")[0]
    assert node.state == "starttaskfailed"
    events = events_named(
        prefect_client,
        "prefect-batch.node.starttaskfailed",
        f"prefect-batch.node.broken-start.{node.id}",
    )
    assert "prefect-batch.pool.broken-start" in {r.id for r in events[0].related}
