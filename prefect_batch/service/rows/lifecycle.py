"""Task and job lifecycle in the store: queueing, completion, requeue, dependencies, job end.

Disabling and terminating a job are here too, since a task's exit options can do either.

These functions run inside a write transaction (``conn``) and work on batches, because the
engine applies many task results per transaction. The decisions themselves (retry or not, which
exit options apply, legal state edges) come from the pure ``core``; this module turns them into
rows. It does not talk to nodes: where a running process must be stopped it sets
``tasks.kill_reason`` and the engine that owns the node carries it out.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from prefect_batch.core.completion import AttemptOutcome, CompletionDecision, decide
from prefect_batch.core.states import (
    DependencyAction,
    JobAction,
    JobState,
    TaskExecutionResult,
    TaskState,
)
from prefect_batch.service.rows.autopools import JOB, end_pool, ends_with
from prefect_batch.service.rows.statewrites import job_edge, task_edge
from prefect_batch.store.schema import deps, job_nodes, jobs, nodes, queue, subtasks, tasks

__all__ = [
    "JobDelta",
    "Attempt",
    "complete_attempts",
    "disable_job_rows",
    "enqueue_job_tasks",
    "enqueue_tasks",
    "finish_job_if_done",
    "pool_key",
    "requeue_tasks",
    "running_task_rows",
    "terminate_job",
]

ACTIVE = TaskState.ACTIVE.value
PREPARING = TaskState.PREPARING.value
RUNNING = TaskState.RUNNING.value
COMPLETED = TaskState.COMPLETED.value
IN_FLIGHT = (PREPARING, RUNNING)
_IN_FLIGHT_STATES = (TaskState.PREPARING, TaskState.RUNNING)


def pool_key(account: str, pool_id: str | None) -> str | None:
    """The queue's pool column: account and case-folded pool id."""
    if pool_id is None:
        return None
    return f"{account}/{pool_id.casefold()}"


@dataclass
class JobDelta:
    """Changes to a job's task counters, gathered over a batch and written once."""

    active: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    s_active: int = 0
    s_running: int = 0
    s_succeeded: int = 0
    s_failed: int = 0
    retries: int = 0

    def move(self, src: str | None, dst: str | None, slots: int) -> None:
        """Count one task moving from bucket ``src`` to ``dst``."""
        for name, sign in ((src, -1), (dst, +1)):
            if name is None:
                continue
            setattr(self, name, getattr(self, name) + sign)
            setattr(self, "s_" + name, getattr(self, "s_" + name) + sign * slots)


_UPDATE_JOB_COUNTERS = (
    update(jobs)
    .where(jobs.c.pk == bindparam("b_pk"))
    .values(
        n_active=jobs.c.n_active + bindparam("b_active"),
        n_running=jobs.c.n_running + bindparam("b_running"),
        n_succeeded=jobs.c.n_succeeded + bindparam("b_succeeded"),
        n_failed=jobs.c.n_failed + bindparam("b_failed"),
        s_active=jobs.c.s_active + bindparam("b_s_active"),
        s_running=jobs.c.s_running + bindparam("b_s_running"),
        s_succeeded=jobs.c.s_succeeded + bindparam("b_s_succeeded"),
        s_failed=jobs.c.s_failed + bindparam("b_s_failed"),
        n_retries=jobs.c.n_retries + bindparam("b_retries"),
    )
)


def write_job_deltas(conn: Connection, deltas: Mapping[int, JobDelta], now: float) -> None:
    """Apply gathered counter changes in one executemany."""
    if not deltas:
        return
    conn.execute(
        _UPDATE_JOB_COUNTERS,
        [
            {
                "b_pk": job_pk,
                "b_active": d.active,
                "b_running": d.running,
                "b_succeeded": d.succeeded,
                "b_failed": d.failed,
                "b_s_active": d.s_active,
                "b_s_running": d.s_running,
                "b_s_succeeded": d.s_succeeded,
                "b_s_failed": d.s_failed,
                "b_retries": d.retries,
            }
            for job_pk, d in deltas.items()
        ],
    )


JOB_MANAGER_RESTART_PRIORITY = 1001
"""A failed job manager is queued again above every job's priority (Azure: "highest")."""


