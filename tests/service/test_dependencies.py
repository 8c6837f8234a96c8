"""Job end conditions (onAllTasksComplete, onTaskFailure + exitConditions) and task dependencies.

A dependent task is released only by parents that complete with dependency action ``satisfy``
(success by default, or a failure whose exit options say so); ``block`` keeps it waiting for
ever. "Never runs" is shown without waiting: a *sentinel* task queued behind the dependent in the
same job runs and completes, so the dependent had its turn and did not take it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, BatchInvalidRequestError, BatchJob
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

POOL = "deps"


@pytest.fixture(scope="module", autouse=True)
def pool(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 2, "taskSlotsPerNode": 2}
    )
    wait_for_nodes(client, POOL, 2, timeout=30)


def wait_for_job_state(client: BatchClient, job: str, state: str) -> BatchJob:
    return wait_until(
        lambda: (j := client.get_job(job)).state == state and j,
        timeout=20,
        message=f"job {job} {state}",
    )


def _times(client: BatchClient, job: str, task: str) -> tuple[float, float]:
    info = client.get_task(job, task).execution_info
    assert info is not None and info.start_time and info.end_time, task
    return info.start_time.timestamp(), info.end_time.timestamp()


# -- job end ----------------------------------------------------------------------------------


def test_on_all_tasks_complete_terminatejob(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)  # noaction while tasks are added, as Azure advises
    client.create_tasks(
        job,
        [{"id": f"t{i}", "commandLine": "true"} for i in range(3)]
        + [{"id": "bad", "commandLine": "false"}],
    )
    client.update_job(job, {"onAllTasksComplete": "terminatejob"})
    got = wait_for_job_state(client, job, "completed")
    assert got.execution_info.termination_reason == "AllTasksComplete"
    assert got.all_tasks_complete_mode == "terminatejob"
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.succeeded, counts.failed) == (3, 1)


def test_terminatejob_to_noaction_is_refused_on_an_active_job(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, onAllTasksComplete="terminatejob")
    before = client.get_job(job)
    with pytest.raises(BatchInvalidRequestError) as err:
        client.update_job(job, {"onAllTasksComplete": "noaction"})
    assert err.value.code == "InvalidPropertyValue"
    assert err.value.values["PropertyName"] == "onAllTasksComplete"
    after = client.get_job(job)
    assert after.all_tasks_complete_mode == before.all_tasks_complete_mode
    assert after.etag == before.etag


def test_task_failure_terminates_the_job_with_performexitoptionsjobaction(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, onTaskFailure="performexitoptionsjobaction")
    client.create_task(
        job,
        {
            "id": "boom",
            "commandLine": "/bin/sh -c 'exit 4'",
            "exitConditions": {"default": {"jobAction": "terminate"}},
        },
    )
    got = wait_for_job_state(client, job, "completed")
    assert got.execution_info.termination_reason == "TaskFailed"
    assert client.get_task(job, "boom").execution_info.exit_code == 4


def test_exit_code_job_action_none_keeps_the_job_active(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, onTaskFailure="performexitoptionsjobaction")
    client.create_task(
        job,
        {
            "id": "tolerated",
            "commandLine": "/bin/sh -c 'exit 4'",
            "exitConditions": {
                "exitCodes": [{"code": 4, "exitOptions": {"jobAction": "none"}}],
                "default": {"jobAction": "terminate"},
            },
        },
    )
    client.wait_for_job(job, timeout=30)
    assert client.get_job(job).state == "active"
    assert client.get_task(job, "tolerated").execution_info.result == "failure"


def test_exit_code_job_action_disable_requeues_and_disables(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL, onTaskFailure="performexitoptionsjobaction")
    client.create_tasks(
        job,
        [
            {"id": "long", "commandLine": gate_command(gate)},
            {
                "id": "bad",
                "commandLine": "/bin/sh -c 'exit 4'",
                "exitConditions": {
                    "exitCodes": [{"code": 4, "exitOptions": {"jobAction": "disable"}}]
                },
            },
        ],
    )
    got = wait_for_job_state(client, job, "disabled")
    assert got.execution_info.termination_reason is None
    assert client.get_task(job, "bad").execution_info.result == "failure"
    # "long" was dispatched with "bad" (free slots for both): disabling requeued it.
    long = client.get_task(job, "long")
    assert (long.state, long.execution_info.requeue_count) == ("active", 1)
    client.enable_job(job)
    gate.touch()
    assert wait_for_task(client, job, "long").execution_info.result == "success"


def test_job_action_needs_performexitoptionsjobaction(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)  # onTaskFailure noaction
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_task(
            job,
            {
                "id": "x",
                "commandLine": "true",
                "exitConditions": {"default": {"jobAction": "terminate"}},
            },
        )
    assert err.value.code == "InvalidPropertyValue"
    assert err.value.values["PropertyName"] == "exitConditions"
    assert client.list_tasks(job) == []


def test_failure_without_performexitoptionsjobaction_leaves_the_job_active(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)
    client.create_task(job, {"id": "boom", "commandLine": "false"})
    client.wait_for_job(job, timeout=30)
    assert client.get_job(job).state == "active"


# -- dependencies -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exit_conditions",
    [
        {"exitCodes": [{"code": 5, "exitOptions": {"dependencyAction": "satisfy"}}]},
        {
            "exitCodeRanges": [
                {"start": 1, "end": 9, "exitOptions": {"dependencyAction": "satisfy"}}
            ]
        },
        {"default": {"dependencyAction": "satisfy"}},
    ],
    ids=["exitCodes", "exitCodeRanges", "default"],
)
def test_satisfy_on_failure_lets_the_dependent_run(
    client: BatchClient, make_job: Callable[..., str], exit_conditions: dict
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {
                "id": "parent",
                "commandLine": "/bin/sh -c 'exit 5'",
                "exitConditions": exit_conditions,
            },
            {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["parent"]}},
        ],
    )
    client.wait_for_job(job, timeout=30)
    parent = client.get_task(job, "parent").execution_info
    child = client.get_task(job, "child").execution_info
    assert (parent.result, parent.exit_code) == ("failure", 5)
    assert child.result == "success"
    assert _times(client, job, "child")[0] >= _times(client, job, "parent")[1]


def test_block_on_failure_keeps_the_dependent_waiting(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {"id": "parent", "commandLine": "/bin/sh -c 'exit 5'"},  # default: block
            {
                "id": "blocked-by-range",
                "commandLine": "/bin/sh -c 'exit 6'",
                "exitConditions": {
                    "exitCodeRanges": [
                        {"start": 6, "end": 6, "exitOptions": {"dependencyAction": "block"}}
                    ]
                },
            },
            {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["parent"]}},
            {"id": "child2", "commandLine": "true", "dependsOn": {"taskIds": ["blocked-by-range"]}},
        ],
    )
    wait_for_task(client, job, "parent")
    wait_for_task(client, job, "blocked-by-range")
    client.create_task(job, {"id": "sentinel", "commandLine": "true"})
    wait_for_task(client, job, "sentinel")
    for tid in ("child", "child2"):
        child = client.get_task(job, tid)
        assert child.state == "active", tid
        assert child.execution_info is None, tid
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.active, counts.running, counts.failed, counts.succeeded) == (2, 0, 2, 1)


def test_dependent_of_a_succeeded_task_added_later_runs(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_task(job, {"id": "early", "commandLine": "true"})
    wait_for_task(client, job, "early")
    client.create_task(
        job, {"id": "late", "commandLine": "true", "dependsOn": {"taskIds": ["early"]}}
    )
    assert wait_for_task(client, job, "late").execution_info.result == "success"


def test_task_id_ranges_wait_for_every_task_in_the_range(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {
                "id": "after",
                "commandLine": "true",
                "dependsOn": {"taskIdRanges": [{"start": 1, "end": 5}]},
            },
            *({"id": str(i), "commandLine": f"sleep 0.{i}"} for i in range(1, 6)),
            {"id": "6", "commandLine": "sleep 30"},  # outside the range: not waited for
        ],
    )
    wait_for_task(client, job, "after", timeout=30)
    last_parent_end = max(_times(client, job, str(i))[1] for i in range(1, 6))
    assert _times(client, job, "after")[0] >= last_parent_end
    assert client.get_task(job, "after").execution_info.result == "success"
    assert client.get_task(job, "6").state == "running"
    client.terminate_task(job, "6")


def test_task_ids_chain_runs_in_order(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {"id": "c", "commandLine": "true", "dependsOn": {"taskIds": ["a", "b"]}},
            {"id": "b", "commandLine": "sleep 0.3", "dependsOn": {"taskIds": ["a"]}},
            {"id": "a", "commandLine": "sleep 0.3"},
        ],
    )
    client.wait_for_job(job, timeout=30)
    a, b, c = (_times(client, job, t) for t in "abc")
    assert b[0] >= a[1]
    assert c[0] >= max(a[1], b[1])
    assert {t.execution_info.result for t in client.list_tasks(job)} == {"success"}


def test_leading_zeros_in_range_dependencies(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {"id": "007", "commandLine": "sleep 0.2"},
            {
                "id": "after",
                "commandLine": "true",
                "dependsOn": {"taskIdRanges": [{"start": 7, "end": 7}]},
            },
        ],
    )
    client.wait_for_job(job, timeout=30)
    assert _times(client, job, "after")[0] >= _times(client, job, "007")[1]
