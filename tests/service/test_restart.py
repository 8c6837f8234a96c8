"""Durability: the service's state is in its database, so a new client carries on.

Closing a client stops its engine; node agents drain (finish their running tasks and record the
results on the node). A new client on the same home attaches to the same nodes, recovers those
results and runs what is left: every task completes, and none runs twice unless it was requeued.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from prefect_batch import BatchClient
from prefect_batch.testing import (
    check_invariants,
    wait_for_nodes,
    wait_until,
)

N_TASKS = 30


def _appending_task(i: int, out: Path) -> dict:
    # The line is written when the work is done, so a task that ran to the end twice shows twice.
    return {
        "id": f"t{i:02d}",
        "commandLine": f"/bin/sh -c 'sleep 0.2; echo $AZ_BATCH_TASK_ID >> {out}'",
    }


def test_a_new_client_finishes_the_job_exactly_once(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    out = tmp_path / "ran.txt"
    first = client_factory()
    first.create_pool(
        {"id": "p", "vmSize": "local", "targetDedicatedNodes": 2, "taskSlotsPerNode": 2}
    )
    first.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    first.create_tasks("j", [_appending_task(i, out) for i in range(N_TASKS)])
    wait_until(
        lambda: first.get_job_task_counts("j").task_counts.completed >= 5,
        timeout=30,
        message="a few tasks done",
    )
    first.close()  # engine stops; agents finish what runs and record it
    before = Counter(t.state for t in client_factory(engine=False).list_tasks("j"))
    assert sum(before.values()) == N_TASKS
    assert before["completed"] < N_TASKS  # the rest is up to the next client

    second = client_factory()
    counts = second.wait_for_job("j", timeout=60)
    assert (counts.task_counts.completed, counts.task_counts.succeeded) == (N_TASKS, N_TASKS)
    tasks = {t.id: t for t in second.list_tasks("j")}
    assert all(t.execution_info.result == "success" for t in tasks.values())
    lines = Counter(out.read_text().split())
    assert set(lines) == set(tasks)
    for tid, n in lines.items():
        requeues = tasks[tid].execution_info.requeue_count or 0
        assert n == 1 or n <= 1 + requeues, (tid, n, requeues)
    assert sum(lines.values()) >= N_TASKS
    check_invariants(second, "j")
    # The same two nodes did all the work, and are back in service.
    nodes = wait_for_nodes(second, "p", 2, timeout=30)
    assert {t.node_info.node_id for t in tasks.values()} <= {n.id for n in nodes}


def test_a_client_without_engine_shares_the_state(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    engine = client_factory(home)
    viewer = client_factory(home, engine=False)
    engine.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    engine.create_job({"id": "j", "poolInfo": {"poolId": "p"}, "priority": 7})
    engine.create_task("j", {"id": "a", "commandLine": "echo from-engine-client"})
    assert viewer.get_job("j").priority == 7
    assert [p.id for p in viewer.list_pools()] == ["p"]
    # Work added through the engine-less client is run by the other client's engine.
    viewer.create_task("j", {"id": "b", "commandLine": "echo from-viewer"})
    counts = viewer.wait_for_job("j", timeout=30)
    assert counts.task_counts.succeeded == 2
    assert engine.get_task_file("j", "b", "stdout.txt") == b"from-viewer\n"
    assert viewer.get_task_file("j", "a", "stdout.txt") == b"from-engine-client\n"
    assert viewer.get_job_task_counts("j") == engine.get_job_task_counts("j")
    assert [n.id for n in viewer.list_nodes("p")] == [n.id for n in engine.list_nodes("p")]
    check_invariants(viewer, "j")


def test_tasks_killed_by_closing_the_client_are_requeued(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    first = client_factory()
    first.create_pool(
        {"id": "p", "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 2}
    )
    first.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    marker = f"{tmp_path}/ran-$AZ_BATCH_TASK_ID"
    first_run_blocks = f"/bin/sh -c '[ -e {marker} ] && exit 0; touch {marker}; exec sleep 30'"
    first.create_tasks("j", [{"id": f"t{i}", "commandLine": first_run_blocks} for i in range(2)])
    wait_until(
        lambda: (
            first.get_job_task_counts("j").task_counts.running == 2
            and len(list(tmp_path.glob("ran-*"))) == 2
        ),
        timeout=20,
        message="both tasks started",
    )
    first.close(kill_tasks=True)  # the service stops; its tasks are killed, not failed

    second = client_factory()
    second.wait_for_job("j", timeout=30)
    for task in second.list_tasks("j"):
        assert task.execution_info.result == "success", task.execution_info
        assert task.execution_info.requeue_count == 1


def _kill_agent_of(node_root: Path) -> None:
    """SIGKILL the node agent process serving ``node_root`` (found through /proc)."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"agent.py") for a in argv) and str(node_root).encode() in argv:
            os.kill(int(proc.name), signal.SIGKILL)
            killed += 1
    assert killed == 1


def test_a_crashed_agent_never_runs_its_task_twice_at_once(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    """An agent killed mid-task: the task is not started again while it still runs.

    The restarted agent adopts the orphaned process; once it ends (its exit code died with the
    old agent) the task is requeued and runs again: at least once, never concurrently.
    """
    client = client_factory()
    client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    (node,) = wait_for_nodes(client, "p", 1, timeout=30)
    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    out, gate = tmp_path / "runs.txt", tmp_path / "gate"
    command = (
        f"/bin/sh -c 'echo start >> {out}; i=0; "
        f"while [ ! -e {gate} ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; "
        f"echo end >> {out}'"
    )
    client.create_task("j", {"id": "t", "commandLine": command})
    wait_until(lambda: out.exists(), timeout=20, message="task started")
    _kill_agent_of(client.settings.effective_node_root / node.id)
    wait_for_nodes(client, "p", 1, states=("idle", "running"), timeout=30)  # agent is back
    assert out.read_text().split() == ["start"]  # adopted, not started again
    gate.touch()
    wait_until(
        lambda: client.get_task("j", "t").state == "completed", timeout=30, message="task completed"
    )
    assert out.read_text().split() == ["start", "end", "start", "end"]
    task = client.get_task("j", "t")
    assert task.execution_info.result == "success"
    assert task.execution_info.requeue_count == 1
    assert task.execution_info.retry_count == 0
