"""The pool's start task: where it runs, what it sees, and what a node may do around it.

It runs in ``<root>/startup`` each time a node joins or reboots. With ``waitForSuccess`` (the
default) the node is ``waitingforstarttask`` and takes no task until it exits 0; after its
retries fail the node is ``starttaskfailed`` and takes no task, while the pool's other nodes run
the job. Without ``waitForSuccess`` tasks run whatever it does. A changed start task applies to
nodes that join or reboot afterwards.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prefect_batch import BatchClient
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

from .test_lifecycle_states import state_log_fixture

state_log = state_log_fixture()


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def test_start_task_runs_in_startup_and_gates_the_node(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    gate = tmp_path / "start-gate"
    pool = "st-wait"
    report = (
        "echo FOO=$FOO; echo WD=$AZ_BATCH_TASK_WORKING_DIR; echo PWD=$(pwd); "
        "echo ROOT=$AZ_BATCH_NODE_ROOT_DIR; echo NODE=$AZ_BATCH_NODE_ID; "
        "echo POOL=$AZ_BATCH_POOL_ID; echo SHARED=$AZ_BATCH_NODE_SHARED_DIR; "
        "echo STARTUP=$AZ_BATCH_NODE_STARTUP_DIR; "
        "echo DEDICATED=$AZ_BATCH_NODE_IS_DEDICATED; "
        "echo JOBID=${AZ_BATCH_JOB_ID-unset}; echo TASKID=${AZ_BATCH_TASK_ID-unset}"
    )
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {
                "commandLine": gate_command(gate, then=report),
                "environmentSettings": [{"name": "FOO", "value": "bar baz"}],
            },
        }
    )
    (node,) = wait_for_nodes(client, pool, 1, states=("waitingforstarttask",), timeout=30)
    assert node.start_task_info is not None and node.start_task_info.state == "running"
    job = make_job(pool)
    client.create_task(job, {"id": "t", "commandLine": "true"})
    # A witness on another pool runs after our task was queued: the engine has dispatched since,
    # and still placed nothing on the waiting node.
    client.create_pool({"id": "st-witness", "vmSize": "local", "targetDedicatedNodes": 1})
    wait_for_nodes(client, "st-witness", 1, timeout=30)
    witness = make_job("st-witness")
    client.create_task(witness, {"id": "w", "commandLine": "true"})
    wait_for_task(client, witness, "w")
    assert client.get_task(job, "t").state == "active"
    node = client.get_node(pool, node.id)
    assert (node.state, node.running_tasks_count, node.total_tasks_run) == (
        "waitingforstarttask",
        0,
        0,
    )

    gate.touch()
    wait_for_task(client, job, "t")
    node = client.get_node(pool, node.id)
    info = node.start_task_info
    assert info is not None
    assert (info.state, info.exit_code, info.result, info.retry_count) == (
        "completed",
        0,
        "success",
        0,
    )
    assert info.start_time is not None and info.end_time is not None
    assert client.get_task(job, "t").execution_info.start_time >= info.end_time

    out = dict(
        line.split("=", 1)
        for line in client.get_node_file(pool, node.id, "startup/stdout.txt").decode().split("\n")
        if "=" in line
    )
    root = out["ROOT"]
    assert out["FOO"] == "bar baz"
    assert out["WD"] == out["PWD"] == f"{root}/startup/wd"
    assert out["STARTUP"] == f"{root}/startup"
    assert out["SHARED"] == f"{root}/shared"
    assert (out["NODE"], out["POOL"], out["DEDICATED"]) == (node.id, pool, "true")
    assert (out["JOBID"], out["TASKID"]) == ("unset", "unset")  # not for the start task
    names = {f.name for f in client.list_node_files(pool, node.id, recursive=True)}
    assert {"startup/stdout.txt", "startup/stderr.txt", "startup/wd"} <= names
    client.delete_pool("st-witness")
    client.delete_pool(pool)


def test_failed_start_task_makes_its_node_unusable_while_the_other_runs_the_job(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    # The first node to get here claims the lock and fails every try; the other succeeds.
    lock, tries = tmp_path / "lock", tmp_path / "tries"
    script = (
        f"echo $AZ_BATCH_NODE_ID >> {tries}; "
        f"if mkdir {lock} 2>/dev/null; then echo $AZ_BATCH_NODE_ID > {lock}/owner; fi; "
        f'[ "$(cat {lock}/owner 2>/dev/null)" != "$AZ_BATCH_NODE_ID" ] || exit 3'
    )
    pool = "st-fail"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 2,
            "startTask": {"commandLine": _sh(script), "maxTaskRetryCount": 1},
        }
    )
    nodes = wait_for_nodes(client, pool, 2, states=("idle", "starttaskfailed"), timeout=30)
    by_state = {n.state: n for n in nodes}
    assert set(by_state) == {"idle", "starttaskfailed"}
    bad, good = by_state["starttaskfailed"], by_state["idle"]
    assert (lock / "owner").read_text().strip() == bad.id
    info = bad.start_task_info
    assert info is not None
    assert (info.state, info.result, info.exit_code, info.retry_count) == (
        "completed",
        "failure",
        3,
        1,
    )
    assert info.failure_info is not None and info.last_retry_time is not None
    assert Counter(_lines(tries)) == {bad.id: 2, good.id: 1}

    job = make_job(pool)
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": "true"} for i in range(6)])
    counts = client.wait_for_job(job, timeout=30)
    assert counts.task_counts.succeeded == 6
    assert {t.node_info.node_id for t in client.list_tasks(job)} == {good.id}
    bad = client.get_node(pool, bad.id)
    assert (bad.state, bad.total_tasks_run) == ("starttaskfailed", 0)
    # The node cannot take a scheduling change in that state, but it can be rebooted: then
    # its start task runs again (and fails again, this lock being its own).
    client.reboot_node(pool, bad.id)
    wait_until(
        lambda: Counter(_lines(tries))[bad.id] == 4,
        timeout=30,
        message="start task retried after reboot",
    )
    wait_for_nodes(client, pool, 2, states=("idle", "starttaskfailed"), timeout=30)
    assert client.get_node(pool, bad.id).state == "starttaskfailed"
    client.delete_pool(pool)


def test_without_wait_for_success_tasks_run_although_it_failed(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    pool = "st-nowait"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": _sh("exit 5"), "waitForSuccess": False},
        }
    )
    (node,) = wait_for_nodes(client, pool, 1, timeout=30)

    def start_task_done():
        info = client.get_node(pool, node.id).start_task_info
        return info if info is not None and info.state == "completed" else None

    info = wait_until(start_task_done, timeout=30, message="start task completed")
    assert (info.result, info.exit_code) == ("failure", 5)
    job = make_job(pool)
    client.create_task(job, {"id": "t", "commandLine": "true"})
    task = wait_for_task(client, job, "t")
    assert task.execution_info.result == "success"
    assert task.node_info.node_id == node.id
    assert client.get_node(pool, node.id).state == "idle"
    client.delete_pool(pool)


def test_a_changed_start_task_applies_after_reboot(client: BatchClient, tmp_path: Path) -> None:
    log = tmp_path / "versions"
    pool = "st-update"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": _sh(f"echo v1 >> {log}")},
        }
    )
    (node,) = wait_for_nodes(client, pool, 1, timeout=30)
    assert _lines(log) == ["v1"]
    client.update_pool(pool, {"startTask": {"commandLine": _sh(f"echo v2 >> {log}")}})
    assert client.get_pool(pool).start_task.command_line.endswith(f"echo v2 >> {log}'")
    assert _lines(log) == ["v1"]  # a running node keeps what it ran
    client.reboot_node(pool, node.id)
    wait_until(lambda: _lines(log) == ["v1", "v2"], timeout=30, message="v2 after reboot")
    (node,) = wait_for_nodes(client, pool, 1, timeout=30)
    client.delete_pool(pool)


def test_an_empty_start_task_in_a_patch_removes_it(client: BatchClient, tmp_path: Path) -> None:
    log = tmp_path / "runs"
    pool = "st-remove"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": _sh(f"echo ran >> {log}")},
        }
    )
    try:
        (node,) = wait_for_nodes(client, pool, 1, timeout=30)
        client.update_pool(pool, {"startTask": {}})
        assert client.get_pool(pool).start_task is None
        client.reboot_node(pool, node.id)
        wait_until(
            lambda: client.get_node(pool, node.id).last_boot_time > node.last_boot_time,
            timeout=30,
            message="rebooted",
        )
        wait_for_nodes(client, pool, 1, timeout=30)
        assert _lines(log) == ["ran"]
    finally:
        client.delete_pool(pool)


def test_a_start_task_failure_survives_an_engine_restart(
    client_factory: Callable[..., BatchClient],
) -> None:
    from .test_lifecycle_states import StateLog

    first = client_factory()
    first.create_pool(
        {
            "id": "p",
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": _sh("exit 2")},
        }
    )
    (node,) = wait_for_nodes(first, "p", 1, states=("starttaskfailed",), timeout=30)
    first.close()
    second = client_factory()
    log = StateLog(second)
    try:
        # Until the node settles, or the engine refuses the edge it needs.
        wait_until(
            lambda: (
                log.illegal() or second.get_node("p", node.id).state not in ("unknown", "starting")
            ),
            timeout=30,
            message="node back",
        )
        restarted = second.get_node("p", node.id)
        assert restarted.state == "starttaskfailed"
        assert restarted.start_task_info.exit_code == 2
        log.assert_legal()
    finally:
        log.close()
