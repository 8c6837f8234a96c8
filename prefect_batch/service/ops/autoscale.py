"""Autoscale operations: enable, disable and evaluate a pool's formula; checking the settings.

Azure's rules, and where this service differs:

* A pool is sized either by ``resize_pool`` or by a formula, never both: ``resize_pool`` and
  ``stop_pool_resize`` refuse an autoscale pool (409), and autoscale cannot be turned on while a
  resize is in progress (409 ``PoolBeingResized``; stop it first).
* ``create_pool`` with ``enableAutoScale`` needs ``autoScaleFormula`` and takes no
  ``targetDedicatedNodes``/``targetLowPriorityNodes`` (``InvalidAutoScalingSettings``); without
  it, neither the formula nor the interval may be given. Formulas are checked when they are set
  (``AutoScalingFormulaSyntaxError`` naming line and column, ``AutoScaleFormulaTooLong``).
* ``autoScaleEvaluationInterval`` defaults to 15 minutes, as in Azure, but any interval from
  1 second to 168 hours is accepted (Azure's floor is 5 minutes): local pools react in seconds.
* Enabling (or changing the formula or the interval) evaluates the formula right away and then
  every interval from then on. Azure's limit of one enable call per pool every 30 seconds is not
  enforced.
* ``disable_pool_auto_scale`` leaves the pool's target where the last evaluation put it (a
  resize it started carries on; ``stop_pool_resize`` stops it); ``resize_pool`` works again.
* ``evaluate_pool_auto_scale`` needs autoscale enabled on the pool (409
  ``OperationInvalidForCurrentState`` otherwise), evaluates on the pool's samples and counts now,
  and changes nothing but the record of evaluations.

Every evaluation, periodic (by the engine, ``autoscaler.py``) or asked for, is recorded in
``autoscale_runs``; the newest :data:`MAX_RUNS_PER_POOL` per pool are kept. The pool shows the
latest periodic one as ``autoScaleRun``.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from prefect_batch.core.autoscale import (
    DEFAULT_SAMPLE_PERIOD,
    AutoScaleEnvironment,
    AutoScaleRun,
    CompiledFormula,
    compile_formula,
    evaluate_formula,
)
from prefect_batch.core.states import AllocationState, PoolState
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    invalid_property,
)
from prefect_batch.models import (
    AutoScaleRun as AutoScaleRunModel,
)
from prefect_batch.models import (
    BatchPoolEnableAutoScaleOptions,
    BatchPoolEvaluateAutoScaleOptions,
)
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.rows.common import iso, iso_duration, parse_duration
from prefect_batch.service.rows.samples import (
    CHART_METRICS,
    load_series,
    node_counts,
    recent_samples,
)
from prefect_batch.store.schema import autoscale_runs, pools

__all__ = [
    "AutoScaleOperations",
    "DEFAULT_EVALUATION_INTERVAL_SECONDS",
    "MAX_EVALUATION_INTERVAL_SECONDS",
    "MAX_RUNS_PER_POOL",
    "MIN_EVALUATION_INTERVAL_SECONDS",
    "check_create_settings",
    "compiled_formula",
    "evaluate_on_pool",
    "record_run",
    "run_wire",
]

DEFAULT_EVALUATION_INTERVAL_SECONDS = 15 * 60.0
"""Azure's default evaluation interval: 15 minutes."""
MIN_EVALUATION_INTERVAL_SECONDS = 1.0
"""The shortest interval accepted (Azure: 5 minutes)."""
MAX_EVALUATION_INTERVAL_SECONDS = 168 * 3600.0
"""The longest interval accepted (Azure's: 168 hours)."""
MAX_RUNS_PER_POOL = 100
"""Evaluations kept per pool in ``autoscale_runs``."""

INVALID_SETTINGS = "InvalidAutoScalingSettings"


@lru_cache(maxsize=256)
def compiled_formula(text: str) -> CompiledFormula:
    """``compile_formula`` with the checked result kept for the next evaluation of the text.

    Raises:
        BatchInvalidRequestError: The formula is too long or does not parse or check.
    """
    return compile_formula(text)


def _settings_error(message: str, name: str) -> BatchInvalidRequestError:
    return BatchInvalidRequestError(INVALID_SETTINGS, message, {"PropertyName": name})


def check_interval(value: Any) -> float:
    """An evaluation interval (ISO duration, timedelta or seconds; ``None``: the default) in
    seconds.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` outside 1 s .. 168 h.
    """
    seconds = parse_duration(value)
    if seconds is None:
        return DEFAULT_EVALUATION_INTERVAL_SECONDS
    if not MIN_EVALUATION_INTERVAL_SECONDS <= seconds <= MAX_EVALUATION_INTERVAL_SECONDS:
        raise invalid_property(
            "autoScaleEvaluationInterval",
            iso_duration(seconds),
            "the interval must be from 1 second to 168 hours",
        )
    return seconds