def enqueue_tasks(
    conn: Connection,
    job: Mapping[str, Any],
    items: Sequence[tuple[int, int]],
    *,
    priority: int | None = None,
) -> None:
    """Put ``(task_pk, slots)`` of an active job into the dispatch queue."""
    if not items or job["pool_key"] is None:
        return
    conn.execute(
        insert(queue),
        [
            {
                "task_pk": pk,
                "pool_key": job["pool_key"],
                "neg_priority": -int(job["priority"] if priority is None else priority),
                "job_pk": job["pk"],
                "slots": slots,
            }
            for pk, slots in items
        ],
    )


def enqueue_job_tasks(conn: Connection, job: Mapping[str, Any]) -> int:
    """Queue every runnable active task of ``job`` (after enable or a pool change)."""
    conn.execute(delete(queue).where(queue.c.job_pk == job["pk"]))
    rows = conn.execute(
        select(tasks.c.pk, tasks.c.required_slots).where(
            tasks.c.job_pk == job["pk"],
            tasks.c.state == ACTIVE,
            tasks.c.pending_parents == 0,
            tasks.c.blocked.is_(False),
        )
    ).all()
    enqueue_tasks(conn, job, [(r.pk, r.required_slots) for r in rows])
    return len(rows)


@dataclass(frozen=True)
class Attempt:
    """What a node reported about one attempt of a task."""

    task_pk: int
    attempt: int
    outcome: AttemptOutcome
    start_time: float | None
    end_time: float
    started_with_end: bool = False
    """Its ``started`` came in the same batch as its end, and was not written on its own: the
    attempt went preparing -> running -> completed, and the row shows running as its previous
    state, entered at ``start_time``."""


@dataclass
class BatchEffects:
    """What the engine must do after the transaction commits."""

    forget: dict[int, list[str]] = field(default_factory=lambda: defaultdict(list))
    node_slots_freed: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    touched_jobs: set[int] = field(default_factory=set)


_SELECT_JOBS = select(jobs).where(jobs.c.pk.in_(bindparam("pks", expanding=True)))
_SELECT_ATTEMPTS = select(
    tasks.c.pk,
    tasks.c.job_pk,
    tasks.c.state,
    tasks.c.attempt,
    tasks.c.node_pk,
    tasks.c.required_slots,
    tasks.c.retry_count,
    tasks.c.max_retries,
    tasks.c.retention_seconds,
    tasks.c.kill_reason,
    tasks.c.spec,
    tasks.c.state_transition_time,
    tasks.c.start_time,
    tasks.c.kind,
).where(tasks.c.pk.in_(bindparam("pks", expanding=True)))
_COMPLETE = task_edge(_IN_FLIGHT_STATES, TaskState.COMPLETED).statement(
    tasks.c.pk == bindparam("b_pk"),
    previous_state=bindparam("b_prev_state"),
    previous_state_transition_time=bindparam("b_prev_time"),
    state_transition_time=bindparam("b_now"),
    last_modified=bindparam("b_now"),
    version=tasks.c.version + 1,
    start_time=bindparam("b_start"),
    end_time=bindparam("b_end"),
    exit_code=bindparam("b_exit"),
    result=bindparam("b_result"),
    failure_info=bindparam("b_failure"),
    node_pk=None,
    kill_reason=None,
    files_node_pk=bindparam("b_files_node"),
    retention_deadline=bindparam("b_retention"),
    dependency_action=bindparam("b_dep"),
)
_RETRY = task_edge(_IN_FLIGHT_STATES, TaskState.ACTIVE).statement(
    tasks.c.pk == bindparam("b_pk"),
    previous_state=RUNNING,
    previous_state_transition_time=bindparam("b_prev_time"),
    state_transition_time=bindparam("b_now"),
    last_modified=bindparam("b_now"),
    version=tasks.c.version + 1,
    start_time=bindparam("b_start"),
    end_time=bindparam("b_end"),
    exit_code=bindparam("b_exit"),
    retry_count=tasks.c.retry_count + 1,
    last_retry_time=bindparam("b_now"),
    node_pk=None,
    kill_reason=None,
)
_NODE_COUNTS = (
    update(nodes)
    .where(nodes.c.pk == bindparam("b_pk"))
    .values(
        running_tasks=nodes.c.running_tasks + bindparam("b_tasks"),
        running_slots=nodes.c.running_slots + bindparam("b_slots"),
        total_tasks_run=nodes.c.total_tasks_run + bindparam("b_run"),
        total_tasks_succeeded=nodes.c.total_tasks_succeeded + bindparam("b_ok"),
    )
)


