"""The invariant check every service test runs at teardown, and proof that it can fail.

:func:`prefect_batch.testing.check_invariants` reads one job's rows in one snapshot and checks
that counters, queue, node assignment and dependency counts agree. The ``make_job`` fixture calls
it for every job a test made. A checker that never fails proves nothing, so the tests below
break each invariant by writing to the store directly and expect the checker to say so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import insert, select, update

from prefect_batch import BatchClient
from prefect_batch.store.schema import jobs, nodes, queue, tasks
from prefect_batch.testing import check_invariants, gate_command, wait_for_nodes, wait_for_task

__all__ = ["check_invariants"]

POOL = "inv"
IDLE_POOL = "inv-idle"


@pytest.fixture(scope="module", autouse=True)
def pools(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 2}
    )
    client.create_pool({"id": IDLE_POOL, "vmSize": "local", "targetDedicatedNodes": 0})
    wait_for_nodes(client, POOL, 1, timeout=30)


def _pk(client: BatchClient, job: str, task: str | None = None) -> int:
    with client.store.read() as conn:
        job_pk = conn.execute(select(jobs.c.pk).where(jobs.c.id == job)).scalar_one()
        if task is None:
            return job_pk
        return conn.execute(
            select(tasks.c.pk).where(tasks.c.job_pk == job_pk, tasks.c.id == task)
        ).scalar_one()


def test_holds_while_work_runs_and_after(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_tasks(
        job,
        [
            {"id": "hold", "commandLine": gate_command(gate), "requiredSlots": 2},
            {"id": "ok", "commandLine": "true"},
            {"id": "bad", "commandLine": "false", "constraints": {"maxTaskRetryCount": 1}},
            {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["ok", "bad"]}},
        ],
    )
    wait_for_task(client, job, "hold", "running")
    check_invariants(client, job)  # mid-flight
    gate.touch()
    wait_for_task(client, job, "bad")
    check_invariants(client, job)  # child blocked by "bad"
    assert client.get_task(job, "child").state == "active"


def test_a_deleted_job_passes(client: BatchClient) -> None:
    client.create_job({"id": "inv-deleted", "poolInfo": {"poolId": IDLE_POOL}})
    client.delete_job("inv-deleted")
    check_invariants(client, "inv-deleted")


def _corrupt_job(client: BatchClient, name: str) -> str:
    """A job on the node-less pool (nothing runs), made without make_job: it will be broken."""
    job = f"inv-{name}"
    client.create_job({"id": job, "poolInfo": {"poolId": IDLE_POOL}, "usesTaskDependencies": True})
    client.create_tasks(
        job,
        [
            {"id": "a", "commandLine": "true"},
            {"id": "b", "commandLine": "true", "dependsOn": {"taskIds": ["a"]}},
        ],
    )
    check_invariants(client, job)
    return job


def test_detects_a_wrong_counter(client: BatchClient) -> None:
    job = _corrupt_job(client, "counter")
    with client.store.begin() as conn:
        conn.execute(
            update(jobs).where(jobs.c.pk == _pk(client, job)).values(n_active=jobs.c.n_active + 1)
        )
    with pytest.raises(AssertionError, match="job counter active=3, tasks say 2"):
        check_invariants(client, job)


def test_detects_a_completed_task_in_the_queue(client: BatchClient) -> None:
    job = _corrupt_job(client, "queue")
    a = _pk(client, job, "a")
    with client.store.begin() as conn:
        conn.execute(
            update(tasks)
            .where(tasks.c.pk == a)
            .values(state="completed", result="success", dependency_action="satisfy")
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.pk == _pk(client, job))
            .values(n_active=1, s_active=1, n_succeeded=1, s_succeeded=1)
        )
    with pytest.raises(AssertionError, match="queue holds completed task a"):
        check_invariants(client, job)


def test_detects_a_runnable_task_missing_from_the_queue(client: BatchClient) -> None:
    job = _corrupt_job(client, "unqueued")
    with client.store.begin() as conn:
        conn.execute(queue.delete().where(queue.c.task_pk == _pk(client, job, "a")))
    with pytest.raises(AssertionError, match="runnable task a is not queued"):
        check_invariants(client, job)


def test_detects_an_in_flight_task_without_a_node(client: BatchClient) -> None:
    job = _corrupt_job(client, "nodeless")
    a = _pk(client, job, "a")
    with client.store.begin() as conn:
        conn.execute(queue.delete().where(queue.c.task_pk == a))
        conn.execute(update(tasks).where(tasks.c.pk == a).values(state="running"))
        conn.execute(
            update(jobs)
            .where(jobs.c.pk == _pk(client, job))
            .values(n_active=1, s_active=1, n_running=1, s_running=1)
        )
    with pytest.raises(AssertionError, match="running task a has no node"):
        check_invariants(client, job)


def test_detects_wrong_dependency_bookkeeping(client: BatchClient) -> None:
    job = _corrupt_job(client, "deps")
    with client.store.begin() as conn:
        conn.execute(
            update(tasks).where(tasks.c.pk == _pk(client, job, "b")).values(pending_parents=0)
        )
    with pytest.raises(AssertionError, match="task b has pending_parents=0, its parents say 1"):
        check_invariants(client, job)


def test_detects_a_wrong_node_count(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    job = _corrupt_job(client, "nodecount")
    real = make_job(POOL)
    client.create_task(real, {"id": "hold", "commandLine": gate_command(gate)})
    node_id = wait_for_task(client, real, "hold", "running").node_info.node_id
    with client.store.begin() as conn:
        node_pk = conn.execute(select(nodes.c.pk).where(nodes.c.node_id == node_id)).scalar_one()
        a = _pk(client, job, "a")
        conn.execute(queue.delete().where(queue.c.task_pk == a))
        conn.execute(update(tasks).where(tasks.c.pk == a).values(state="running", node_pk=node_pk))
        conn.execute(
            update(jobs)
            .where(jobs.c.pk == _pk(client, job))
            .values(n_active=1, s_active=1, n_running=1, s_running=1)
        )
    with pytest.raises(AssertionError, match=f"node {node_id} counts 1 tasks/1 slots, 2/2"):
        check_invariants(client, job)
    # Put it back as it was, so the engine is not confused by a task it never started.
    with client.store.begin() as conn:
        conn.execute(update(tasks).where(tasks.c.pk == a).values(state="active", node_pk=None))
        conn.execute(
            insert(queue).values(
                task_pk=a,
                pool_key=f"local/{IDLE_POOL}",
                neg_priority=0,
                job_pk=_pk(client, job),
                slots=1,
            )
        )
        conn.execute(
            update(jobs)
            .where(jobs.c.pk == _pk(client, job))
            .values(n_active=2, s_active=2, n_running=0, s_running=0)
        )
    check_invariants(client, job)
    gate.touch()