def check_create_settings(spec: dict[str, Any]) -> float | None:
    """Check the autoscale properties of a create-pool body (wire names).

    Returns:
        The evaluation interval in seconds for an autoscale pool, ``None`` for a fixed one.

    Raises:
        BatchInvalidRequestError: ``InvalidAutoScalingSettings``, a formula error, or
            ``InvalidPropertyValue`` for the interval.
    """
    if not spec.get("enableAutoScale"):
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval"):
            if spec.get(name) is not None:
                raise _settings_error(
                    f"{name} must not be specified unless enableAutoScale is true.", name
                )
        return None
    for name in ("targetDedicatedNodes", "targetLowPriorityNodes"):
        if spec.get(name) is not None:
            raise _settings_error(
                f"{name} must not be specified when enableAutoScale is true.", name
            )
    formula = spec.get("autoScaleFormula")
    if not formula:
        raise _settings_error(
            "autoScaleFormula is required when enableAutoScale is true.", "autoScaleFormula"
        )
    compiled_formula(formula)
    return check_interval(spec.get("autoScaleEvaluationInterval"))


def evaluate_on_pool(
    conn: Connection, pool: Any, now: float, compiled: CompiledFormula
) -> AutoScaleRun:
    """Evaluate a formula on a pool row: its samples up to ``now``, node counts and targets."""
    series, period = load_series(conn, pool.pk, now, compiled.metrics)
    counts = node_counts(conn, [pool.pk])[pool.pk]
    environment = AutoScaleEnvironment(
        now=datetime.fromtimestamp(now, tz=timezone.utc),
        target_dedicated_nodes=pool.target_dedicated,
        target_low_priority_nodes=pool.target_low_priority,
        current_dedicated_nodes=int(counts["$CurrentDedicatedNodes"]),
        current_low_priority_nodes=int(counts["$CurrentLowPriorityNodes"]),
        preempted_node_count=int(counts["$PreemptedNodeCount"]),
        usable_node_count=int(counts["$UsableNodeCount"]),
        task_slots_per_node=pool.task_slots_per_node,
        series=series,
        sample_period=timedelta(seconds=period) if period else DEFAULT_SAMPLE_PERIOD,
        random=random.Random().random,
    )
    return evaluate_formula(compiled, environment)


def run_wire(run: AutoScaleRun, now: float) -> dict[str, Any]:
    """The wire ``AutoScaleRun`` of an evaluation at ``now``."""
    out: dict[str, Any] = {"timestamp": iso(now)}
    if run.results:
        out["results"] = run.results
    if run.error is not None:
        out["error"] = {
            "code": run.error.code,
            "message": run.error.message,
            "values": [{"name": name, "value": value} for name, value in run.error.values],
        }
    return out


def record_run(
    conn: Connection, pool_pk: int, kind: str, formula: str, wire: dict[str, Any], now: float
) -> None:
    """Add an evaluation (``periodic`` or ``evaluate``) to the pool's record; keep the newest."""
    conn.execute(
        insert(autoscale_runs).values(
            pool_pk=pool_pk,
            timestamp=now,
            kind=kind,
            formula=formula,
            results=wire.get("results"),
            error=wire.get("error"),
        )
    )
    oldest_kept = conn.execute(
        select(autoscale_runs.c.pk)
        .where(autoscale_runs.c.pool_pk == pool_pk)
        .order_by(autoscale_runs.c.pk.desc())
        .offset(MAX_RUNS_PER_POOL - 1)
        .limit(1)
    ).scalar()
    if oldest_kept is not None:
        conn.execute(
            delete(autoscale_runs).where(
                autoscale_runs.c.pool_pk == pool_pk, autoscale_runs.c.pk < oldest_kept
            )
        )


