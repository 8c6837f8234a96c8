"""The engine's side of autoscale: sample the pools it leases, evaluate formulas that are due.

:class:`AutoScaler` is a part of :class:`~prefect_batch.service.engine.Engine`, called once
per engine step.

* **Sampling**, every sample interval: one ``pool_samples`` row per pool this engine leases
  (task metrics and node counts from the store, node metrics from the agents' ``metrics``
  answers that arrived since the previous sample; see ``rows/samples.py``), then a new ``metrics``
  request to every ready node, whose answer goes into the next sample. Samples older than the
  retention are trimmed once a minute.
* **Evaluating**, for each autoscale pool this engine leases whose evaluation is due
  (``pools.auto_scale_next``, set to "now" when autoscale is enabled or changed): the formula
  runs on the pool's samples and current counts, the run is recorded (``autoScaleRun`` and
  ``autoscale_runs``), and the next evaluation is one interval later. When the formula asks for
  other targets, the pool gets them -- target nodes, ``$NodeDeallocationOption`` as its
  deallocation option, allocation state ``resizing`` -- and the pool-size code
  (``engine/nodes.py``'s ``_reconcile``) adds or removes nodes as for any resize, whatever the node
  source. A failed evaluation (``InsufficientSampleData``...) changes nothing but the record.

This module does not decide what a formula means (``core.autoscale`` does) nor validate
formulas as they are set (``ops/autoscale.py`` does).
"""

from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import bindparam, select, update

from prefect_batch.core.states import PoolState
from prefect_batch.exceptions import BatchServiceError
from prefect_batch.service.ops.autoscale import (
    DEFAULT_EVALUATION_INTERVAL_SECONDS,
    compiled_formula,
    evaluate_on_pool,
    record_run,
    run_wire,
)
from prefect_batch.service.rows.common import iso, parse_duration
from prefect_batch.service.rows.lifecycle import pool_key
from prefect_batch.service.rows.samples import (
    TaskSampler,
    node_counts,
    node_metrics,
    node_sample,
    store_samples,
    trim_samples,
)
from prefect_batch.service.rows.statewrites import POOL_RESIZING
from prefect_batch.store.schema import nodes, pools

__all__ = ["EVALUATION_POLL_SECONDS", "MIN_SAMPLE_SECONDS", "AutoScaler"]

log = logging.getLogger("prefect_batch.engine")

MIN_SAMPLE_SECONDS = 1.0
"""The shortest sample interval an engine takes."""
EVALUATION_POLL_SECONDS = 0.5
"""How often the engine looks for autoscale evaluations that are due."""
TRIM_EVERY_SECONDS = 60.0
"""How often old samples are deleted."""

_DELETING = PoolState.DELETING.value
_NODE_METRICS = (
    update(nodes).where(nodes.c.pk == bindparam("b_pk")).values(metrics=bindparam("b_metrics"))
)


