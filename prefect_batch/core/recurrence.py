"""When a job schedule creates its next job: Azure Batch's ``schedule`` rules, as pure functions.

A schedule's runs fall on a grid: the first at ``doNotRunUntil`` (or when the schedule was
made), then every ``recurrenceInterval``; none after ``doNotRunAfter``; without an interval,
exactly one. A run is *due* from its time on, and:

* it is created only while no other job of the schedule is active (at most one at a time);
  while one is, the run waits;
* it is lost when ``startWindow`` passes before it could be created, and in any case when the
  next run falls due (a run is never carried into the next interval);
* once no run is left and no job of the schedule is active, the schedule is complete.

:func:`advance` takes the schedule's timing, its pending run, whether its recent job is active,
and ``now``; it returns what to do. Times are UNIX seconds. This module reads no clock and
touches no store; the engine (``service/engine/schedules.py``) records and carries out the decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Recurrence", "ScheduleStep", "advance"]


@dataclass(frozen=True)
class Recurrence:
    """A schedule's timing (``schedule`` on the wire), in UNIX seconds and seconds.

    Attributes:
        do_not_run_until: No job before this time; ``None``: from the schedule's creation.
        do_not_run_after: No job after this time; ``None``: no end.
        start_window: How long a due run may wait to be created; ``None``: until the next run.
        interval: Time between runs; ``None``: one run only.
    """

    do_not_run_until: float | None = None
    do_not_run_after: float | None = None
    start_window: float | None = None
    interval: float | None = None

    def _bounded(self, when: float) -> float | None:
        if self.do_not_run_after is not None and when > self.do_not_run_after:
            return None
        return when

    def first_run(self, created: float) -> float | None:
        """The first run of a schedule made at ``created`` (``None``: it never runs)."""
        start = self.do_not_run_until if self.do_not_run_until is not None else created
        return self._bounded(start)

    def following(self, due: float) -> float | None:
        """The run after the one due at ``due`` (``None``: that was the last)."""
        if self.interval is None:
            return None
        return self._bounded(due + self.interval)

    def after_change(self, now: float, last_run: float | None) -> float | None:
        """The next run once the timing changed at ``now`` (``last_run``: the latest job's run).

        Before any job this is the first run (counted from ``now``). After one, a
        ``doNotRunUntil`` still ahead starts the grid again there; otherwise a recurring
        schedule runs an interval after its latest job, and a one-run schedule is done.
        """
        if last_run is None:
            return self.first_run(now)
        if self.do_not_run_until is not None and self.do_not_run_until > now:
            return self._bounded(self.do_not_run_until)
        return self.following(last_run)


@dataclass(frozen=True)
class ScheduleStep:
    """What the engine does with an active schedule now.

    Attributes:
        create: The time of the run to create a job for now (``None``: create none).
        next_run_time: The pending run afterwards (``None``: none left).
        complete: No run is left and no job of the schedule is active: it is complete.
    """

    create: float | None
    next_run_time: float | None
    complete: bool = False


def advance(
    recurrence: Recurrence, next_run_time: float | None, job_active: bool, now: float
) -> ScheduleStep:
    """Decide an active schedule's step at ``now``.

    Args:
        recurrence: The schedule's timing.
        next_run_time: Its pending run (``None``: none left).
        job_active: Whether its most recent job is still active (not completed or gone).
        now: The current time.

    Returns:
        The run to create (if any), the pending run afterwards, and whether it is complete.
    """
    if next_run_time is None or (
        recurrence.do_not_run_after is not None and now > recurrence.do_not_run_after
    ):
        # No run left (doNotRunAfter passed: "no Job will be created" after it).
        return ScheduleStep(None, None, complete=not job_active)
    if now < next_run_time:
        return ScheduleStep(None, next_run_time)
    due = next_run_time
    if recurrence.interval is not None:
        # The latest run due by now; earlier ones were superseded (never carried forward).
        due += math.floor((now - next_run_time) / recurrence.interval) * recurrence.interval
    following = recurrence.following(due)
    if recurrence.start_window is not None and now - due > recurrence.start_window:
        # Its window passed before it could be created: this run is lost.
        return ScheduleStep(None, following, complete=following is None and not job_active)
    if job_active:
        # At most one active job per schedule: the run waits (within its window).
        return ScheduleStep(None, due)
    return ScheduleStep(due, following)
