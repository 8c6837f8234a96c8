"""Test helpers: an embedded client on a throw-away home, bounded polling, and invariant checks.

* :func:`embedded_client` opens a :class:`~prefect_batch.BatchClient` whose state lives under a
  directory you give (a pytest ``tmp_path``) with settings tuned for tests
  (:data:`FAST_SETTINGS`), and closes it with ``kill_tasks=True`` so no task outlives the test.
* :func:`wait_until`, :func:`wait_for_task` and :func:`wait_for_nodes` poll through the public
  client until a condition holds and raise ``TimeoutError`` (with the last value seen) when it
  does not in time. Tests wait on *states*, never on sleeps.
* :func:`gate_command` is a task command line that blocks until a file exists: a test holds a
  task "running" for exactly as long as it needs, then opens the gate.
* :func:`check_invariants` checks one job's bookkeeping (counters, queue, node assignment,
  dependency counts) in one consistent snapshot of the store; call it when a test ends.

What this module does not do: it does not import pytest (wrap these in fixtures of your own) and
it does not fake the engine or the nodes: every helper works against real local node agents.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select

from prefect_batch.client import BatchClient
from prefect_batch.models import BatchNode, BatchTask
from prefect_batch.settings import BatchSettings
from prefect_batch.store.schema import deps, jobs, nodes, queue, tasks

__all__ = [
    "FAST_SETTINGS",
    "check_invariants",
    "embedded_client",
    "fast_settings",
    "gate_command",
    "wait_for_nodes",
    "wait_for_task",
    "wait_until",
]

T = TypeVar("T")

FAST_SETTINGS: dict[str, Any] = {
    # An idle engine looks for work added by other processes this often.
    "engine_tick_seconds": 0.05,
    # The engine re-reads its pools (and so creates or removes nodes) every lease/3 seconds;
    # the default 15 s would make every new pool wait up to 5 s for its nodes.
    "lease_seconds": 1.5,
}
"""Settings that make an embedded service react quickly, for tests."""

_IN_FLIGHT = ("preparing", "running")


def fast_settings(home: str | Path, **overrides: Any) -> BatchSettings:
    """Settings for an embedded service under ``home`` with :data:`FAST_SETTINGS` applied.

    Args:
        home: The state directory (database and node roots).
        **overrides: Further settings (``lease_seconds=...``), by field name.
    """
    values: dict[str, Any] = {**FAST_SETTINGS, **overrides, "home": Path(home)}
    return BatchSettings(**values)


@contextmanager
def embedded_client(
    home: str | Path, *, engine: bool = True, storage: Any = None, **overrides: Any
) -> Iterator[BatchClient]:
    """An embedded :class:`BatchClient` under ``home``; closed with ``kill_tasks=True`` on exit.

    Args:
        home: The state directory (a temporary directory in tests).
        engine: Run an engine (and so local nodes) in this process.
        storage: The ``ObjectStorage`` file URLs are signed for (see ``testing.storage``).
        **overrides: Settings to change besides :data:`FAST_SETTINGS`.
    """
    client = BatchClient(
        home=home, engine=engine, settings=fast_settings(home, **overrides), storage=storage
    )
    try:
        yield client
    finally:
        client.close(kill_tasks=True)


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    message: str = "condition",
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises:
        TimeoutError: ``timeout`` seconds passed; the message holds the last value returned.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout} s; last value: {last!r}")
        time.sleep(interval)


def wait_for_task(
    client: BatchClient,
    job_id: str,
    task_id: str,
    state: str | Sequence[str] = "completed",
    *,
    timeout: float = 20.0,
) -> BatchTask:
    """Poll a task until it is in ``state`` (one state or several) and return it."""
    wanted = {state} if isinstance(state, str) else set(state)

    def probe() -> BatchTask | None:
        task = client.get_task(job_id, task_id)
        return task if _value(task.state) in wanted else None

    return wait_until(probe, timeout=timeout, message=f"task {job_id}/{task_id} in {wanted}")


def wait_for_nodes(
    client: BatchClient,
    pool_id: str,
    count: int,
    *,
    states: Sequence[str] = ("idle",),
    timeout: float = 20.0,
) -> list[BatchNode]:
    """Poll a pool until it has exactly ``count`` nodes, all in ``states``, and is steady."""

    def probe() -> tuple[list[BatchNode]] | None:
        if _value(client.get_pool(pool_id).allocation_state) != "steady":
            return None
        found = client.list_nodes(pool_id)
        if len(found) != count or any(_value(n.state) not in states for n in found):
            return None
        return (found,)  # a 1-tuple: truthy even when no nodes are wanted

    return wait_until(probe, timeout=timeout, message=f"pool {pool_id} with {count} nodes")[0]


def gate_command(gate: str | Path, *, then: str = "", limit_seconds: float = 60.0) -> str:
    """A command line that waits until the file ``gate`` exists, then runs ``then`` (shell).

    The task ends by itself (exit 99) after ``limit_seconds``, so a failing test leaves no
    process behind for long.
    """
    polls = int(limit_seconds / 0.05)
    script = (
        f"n=0; while [ ! -e {shlex.quote(str(gate))} ]; do sleep 0.05; n=$((n+1)); "
        f"if [ $n -gt {polls} ]; then exit 99; fi; done"
    )
    if then:
        script += f"; {then}"
    return "/bin/sh -c " + shlex.quote(script)


def check_invariants(client: BatchClient, job_id: str) -> None:
    """Assert that a job's bookkeeping agrees with its tasks, in one snapshot of the store.

    Checked:

    * the job's task and slot counters (``get_job_task_counts``) equal what its tasks say;
    * every completed task has a result and no node; every in-flight (preparing/running) task
      has a node that exists, unless the job is being deleted;
    * the dispatch queue holds only runnable tasks of an active job (active, no pending parent,
      not blocked), with the job's priority and the task's slots; and every runnable task of an
      active job is queued (else it would wait for ever);
    * ``pending_parents`` counts the parents that have not completed with ``satisfy``; a task
      with a parent that completed with ``block`` is blocked;
    * each node running a task of the job counts exactly the in-flight tasks assigned to it.

    A job that does not exist (deleted) passes.

    Raises:
        AssertionError: Listing every violation found.
    """
    problems: list[str] = []
    with client.store.read() as conn:
        job = conn.execute(
            select(jobs).where(
                jobs.c.account == client.account_name, jobs.c.id_key == job_id.casefold()
            )
        ).one_or_none()
        if job is None:
            return
        rows = conn.execute(select(tasks).where(tasks.c.job_pk == job.pk)).all()
        queued = conn.execute(select(queue).where(queue.c.job_pk == job.pk)).all()
        by_pk = {r.pk: r for r in rows}
        dep_rows = conn.execute(
            select(deps.c.child_pk, deps.c.parent_pk).where(
                deps.c.child_pk.in_(list(by_pk) or [-1])
            )
        ).all()
        parent_pks = {d.parent_pk for d in dep_rows}
        parents = {
            r.pk: r
            for r in conn.execute(
                select(tasks.c.pk, tasks.c.state, tasks.c.dependency_action).where(
                    tasks.c.pk.in_(list(parent_pks) or [-1])
                )
            ).all()
        }
        node_pks = {r.node_pk for r in rows if r.node_pk is not None}
        node_rows = {
            n.pk: n
            for n in conn.execute(select(nodes).where(nodes.c.pk.in_(list(node_pks) or [-1]))).all()
        }
        on_node: dict[int, tuple[int, int]] = {}
        for n in node_rows.values():
            assigned = conn.execute(
                select(tasks.c.required_slots).where(
                    tasks.c.node_pk == n.pk, tasks.c.state.in_(_IN_FLIGHT)
                )
            ).all()
            on_node[n.pk] = (len(assigned), sum(a[0] for a in assigned))

    # -- counters ---------------------------------------------------------------------------
    expected = {"active": [0, 0], "running": [0, 0], "succeeded": [0, 0], "failed": [0, 0]}
    for r in rows:
        if r.state == "active":
            bucket = "active"
        elif r.state in _IN_FLIGHT:
            bucket = "running"
        elif r.result == "success":
            bucket = "succeeded"
        else:
            bucket = "failed"
        expected[bucket][0] += 1
        expected[bucket][1] += r.required_slots
    for name, (count, slots) in expected.items():
        if getattr(job, f"n_{name}") != count:
            problems.append(f"job counter {name}={getattr(job, f'n_{name}')}, tasks say {count}")
        if getattr(job, f"s_{name}") != slots:
            problems.append(f"slot counter {name}={getattr(job, f's_{name}')}, tasks say {slots}")

    # -- task states ------------------------------------------------------------------------
    for r in rows:
        if r.state == "completed":
            if r.result not in ("success", "failure"):
                problems.append(f"completed task {r.id} has result {r.result!r}")
            if r.node_pk is not None:
                problems.append(f"completed task {r.id} still holds node {r.node_pk}")
        elif r.state in _IN_FLIGHT and job.state != "deleting":
            if r.node_pk is None:
                problems.append(f"{r.state} task {r.id} has no node")
            elif r.node_pk not in node_rows:
                problems.append(f"{r.state} task {r.id} is on node {r.node_pk}, which is gone")

    # -- queue ------------------------------------------------------------------------------
    queued_pks = set()
    for q in queued:
        queued_pks.add(q.task_pk)
        found = by_pk.get(q.task_pk)
        if found is None:
            problems.append(f"queue holds task pk {q.task_pk}, not a task of the job")
            continue
        r = found
        if r.state != "active":
            problems.append(f"queue holds {r.state} task {r.id}")
        if r.pending_parents or r.blocked:
            problems.append(f"queue holds task {r.id} that waits for parents or is blocked")
        if job.state != "active":
            problems.append(f"queue holds task {r.id} of a {job.state} job")
        if q.neg_priority != -job.priority:
            problems.append(
                f"task {r.id} queued at priority {-q.neg_priority}, job has {job.priority}"
            )
        if q.slots != r.required_slots:
            problems.append(f"task {r.id} queued with {q.slots} slots, needs {r.required_slots}")
        if q.pool_key != job.pool_key:
            problems.append(f"task {r.id} queued for pool {q.pool_key}, job is on {job.pool_key}")
    if job.state == "active" and job.pool_key is not None:
        for r in rows:
            runnable = r.state == "active" and not r.pending_parents and not r.blocked
            if runnable and r.pk not in queued_pks:
                problems.append(f"runnable task {r.id} is not queued")

    # -- dependencies -----------------------------------------------------------------------
    pending: dict[int, int] = {}
    blocking: dict[int, bool] = {}
    for d in dep_rows:
        parent = parents.get(d.parent_pk)
        action = parent.dependency_action if parent is not None else None
        done = parent is not None and parent.state == "completed"
        if not (done and action == "satisfy"):
            pending[d.child_pk] = pending.get(d.child_pk, 0) + 1
        if done and action == "block":
            blocking[d.child_pk] = True
    for r in rows:
        if r.state != "active":
            continue
        if r.pending_parents != pending.get(r.pk, 0):
            problems.append(
                f"task {r.id} has pending_parents={r.pending_parents}, its parents say "
                f"{pending.get(r.pk, 0)}"
            )
        if blocking.get(r.pk) and not r.blocked:
            problems.append(f"task {r.id} has a blocking parent but is not blocked")

    # -- nodes ------------------------------------------------------------------------------
    for pk, n in node_rows.items():
        count, slots = on_node[pk]
        if (n.running_tasks, n.running_slots) != (count, slots):
            problems.append(
                f"node {n.node_id} counts {n.running_tasks} tasks/{n.running_slots} slots, "
                f"{count}/{slots} are assigned to it"
            )

    if problems:
        raise AssertionError(f"invariants of job {job_id} broken:\n  " + "\n  ".join(problems))


def _value(x: Any) -> Any:
    """An enum's wire value, or the value itself."""
    return getattr(x, "value", x)