class AutoScaler:
    """Metric samples and autoscale evaluations for one engine.

    Args:
        store: The database.
        owner: The engine's lease owner: only pools it holds are sampled and evaluated.
        nodes: The engine's node runtimes by node pk (read, never changed, here).
        pools_changed: Called when an evaluation changed a pool's targets, so the engine
            reconciles pools at its next step.
        sample_seconds: How often pools are sampled (at least ``MIN_SAMPLE_SECONDS``).
    """

    def __init__(
        self,
        store: Any,
        owner: str,
        nodes: Mapping[int, Any],
        pools_changed: Callable[[], None],
        sample_seconds: float,
    ) -> None:
        if sample_seconds < MIN_SAMPLE_SECONDS:
            raise ValueError(f"the sample interval must be at least {MIN_SAMPLE_SECONDS} s")
        self.store = store
        self.owner = owner
        self._nodes = nodes
        self._pools_changed = pools_changed
        self.sample_seconds = float(sample_seconds)
        """How often pools are sampled."""
        self._next_sample = 0.0
        self._next_check = 0.0
        self._next_trim = 0.0
        # node pk -> (pool pk, the node's latest ``metrics`` answer since the previous sample)
        self._readings: dict[int, tuple[int, dict[str, Any]]] = {}
        self._tasks = TaskSampler()
        self._requests = itertools.count()

    def on_metrics(self, rt: Any, msg: dict[str, Any]) -> None:
        """A node's ``metrics`` answer: kept for the next sample of its pool."""
        self._readings[rt.pk] = (rt.pool_pk, msg)

    def step(self, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        """Sample and evaluate when their time has come (called by every engine step)."""
        try:
            if now >= self._next_sample:
                self._take_samples(now, sends)
                # Keep the samples evenly spaced unless the engine fell a whole interval behind.
                following = self._next_sample + self.sample_seconds
                self._next_sample = following if following > now else now + self.sample_seconds
            if now >= self._next_check:
                self._next_check = now + EVALUATION_POLL_SECONDS
                self._evaluate_due(now)
        except Exception:  # noqa: BLE001 - autoscale must never stop the engine's other work
            log.exception("autoscale sampling or evaluation failed; retrying")

    # -- samples ---------------------------------------------------------------------------

    def _take_samples(self, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        readings: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for pool_pk, msg in self._readings.values():
            readings[pool_pk].append(msg)
        latest = [
            {"b_pk": node_pk, "b_metrics": node_metrics(msg)}
            for node_pk, (_, msg) in self._readings.items()
            if node_pk in self._nodes
        ]
        self._readings.clear()
        with self.store.begin() as conn:
            leased = conn.execute(
                select(pools.c.pk, pools.c.account, pools.c.id, pools.c.creation_time).where(
                    pools.c.lease_owner == self.owner, pools.c.state != _DELETING
                )
            ).all()
            keys = {r.pk: str(pool_key(r.account, r.id)) for r in leased}
            created = {r.pk: r.creation_time for r in leased}
            task_metrics = self._tasks.sample(conn, keys, now, created)
            counts = node_counts(conn, keys)
            samples = {
                pk: {**task_metrics[pk], **counts[pk], **node_sample(readings.get(pk, ()))}
                for pk in keys
            }
            store_samples(conn, samples, now, self.sample_seconds)
            if latest:
                conn.execute(_NODE_METRICS, latest)
            if now >= self._next_trim:
                trim_samples(conn, keys, now)
                self._next_trim = now + TRIM_EVERY_SECONDS
        for rt in self._nodes.values():
            if rt.ready:
                sends[rt.pk].append({"op": "metrics", "req": next(self._requests)})

    # -- evaluations -----------------------------------------------------------------------

    def _evaluate_due(self, now: float) -> None:
        with self.store.read() as conn:
            due = (
                conn.execute(
                    select(pools.c.pk).where(
                        pools.c.lease_owner == self.owner,
                        pools.c.auto_scale_next.is_not(None),
                        pools.c.auto_scale_next <= now,
                        pools.c.state != _DELETING,
                    )
                )
                .scalars()
                .all()
            )
        resized = False
        for pool_pk in due:
            resized = self._evaluate_pool(pool_pk, now) or resized
        if resized:
            self._pools_changed()  # nodes come or go at the next step

    def _due_row(self, conn: Any, pool_pk: int, now: float) -> Any:
        """The pool's row if its evaluation is still due and this engine's to make."""
        row = conn.execute(select(pools).where(pools.c.pk == pool_pk)).one_or_none()
        if (
            row is None
            or row.lease_owner != self.owner
            or row.state == _DELETING
            or row.auto_scale_next is None
            or row.auto_scale_next > now
            or not row.spec.get("enableAutoScale")
        ):
            return None
        return row

    def _evaluate_pool(self, pool_pk: int, now: float) -> bool:
        """Evaluate one pool's formula and apply it; whether the targets changed."""
        # Evaluate in a read transaction (reading a day of samples takes no write lock), then
        # apply in a short write transaction if the pool did not change meanwhile.
        with self.store.read() as conn:
            row = self._due_row(conn, pool_pk, now)
            if row is None:
                return False  # changed since it was found due
            formula = row.spec.get("autoScaleFormula") or ""
            decision = None
            try:
                run = evaluate_on_pool(conn, row, now, compiled_formula(formula))
                wire = run_wire(run, now)
                decision = run.decision
            except BatchServiceError as exc:  # a stored formula this version no longer accepts
                wire = {
                    "timestamp": iso(now),
                    "error": {
                        "code": exc.code,
                        "message": exc.message,
                        "values": [{"name": k, "value": str(v)} for k, v in exc.values.items()],
                    },
                }
        with self.store.begin() as conn:
            current = self._due_row(conn, pool_pk, now)
            if (
                current is None
                or current.version != row.version
                or current.auto_scale_next != row.auto_scale_next
            ):
                return False  # changed (new formula, disabled...): evaluated again if still due
            record_run(conn, row.pk, "periodic", formula, wire, now)
            interval = (
                parse_duration(row.spec.get("autoScaleEvaluationInterval"))
                or DEFAULT_EVALUATION_INTERVAL_SECONDS
            )
            following = row.auto_scale_next + interval
            values: dict[str, Any] = {
                "auto_scale_next": following if following > now else now + interval,
                "auto_scale_run": wire,
            }
            changed = decision is not None and (
                decision.target_dedicated_nodes != current.target_dedicated
                or decision.target_low_priority_nodes != current.target_low_priority
            )
            if decision is not None and changed:
                values.update(
                    target_dedicated=decision.target_dedicated_nodes,
                    target_low_priority=decision.target_low_priority_nodes,
                    deallocation_option=decision.node_deallocation_option.value,
                    resize_errors=None,
                    last_modified=now,
                    version=pools.c.version + 1,
                )
                log.info(
                    "pool %s: autoscale target %d -> %d (%s)",
                    row.id,
                    current.target_dedicated,
                    decision.target_dedicated_nodes,
                    decision.node_deallocation_option.value,
                )
            conn.execute(update(pools).where(pools.c.pk == row.pk).values(**values))
            if changed:  # a pool still resizing from before goes on resizing
                POOL_RESIZING.write(
                    conn, pools.c.pk == row.pk, only_from=True, allocation_state_transition_time=now
                )
        return changed
