"""What a formula sees: the pool's numbers, the metric sample series, and "now".

The service side builds an :class:`AutoScaleEnvironment` for each evaluation -- the pool's
current targets and node counts, one :class:`SampleSeries` per sampled service variable, the
sampling period and the evaluation time -- and hands it to ``evaluate_formula``. Nothing here
reads a clock or a store.

Sample series are pool-level: one value per sample time. Per-node readings (a node agent's CPU
use...) are combined into pool samples by :func:`series_from_readings`, using each metric's rule
(mean for ``$CPUPercent``, ``$MemoryBytes``, ``$DiskBytes``; sum for the byte, operation and
wall-clock counters); :func:`node_count_series` gives ``$SampleNodeCount`` from the same
readings. Readings belong to the same sample when they carry the same timestamp: the sampler
stamps one tick's readings with the tick's time.

A series keeps its samples sorted by time with their times as 100-ns ticks, so a ``GetSample``
window is two binary searches and one slice.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from prefect_batch.core.autoscale.values import ticks_from_datetime
from prefect_batch.core.autoscale.variables import METRIC_NAMES, service_variable

__all__ = [
    "DEFAULT_SAMPLE_PERIOD",
    "AutoScaleEnvironment",
    "MetricReading",
    "SampleSeries",
    "node_count_series",
    "series_from_readings",
]

DEFAULT_SAMPLE_PERIOD = timedelta(seconds=30)
"""Azure samples every 30 seconds."""


@dataclass(frozen=True, slots=True)
class SampleSeries:
    """The samples of one metric, oldest first.

    Build it with :meth:`of` from ``(datetime, value)`` pairs, or -- cheaper for a sampler that
    keeps its history as ticks -- directly from the sample times (100-ns ticks since the epoch,
    :func:`~.values.ticks_from_datetime`), **sorted ascending**, and their values.
    """

    ticks: tuple[int, ...] = ()
    values: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if len(self.ticks) != len(self.values):
            raise ValueError("a sample series needs one time per value")

    @classmethod
    def of(cls, samples: Iterable[tuple[datetime, float]]) -> SampleSeries:
        """A series from ``(timestamp, value)`` pairs in any order (naive times are UTC).

        Raises:
            ValueError: A value is not a finite number.
        """
        pairs = sorted((ticks_from_datetime(when), float(value)) for when, value in samples)
        for _, value in pairs:
            if not math.isfinite(value):
                raise ValueError(f"sample values must be finite numbers, not {value}")
        return cls(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))

    def __len__(self) -> int:
        return len(self.values)

    def window(self, after: int, until: int) -> tuple[float, ...]:
        """Values sampled in ``(after, until]`` (ticks), oldest first."""
        lo = bisect_right(self.ticks, after)
        hi = bisect_right(self.ticks, until)
        return self.values[lo:hi] if lo < hi else ()

    def count_in(self, after: int, until: int) -> int:
        """How many samples fall in ``(after, until]``."""
        return max(0, bisect_right(self.ticks, until) - bisect_right(self.ticks, after))

    def last(self, count: int, until: int) -> tuple[float, ...]:
        """The ``count`` latest values sampled at or before ``until``, oldest first."""
        hi = bisect_right(self.ticks, until)
        return self.values[max(0, hi - count) : hi] if count > 0 else ()

    def count_until(self, until: int) -> int:
        """How many samples were taken at or before ``until``."""
        return bisect_right(self.ticks, until)


@dataclass(frozen=True, slots=True)
class MetricReading:
    """One node's reading of one metric at one sample time."""

    timestamp: datetime
    node_id: str
    value: float


def series_from_readings(metric: str, readings: Iterable[MetricReading]) -> SampleSeries:
    """Combine per-node readings of ``metric`` into a pool series (mean or sum per sample).

    Raises:
        ValueError: ``metric`` is not a per-node metric (see ``ServiceVariable.aggregate``).
    """
    variable = service_variable(metric.lstrip("$").lower())
    if variable is None or variable.aggregate is None:
        raise ValueError(f"{metric} is not a per-node metric")
    groups: dict[datetime, list[float]] = {}
    for reading in readings:
        groups.setdefault(reading.timestamp, []).append(float(reading.value))
    combine = math.fsum if variable.aggregate == "sum" else _mean
    return SampleSeries.of((when, combine(values)) for when, values in groups.items())


def node_count_series(readings: Iterable[MetricReading]) -> SampleSeries:
    """``$SampleNodeCount``: how many distinct nodes reported at each sample time."""
    nodes: dict[datetime, set[str]] = {}
    for reading in readings:
        nodes.setdefault(reading.timestamp, set()).add(reading.node_id)
    return SampleSeries.of((when, float(len(ids))) for when, ids in nodes.items())


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _canonical_metric(name: str) -> str:
    variable = service_variable(name.lstrip("$").lower())
    if variable is None or variable.name not in METRIC_NAMES:
        raise ValueError(f"{name!r} is not a sampled service variable")
    return variable.name


@dataclass(frozen=True)
class AutoScaleEnvironment:
    """Everything one evaluation reads; the formula's only window on the world.

    Attributes:
        now: The evaluation time: ``time()``, the end of every ``GetSample`` window, and the
            run's timestamp (naive means UTC).
        target_dedicated_nodes: The pool's current target, read as ``$TargetDedicatedNodes``
            until the formula sets it, and kept when the formula does not.
        target_low_priority_nodes: Likewise for ``$TargetLowPriorityNodes``.
        current_dedicated_nodes: ``$CurrentDedicatedNodes`` read bare.
        current_low_priority_nodes: ``$CurrentLowPriorityNodes`` read bare.
        preempted_node_count: ``$PreemptedNodeCount`` read bare.
        usable_node_count: ``$UsableNodeCount`` read bare.
        task_slots_per_node: ``$TaskSlotsPerNode``.
        series: Sample series by service variable (``"$ActiveTasks"``; case and ``$`` are
            forgiven, aliases resolved). A missing series has no samples.
        sample_period: The sampling interval, for ``GetSamplePeriod`` and for how many samples a
            window should hold (``GetSamplePercent``).
        random: The source of ``rand()``, returning floats in [0, 1]. ``None`` uses a generator
            seeded from ``now``, so an evaluation is a function of its inputs; the service
            passes ``random.Random().random`` for fresh numbers.
    """

    now: datetime
    target_dedicated_nodes: int = 0
    target_low_priority_nodes: int = 0
    current_dedicated_nodes: int = 0
    current_low_priority_nodes: int = 0
    preempted_node_count: int = 0
    usable_node_count: int = 0
    task_slots_per_node: int = 1
    series: Mapping[str, SampleSeries] = field(default_factory=dict)
    sample_period: timedelta = DEFAULT_SAMPLE_PERIOD
    random: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        if self.sample_period <= timedelta(0):
            raise ValueError("sample_period must be positive")
        canonical = {_canonical_metric(name): series for name, series in self.series.items()}
        object.__setattr__(self, "series", MappingProxyType(canonical))

    @property
    def now_ticks(self) -> int:
        """``now`` in 100-ns ticks since the epoch."""
        return ticks_from_datetime(self.now)

    @property
    def sample_period_ticks(self) -> int:
        """``sample_period`` in 100-ns ticks."""
        return self.sample_period // timedelta(microseconds=1) * 10 or 1

    def samples(self, metric: str) -> SampleSeries:
        """The series of ``metric`` (a canonical name), empty when none was given."""
        return self.series.get(metric, _NO_SAMPLES)


_NO_SAMPLES = SampleSeries()