class AutoScaleOperations(ServiceBase):
    """Enable, disable and evaluate autoscale formulas on the account's pools."""

    def enable_pool_auto_scale(
        self, pool_id: str, options: BatchPoolEnableAutoScaleOptions | dict[str, Any]
    ) -> None:
        """Size a pool by a formula, or change its formula or interval.

        With autoscale off the formula is required; with it on, at least one of the two. The
        formula is evaluated at once, and then every interval.

        Raises:
            BatchInvalidRequestError: No formula (``InvalidAutoScalingSettings``), a bad formula,
                or an interval out of range.
            BatchConflictError: The pool is being resized (``PoolBeingResized``) or deleted.
        """
        opts = self.parse(BatchPoolEnableAutoScaleOptions, options)
        if opts.auto_scale_formula is not None:
            compiled_formula(opts.auto_scale_formula)
        interval = (
            check_interval(opts.auto_scale_evaluation_interval)
            if opts.auto_scale_evaluation_interval is not None
            else None
        )
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            _check_not_deleting(row)
            spec = dict(row.spec)
            enabled = bool(spec.get("enableAutoScale"))
            if not enabled and opts.auto_scale_formula is None:
                raise _settings_error(
                    "autoScaleFormula is required to enable autoscale on a pool.",
                    "autoScaleFormula",
                )
            if enabled and opts.auto_scale_formula is None and interval is None:
                raise _settings_error(
                    "Give a new autoScaleFormula or autoScaleEvaluationInterval.",
                    "autoScaleFormula",
                )
            if not enabled and row.allocation_state != AllocationState.STEADY.value:
                raise BatchConflictError(
                    "PoolBeingResized",
                    f"The pool is being resized: {row.id}; stop the resize before enabling "
                    "autoscale.",
                    {"PoolId": row.id},
                )
            if interval is None:
                interval = check_interval(spec.get("autoScaleEvaluationInterval"))
            spec.update(
                enableAutoScale=True,
                autoScaleFormula=opts.auto_scale_formula or spec.get("autoScaleFormula"),
                autoScaleEvaluationInterval=iso_duration(interval),
            )
            conn.execute(
                update(pools)
                .where(pools.c.pk == row.pk)
                .values(
                    spec=spec,
                    auto_scale_next=now,  # evaluate now, then every interval from now
                    last_modified=now,
                    version=pools.c.version + 1,
                )
            )
        self.wake(pools=True)

    def disable_pool_auto_scale(self, pool_id: str) -> None:
        """Stop sizing a pool by formula; it keeps its current target and nodes."""
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            _check_not_deleting(row)
            spec = dict(row.spec)
            if not spec.get("enableAutoScale"):
                return
            spec["enableAutoScale"] = False
            spec.pop("autoScaleFormula", None)
            spec.pop("autoScaleEvaluationInterval", None)
            conn.execute(
                update(pools)
                .where(pools.c.pk == row.pk)
                .values(
                    spec=spec,
                    auto_scale_next=None,
                    auto_scale_run=None,
                    last_modified=now,
                    version=pools.c.version + 1,
                )
            )
        self.wake(pools=True)

    def evaluate_pool_auto_scale(
        self, pool_id: str, options: BatchPoolEvaluateAutoScaleOptions | dict[str, Any]
    ) -> AutoScaleRunModel:
        """Evaluate a formula on a pool now without applying it (a dry run).

        Returns:
            The run: ``results`` (``$TargetDedicatedNodes=..;$NodeDeallocationOption=..;...``)
            or ``error`` (e.g. ``InsufficientSampleData``, naming line and column).

        Raises:
            BatchInvalidRequestError: The formula does not parse or check.
            BatchConflictError: Autoscale is not enabled on the pool.
        """
        opts = self.parse(BatchPoolEvaluateAutoScaleOptions, options)
        compiled = compiled_formula(opts.auto_scale_formula)
        now = self.clock()
        with self.store.read() as conn:  # a day of samples is read without a write lock
            row = self._pool_row(conn, pool_id)
            if not row.spec.get("enableAutoScale"):
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    f"Autoscale is not enabled on the pool: {row.id}; enable it to evaluate "
                    "formulas on it.",
                    {"PoolId": row.id},
                )
            wire = run_wire(evaluate_on_pool(conn, row, now, compiled), now)
        with self.store.begin() as conn:
            if conn.execute(select(pools.c.pk).where(pools.c.pk == row.pk)).first():
                record_run(conn, row.pk, "evaluate", opts.auto_scale_formula, wire, now)
        return AutoScaleRunModel.model_validate(wire)

    def list_pool_samples(
        self, pool_id: str, *, hours: float = 6.0, metrics: tuple[str, ...] = CHART_METRICS
    ) -> list[dict[str, Any]]:
        """The pool's autoscale samples of the last ``hours``, oldest first (an extension).

        Each item: ``time`` (UNIX seconds) and the sampled ``metrics`` by canonical name
        (``None`` where a sample lacks one). What the web page charts; at most one day back.
        """
        since = self.clock() - min(max(hours, 0.0), 24.0) * 3600
        with self.store.read() as conn:
            row = self._pool_row(conn, pool_id)
            return recent_samples(conn, row.pk, since, metrics)


def _check_not_deleting(row: Any) -> None:
    if row.state == PoolState.DELETING.value:
        raise BatchConflictError(
            "PoolBeingDeleted", f"The pool is being deleted: {row.id}", {"PoolId": row.id}
        )
