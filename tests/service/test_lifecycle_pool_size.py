"""Pool size: remove named nodes with each deallocation option, resize up and down, stop a resize.

Removing nodes lowers the pool's target at once and leaves the pool ``resizing`` until they are
gone; what happens to their running tasks is the option's business (requeue, terminate, let
them finish, or also wait out their files' retention).
"""

from __future__ import annotations

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

from .test_lifecycle_states import StateLog, state_log_fixture

state_log = state_log_fixture()


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _pool(client: BatchClient, pool: str, nodes: int) -> list[str]:
    client.create_pool({"id": pool, "vmSize": "local", "targetDedicatedNodes": nodes})
    return [n.id for n in wait_for_nodes(client, pool, nodes, timeout=30)]


def _node_ids(client: BatchClient, pool: str) -> set[str]:
    return {n.id for n in client.list_nodes(pool)}


def _counting_task(task_id: str, gate: Path, runs: Path, **extra: object) -> dict:
    return {
        "id": task_id,
        "commandLine": gate_command(gate, then=f"echo $AZ_BATCH_NODE_ID >> {runs}"),
        **extra,
    }


# -- remove nodes ------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["requeue", "terminate", "taskcompletion", "retaineddata"])
def test_remove_a_busy_node(
    client: BatchClient,
    state_log: StateLog,
    make_job: Callable[..., str],
    gate: Path,
    tmp_path: Path,
    option: str,
) -> None:
    runs = tmp_path / "runs"
    pool = f"remove-{option}"
    _pool(client, pool, 2)
    job = make_job(pool)
    client.create_task(job, _counting_task("t", gate, runs, constraints={"retentionTime": "PT1S"}))
    victim = wait_for_task(client, job, "t", "running").node_info.node_id
    (keeper,) = _node_ids(client, pool) - {victim}
    client.remove_nodes(pool, {"nodeList": [victim], "nodeDeallocationOption": option})
    after = client.get_pool(pool)
    assert after.target_dedicated_nodes == 1
    assert after.current_dedicated_nodes == 1  # the leaving node no longer counts

    if option == "requeue":

        def moved():
            t = client.get_task(job, "t")
            return t if t.state == "running" and t.node_info.node_id == keeper else None

        task = wait_until(moved, timeout=30, message="task requeued to the other node")
        assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
        gate.touch()
        task = wait_for_task(client, job, "t")
        assert (task.execution_info.result, task.node_info.node_id) == ("success", keeper)
        assert _lines(runs) == [keeper]
    elif option == "terminate":
        task = wait_for_task(client, job, "t")
        info = task.execution_info
        assert (info.result, info.exit_code) == ("failure", WALL_CLOCK_EXIT_CODE)
        assert (info.requeue_count or 0) == 0
        gate.touch()
        assert _lines(runs) == []
    else:
        # The node stays, running its task, and the pool stays resizing: a second removal or a
        # resize has to wait.
        assert victim in _node_ids(client, pool)
        assert client.get_pool(pool).allocation_state == "resizing"
        with pytest.raises(BatchConflictError) as err:
            client.remove_nodes(pool, {"nodeList": [keeper]})
        assert err.value.code == "PoolBeingResized"
        with pytest.raises(BatchConflictError) as err:
            client.resize_pool(pool, {"targetDedicatedNodes": 3})
        assert err.value.code == "PoolBeingResized"
        assert client.get_task(job, "t").state == "running"
        gate.touch()
        task = wait_for_task(client, job, "t")
        assert task.execution_info.result == "success"
        # (nodeInfo is gone with the node: see test_node_info_outlives_the_node.)
        assert [a["nodeId"] for a in client.list_task_attempts(job, "t")] == [victim]
        assert (task.execution_info.requeue_count or 0) == 0
        assert _lines(runs) == [victim]
    nodes = wait_for_nodes(client, pool, 1, states=("idle", "running"), timeout=30)
    assert [n.id for n in nodes] == [keeper]
    assert state_log.node_states(victim)[-1] == "leavingpool"
    if option == "retaineddata":
        # Removed only after the task's files had been kept for their retention time.
        assert client.get_pool(pool).allocation_state_transition_time >= (
            task.execution_info.end_time + timedelta(seconds=1)
        )
    client.wait_for_job(job, timeout=30)
    assert client.get_pool(pool).target_dedicated_nodes == 1
    client.delete_pool(pool)


