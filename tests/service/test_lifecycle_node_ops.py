"""Node operations mid-task: reboot and reimage with each option, disable/enable scheduling.

A task's runs are counted in a file outside the node (the line is written when the task's work
is done, after its gate opens), so "ran to completion exactly once" is a fact, not an inference.
Each node's boots are counted the same way by the pool's start task.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
)
from prefect_batch.core.completion import WALL_CLOCK_EXIT_CODE
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

from .test_lifecycle_states import state_log_fixture

state_log = state_log_fixture()


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _pool(client: BatchClient, pool: str, boots: Path, nodes: int = 2) -> list[str]:
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": nodes,
            "startTask": {"commandLine": _sh(f"echo $AZ_BATCH_NODE_ID >> {boots}")},
        }
    )
    return [n.id for n in wait_for_nodes(client, pool, nodes, timeout=30)]


def _counting_task(task_id: str, gate: Path, runs: Path, **extra: object) -> dict:
    return {
        "id": task_id,
        "commandLine": gate_command(gate, then=f"echo $AZ_BATCH_NODE_ID >> {runs}"),
        **extra,
    }


def _running_elsewhere(client: BatchClient, job: str, task_id: str, node_id: str):
    def probe():
        t = client.get_task(job, task_id)
        return t if t.state == "running" and t.node_info.node_id != node_id else None

    return wait_until(probe, timeout=30, message=f"{task_id} running on another node")


def _booted_twice(client: BatchClient, pool: str, node_id: str, boots: Path) -> None:
    wait_until(
        lambda: Counter(_lines(boots))[node_id] == 2, timeout=30, message=f"{node_id} booted again"
    )
    wait_until(
        lambda: client.get_node(pool, node_id).state == "idle",
        timeout=30,
        message=f"{node_id} idle again",
    )


# -- reboot ------------------------------------------------------------------------------------


def test_reboot_requeue_runs_the_task_once_on_another_node(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    boots, runs = tmp_path / "boots", tmp_path / "runs"
    pool = "reboot-requeue"
    _pool(client, pool, boots)
    job = make_job(pool, onAllTasksComplete="terminatejob")
    client.create_task(job, _counting_task("t", gate, runs))
    first = wait_for_task(client, job, "t", "running").node_info.node_id
    client.reboot_node(pool, first, {"nodeRebootOption": "requeue"})
    task = _running_elsewhere(client, job, "t", first)
    second = task.node_info.node_id
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    gate.touch()
    task = wait_for_task(client, job, "t")
    assert (task.execution_info.result, task.execution_info.exit_code) == ("success", 0)
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    assert _lines(runs) == [second]  # ran to completion exactly once
    assert [a["nodeId"] for a in client.list_task_attempts(job, "t")] == [first, second]
    wait_until(
        lambda: client.get_job(job).state == "completed", timeout=30, message="job completed"
    )
    _booted_twice(client, pool, first, boots)
    assert Counter(_lines(boots))[second] == 1
    rebooted = client.get_node(pool, first)
    assert (rebooted.total_tasks_run, rebooted.running_tasks_count) == (0, 0)
    assert client.get_node(pool, second).total_tasks_succeeded == 1
    client.delete_pool(pool)


def test_reboot_terminate_ends_the_task_as_failed(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    boots, runs = tmp_path / "boots", tmp_path / "runs"
    pool = "reboot-terminate"
    _pool(client, pool, boots)
    job = make_job(pool)
    client.create_task(job, _counting_task("t", gate, runs))
    first = wait_for_task(client, job, "t", "running").node_info.node_id
    client.reboot_node(pool, first, "terminate")
    task = wait_for_task(client, job, "t")
    info = task.execution_info
    assert (info.result, info.exit_code) == ("failure", WALL_CLOCK_EXIT_CODE)
    assert WALL_CLOCK_EXIT_CODE == 3221225786
    assert info.failure_info is not None and info.failure_info.code == "TaskEnded"
    assert (info.requeue_count or 0, info.retry_count) == (0, 0)
    _booted_twice(client, pool, first, boots)
    gate.touch()
    assert client.wait_for_job(job, timeout=10).task_counts.failed == 1
    assert _lines(runs) == []
    client.delete_pool(pool)


def test_reboot_taskcompletion_waits_for_the_task(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    boots, runs = tmp_path / "boots", tmp_path / "runs"
    pool = "reboot-taskcompletion"
    _pool(client, pool, boots)
    job = make_job(pool)
    client.create_task(job, _counting_task("t", gate, runs))
    first = wait_for_task(client, job, "t", "running").node_info.node_id
    client.reboot_node(pool, first, "taskcompletion")
    # The reboot waits: the node runs its task and takes no further operation meanwhile.
    with pytest.raises(BatchConflictError) as err:
        client.reimage_node(pool, first)
    assert err.value.code == "OperationInvalidForCurrentState"
    node = client.get_node(pool, first)
    assert (node.state, node.running_tasks_count) == ("running", 1)
    assert Counter(_lines(boots))[first] == 1
    gate.touch()
    task = wait_for_task(client, job, "t")
    assert (task.execution_info.result, task.node_info.node_id) == ("success", first)
    assert (task.execution_info.requeue_count or 0) == 0
    assert _lines(runs) == [first]
    _booted_twice(client, pool, first, boots)
    node = client.get_node(pool, first)
    assert node.last_boot_time >= task.execution_info.end_time
    assert (node.total_tasks_run, node.total_tasks_succeeded) == (1, 1)
    client.delete_pool(pool)


def test_reboot_retaineddata_waits_for_the_retention_time(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    boots, runs = tmp_path / "boots", tmp_path / "runs"
    pool = "reboot-retained"
    (node_id,) = _pool(client, pool, boots, nodes=1)
    job = make_job(pool)
    client.create_task(job, _counting_task("t", gate, runs, constraints={"retentionTime": "PT1S"}))
    wait_for_task(client, job, "t", "running")
    client.reboot_node(pool, node_id, "retaineddata")
    gate.touch()
    task = wait_for_task(client, job, "t")
    assert task.execution_info.result == "success"
    assert task.constraints.retention_time == timedelta(seconds=1)
    _booted_twice(client, pool, node_id, boots)
    node = client.get_node(pool, node_id)
    # The node rebooted once its task's files had been kept for their retention time, and they
    # are gone.
    assert node.last_boot_time >= task.execution_info.end_time + timedelta(seconds=1)
    names = {f.name for f in client.list_node_files(pool, node_id, recursive=True)}
    assert f"{job}/t/stdout.txt" not in names
    assert _lines(runs) == [node_id]
    client.delete_pool(pool)


# -- reimage -----------------------------------------------------------------------------------


def test_reimage_wipes_the_node_and_reruns_start_and_preparation(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    boots, runs, preps = tmp_path / "boots", tmp_path / "runs", tmp_path / "preps"
    pool = "reimage"
    (node_id,) = _pool(client, pool, boots, nodes=1)
    job = make_job(
        pool, jobPreparationTask={"commandLine": _sh(f"echo $AZ_BATCH_NODE_ID >> {preps}")}
    )
    client.create_task(
        job, {"id": "mark", "commandLine": _sh("echo x > $AZ_BATCH_NODE_SHARED_DIR/marker")}
    )
    wait_for_task(client, job, "mark")
    assert client.get_node_file(pool, node_id, "shared/marker") == b"x\n"
    client.create_task(job, _counting_task("held", gate, runs))
    wait_for_task(client, job, "held", "running")
    assert _lines(preps) == [node_id]

    client.reimage_node(pool, node_id)  # default option: requeue
    wait_until(
        lambda: Counter(_lines(boots))[node_id] == 2, timeout=30, message="start task ran again"
    )
    names = {f.name for f in client.list_node_files(pool, node_id, recursive=True)}
    assert "shared/marker" not in names
    assert f"{job}/mark/stdout.txt" not in names
    # The requeued task runs again on the fresh node, after the preparation task ran again.
    task = wait_for_task(client, job, "held", "running")
    assert task.execution_info.requeue_count == 1
    assert _lines(preps) == [node_id, node_id]
    gate.touch()
    task = wait_for_task(client, job, "held")
    assert task.execution_info.result == "success"
    assert _lines(runs) == [node_id]
    (status,) = client.list_job_preparation_and_release_task_status(job)
    prep = status.job_preparation_task_execution_info
    assert (status.node_id, prep.state, prep.result, prep.exit_code) == (
        node_id,
        "completed",
        "success",
        0,
    )
    assert prep.start_time >= client.get_node(pool, node_id).last_boot_time
    client.delete_pool(pool)


# -- scheduling --------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["requeue", "terminate", "taskcompletion"])
def test_disable_scheduling_takes_the_node_offline(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path, option: str
) -> None:
    boots, runs = tmp_path / "boots", tmp_path / "runs"
    pool = f"sched-{option}"
    _pool(client, pool, boots)
    job = make_job(pool)
    client.create_task(job, _counting_task("t", gate, runs))
    first = wait_for_task(client, job, "t", "running").node_info.node_id
    (second,) = {n.id for n in client.list_nodes(pool)} - {first}
    client.disable_node_scheduling(pool, first, {"nodeDisableSchedulingOption": option})
    assert client.get_node(pool, first).scheduling_state == "disabled"
    with pytest.raises(BatchConflictError) as err:
        client.disable_node_scheduling(pool, first)
    assert err.value.code == "NodeAlreadyInTargetSchedulingState"

    if option == "requeue":
        task = _running_elsewhere(client, job, "t", first)
        assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
        gate.touch()
        task = wait_for_task(client, job, "t")
        assert (task.execution_info.result, task.node_info.node_id) == ("success", second)
        assert _lines(runs) == [second]
    elif option == "terminate":
        task = wait_for_task(client, job, "t")
        assert (task.execution_info.result, task.execution_info.exit_code) == (
            "failure",
            WALL_CLOCK_EXIT_CODE,
        )
        gate.touch()
    else:
        assert client.get_node(pool, first).state == "running"
        gate.touch()
        task = wait_for_task(client, job, "t")
        assert (task.execution_info.result, task.node_info.node_id) == ("success", first)
        assert _lines(runs) == [first]
    wait_until(
        lambda: client.get_node(pool, first).state == "offline", timeout=30, message="node offline"
    )
    ran_before = client.get_node(pool, first).total_tasks_run

    # No new task lands on the offline node.
    client.create_tasks(job, [{"id": f"q{i}", "commandLine": "true"} for i in range(4)])
    client.wait_for_job(job, timeout=30)
    assert {client.get_task(job, f"q{i}").node_info.node_id for i in range(4)} == {second}
    node = client.get_node(pool, first)
    assert (node.state, node.total_tasks_run) == ("offline", ran_before)

    client.enable_node_scheduling(pool, first)
    with pytest.raises(BatchConflictError) as err:
        client.enable_node_scheduling(pool, first)
    assert err.value.code == "NodeAlreadyInTargetSchedulingState"
    wait_until(
        lambda: client.get_node(pool, first).state == "idle", timeout=30, message="node idle"
    )
    # Two held tasks on two one-slot nodes: one of them runs on the enabled node.
    hold = tmp_path / "hold"
    client.create_tasks(job, [{"id": f"h{i}", "commandLine": gate_command(hold)} for i in range(2)])
    wait_until(
        lambda: len(client.list_tasks(job, state="running")) == 2,
        timeout=30,
        message="both held tasks running",
    )
    assert {t.node_info.node_id for t in client.list_tasks(job, state="running")} == {first, second}
    hold.touch()
    client.wait_for_job(job, timeout=30)
    client.delete_pool(pool)


def test_node_operations_on_unknown_nodes_and_pools(client: BatchClient) -> None:
    client.create_pool({"id": "ops-unknown", "vmSize": "local", "targetDedicatedNodes": 0})
    for call in (
        lambda: client.reboot_node("ops-unknown", "tvm-nope"),
        lambda: client.reimage_node("ops-unknown", "tvm-nope"),
        lambda: client.disable_node_scheduling("ops-unknown", "tvm-nope"),
        lambda: client.enable_node_scheduling("ops-unknown", "tvm-nope"),
    ):
        with pytest.raises(BatchNotFoundError) as err:
            call()
        assert err.value.code == "NodeNotFound"
    with pytest.raises(BatchNotFoundError) as err:
        client.reboot_node("no-such-pool", "tvm-nope")
    assert err.value.code == "PoolNotFound"
    with pytest.raises(BatchInvalidRequestError) as bad:
        client.reboot_node("ops-unknown", "tvm-nope", "sideways")
    assert bad.value.code == "InvalidPropertyValue"
    client.delete_pool("ops-unknown")
