"""Job schedule operations: create, get, exists, list, update (PATCH), replace (PUT), disable,
enable, terminate, delete, and the jobs of a schedule.

A schedule stores its wire body (``schedule``, ``jobSpecification``, ``displayName``,
``metadata``) and its pending run; the engine creates its jobs, ``<scheduleId>:job-<n>``, when
runs fall due (``service/engine/schedules.py``, deciding with ``core/recurrence.py``). Every request
is checked whole before anything is written, so a refused one leaves nothing behind.

This module does not create scheduled jobs; the engine does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update

from prefect_batch.core.ids import validate_id
from prefect_batch.core.recurrence import Recurrence
from prefect_batch.core.states import (
    JOB_SCHEDULE_TRANSITIONS,
    JobScheduleState,
    JobState,
    transition,
)
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    invalid_property,
)
from prefect_batch.models import (
    BatchJob,
    BatchJobSchedule,
    BatchJobScheduleConfiguration,
    BatchJobScheduleCreateOptions,
    BatchJobScheduleUpdateOptions,
)
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.ops.jobs import check_job_spec, delete_job_rows
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.autopools import end_schedule_pool, prefixed_errors
from prefect_batch.service.rows.views import job_schedule_view, job_view
from prefect_batch.store.schema import job_schedules, jobs

__all__ = [
    "MIN_INTERVAL_SECONDS",
    "JobScheduleOperations",
    "move_schedule",
    "recurrence_of",
    "schedule_job_rows",
]

MIN_INTERVAL_SECONDS = 1.0
"""Shortest ``recurrenceInterval`` and ``startWindow`` accepted (Azure's is 1 minute)."""

ACTIVE = JobScheduleState.ACTIVE.value
DISABLED = JobScheduleState.DISABLED.value
COMPLETED = JobScheduleState.COMPLETED.value
TERMINATING = JobScheduleState.TERMINATING.value
DELETING = JobScheduleState.DELETING.value
FINISHED_JOB_STATES = (JobState.COMPLETED.value, JobState.DELETING.value)
"""Job states that no longer count as a schedule's active job."""

# Why an operation is refused in a state (Azure's codes).
_STATE_CONFLICTS = {
    COMPLETED: "JobScheduleCompleted",
    TERMINATING: "JobScheduleBeingTerminated",
    DELETING: "JobScheduleBeingDeleted",
    DISABLED: "JobScheduleDisabled",
}


def recurrence_of(spec: dict[str, Any]) -> Recurrence:
    """The timing of a stored schedule body, in UNIX seconds."""
    config = BatchJobScheduleConfiguration.model_validate(spec.get("schedule") or {})

    def ts(value: datetime | None) -> float | None:
        return value.timestamp() if value is not None else None

    def secs(value: Any) -> float | None:
        return value.total_seconds() if value is not None else None

    return Recurrence(
        do_not_run_until=ts(config.do_not_run_until),
        do_not_run_after=ts(config.do_not_run_after),
        start_window=secs(config.start_window),
        interval=secs(config.recurrence_interval),
    )


def schedule_job_rows(conn: Any, row: Any) -> list[Any]:
    """The jobs a schedule created that still exist, oldest first."""
    return list(
        conn.execute(
            select(jobs)
            .where(
                jobs.c.account == row.account,
                jobs.c.id_key.startswith(f"{row.id_key}:job-", autoescape=True),
            )
            .order_by(jobs.c.pk)
        ).all()
    )


def move_schedule(conn: Any, row: Any, target: JobScheduleState, now: float, **values: Any) -> None:
    """Move a schedule along a legal edge of ``JOB_SCHEDULE_TRANSITIONS``, with ``values``.

    Raises:
        IllegalTransitionError: The table has no such edge (a bug, not a user error).
    """
    change = transition(
        JOB_SCHEDULE_TRANSITIONS,
        JobScheduleState(row.state),
        target,
        now=datetime.fromtimestamp(now, tz=timezone.utc),
    )
    conn.execute(
        update(job_schedules)
        .where(job_schedules.c.pk == row.pk)
        .values(
            state=change.state,
            previous_state=change.previous_state,
            previous_state_transition_time=row.state_transition_time,
            state_transition_time=now,
            last_modified=now,
            version=job_schedules.c.version + 1,
            **values,
        )
    )
    if change.state == COMPLETED:
        end_schedule_pool(conn, row, now)


def _check_schedule(schedule: dict[str, Any]) -> Recurrence:
    """The timing of a ``schedule`` body, refused when an interval is too short or the times
    are out of order."""
    recurrence = recurrence_of({"schedule": schedule})
    for name, value in (
        ("recurrenceInterval", recurrence.interval),
        ("startWindow", recurrence.start_window),
    ):
        if value is not None and value < MIN_INTERVAL_SECONDS:
            raise invalid_property(
                f"schedule.{name}",
                schedule.get(name),
                f"must be at least {MIN_INTERVAL_SECONDS:g} s",
            )
    until, after = recurrence.do_not_run_until, recurrence.do_not_run_after
    if until is not None and after is not None and after < until:
        raise invalid_property(
            "schedule.doNotRunAfter",
            schedule.get("doNotRunAfter"),
            "must not be earlier than schedule.doNotRunUntil",
        )
    return recurrence


def _check_job_specification(spec: dict[str, Any]) -> None:
    """:func:`check_job_spec` on a ``jobSpecification``, naming properties from the body's root."""
    with prefixed_errors("jobSpecification"):
        check_job_spec(spec, on_schedule=True)


class JobScheduleOperations(ServiceBase):
    """Job schedule operations of one account."""

    def _schedule_row(self, conn: Any, schedule_id: str) -> Any:
        row = conn.execute(
            select(job_schedules).where(
                job_schedules.c.account == self.account,
                job_schedules.c.id_key == schedule_id.casefold(),
            )
        ).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "JobScheduleNotFound",
                f"The specified job schedule does not exist: {schedule_id}",
                {"JobScheduleId": schedule_id},
            )
        if "jobschedule" in self.preconditions:  # conditional request (see ServiceBase)
            self.preconditions["jobschedule"](row)
        return row

    @staticmethod
    def _refuse_in(row: Any, states: tuple[str, ...], action: str) -> None:
        if row.state in states:
            raise BatchConflictError(
                _STATE_CONFLICTS.get(row.state, "OperationInvalidForCurrentState"),
                f"The job schedule cannot be {action} while it is {row.state}: {row.id}",
                {"JobScheduleId": row.id, "JobScheduleState": row.state},
            )

    def create_job_schedule(
        self, job_schedule: BatchJobScheduleCreateOptions | dict[str, Any]
    ) -> None:
        """Create a job schedule; its first job is due at ``doNotRunUntil`` (or now)."""
        opts = self.parse(BatchJobScheduleCreateOptions, job_schedule)
        validate_id(opts.id)
        spec = opts.to_wire()
        schedule_id = spec.pop("id")
        recurrence = _check_schedule(spec["schedule"])
        _check_job_specification(spec["jobSpecification"])
        now = self.clock()
        with self.store.begin() as conn:
            key = schedule_id.casefold()
            if conn.execute(
                select(job_schedules.c.pk).where(
                    job_schedules.c.account == self.account, job_schedules.c.id_key == key
                )
            ).first():
                raise BatchConflictError(
                    "JobScheduleExists",
                    f"The specified job schedule already exists: {schedule_id}",
                    {"JobScheduleId": schedule_id},
                )
            # A job and a job schedule never share an id (Azure).
            if conn.execute(
                select(jobs.c.pk).where(jobs.c.account == self.account, jobs.c.id_key == key)
            ).first():
                raise BatchConflictError(
                    "JobWithSameIdExists",
                    f"A job with the same id exists: {schedule_id}",
                    {"JobScheduleId": schedule_id},
                )
            conn.execute(
                insert(job_schedules).values(
                    account=self.account,
                    id=schedule_id,
                    id_key=key,
                    state=ACTIVE,
                    state_transition_time=now,
                    creation_time=now,
                    last_modified=now,
                    version=1,
                    spec=spec,
                    next_run_time=recurrence.first_run(now),
                    job_count=0,
                )
            )
        self.wake()

    def get_job_schedule(self, job_schedule_id: str) -> BatchJobSchedule:
        """One job schedule."""
        with self.store.read() as conn:
            row = self._schedule_row(conn, job_schedule_id)
        return BatchJobSchedule.model_validate(job_schedule_view(row, self.base_url))

    def job_schedule_exists(self, job_schedule_id: str) -> bool:
        """Whether a job schedule exists."""
        with self.store.read() as conn:
            return (
                conn.execute(
                    select(job_schedules.c.pk).where(
                        job_schedules.c.account == self.account,
                        job_schedules.c.id_key == job_schedule_id.casefold(),
                    )
                ).first()
                is not None
            )

    def list_job_schedules(self) -> list[BatchJobSchedule]:
        """Every job schedule of the account, in creation order."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(job_schedules)
                .where(job_schedules.c.account == self.account)
                .order_by(job_schedules.c.pk)
            ).all()
        return [BatchJobSchedule.model_validate(job_schedule_view(r, self.base_url)) for r in rows]

    def list_jobs_from_schedule(self, job_schedule_id: str) -> list[BatchJob]:
        """The jobs a schedule created that still exist, oldest first."""
        with self.store.read() as conn:
            row = self._schedule_row(conn, job_schedule_id)
            rows = schedule_job_rows(conn, row)
        return [BatchJob.model_validate(job_view(r, self.base_url)) for r in rows]

    def update_job_schedule(
        self, job_schedule_id: str, job_schedule: BatchJobScheduleUpdateOptions | dict[str, Any]
    ) -> None:
        """PATCH a schedule: the properties given replace the old; later jobs use them."""
        patch = self.parse(BatchJobScheduleUpdateOptions, job_schedule).to_wire()
        self._apply_update(job_schedule_id, patch, replace=False)

    def replace_job_schedule(
        self, job_schedule_id: str, job_schedule: BatchJobScheduleUpdateOptions | dict[str, Any]
    ) -> None:
        """PUT a schedule: ``schedule`` omitted is one run now, ``metadata`` omitted is none."""
        patch = self.parse(BatchJobScheduleUpdateOptions, job_schedule).to_wire()
        if "jobSpecification" not in patch:
            raise BatchInvalidRequestError(
                "MissingRequiredProperty",
                "A required property was not specified in the request body: jobSpecification",
                {"PropertyName": "jobSpecification"},
            )
        patch.setdefault("schedule", {})
        self._apply_update(job_schedule_id, patch, replace=True)

    def _apply_update(self, schedule_id: str, patch: dict[str, Any], *, replace: bool) -> None:
        recurrence = _check_schedule(patch["schedule"]) if "schedule" in patch else None
        if "jobSpecification" in patch:
            _check_job_specification(patch["jobSpecification"])
        now = self.clock()
        with self.store.begin() as conn:
            row = self._schedule_row(conn, schedule_id)
            self._refuse_in(row, (COMPLETED, TERMINATING, DELETING), "updated")
            spec = dict(row.spec)
            spec.update(patch)
            if replace and "metadata" not in patch:
                spec.pop("metadata", None)
            values: dict[str, Any] = {
                "spec": spec,
                "last_modified": now,
                "version": job_schedules.c.version + 1,
            }
            if recurrence is not None and patch["schedule"] != row.spec.get("schedule"):
                # A new timing applies from now on, counted from the latest job's run.
                values["next_run_time"] = recurrence.after_change(now, row.last_run_time)
            conn.execute(update(job_schedules).where(job_schedules.c.pk == row.pk).values(**values))
        self.wake()

    def disable_job_schedule(self, job_schedule_id: str) -> None:
        """Disable a schedule: it creates no job until enabled; a running job goes on."""
        now = self.clock()
        with self.store.begin() as conn:
            row = self._schedule_row(conn, job_schedule_id)
            self._refuse_in(row, (DISABLED, COMPLETED, TERMINATING, DELETING), "disabled")
            move_schedule(conn, row, JobScheduleState.DISABLED, now)

    def enable_job_schedule(self, job_schedule_id: str) -> None:
        """Enable a disabled schedule: a run that fell due meanwhile is created at once."""
        now = self.clock()
        with self.store.begin() as conn:
            row = self._schedule_row(conn, job_schedule_id)
            if row.state != DISABLED:
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    f"The job schedule cannot be enabled while it is {row.state}: {row.id}",
                    {"JobScheduleId": row.id, "JobScheduleState": row.state},
                )
            move_schedule(conn, row, JobScheduleState.ACTIVE, now)
        self.wake()

    def terminate_job_schedule(self, job_schedule_id: str) -> None:
        """Terminate a schedule: no more jobs, and its active job is terminated.

        The schedule is ``terminating`` until that job has completed, then ``completed``.
        """
        now = self.clock()
        with self.store.begin() as conn:
            row = self._schedule_row(conn, job_schedule_id)
            self._refuse_in(row, (COMPLETED, TERMINATING, DELETING), "terminated")
            for job in schedule_job_rows(conn, row):
                if job.state not in (*FINISHED_JOB_STATES, JobState.TERMINATING.value):
                    lifecycle.terminate_job(conn, job, "TerminateJobSchedule", now)
            unfinished = any(
                job.state not in FINISHED_JOB_STATES for job in schedule_job_rows(conn, row)
            )
            if unfinished:
                move_schedule(conn, row, JobScheduleState.TERMINATING, now, next_run_time=None)
            else:
                move_schedule(
                    conn, row, JobScheduleState.COMPLETED, now, next_run_time=None, end_time=now
                )
        self.wake(pools=True)  # the schedule's auto pool may have ended

    def delete_job_schedule(self, job_schedule_id: str) -> None:
        """Delete a schedule and its jobs (their tasks stop, their files go).

        The schedule is ``deleting`` until the last of its jobs is gone.
        """
        now = self.clock()
        with self.store.begin() as conn:
            row = self._schedule_row(conn, job_schedule_id)
            self._refuse_in(row, (DELETING,), "deleted")
            remaining = 0
            for job in schedule_job_rows(conn, row):
                if job.state == JobState.DELETING.value or not delete_job_rows(conn, job, now):
                    remaining += 1
            if remaining:
                move_schedule(conn, row, JobScheduleState.DELETING, now, next_run_time=None)
            else:
                conn.execute(delete(job_schedules).where(job_schedules.c.pk == row.pk))
                end_schedule_pool(conn, row, now)
        self.wake(pools=True)  # the schedule's auto pool may have ended