def test_remove_nodes_checks_its_request(client: BatchClient) -> None:
    pool = "remove-checks"
    (node,) = _pool(client, pool, 1)
    with pytest.raises(BatchNotFoundError) as err:
        client.remove_nodes(pool, {"nodeList": ["tvm-nope"]})
    assert err.value.code == "NodeNotFound"
    with pytest.raises(BatchInvalidRequestError) as bad:
        client.remove_nodes(pool, {"nodeList": [node] + [f"n{i}" for i in range(100)]})
    assert bad.value.code == "InvalidPropertyValue"
    assert bad.value.values["PropertyName"] == "nodeList"
    with pytest.raises(BatchInvalidRequestError) as bad:
        client.remove_nodes(pool, {"nodeList": []})
    assert bad.value.code == "InvalidPropertyValue"
    with pytest.raises(BatchNotFoundError) as err:
        client.remove_nodes("no-such-pool", {"nodeList": [node]})
    assert err.value.code == "PoolNotFound"
    # Nothing changed.
    assert (client.get_pool(pool).target_dedicated_nodes, _node_ids(client, pool)) == (1, {node})
    # Twice the same id removes it once.
    client.remove_nodes(pool, {"nodeList": [node, node]})
    wait_for_nodes(client, pool, 0, timeout=30)
    assert client.get_pool(pool).target_dedicated_nodes == 0
    client.delete_pool(pool)


# -- resize ------------------------------------------------------------------------------------


def test_resize_up_then_down_waiting_for_tasks(
    client: BatchClient,
    state_log: StateLog,
    make_job: Callable[..., str],
    gate: Path,
    tmp_path: Path,
) -> None:
    runs = tmp_path / "runs"
    pool = "resize"
    (first,) = _pool(client, pool, 1)
    client.resize_pool(pool, {"targetDedicatedNodes": 3})
    nodes = wait_for_nodes(client, pool, 3, timeout=30)
    assert first in {n.id for n in nodes}
    assert state_log.allocation_states(pool) == ["resizing", "steady", "resizing", "steady"]
    assert client.get_pool(pool).current_dedicated_nodes == 3

    job = make_job(pool)
    client.create_task(job, _counting_task("t", gate, runs))
    busy = wait_for_task(client, job, "t", "running").node_info.node_id
    client.resize_pool(
        pool, {"targetDedicatedNodes": 0, "nodeDeallocationOption": "taskcompletion"}
    )
    # The idle nodes go first; the busy one stays until its task is done.
    wait_until(lambda: _node_ids(client, pool) == {busy}, timeout=30, message="idle nodes gone")
    pool_now = client.get_pool(pool)
    assert (pool_now.allocation_state, pool_now.target_dedicated_nodes) == ("resizing", 0)
    assert client.get_task(job, "t").state == "running"
    gate.touch()
    task = wait_for_task(client, job, "t")
    assert task.execution_info.result == "success"
    assert [a["nodeId"] for a in client.list_task_attempts(job, "t")] == [busy]
    assert (task.execution_info.requeue_count or 0) == 0
    wait_for_nodes(client, pool, 0, timeout=30)
    assert _lines(runs) == [busy]
    left = [n for n in {n.id for n in nodes} if state_log.node_states(n)[-1:] == ["leavingpool"]]
    assert len(left) == 3
    client.delete_pool(pool)