def _job_rows(conn: Connection, job_pks: Iterable[int]) -> dict[int, Any]:
    pks = list(set(job_pks))
    if not pks:
        return {}
    return {r.pk: r for r in conn.execute(_SELECT_JOBS, {"pks": pks}).all()}


def complete_attempts(
    conn: Connection,
    attempts: Sequence[Attempt],
    now: float,
    effects: BatchEffects | None = None,
) -> BatchEffects:
    """Record finished attempts: retry, requeue or complete each task, and follow the effects.

    Attempts that no longer match the task (an old attempt, a task already completed or deleted)
    are ignored, so a result reported twice is counted once.
    """
    effects = effects or BatchEffects()
    if not attempts:
        return effects
    by_pk = {a.task_pk: a for a in attempts}
    rows = conn.execute(_SELECT_ATTEMPTS, {"pks": list(by_pk)}).all()
    job_rows = _job_rows(conn, (r.job_pk for r in rows))
    deltas: dict[int, JobDelta] = defaultdict(JobDelta)
    node_counts: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    completed_updates: list[dict[str, Any]] = []
    retry_updates: list[dict[str, Any]] = []
    requeue_pks: list[int] = []
    deleted: list[int] = []
    job_manager_done: list[int] = []
    satisfied: list[int] = []
    blocked: list[int] = []
    job_actions: list[tuple[int, JobAction]] = []
    to_enqueue: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in rows:
        a = by_pk[r.pk]
        if r.state not in IN_FLIGHT or r.attempt != a.attempt:
            continue
        job = job_rows[r.job_pk]
        slots = r.required_slots
        if r.node_pk is not None:
            nc = node_counts[r.node_pk]
            nc[0] -= 1
            nc[1] -= slots
            effects.node_slots_freed[r.node_pk] += slots
        effects.touched_jobs.add(r.job_pk)
        if r.node_pk is not None:
            effects.forget[r.node_pk].append(f"t{r.pk}-{r.attempt}")
        if r.kill_reason in ("requeue", "job_delete"):
            if r.kill_reason == "job_delete":
                deleted.append(r.pk)
                # The row goes, so its "running" count must go too (delete_task of a running
                # task left the job's running counters one too high for ever). Harmless for
                # delete_job: the job row is removed with its last task.
                deltas[r.job_pk].move("running", None, slots)
            else:
                requeue_pks.append(r.pk)
                deltas[r.job_pk].move("running", "active", slots)
                if job.state == JobState.ACTIVE.value and job.pool_key is not None:
                    to_enqueue[r.job_pk].append((r.pk, slots))
            continue
        outcome = a.outcome
        decision: CompletionDecision = decide(
            outcome,
            retry_count=r.retry_count,
            max_task_retry_count=r.max_retries,
            exit_conditions=(r.spec or {}).get("exitConditions"),
            task_failure_mode=job.on_task_failure,
        )
        start = a.start_time if a.start_time is not None else r.start_time
        through_running = a.started_with_end and r.state == TaskState.PREPARING.value
        prev_state = TaskState.RUNNING.value if through_running else r.state
        prev_time = start if through_running else r.state_transition_time
        if decision.retry:
            retry_updates.append(
                {
                    "b_pk": r.pk,
                    "b_exit": decision.exit_code,
                    "b_start": start,
                    "b_end": a.end_time,
                    "b_prev_time": prev_time,
                }
            )
            deltas[r.job_pk].move("running", "active", slots)
            deltas[r.job_pk].retries += 1
            if job.state == JobState.ACTIVE.value and job.pool_key is not None:
                if r.kind == "jobmanager":
                    enqueue_tasks(
                        conn, job._mapping, [(r.pk, slots)], priority=JOB_MANAGER_RESTART_PRIORITY
                    )
                else:
                    to_enqueue[r.job_pk].append((r.pk, slots))
            continue
        success = decision.result == TaskExecutionResult.SUCCESS
        if r.node_pk is not None:
            node_counts[r.node_pk][2] += 1
            node_counts[r.node_pk][3] += 1 if success else 0
        deltas[r.job_pk].move("running", "succeeded" if success else "failed", slots)
        completed_updates.append(
            {
                "b_pk": r.pk,
                "b_prev_state": prev_state,
                "b_prev_time": prev_time,
                "b_start": start,
                "b_end": a.end_time,
                "b_exit": decision.exit_code,
                "b_result": decision.result.value if decision.result else None,
                "b_failure": decision.failure_info,
                "b_files_node": r.node_pk,
                "b_retention": a.end_time + r.retention_seconds,
                "b_dep": decision.dependency_action.value,
            }
        )
        if job.uses_task_dependencies:
            if decision.dependency_action == DependencyAction.SATISFY:
                satisfied.append(r.pk)
            else:
                blocked.append(r.pk)
        if decision.job_action != JobAction.NONE:
            job_actions.append((r.job_pk, decision.job_action))
        if r.kind == "jobmanager" and (r.spec or {}).get("killJobOnCompletion", True):
            job_manager_done.append(r.job_pk)

    if completed_updates:
        for u in completed_updates:
            u["b_now"] = now
        _COMPLETE.execute(conn, completed_updates, expected=len(completed_updates))
    if retry_updates:
        for u in retry_updates:
            u["b_now"] = now
        _RETRY.execute(conn, retry_updates, expected=len(retry_updates))
    if requeue_pks:
        _mark_requeued(conn, requeue_pks, now)
    if deleted:
        conn.execute(delete(tasks).where(tasks.c.pk.in_(deleted)))
    for job_pk, items in to_enqueue.items():
        enqueue_tasks(conn, job_rows[job_pk]._mapping, items)
    _write_node_counts(conn, node_counts)
    write_job_deltas(conn, deltas, now)
    if satisfied:
        _release_dependents(conn, satisfied, job_rows)
    if blocked:
        _block_dependents(conn, blocked)
    for job_pk, action in job_actions:
        job = conn.execute(select(jobs).where(jobs.c.pk == job_pk)).one()
        if job.state != JobState.ACTIVE.value:
            continue
        if action == JobAction.TERMINATE:
            terminate_job(conn, job, "TaskFailed", now)
        elif action == JobAction.DISABLE:
            disable_job_rows(conn, job, "requeue", now)
    for job_pk in job_manager_done:
        job = conn.execute(select(jobs).where(jobs.c.pk == job_pk)).one()
        if job.state in (JobState.ACTIVE.value, JobState.DISABLING.value, JobState.DISABLED.value):
            terminate_job(conn, job, "JMComplete", now)
    for job_pk in effects.touched_jobs:
        job = job_rows.get(job_pk)
        if (
            job is None
            or job.state != JobState.ACTIVE.value
            or job.on_all_tasks_complete != "noaction"
            or job_actions
        ):
            finish_job_if_done(conn, job_pk, now)
    return effects


