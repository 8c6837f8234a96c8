"""``core.recurrence``: when a job schedule's next job is due, as a table of cases.

Each case is (timing, pending run, recent job active, now) -> (run to create, pending run after,
complete). Times are seconds from 0.
"""

from __future__ import annotations

import pytest

from prefect_batch.core.recurrence import Recurrence, ScheduleStep, advance

EVERY_10 = Recurrence(interval=10)
WINDOW_2 = Recurrence(interval=10, start_window=2)
UNTIL_25 = Recurrence(interval=10, do_not_run_after=25)
ONCE = Recurrence()
ONCE_WINDOW = Recurrence(start_window=5)

CASES = [
    # not due yet
    (EVERY_10, 10.0, False, 9.0, ScheduleStep(None, 10.0)),
    # due: create it; the next one is an interval later
    (EVERY_10, 10.0, False, 10.0, ScheduleStep(10.0, 20.0)),
    (EVERY_10, 10.0, False, 13.0, ScheduleStep(10.0, 20.0)),
    # late by several intervals: only the latest run is created, on the grid
    (EVERY_10, 10.0, False, 37.0, ScheduleStep(30.0, 40.0)),
    # due while the previous job is active: it waits (and is superseded by later runs)
    (EVERY_10, 10.0, True, 12.0, ScheduleStep(None, 10.0)),
    (EVERY_10, 10.0, True, 25.0, ScheduleStep(None, 20.0)),
    # a start window passed: the run is lost, the next one is pending
    (WINDOW_2, 10.0, False, 12.5, ScheduleStep(None, 20.0)),
    (WINDOW_2, 10.0, True, 11.0, ScheduleStep(None, 10.0)),
    (WINDOW_2, 10.0, False, 11.0, ScheduleStep(10.0, 20.0)),
    # doNotRunAfter: the run after it does not exist; past it, no run at all
    (UNTIL_25, 20.0, False, 21.0, ScheduleStep(20.0, None)),
    (UNTIL_25, 30.0, False, 26.0, ScheduleStep(None, None, complete=True)),
    (UNTIL_25, 20.0, True, 26.0, ScheduleStep(None, None, complete=False)),
    # nothing left: complete once no job is active
    (EVERY_10, None, True, 50.0, ScheduleStep(None, None, complete=False)),
    (EVERY_10, None, False, 50.0, ScheduleStep(None, None, complete=True)),
    # one run only
    (ONCE, 0.0, False, 100.0, ScheduleStep(0.0, None)),
    (ONCE_WINDOW, 0.0, False, 6.0, ScheduleStep(None, None, complete=True)),
    (ONCE_WINDOW, 0.0, True, 6.0, ScheduleStep(None, None, complete=False)),
]


@pytest.mark.parametrize(("recurrence", "pending", "active", "now", "expected"), CASES)
def test_advance(
    recurrence: Recurrence,
    pending: float | None,
    active: bool,
    now: float,
    expected: ScheduleStep,
) -> None:
    assert advance(recurrence, pending, active, now) == expected


def test_first_run() -> None:
    assert Recurrence().first_run(5.0) == 5.0
    assert Recurrence(do_not_run_until=50.0).first_run(5.0) == 50.0
    assert Recurrence(do_not_run_until=50.0, do_not_run_after=40.0).first_run(5.0) is None


def test_after_change() -> None:
    # Before any job: the first run, counted from the change.
    assert Recurrence(interval=10).after_change(100.0, None) == 100.0
    # After one: an interval after the latest job's run, or a doNotRunUntil still ahead.
    assert Recurrence(interval=10).after_change(100.0, 95.0) == 105.0
    assert Recurrence(interval=10, do_not_run_until=200.0).after_change(100.0, 95.0) == 200.0
    assert Recurrence(interval=10, do_not_run_until=50.0).after_change(100.0, 95.0) == 105.0
    # A one-run schedule that already ran has no run left.
    assert Recurrence().after_change(100.0, 95.0) is None
