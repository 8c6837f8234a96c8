"""Autoscale samples: each pool's metrics every sample interval, stored, trimmed and read back.

The engine that holds a pool's lease takes a sample of it every sample interval (Azure: 30 s;
``autoscale_sample_interval_seconds``, at least 1 s) and stores it as one ``pool_samples`` row:
the values of the sampled service variables at that time, by their canonical names.

What a sample holds, for the jobs whose pool is this one:

* **task metrics** -- ``$ActiveTasks``: tasks ready to run (active, dependencies met, job
  enabled: exactly the tasks in the dispatch queue); ``$RunningTasks``: tasks preparing or
  running; ``$PendingTasks``: their sum; ``$SucceededTasks`` / ``$FailedTasks``: tasks that
  completed since the previous sample (absent from an engine's first sample of a pool made
  before the engine's first sample: it has no base to count from); and the ``...TaskSlots``
  extensions, the same tasks counted by ``requiredSlots``;
* **node counts** -- ``$CurrentDedicatedNodes`` and ``$CurrentLowPriorityNodes`` (nodes of
  each kind not leaving the pool), ``$UsableNodeCount`` (of those, idle or running) and
  ``$PreemptedNodeCount`` (nodes listed as ``preempted``);
* **node metrics** -- from the agents' answers to the ``metrics`` request sent at the previous
  sample: ``$CPUPercent`` (0-100), ``$MemoryBytes`` and ``$DiskBytes`` (bytes in use) as the
  mean over nodes; ``$DiskReadBytes``, ``$DiskWriteBytes``, ``$DiskReadOps``,
  ``$DiskWriteOps``, ``$NetworkInBytes``, ``$NetworkOutBytes`` (increase over the interval) and
  ``$WallClockSeconds`` (seconds each node was sampled over) summed over nodes;
  ``$SampleNodeCount``: how many nodes answered. A metric no node reported is absent from the
  sample (so ``GetSamplePercent`` shows the gap). Local nodes share one machine and so each
  reports the whole machine.

Samples are kept for :data:`SAMPLE_RETENTION_SECONDS` (25 hours: a formula's look-back of up to
a day, with an hour to spare); a ``GetSample`` window further back finds nothing. Each row also
keeps the sample interval it was taken at, so an evaluation anywhere (the engine, or
``evaluate_pool_auto_scale`` in a server process) knows how many samples a window should hold.

This module neither asks agents for readings nor evaluates formulas: ``autoscaler.py`` (the
engine side) and ``autoscale.py`` (the operations) do.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select

from prefect_batch.core.autoscale import METRIC_NAMES, SampleSeries
from prefect_batch.core.autoscale.values import TICKS_PER_SECOND
from prefect_batch.core.autoscale.variables import service_variable
from prefect_batch.core.states import JobState, NodeState
from prefect_batch.store.schema import jobs, nodes, pool_samples, queue

__all__ = [
    "CHART_METRICS",
    "NODE_FIELDS",
    "SAMPLE_RETENTION_SECONDS",
    "TaskSampler",
    "load_series",
    "node_counts",
    "node_sample",
    "recent_samples",
    "store_samples",
    "trim_samples",
]

SAMPLE_RETENTION_SECONDS = 25 * 3600.0
"""How long samples are kept: a day of look-back plus an hour of margin."""

NODE_FIELDS: dict[str, str] = {
    "cpu_percent": "$CPUPercent",
    "memory_bytes": "$MemoryBytes",
    "disk_bytes": "$DiskBytes",
    "disk_read_bytes": "$DiskReadBytes",
    "disk_write_bytes": "$DiskWriteBytes",
    "disk_read_ops": "$DiskReadOps",
    "disk_write_ops": "$DiskWriteOps",
    "net_in_bytes": "$NetworkInBytes",
    "net_out_bytes": "$NetworkOutBytes",
    "interval": "$WallClockSeconds",
}
"""Fields of the agent's ``metrics`` answer -> the service variable they sample."""

_USABLE = (NodeState.IDLE.value, NodeState.RUNNING.value)

EXTRACT_AT_MOST = 3
"""Up to this many metrics, :func:`load_series` has the database extract them from the JSON."""


NODE_METRIC_NAMES: dict[str, str] = {
    "cpu_percent": "cpuPercent",
    "memory_bytes": "memoryBytes",
    "disk_bytes": "diskBytes",
    "disk_read_bytes": "diskReadBytes",
    "disk_write_bytes": "diskWriteBytes",
    "disk_read_ops": "diskReadOps",
    "disk_write_ops": "diskWriteOps",
    "net_in_bytes": "networkInBytes",
    "net_out_bytes": "networkOutBytes",
    "interval": "intervalSeconds",
    "time": "time",
}
"""Fields of the agent's ``metrics`` answer -> their names on a node's metrics."""


