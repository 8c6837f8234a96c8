"""The state of one evaluation (:class:`Frame`) and the sample methods that read it.

A frame holds the environment, the variables assigned so far and the random source. Compiled
statements (``compiler.py``) read and write it; ``evaluator.py`` creates one per run and turns
what is left in it into the results.

Sample methods, on the sampled service variables (case-insensitive names):

=====================================================  =======================================
method                                                 result
=====================================================  =======================================
``GetSample(count)``                                   the ``count`` (truncated) latest
                                                       samples, fewer if fewer exist, none for
                                                       ``count <= 0``; never fails
``GetSample(start [, end] [, percent])``               the samples in the window
``GetSamplePercent(start [, end])``                    0-100: samples in the window against
                                                       the number the window should hold
``GetSamplePeriod()``                                  the sampling interval (timeinterval)
``Count()``                                            samples in the history
``HistoryBeginTime()``                                 the oldest sample's time (``now`` when
                                                       there is none)
=====================================================  =======================================

Windows: ``start`` and ``end`` are each a timeinterval (that long before ``now``) or a
timestamp; the window runs from the earlier to the later of the two (``end`` defaults to
``now``), excluding its earlier edge and including its later one, so ``GetSample(180 *
TimeInterval_Second)`` at 30-s sampling holds at most 6 samples. A window "should hold"
``length // sample period`` samples (at least 1); the percent is capped at 100. With a
``percent``, a window that holds less fails the evaluation with ``InsufficientSampleData``:
``Line 1, Col 30: Insufficient data from data set: $PendingTasks wanted 70%, received 50%``
(received rounded down). Without one, ``GetSample`` never fails. Vectors are oldest first.
Samples stamped after ``now`` are never seen.
"""

from __future__ import annotations

import math
import random as random_module
from collections.abc import Callable
from typing import Any

from prefect_batch.core.autoscale.environment import AutoScaleEnvironment, SampleSeries
from prefect_batch.core.autoscale.errors import INSUFFICIENT_SAMPLE_DATA, EvaluationFailure
from prefect_batch.core.autoscale.values import (
    TimeInterval,
    Timestamp,
    Type,
    Value,
    format_double,
)

__all__ = ["METHODS", "Frame", "Method"]


class Frame:
    """One evaluation's state.

    Attributes:
        environment: What the formula reads.
        now: The evaluation time.
        variables: User variables assigned so far, by lower-cased name.
        targets: Settable service variables assigned so far, by lower-cased name as written
            (``targetdedicated`` and ``targetdedicatednodes`` are kept apart: the full name
            wins when both are set).
        node_values: Bare read-only service variables by canonical name.
    """

    __slots__ = ("environment", "node_values", "now", "period", "targets", "variables", "_random")

    def __init__(self, environment: AutoScaleEnvironment) -> None:
        self.environment = environment
        self.now = Timestamp(environment.now_ticks)
        self.period = environment.sample_period_ticks
        self.variables: dict[str, Value] = {}
        self.targets: dict[str, Value] = {}
        self.node_values: dict[str, float] = {
            "$CurrentDedicatedNodes": float(environment.current_dedicated_nodes),
            "$CurrentLowPriorityNodes": float(environment.current_low_priority_nodes),
            "$PreemptedNodeCount": float(environment.preempted_node_count),
            "$UsableNodeCount": float(environment.usable_node_count),
            "$TaskSlotsPerNode": float(environment.task_slots_per_node),
        }
        self._random = environment.random

    def rand(self) -> float:
        """The next number from the random source (seeded from ``now`` when none was given)."""
        if self._random is None:
            self._random = random_module.Random(self.now.ticks).random
        return float(self._random())

    def target(self, full: str, alias: str, current: int) -> Value:
        """A target as the formula reads it: the full name's value, the alias's, or ``current``."""
        if full in self.targets:
            return self.targets[full]
        if alias in self.targets:
            return self.targets[alias]
        return float(current)

    def series(self, metric: str) -> SampleSeries:
        """The sample series of a canonical metric name."""
        return self.environment.samples(metric)


