"""Auto pools: the pools the service creates for a job or a job schedule, and ends with them.

A job's ``poolInfo.autoPoolSpecification`` names a pool specification and a lifetime:

* ``job``: a pool ``<autoPoolIdPrefix>_<guid>`` is created with the job and deleted when the job
  completes or is deleted;
* ``jobschedule`` (only in a schedule's ``jobSpecification``): the schedule's first job creates
  the pool, later jobs share it, and it is deleted when the schedule completes or is deleted.

``keepAlive`` keeps the pool when its lifetime ends (the user deletes it). The pool is an ordinary
pool otherwise: listed, sized and deleted like any other. When it cannot be created (an unknown
node source, a formula that does not parse...) the job is ``completed`` with the reason as its
``executionInfo.schedulingError`` (Azure: "If auto Pool creation fails, the Batch service moves
the Job to a completed state").

A pool at its lifetime's end is marked ``deleting`` inside the caller's transaction; the engine
that leases it (every engine leases the pools nobody holds) removes its nodes and the row.

This module does not size or run pools (the engine does) nor validate the pool's body beyond
:meth:`~prefect_batch.service.ops.pools.PoolOperations.check_pool_spec`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from prefect_batch.core.states import PoolLifetimeOption, PoolState
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchServiceError,
)
from prefect_batch.service.rows.statewrites import pool_edge
from prefect_batch.store.schema import pools

__all__ = [
    "auto_pool_of",
    "check_auto_pool",
    "create_auto_pool",
    "end_pool",
    "end_schedule_pool",
    "mark_pool_deleting",
    "ends_with",
    "new_auto_pool_id",
    "prefixed_errors",
    "schedule_pool",
]

JOB = PoolLifetimeOption.JOB.value
JOB_SCHEDULE = PoolLifetimeOption.JOB_SCHEDULE.value
AUTO_POOL_PROPERTY = "poolInfo.autoPoolSpecification"


@contextmanager
def prefixed_errors(prefix: str) -> Iterator[None]:
    """Re-raise a request error with ``prefix.`` before the property it names."""
    try:
        yield
    except BatchInvalidRequestError as exc:
        name = exc.values.get("PropertyName")
        if not name:
            raise
        full = f"{prefix}.{name}"
        values = {**exc.values, "PropertyName": full}
        raise BatchInvalidRequestError(
            exc.code, exc.message.replace(name, full, 1), values, status_code=exc.status_code
        ) from exc


def auto_pool_of(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """The ``autoPoolSpecification`` of a job's (or job specification's) wire body, if any."""
    return ((spec or {}).get("poolInfo") or {}).get("autoPoolSpecification") or None


def check_auto_pool(spec: dict[str, Any], *, on_schedule: bool) -> None:
    """Refuse an auto pool a plain job cannot have: ``jobschedule`` needs a schedule.

    Raises:
        BatchInvalidRequestError: Naming ``poolInfo.autoPoolSpecification.poolLifetimeOption``.
    """
    auto = auto_pool_of(spec)
    if auto and auto.get("poolLifetimeOption") == JOB_SCHEDULE and not on_schedule:
        raise BatchInvalidRequestError(
            "InvalidPropertyValue",
            f"{AUTO_POOL_PROPERTY}.poolLifetimeOption jobschedule is only for a job schedule's "
            "jobSpecification; a job's own auto pool has the lifetime job",
            {
                "PropertyName": f"{AUTO_POOL_PROPERTY}.poolLifetimeOption",
                "PropertyValue": JOB_SCHEDULE,
            },
        )


def new_auto_pool_id(prefix: str | None) -> str:
    """A fresh pool id, ``<prefix>_<guid>`` (a bare guid without a prefix), at most 57 chars."""
    guid = str(uuid.uuid4())
    return f"{prefix}_{guid}" if prefix else guid


def create_auto_pool(
    conn: Any, ops: Any, auto: dict[str, Any], now: float
) -> tuple[str | None, dict[str, Any] | None]:
    """Create the pool of an auto pool specification in the caller's transaction.

    Args:
        conn: The open write transaction.
        ops: The account's :class:`~prefect_batch.service.ops.pools.PoolOperations`.
        auto: The wire ``autoPoolSpecification``.
        now: The time of the creation.

    Returns:
        ``(pool_id, None)``, or ``(None, scheduling_error)`` (the wire ``JobSchedulingError``)
        when the pool cannot be created; then nothing was written.
    """
    pool_id = new_auto_pool_id(auto.get("autoPoolIdPrefix"))
    try:
        with prefixed_errors(f"{AUTO_POOL_PROPERTY}.pool"):
            checked = ops.check_pool_spec(conn, dict(auto.get("pool") or {}))
    except (BatchInvalidRequestError, BatchConflictError) as exc:  # conflict: a certificate
        return None, _scheduling_error(exc)
    ops.insert_pool(conn, pool_id, checked, now)
    return pool_id, None


def _scheduling_error(exc: BatchServiceError) -> dict[str, Any]:
    name = str(exc.values.get("PropertyName") or "")
    formula = "autoScale" in name or exc.code.startswith("AutoScal")
    certificates = "certificateReferences" in name or exc.code.startswith("Certificate")
    code = exc.code
    if formula:
        code = "InvalidAutoScaleFormulaInAutoPool"
    elif certificates:
        code = "InvalidCertificatesInAutoPool"
    details = [{"name": k, "value": str(v)} for k, v in exc.values.items() if v is not None]
    if formula or certificates:
        details.append({"name": "Reason", "value": exc.code})
    return {"category": "usererror", "code": code, "message": exc.message, "details": details}


def ends_with(spec: dict[str, Any] | None, lifetime: str) -> bool:
    """Whether a job's (or job specification's) auto pool goes when ``lifetime`` ends."""
    auto = auto_pool_of(spec)
    return bool(
        auto and auto.get("poolLifetimeOption") == lifetime and not auto.get("keepAlive", False)
    )


def end_pool(conn: Any, account: str, pool_id: str | None, now: float) -> None:
    """Mark an auto pool ``deleting`` at the end of its lifetime (gone already: nothing).

    Its target drops to zero; the engine that leases it removes its nodes and its row.
    """
    if not pool_id:
        return
    row = conn.execute(
        select(pools.c.pk, pools.c.state).where(
            pools.c.account == account, pools.c.id_key == pool_id.casefold()
        )
    ).one_or_none()
    if row is None or row.state == PoolState.DELETING.value:
        return
    mark_pool_deleting(conn, row.pk, now)


_DELETE_POOL = pool_edge((PoolState.ACTIVE,), PoolState.DELETING)


def mark_pool_deleting(conn: Any, pool_pk: int, now: float) -> None:
    """Move a pool to ``deleting`` with a target of zero (its engine removes it)."""
    _DELETE_POOL.write(
        conn,
        pools.c.pk == pool_pk,
        expected=1,
        state_transition_time=now,
        target_dedicated=0,
        last_modified=now,
        version=pools.c.version + 1,
    )


def end_schedule_pool(conn: Any, schedule: Any, now: float) -> None:
    """A schedule's shared pool goes when the schedule completes or is deleted (no keepAlive)."""
    auto = auto_pool_of((schedule.spec or {}).get("jobSpecification")) or {}
    if schedule.auto_pool_id and not auto.get("keepAlive", False):
        end_pool(conn, schedule.account, schedule.auto_pool_id, now)


def schedule_pool(conn: Any, ops: Any, schedule: Any, now: float) -> dict[str, Any]:
    """The shared pool of a schedule's next job (lifetime ``jobschedule``), made if need be.

    Returns:
        Keyword arguments for ``JobOperations._insert_job``: ``pool_id`` or
        ``scheduling_error``; empty when the job gets a pool of its own (or a named one).
    """
    auto = auto_pool_of(schedule.spec.get("jobSpecification"))
    if not auto or auto.get("poolLifetimeOption") != JOB_SCHEDULE:
        return {}
    if schedule.auto_pool_id:
        state = conn.execute(
            select(pools.c.state).where(
                pools.c.account == schedule.account,
                pools.c.id_key == schedule.auto_pool_id.casefold(),
            )
        ).scalar()
        if state is not None and state != PoolState.DELETING.value:
            return {"pool_id": schedule.auto_pool_id}
    pool_id, error = create_auto_pool(conn, ops, auto, now)
    if error is not None:
        return {"scheduling_error": error}
    return {"pool_id": pool_id}