_REQUEUE = task_edge(_IN_FLIGHT_STATES, TaskState.ACTIVE)
_TERMINATING = job_edge(
    (JobState.ACTIVE, JobState.DISABLING, JobState.DISABLED, JobState.ENABLING),
    JobState.TERMINATING,
)
_TERMINATED = job_edge((JobState.TERMINATING,), JobState.COMPLETED)
_DISABLING = job_edge((JobState.ACTIVE,), JobState.DISABLING)
_DISABLED = job_edge((JobState.DISABLING,), JobState.DISABLED)


def _mark_requeued(conn: Connection, pks: Sequence[int], now: float) -> None:
    _REQUEUE.write(
        conn,
        tasks.c.pk.in_(list(pks)),
        expected=len(set(pks)),
        previous_state=tasks.c.state,
        previous_state_transition_time=tasks.c.state_transition_time,
        state_transition_time=now,
        last_modified=now,
        version=tasks.c.version + 1,
        requeue_count=tasks.c.requeue_count + 1,
        last_requeue_time=now,
        node_pk=None,
        kill_reason=None,
    )


def _write_node_counts(conn: Connection, node_counts: Mapping[int, list[int]]) -> None:
    if node_counts:
        conn.execute(
            _NODE_COUNTS,
            [
                {"b_pk": pk, "b_tasks": t, "b_slots": sl, "b_run": run, "b_ok": ok}
                for pk, (t, sl, run, ok) in node_counts.items()
            ],
        )