def node_metrics(reading: Mapping[str, Any]) -> dict[str, Any]:
    """One node's latest reading as stored on the node (camelCase, numbers or null)."""
    out: dict[str, Any] = {}
    for field, name in NODE_METRIC_NAMES.items():
        value = reading.get(field)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        out[name] = value if ok else None
    return out


def node_sample(readings: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Combine the nodes' ``metrics`` answers of one interval into a pool's node metrics."""
    values: dict[str, list[float]] = defaultdict(list)
    count = 0
    for reading in readings:
        count += 1
        for field, name in NODE_FIELDS.items():
            value = reading.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool):
                if math.isfinite(value):
                    values[name].append(float(value))
    out = {"$SampleNodeCount": float(count)}
    for name, found in values.items():
        variable = service_variable(name[1:].lower())
        total = math.fsum(found)
        out[name] = total / len(found) if variable and variable.aggregate == "mean" else total
    return out


def node_counts(conn: Connection, pool_pks: Iterable[int]) -> dict[int, dict[str, float]]:
    """The node-count variables of each pool, now."""
    pks = list(pool_pks)
    out = {
        pk: {
            "$CurrentDedicatedNodes": 0.0,
            "$CurrentLowPriorityNodes": 0.0,
            "$PreemptedNodeCount": 0.0,
            "$UsableNodeCount": 0.0,
        }
        for pk in pks
    }
    if not pks:
        return out
    rows = conn.execute(
        select(nodes.c.pool_pk, nodes.c.state, nodes.c.dedicated, nodes.c.leaving, func.count())
        .where(nodes.c.pool_pk.in_(pks))
        .group_by(nodes.c.pool_pk, nodes.c.state, nodes.c.dedicated, nodes.c.leaving)
    ).all()
    for pool_pk, state, dedicated, leaving, n in rows:
        if state == "preempted":
            out[pool_pk]["$PreemptedNodeCount"] += n
        if leaving:
            continue
        current = "$CurrentLowPriorityNodes" if dedicated is False else "$CurrentDedicatedNodes"
        out[pool_pk][current] += n
        if state in _USABLE:
            out[pool_pk]["$UsableNodeCount"] += n
    return out


class TaskSampler:
    """Task metrics of pools from the store's counters.

    ``$SucceededTasks`` and ``$FailedTasks`` are differences of the jobs' completion counters
    between two samples, so the sampler remembers each job's counters from its previous sample.
    Only jobs whose counters can still change are read: jobs not completed, and jobs that
    completed since the previous sample.
    """

    def __init__(self) -> None:
        self._done: dict[int, tuple[int, int, int, int]] = {}
        self._pools: set[int] = set()
        self._last: float | None = None

    def sample(
        self,
        conn: Connection,
        pool_keys: Mapping[int, str],
        now: float,
        created: Mapping[int, float] | None = None,
    ) -> dict[int, dict[str, float]]:
        """Task metrics per pool (``pool_keys``: pool pk -> the queue's pool key; ``created``:
        pool pk -> its creation time)."""
        by_key = {key: pk for pk, key in pool_keys.items()}
        last = self._last
        # Pools made since the previous sample: everything they completed is new.
        new_pools = {
            pk
            for pk, when in (created or {}).items()
            if last is not None and when > last and pk not in self._pools
        }
        out: dict[int, dict[str, float]] = {pk: {} for pk in pool_keys}
        active: dict[int, tuple[int, int]] = {}
        if by_key:
            for key, n, slots in conn.execute(
                select(queue.c.pool_key, func.count(), func.coalesce(func.sum(queue.c.slots), 0))
                .where(queue.c.pool_key.in_(list(by_key)))
                .group_by(queue.c.pool_key)
            ).all():
                active[by_key[key]] = (int(n), int(slots))
        running: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        finished: dict[int, list[int]] = {pk: [0, 0, 0, 0] for pk in pool_keys}
        done: dict[int, tuple[int, int, int, int]] = {}
        job_rows = (
            conn.execute(
                select(
                    jobs.c.pk,
                    jobs.c.pool_key,
                    jobs.c.creation_time,
                    jobs.c.n_running,
                    jobs.c.s_running,
                    jobs.c.n_succeeded,
                    jobs.c.n_failed,
                    jobs.c.s_succeeded,
                    jobs.c.s_failed,
                ).where(
                    jobs.c.pool_key.in_(list(by_key)),
                    or_(
                        jobs.c.state != JobState.COMPLETED.value,
                        jobs.c.end_time >= (last if last is not None else now),
                    ),
                )
            ).all()
            if by_key
            else []
        )
        for job in job_rows:
            pool_pk = by_key[job.pool_key]
            running[pool_pk][0] += job.n_running
            running[pool_pk][1] += job.s_running
            counters = (job.n_succeeded, job.n_failed, job.s_succeeded, job.s_failed)
            done[job.pk] = counters
            before = self._done.get(job.pk)
            if before is None:
                # A job (or pool) made since the previous sample had nothing completed before
                # it; any other job seen for the first time (the engine's first sample of the
                # pool) has no base.
                new = last is not None and job.creation_time > last
                before = (0, 0, 0, 0) if new or pool_pk in new_pools else counters
            for i in range(4):
                # A reactivated task lowers a failed count: that is no completion.
                finished[pool_pk][i] += max(0, counters[i] - before[i])
        for pool_pk in pool_keys:
            n_active, s_active = active.get(pool_pk, (0, 0))
            n_running, s_running = running[pool_pk]
            sample = out[pool_pk]
            sample.update(
                {
                    "$ActiveTasks": float(n_active),
                    "$RunningTasks": float(n_running),
                    "$PendingTasks": float(n_active + n_running),
                    "$ActiveTaskSlots": float(s_active),
                    "$RunningTaskSlots": float(s_running),
                    "$PendingTaskSlots": float(s_active + s_running),
                }
            )
            if pool_pk in self._pools or pool_pk in new_pools:
                succeeded, failed, _, _ = finished[pool_pk]
                sample.update({"$SucceededTasks": float(succeeded), "$FailedTasks": float(failed)})
        self._done = done
        self._pools = set(pool_keys)
        self._last = now
        return out


def store_samples(
    conn: Connection, samples: Mapping[int, Mapping[str, float]], now: float, period: float
) -> None:
    """Write one sample per pool, stamped ``now`` and taken every ``period`` seconds."""
    if samples:
        conn.execute(
            insert(pool_samples),
            [
                {"pool_pk": pk, "time": now, "period": period, "sample": dict(sample)}
                for pk, sample in samples.items()
            ],
        )


def trim_samples(conn: Connection, pool_pks: Iterable[int], now: float) -> None:
    """Delete the samples of these pools older than :data:`SAMPLE_RETENTION_SECONDS`."""
    pks = list(pool_pks)
    if pks:
        conn.execute(
            delete(pool_samples).where(
                pool_samples.c.pool_pk.in_(pks),
                pool_samples.c.time < now - SAMPLE_RETENTION_SECONDS,
            )
        )


CHART_METRICS = ("$CurrentDedicatedNodes", "$UsableNodeCount", "$RunningTasks", "$ActiveTasks")
"""The metrics a pool's chart shows by default: nodes, usable nodes, running and queued tasks."""


def recent_samples(
    conn: Connection, pool_pk: int, since: float, metrics: Iterable[str]
) -> list[dict[str, Any]]:
    """The pool's samples taken after ``since``, oldest first: ``time`` and each metric."""
    wanted = [m for m in metrics if m in METRIC_NAMES]
    rows = conn.execute(
        select(pool_samples.c.time, *[pool_samples.c.sample[m].as_float() for m in wanted])
        .where(pool_samples.c.pool_pk == pool_pk, pool_samples.c.time > since)
        .order_by(pool_samples.c.time, pool_samples.c.pk)
    ).all()
    return [{"time": row[0], **dict(zip(wanted, row[1:], strict=True))} for row in rows]


def load_series(
    conn: Connection, pool_pk: int, now: float, metrics: Iterable[str]
) -> tuple[dict[str, SampleSeries], float | None]:
    """The pool's sample series of ``metrics`` (canonical names) up to ``now``, and the sample
    interval of the latest sample (``None`` without samples).

    Only the retained window is read, and only when some metric is asked for.
    """
    wanted = sorted(m for m in metrics if m in METRIC_NAMES)
    if not wanted:
        return {}, None
    # For a few metrics the database takes their values out of each sample's JSON, which costs
    # a fraction of decoding every sample whole in Python; for many, decoding wins.
    extract = len(wanted) <= EXTRACT_AT_MOST
    columns = (
        [pool_samples.c.sample[m].as_float() for m in wanted]
        if extract
        else [pool_samples.c.sample]
    )
    rows = conn.execute(
        select(pool_samples.c.time, pool_samples.c.period, *columns)
        .where(
            pool_samples.c.pool_pk == pool_pk,
            pool_samples.c.time > now - SAMPLE_RETENTION_SECONDS,
            pool_samples.c.time <= now,
        )
        .order_by(pool_samples.c.time, pool_samples.c.pk)
    ).all()
    ticks: list[list[int]] = [[] for _ in wanted]
    values: list[list[float]] = [[] for _ in wanted]
    for row in rows:
        tick = round(row[0] * TICKS_PER_SECOND)
        found = row[2:] if extract else [row[2].get(m) for m in wanted]
        for i, value in enumerate(found):
            if value is not None:
                ticks[i].append(tick)
                values[i].append(float(value))
    series = {m: SampleSeries(tuple(ticks[i]), tuple(values[i])) for i, m in enumerate(wanted)}
    return series, (rows[-1][1] if rows else None)