def test_stop_resize_keeps_the_nodes_the_pool_has(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "stop-resize"
    _pool(client, pool, 2)
    job = make_job(pool)
    client.create_task(job, {"id": "t", "commandLine": gate_command(gate)})
    busy = wait_for_task(client, job, "t", "running").node_info.node_id
    client.resize_pool(
        pool, {"targetDedicatedNodes": 0, "nodeDeallocationOption": "taskcompletion"}
    )
    wait_until(lambda: _node_ids(client, pool) == {busy}, timeout=30, message="idle node gone")
    with pytest.raises(BatchConflictError) as err:
        client.resize_pool(pool, {"targetDedicatedNodes": 2})
    assert err.value.code == "PoolBeingResized"
    client.stop_pool_resize(pool)
    stopped = client.get_pool(pool)
    assert stopped.allocation_state == "steady"
    assert stopped.target_dedicated_nodes == stopped.current_dedicated_nodes
    # A resize is accepted again.
    gate.touch()
    wait_for_task(client, job, "t")
    client.resize_pool(pool, {"targetDedicatedNodes": 1})
    (node,) = wait_for_nodes(client, pool, 1, timeout=30)
    assert client.get_pool(pool).target_dedicated_nodes == 1
    client.delete_pool(pool)


def test_resize_of_a_pool_being_deleted(client_factory: Callable[..., BatchClient]) -> None:
    # One client drives the pool (its engine leases it, re-reading pools rarely); another,
    # without engine, deletes it: the pool is "deleting" until the engine gets to it.
    driver = client_factory(lease_seconds=120)
    other = client_factory(engine=False)
    driver.create_pool({"id": "doomed", "vmSize": "local", "targetDedicatedNodes": 1})
    wait_for_nodes(driver, "doomed", 1, timeout=30)
    other.delete_pool("doomed")
    assert other.get_pool("doomed").state == "deleting"
    for call in (
        lambda: other.resize_pool("doomed", {"targetDedicatedNodes": 2}),
        lambda: other.stop_pool_resize("doomed"),
        lambda: other.delete_pool("doomed"),
    ):
        with pytest.raises(BatchConflictError) as err:
            call()
        assert err.value.code == "PoolBeingDeleted"
    assert other.get_pool("doomed").target_dedicated_nodes == 0
    # Any request to the driving client wakes its engine, which finishes the deletion.
    driver.create_pool({"id": "poke", "vmSize": "local", "targetDedicatedNodes": 0})
    wait_until(lambda: not other.pool_exists("doomed"), timeout=30, message="pool deleted")


def test_a_job_managers_node_is_removed_last(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    # Two-slot nodes: the manager (run exclusive) holds one node with 1 task, two tasks each
    # hold the others. Fewest tasks first would pick the manager's node; it must go last.
    pool = "jm-shrink"
    client.create_pool(
        {"id": pool, "vmSize": "local", "targetDedicatedNodes": 3, "taskSlotsPerNode": 2}
    )
    wait_for_nodes(client, pool, 3, timeout=30)
    job = make_job(pool, jobManagerTask={"id": "manager", "commandLine": gate_command(gate)})
    manager_node = wait_for_task(client, job, "manager", "running").node_info.node_id
    client.create_tasks(job, [{"id": f"w{i}", "commandLine": gate_command(gate)} for i in range(4)])
    wait_until(
        lambda: len(client.list_tasks(job, state="running")) == 5,
        timeout=30,
        message="manager and 4 tasks running",
    )
    counts = {n.id: n.running_tasks_count for n in client.list_nodes(pool)}
    assert counts.pop(manager_node) == 1
    assert list(counts.values()) == [2, 2]
    client.resize_pool(pool, {"targetDedicatedNodes": 1})
    wait_for_nodes(client, pool, 1, states=("running",), timeout=30)
    assert _node_ids(client, pool) == {manager_node}
    task = client.get_task(job, "manager")
    assert (task.state, task.node_info.node_id) == ("running", manager_node)
    assert (task.execution_info.requeue_count or 0) == 0
    # The workers were requeued; the manager's node has no room for them.
    assert {
        t.execution_info.requeue_count for t in client.list_tasks(job) if t.id != "manager"
    } == {1}
    gate.touch()
    wait_until(
        lambda: client.get_job(job).state == "completed",
        timeout=30,
        message="job completed by its manager",
    )
    assert client.get_job(job).execution_info.termination_reason == "JMComplete"
    client.delete_pool(pool)


def test_a_resize_that_times_out_reports_it(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "resize-timeout"
    (node,) = _pool(client, pool, 1)
    job = make_job(pool)
    client.create_task(job, {"id": "t", "commandLine": gate_command(gate)})
    wait_for_task(client, job, "t", "running")
    client.resize_pool(
        pool,
        {
            "targetDedicatedNodes": 0,
            "resizeTimeout": "PT0.5S",
            "nodeDeallocationOption": "taskcompletion",
        },
    )
    wait_until(
        lambda: client.get_pool(pool).allocation_state == "steady",
        timeout=30,
        message="resize timed out",
    )
    timed_out = client.get_pool(pool)
    assert [e.code for e in timed_out.resize_errors] == ["AllocationTimedOut"]
    assert timed_out.resize_timeout == timedelta(seconds=0.5)
    assert client.get_task(job, "t").state == "running"
    gate.touch()
    wait_for_task(client, job, "t")
    # The next resize clears the errors.
    client.resize_pool(pool, {"targetDedicatedNodes": 1})
    wait_for_nodes(client, pool, 1, timeout=30)
    assert client.get_pool(pool).resize_errors is None
    client.delete_pool(pool)


def test_pool_flags_and_delete_removes_the_nodes_files(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    pool = "flags"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "enableInterNodeCommunication": True,
        }
    )
    assert client.get_pool(pool).enable_inter_node_communication is True
    wait_for_nodes(client, pool, 1, timeout=30)
    job = make_job(pool)
    client.create_task(
        job, {"id": "root", "commandLine": "/bin/sh -c 'echo $AZ_BATCH_NODE_ROOT_DIR'"}
    )
    wait_for_task(client, job, "root")
    root = Path(client.get_task_file(job, "root", "stdout.txt").decode().strip())
    assert (root / job / "root" / "stdout.txt").exists()
    client.delete_pool(pool)
    # The pool row goes first, then the directories (in the same engine step).
    wait_until(
        lambda: not client.pool_exists(pool) and not root.exists(),
        timeout=30,
        message="pool and node directories deleted",
    )


def test_node_info_outlives_the_node(client: BatchClient, make_job: Callable[..., str]) -> None:
    pool = "node-info"
    (node,) = _pool(client, pool, 1)
    job = make_job(pool)
    client.create_task(job, {"id": "t", "commandLine": "true"})
    assert wait_for_task(client, job, "t").node_info.node_id == node
    client.remove_nodes(pool, {"nodeList": [node]})
    wait_for_nodes(client, pool, 0, timeout=30)
    try:
        task = client.get_task(job, "t")
        assert task.node_info is not None and task.node_info.node_id == node
    finally:
        client.delete_pool(pool)
