"""The engine's part in job schedules: create due jobs, and finish schedules that are done.

Each pass reads the schedules that may need something (active ones whose run is due or that
wait for their job, terminating and deleting ones) with the state of their recent job, decides
with :func:`prefect_batch.core.recurrence.advance`, and only for a schedule where something
changes opens a write transaction. That transaction re-reads the schedule row under a row lock
(``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already serialises
writers), decides again on what it read, creates the job and moves the schedule in one commit —
so of two engines on one database, only one creates a given run's job; the other then reads the
advanced row and finds nothing to do.

Any engine does this, whether or not it holds pool leases. This module does not validate
schedules (``service/ops/schedules.py`` does) nor run the jobs' tasks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import delete, select, update

from prefect_batch.core.recurrence import ScheduleStep, advance
from prefect_batch.core.states import JobScheduleState
from prefect_batch.service.ops.jobs import JobOperations
from prefect_batch.service.ops.pools import PoolOperations
from prefect_batch.service.ops.schedules import (
    ACTIVE,
    DELETING,
    FINISHED_JOB_STATES,
    TERMINATING,
    move_schedule,
    recurrence_of,
    schedule_job_rows,
)
from prefect_batch.service.rows.autopools import auto_pool_of, end_schedule_pool, schedule_pool
from prefect_batch.service.rows.common import Clock
from prefect_batch.service.rows.views import scheduled_job_id
from prefect_batch.store import Store
from prefect_batch.store.schema import job_schedules, jobs

__all__ = ["SCHEDULE_POLL_SECONDS", "JobScheduler"]

log = logging.getLogger("prefect_batch.engine")

SCHEDULE_POLL_SECONDS = 1.0
"""How often schedules waiting on their job (or finishing) are looked at, at the latest."""
POKED_SCHEDULE_SECONDS = 0.1
"""After a request woke the engine, how soon schedules are looked at again at the earliest."""


class JobScheduler:
    """The engine's part in job schedules: creates their due jobs and finishes them.

    Args:
        store: The database.
        clock: The engine's clock.
        pools_changed: Called when a job with an auto pool was created, so the engine
            reconciles pools at its next step (the new pool gets nodes).
    """

    def __init__(self, store: Store, clock: Clock, pools_changed: Callable[[], None]) -> None:
        self.store = store
        self.clock = clock
        self._pools_changed = pools_changed
        self._next_schedules = 0.0
        self._schedules_checked = float("-inf")
        self._schedules_poked = False

    def run(self, now: float, *, poked: bool) -> None:
        """One pass over the schedules, when one may be due (called from the engine's step).

        A pass runs when the earliest pending run is due, every ``SCHEDULE_POLL_SECONDS``, and
        soon after a request woke the engine (``poked``: a schedule may have been created or
        enabled).
        """
        self._schedules_poked |= poked
        poked = self._schedules_poked and now - self._schedules_checked >= POKED_SCHEDULE_SECONDS
        if now < self._next_schedules and not poked:
            return
        self._schedules_checked = now
        self._schedules_poked = False
        with self.store.read() as conn:
            rows = conn.execute(
                select(job_schedules).where(
                    job_schedules.c.state.in_((ACTIVE, TERMINATING, DELETING))
                )
            ).all()
            active_jobs = _active_recent_jobs(conn, rows)
        next_check = now + SCHEDULE_POLL_SECONDS
        for row in rows:
            if row.state == ACTIVE:
                step = _decide(row, (row.account, _recent_key(row)) in active_jobs, now)
                if (
                    step.create is None
                    and not step.complete
                    and step.next_run_time == row.next_run_time
                ):
                    # Nothing to record: its run is not due yet, or waits for its job to end.
                    if row.next_run_time is not None and row.next_run_time > now:
                        next_check = min(next_check, row.next_run_time)
                    continue
            try:
                self._schedule_step(row.pk, now)
            except Exception:  # noqa: BLE001 - one schedule must not stop the others
                log.exception("job schedule %s/%s: step failed", row.account, row.id)
        self._next_schedules = next_check

    def wait(self, tick: float) -> float:
        """How long an idle engine may sleep: its tick, or less when a run is due sooner."""
        due = self._next_schedules
        if self._schedules_poked:
            due = min(due, self._schedules_checked + POKED_SCHEDULE_SECONDS)
        return max(0.0, min(tick, due - self.clock()))

    def _schedule_step(self, pk: int, now: float) -> None:
        """Carry out one schedule's step in its own transaction, on the row read under lock."""
        with self.store.begin() as conn:
            row = conn.execute(
                select(job_schedules).where(job_schedules.c.pk == pk).with_for_update()
            ).one_or_none()
            if row is None:
                return
            if row.state == DELETING:
                if not schedule_job_rows(conn, row):
                    conn.execute(delete(job_schedules).where(job_schedules.c.pk == row.pk))
                    end_schedule_pool(conn, row, now)
                return
            if row.state == TERMINATING:
                if all(j.state in FINISHED_JOB_STATES for j in schedule_job_rows(conn, row)):
                    move_schedule(conn, row, JobScheduleState.COMPLETED, now, end_time=now)
                return
            if row.state != ACTIVE:
                return
            recent = conn.execute(
                select(jobs.c.state).where(
                    jobs.c.account == row.account, jobs.c.id_key == _recent_key(row)
                )
            ).scalar()
            step = _decide(row, recent is not None and recent not in FINISHED_JOB_STATES, now)
            if step.complete:
                move_schedule(
                    conn, row, JobScheduleState.COMPLETED, now, next_run_time=None, end_time=now
                )
                return
            values: dict[str, Any] = {"next_run_time": step.next_run_time}
            if step.create is not None:
                values["job_count"], values["auto_pool_id"] = self._create_scheduled_job(
                    conn, row, now
                )
                values["last_run_time"] = step.create
            # Neither version nor lastModified: a new job is not a change of the schedule.
            conn.execute(
                update(job_schedules)
                .where(job_schedules.c.pk == row.pk, job_schedules.c.job_count == row.job_count)
                .values(**values)
            )

    def _create_scheduled_job(self, conn: Any, row: Any, now: float) -> tuple[int, str | None]:
        """Add the schedule's next job from its ``jobSpecification``.

        Returns:
            The job's number, and the schedule's shared auto pool (lifetime ``jobschedule``).
        """
        n: int = row.job_count + 1
        ops = JobOperations(self.store, row.account, clock=self.clock)
        job_id = scheduled_job_id(row.id, n)
        spec = {"id": job_id, **row.spec["jobSpecification"]}
        pool = schedule_pool(
            conn, PoolOperations(self.store, row.account, clock=self.clock), row, now
        )
        ops._insert_job(conn, job_id, spec, now, **pool)
        if auto_pool_of(spec):
            self._pools_changed()  # its pool (new, or shared) gets nodes at the next step
        log.info("job schedule %s/%s: created job %s", row.account, row.id, job_id)
        return n, pool.get("pool_id", row.auto_pool_id)


def _recent_key(row: Any) -> str | None:
    return scheduled_job_id(row.id_key, row.job_count) if row.job_count else None


def _decide(row: Any, job_active: bool, now: float) -> ScheduleStep:
    return advance(recurrence_of(row.spec), row.next_run_time, job_active, now)


def _active_recent_jobs(conn: Any, rows: Sequence[Any]) -> set[tuple[str, str]]:
    """``(account, job id key)`` of the schedules' recent jobs that are still active."""
    keys = {k for r in rows if r.state == ACTIVE and (k := _recent_key(r))}
    if not keys:
        return set()
    found = conn.execute(
        select(jobs.c.account, jobs.c.id_key, jobs.c.state).where(jobs.c.id_key.in_(keys))
    ).all()
    return {(j.account, j.id_key) for j in found if j.state not in FINISHED_JOB_STATES}