# --- sample methods ------------------------------------------------------------------------------

Method = tuple[Callable[[tuple[Type, ...]], Type | None], str, Callable[..., Value]]
"""(result type for argument types, signature for messages, code(frame, metric, args))."""

_TIME = (Type.TIMESTAMP, Type.INTERVAL)


def _window_types(types: tuple[Type, ...]) -> bool:
    return 1 <= len(types) <= 2 and all(t in _TIME for t in types)


def _get_sample_type(types: tuple[Type, ...]) -> Type | None:
    if types == (Type.DOUBLE,):
        return Type.VECTOR
    if types and types[-1] is Type.DOUBLE:
        types = types[:-1]
    return Type.VECTOR if _window_types(types) else None


def _instant(frame: Frame, point: Any) -> int:
    """Ticks of a window edge: a timestamp, or an interval back from ``now``."""
    if isinstance(point, Timestamp):
        return point.ticks
    ticks: int = point.ticks
    return frame.now.ticks - ticks


def _window(frame: Frame, points: tuple[Any, ...]) -> tuple[int, int]:
    first = _instant(frame, points[0])
    second = _instant(frame, points[1]) if len(points) > 1 else frame.now.ticks
    return min(first, second), min(max(first, second), frame.now.ticks)


def _percent(frame: Frame, series: SampleSeries, after: int, until: int) -> float:
    if until <= after:
        return 0.0
    expected = max(1, (until - after) // frame.period)
    return min(100.0, 100.0 * series.count_in(after, until) / expected)


def _get_sample(frame: Frame, metric: str, args: tuple[Any, ...]) -> Value:
    series = frame.series(metric)
    if len(args) == 1 and isinstance(args[0], float):
        count = args[0]
        if math.isnan(count):
            raise EvaluationFailure("GetSample(): the count is not a number")
        return series.last(int(min(count, len(series))) if count > 0 else 0, frame.now.ticks)
    wanted: float | None = None
    if isinstance(args[-1], float):
        wanted = args[-1]
        args = args[:-1]
    after, until = _window(frame, args)
    if wanted is not None and wanted > 0:
        received = _percent(frame, series, after, until)
        if received < wanted:
            raise EvaluationFailure(
                f"Insufficient data from data set: {metric} wanted {format_double(wanted)}%, "
                f"received {math.floor(received)}%",
                INSUFFICIENT_SAMPLE_DATA,
            )
    return series.window(after, until)


def _get_sample_percent(frame: Frame, metric: str, args: tuple[Any, ...]) -> Value:
    after, until = _window(frame, args)
    return _percent(frame, frame.series(metric), after, until)


def _history_begin_time(frame: Frame, metric: str, args: tuple[Any, ...]) -> Value:
    series = frame.series(metric)
    if series.count_until(frame.now.ticks) == 0:
        return frame.now
    return Timestamp(series.ticks[0])


def _no_args(result: Type) -> Callable[[tuple[Type, ...]], Type | None]:
    return lambda types: result if not types else None


METHODS: dict[str, tuple[str, Method]] = {
    "getsample": (
        "GetSample",
        (_get_sample_type, "GetSample(count | start [, end] [, percent])", _get_sample),
    ),
    "getsamplepercent": (
        "GetSamplePercent",
        (
            lambda types: Type.DOUBLE if _window_types(types) else None,
            "GetSamplePercent(start [, end])",
            _get_sample_percent,
        ),
    ),
    "getsampleperiod": (
        "GetSamplePeriod",
        (
            _no_args(Type.INTERVAL),
            "GetSamplePeriod()",
            lambda frame, metric, args: TimeInterval(frame.period),
        ),
    ),
    "count": (
        "Count",
        (
            _no_args(Type.DOUBLE),
            "Count()",
            lambda frame, metric, args: float(frame.series(metric).count_until(frame.now.ticks)),
        ),
    ),
    "historybegintime": (
        "HistoryBeginTime",
        (_no_args(Type.TIMESTAMP), "HistoryBeginTime()", _history_begin_time),
    ),
}
"""Sample methods by lower-cased name: (canonical name, method)."""