def _release_dependents(
    conn: Connection, parent_pks: Sequence[int], job_rows: Mapping[int, Any]
) -> None:
    children = conn.execute(
        select(deps.c.child_pk, func.count())
        .where(deps.c.parent_pk.in_(list(parent_pks)))
        .group_by(deps.c.child_pk)
    ).all()
    if not children:
        return
    conn.execute(
        update(tasks)
        .where(tasks.c.pk == bindparam("b_pk"))
        .values(pending_parents=tasks.c.pending_parents - bindparam("b_n")),
        [{"b_pk": c[0], "b_n": c[1]} for c in children],
    )
    ready = conn.execute(
        select(tasks.c.pk, tasks.c.job_pk, tasks.c.required_slots).where(
            tasks.c.pk.in_([c[0] for c in children]),
            tasks.c.pending_parents == 0,
            tasks.c.state == ACTIVE,
            tasks.c.blocked.is_(False),
        )
    ).all()
    by_job: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in ready:
        by_job[r.job_pk].append((r.pk, r.required_slots))
    if not by_job:
        return
    all_jobs = dict(job_rows)
    all_jobs.update(_job_rows(conn, [j for j in by_job if j not in all_jobs]))
    for job_pk, items in by_job.items():
        job = all_jobs[job_pk]
        if job.state == JobState.ACTIVE.value:
            enqueue_tasks(conn, job._mapping, items)


def _block_dependents(conn: Connection, parent_pks: Sequence[int]) -> None:
    child = select(deps.c.child_pk).where(deps.c.parent_pk.in_(list(parent_pks)))
    conn.execute(update(tasks).where(tasks.c.pk.in_(child)).values(blocked=True))


def requeue_tasks(conn: Connection, task_rows: Sequence[Any], now: float) -> None:
    """Put in-flight tasks back in the queue (node lost or removed): requeueCount + 1.

    Their retry count does not change. The node's own counters are the caller's business.
    """
    if not task_rows:
        return
    _mark_requeued(conn, [r.pk for r in task_rows], now)
    job_rows = _job_rows(conn, (r.job_pk for r in task_rows))
    deltas: dict[int, JobDelta] = defaultdict(JobDelta)
    to_enqueue: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for r in task_rows:
        deltas[r.job_pk].move("running", "active", r.required_slots)
        job = job_rows[r.job_pk]
        if job.state == JobState.ACTIVE.value:
            to_enqueue[r.job_pk].append((r.pk, r.required_slots))
    for job_pk, items in to_enqueue.items():
        enqueue_tasks(conn, job_rows[job_pk]._mapping, items)
    write_job_deltas(conn, deltas, now)


def terminate_job(conn: Connection, job: Any, reason: str, now: float) -> None:
    """Terminate a job: nothing more is scheduled and its running tasks are stopped.

    The job is ``terminating`` while stopped tasks are still being reported, then
    ``completed`` (see :func:`finish_job_if_done`).
    """
    conn.execute(delete(queue).where(queue.c.job_pk == job.pk))
    conn.execute(
        update(tasks)
        .where(tasks.c.job_pk == job.pk, tasks.c.state.in_(IN_FLIGHT))
        .values(kill_reason="job_terminate")
    )
    if (job.spec or {}).get("jobReleaseTask"):
        # The release task runs on every node that ran the preparation task.
        conn.execute(
            update(job_nodes)
            .where(
                job_nodes.c.job_pk == job.pk,
                job_nodes.c.prep_state.is_not(None),
                job_nodes.c.release_state.is_(None),
            )
            .values(release_state="pending")
        )
    _TERMINATING.move(
        conn,
        job,
        now,
        terminate_reason=reason,
    )
    finish_job_if_done(conn, job.pk, now)


