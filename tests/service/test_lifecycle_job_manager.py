"""The job manager task: queued with the job, adds the job's tasks through the Python client from
its node, ends the job when it completes (``killJobOnCompletion``), has its node alone
(``runExclusive``), and is retried ahead of everything else when it fails.
"""

from __future__ import annotations

import shlex
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from prefect_batch import BatchClient
from prefect_batch.core.completion import WALL_CLOCK_EXIT_CODE
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

from .test_lifecycle_states import state_log_fixture

state_log = state_log_fixture()

N_WORKERS = 50

# Adds the workers, then waits until every task but itself completed (with killJobOnCompletion
# the job ends when the manager does, which would stop workers still running).
MANAGER = textwrap.dedent(f"""
    import os, time
    from prefect_batch import BatchClient
    job, me = os.environ["AZ_BATCH_JOB_ID"], os.environ["AZ_BATCH_TASK_ID"]
    for name in ("PREFECT_BATCH_ENGINE", "PREFECT_BATCH_ACCOUNT_NAME",
                 "PREFECT_BATCH_DATABASE_URL", "PREFECT_BATCH_HOME"):
        print(name + "=" + os.environ.get(name, ""))
    with BatchClient() as client:
        result = client.create_tasks(job, [
            {{"id": f"w{{i:02d}}", "commandLine": "/bin/sh -c 'echo $AZ_BATCH_TASK_ID'"}}
            for i in range({N_WORKERS})])
        print("added=" + str(sum(r.status == "success" for r in result.result_values)))
        while any(t.state != "completed" for t in client.list_tasks(job) if t.id != me):
            time.sleep(0.1)
        print("engine=" + str(client._engine is not None))
""")


def _python(script: str) -> str:
    return shlex.join([sys.executable, "-c", script])


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def _out(client: BatchClient, job: str, task: str) -> dict[str, str]:
    text = client.get_task_file(job, task, "stdout.txt").decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_a_job_manager_adds_50_tasks_and_ends_the_job(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    pool = "jm"
    client.create_pool(
        {"id": pool, "vmSize": "local", "targetDedicatedNodes": 2, "taskSlotsPerNode": 2}
    )
    wait_for_nodes(client, pool, 2, timeout=30)
    job = make_job(pool, jobManagerTask={"id": "manager", "commandLine": _python(MANAGER)})
    # Queued with the job, before any other task.
    assert [t.id for t in client.list_tasks(job)] == ["manager"]
    wait_until(
        lambda: client.get_job(job).state == "completed",
        timeout=60,
        message="job ended by its manager",
    )
    finished = client.get_job(job)
    assert finished.execution_info.termination_reason == "JMComplete"

    manager = client.get_task(job, "manager")
    assert (manager.execution_info.result, manager.execution_info.exit_code) == ("success", 0)
    assert manager.required_slots == 2  # runExclusive: every slot of its node
    out = _out(client, job, "manager")
    assert out["added"] == str(N_WORKERS)
    assert (out["PREFECT_BATCH_ENGINE"], out["PREFECT_BATCH_ACCOUNT_NAME"]) == ("false", "local")
    assert out["PREFECT_BATCH_DATABASE_URL"] == client.store.url
    assert out["PREFECT_BATCH_HOME"] == str(client.settings.home)
    assert out["engine"] == "False"

    workers = [t for t in client.list_tasks(job) if t.id != "manager"]
    assert len(workers) == N_WORKERS
    assert all(t.execution_info.result == "success" for t in workers)
    assert client.get_task_file(job, "w07", "stdout.txt") == b"w07\n"
    # The manager had its node alone while it ran: every worker ran on the other node.
    manager_node = manager.node_info.node_id
    assert {t.node_info.node_id for t in workers}.isdisjoint({manager_node})
    assert all(
        manager.execution_info.start_time <= t.execution_info.start_time
        and t.execution_info.end_time <= manager.execution_info.end_time
        for t in workers
    )
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.succeeded, counts.failed) == (N_WORKERS + 1, 0)


def test_kill_job_on_completion_stops_tasks_still_running(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "jm-kill"
    client.create_pool({"id": pool, "vmSize": "local", "targetDedicatedNodes": 2})
    wait_for_nodes(client, pool, 2, timeout=30)
    job = make_job(pool, jobManagerTask={"id": "manager", "commandLine": gate_command(gate)})
    wait_for_task(client, job, "manager", "running")
    client.create_task(job, {"id": "slow", "commandLine": gate_command(gate.with_name("never"))})
    wait_for_task(client, job, "slow", "running")
    gate.touch()
    wait_until(
        lambda: client.get_job(job).state == "completed",
        timeout=30,
        message="job ended by its manager",
    )
    slow = client.get_task(job, "slow")
    assert (slow.execution_info.result, slow.execution_info.exit_code) == (
        "failure",
        WALL_CLOCK_EXIT_CODE,
    )

    # With killJobOnCompletion false the job carries on after its manager.
    other = make_job(
        pool, jobManagerTask={"id": "m", "commandLine": "true", "killJobOnCompletion": False}
    )
    wait_for_task(client, other, "m")
    client.create_task(other, {"id": "after", "commandLine": "true"})
    assert wait_for_task(client, other, "after").execution_info.result == "success"
    assert client.get_job(other).state == "active"


def test_a_failed_job_manager_is_retried_first(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    # One slot. The manager fails once (after its gate opens) and must run again before the
    # queued tasks of a job of the highest priority.
    tries = tmp_path / "tries"
    pool = "jm-retry"
    client.create_pool({"id": pool, "vmSize": "local", "targetDedicatedNodes": 1})
    wait_for_nodes(client, pool, 1, timeout=30)
    manager_cmd = gate_command(gate, then=f"echo x >> {tries}; [ $(wc -l < {tries}) -ge 2 ]")
    job = make_job(
        pool,
        jobManagerTask={
            "id": "manager",
            "commandLine": manager_cmd,
            "constraints": {"maxTaskRetryCount": 1},
        },
    )
    wait_for_task(client, job, "manager", "running")
    urgent = make_job(pool, priority=1000)
    client.create_tasks(urgent, [{"id": f"u{i}", "commandLine": "true"} for i in range(3)])
    gate.touch()
    wait_until(
        lambda: client.get_job(job).state == "completed",
        timeout=30,
        message="job ended by its manager",
    )
    manager = client.get_task(job, "manager")
    info = manager.execution_info
    assert (info.result, info.retry_count, info.exit_code) == ("success", 1, 0)
    assert tries.read_text().split() == ["x", "x"]
    client.wait_for_job(urgent, timeout=30)
    # The retry started before any task of the priority-1000 job.
    assert all(info.start_time <= t.execution_info.start_time for t in client.list_tasks(urgent))