def disable_job_rows(conn: Connection, job: Any, option: str, now: float) -> None:
    """Disable a job: dequeue its tasks; requeue or stop running ones per ``option``."""
    conn.execute(delete(queue).where(queue.c.job_pk == job.pk))
    if option in ("requeue", "terminate"):
        conn.execute(
            update(tasks)
            .where(tasks.c.job_pk == job.pk, tasks.c.state.in_(IN_FLIGHT))
            .values(kill_reason=option)
        )
    _DISABLING.move(
        conn,
        job,
        now,
        disable_option=option,
    )
    finish_job_if_done(conn, job.pk, now)


def finish_job_if_done(conn: Connection, job_pk: int, now: float) -> None:
    """Move a job to its next state once nothing of it is in flight.

    ``terminating`` -> ``completed``; ``disabling`` -> ``disabled``; an ``active`` job with
    ``onAllTasksComplete=terminatejob`` whose tasks are all complete is terminated.
    """
    job = conn.execute(select(jobs).where(jobs.c.pk == job_pk)).one_or_none()
    if job is None:
        return
    if job.state == JobState.ACTIVE.value:
        if (
            job.on_all_tasks_complete == "terminatejob"
            and job.n_active == 0
            and job.n_running == 0
            and (job.n_succeeded + job.n_failed) > 0
        ):
            terminate_job(conn, job, "AllTasksComplete", now)
        return
    if job.state == JobState.DELETING.value:
        left = conn.execute(
            select(func.count()).select_from(tasks).where(tasks.c.job_pk == job_pk)
        ).scalar_one()
        if not left:
            conn.execute(delete(jobs).where(jobs.c.pk == job_pk))
            _end_auto_pool(conn, job, now)
        return
    if job.state not in (JobState.TERMINATING.value, JobState.DISABLING.value):
        return
    # Every disable option, "wait" included, keeps the job "disabling" until its running tasks
    # are dealt with (Azure: "the Job remains in the disabling state until ... all Tasks have
    # been dealt with according to the disableTasks option"); for "wait" that is when they end,
    # never while they still run.
    in_flight = conn.execute(
        select(func.count())
        .select_from(tasks)
        .where(tasks.c.job_pk == job_pk, tasks.c.state.in_(IN_FLIGHT))
    ).scalar_one()
    if not in_flight and job.state == JobState.TERMINATING.value:
        in_flight = conn.execute(
            select(func.count())
            .select_from(job_nodes)
            .where(
                job_nodes.c.job_pk == job_pk, job_nodes.c.release_state.in_(("pending", "running"))
            )
        ).scalar_one()
    if in_flight:
        return
    edge = _TERMINATED if job.state == JobState.TERMINATING.value else _DISABLED
    target = edge.to
    values: dict[str, Any] = {
        "previous_state": job.state,
        "previous_state_transition_time": job.state_transition_time,
        "state_transition_time": now,
        "last_modified": now,
        "version": jobs.c.version + 1,
    }
    if target == JobState.COMPLETED.value:
        values["end_time"] = now
    edge.write(conn, jobs.c.pk == job_pk, expected=1, **values)
    if target == JobState.COMPLETED.value:
        _end_auto_pool(conn, job, now)


def _end_auto_pool(conn: Connection, job: Any, now: float) -> None:
    """A job's own auto pool (lifetime ``job``, no ``keepAlive``) goes when the job ends."""
    if ends_with(job.spec, JOB):
        end_pool(conn, job.account, job.pool_id, now)


def running_task_rows(conn: Connection, node_pk: int) -> list[Any]:
    """In-flight tasks on a node, with the multi-instance tasks that have a subtask there.

    A multi-instance task is requeued as a whole when any of its nodes goes away; its primary
    node is its ``node_pk``, the others are in ``subtasks``.
    """
    columns = (tasks.c.pk, tasks.c.job_pk, tasks.c.required_slots, tasks.c.attempt)
    rows = list(
        conn.execute(
            select(*columns).where(tasks.c.node_pk == node_pk, tasks.c.state.in_(IN_FLIGHT))
        ).all()
    )
    rows += conn.execute(
        select(*columns)
        .join(subtasks, subtasks.c.task_pk == tasks.c.pk)
        .where(
            subtasks.c.node_pk == node_pk,
            subtasks.c.idx > 0,
            subtasks.c.attempt == tasks.c.attempt,
            tasks.c.node_pk != node_pk,
            tasks.c.state.in_(IN_FLIGHT),
        )
    ).all()
    return rows
