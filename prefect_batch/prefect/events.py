"""Prefect events about batch resources, so Automations can react to them.

Resource ids: ``prefect-batch.pool.<pool>``, ``prefect-batch.node.<pool>.<node>``,
``prefect-batch.job.<job>``, ``prefect-batch.task.<job>.<task>``; each event names the related
pool/job as ``related`` resources with a ``prefect.resource.role``. Event names:

=================================  =========================================================
``prefect-batch.pool.created``     a flow or ``BatchPool.ensure`` created the pool
``prefect-batch.pool.resized``     ``BatchPool.ensure`` asked for a new node count
``prefect-batch.pool.updated``     ``BatchPool.ensure`` patched the start task or metadata
``prefect-batch.node.unusable``    a followed pool's node became ``unusable``
``prefect-batch.node.starttaskfailed``  a followed pool's node's start task failed
``prefect-batch.task.failed``      a followed job's task completed with failure
``prefect-batch.job.completed``    a followed job ended (payload: counts and terminate reason)
=================================  =========================================================

They are emitted by the flows and blocks, not by the engine: a pool nobody follows emits nothing.
:func:`prefect.events.emit_event` is fire-and-forget (a websocket, batched). Outside a flow run
and with no ``PREFECT_API_URL``, nothing is sent (rather than starting Prefect's ephemeral server).

This module decides names and shapes only; it keeps no state.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = [
    "job_completed",
    "job_resource_id",
    "node_state_changed",
    "pool_created",
    "pool_resized",
    "pool_resource_id",
    "pool_updated",
    "task_failed",
    "task_resource_id",
]

logger = logging.getLogger(__name__)

PREFIX = "prefect-batch"


def pool_resource_id(pool_id: str) -> str:
    """``prefect-batch.pool.<id>``."""
    return f"{PREFIX}.pool.{pool_id}"


def job_resource_id(job_id: str) -> str:
    """``prefect-batch.job.<id>``."""
    return f"{PREFIX}.job.{job_id}"


def task_resource_id(job_id: str, task_id: str) -> str:
    """``prefect-batch.task.<job>.<task>``."""
    return f"{PREFIX}.task.{job_id}.{task_id}"


def node_resource_id(pool_id: str, node_id: str) -> str:
    """``prefect-batch.node.<pool>.<node>``."""
    return f"{PREFIX}.node.{pool_id}.{node_id}"


def _resource(rid: str, name: str, kind: str) -> dict[str, str]:
    return {"prefect.resource.id": rid, "prefect.resource.name": name, "prefect-batch.kind": kind}


def _related(rid: str, role: str) -> dict[str, str]:
    return {"prefect.resource.id": rid, "prefect.resource.role": role}


def _api_available() -> bool:
    """A Prefect API to send to: configured, or the one the current run already talks to.

    Without this, an event sent from a plain script (``BatchPool.ensure()``) would start
    Prefect's ephemeral server, ~10 s, just to deliver it.
    """
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value()) or bool(FlowRunContext.get() or TaskRunContext.get())


def _emit(
    event: str,
    resource: dict[str, str],
    payload: dict[str, Any],
    related: list[dict[str, str]] | None = None,
) -> None:
    if not _api_available():
        logger.debug("no Prefect API configured: %s not emitted", event)
        return
    from prefect.events import emit_event

    try:
        emit_event(event=event, resource=resource, payload=payload, related=related or [])
    except Exception:  # an event is never worth failing a flow for
        logger.debug("could not emit %s", event, exc_info=True)


def pool_created(pool_id: str, spec: dict[str, Any]) -> None:
    """The pool was created from a block."""
    _emit(
        f"{PREFIX}.pool.created",
        _resource(pool_resource_id(pool_id), pool_id, "pool"),
        {
            "vmSize": spec.get("vmSize"),
            "targetDedicatedNodes": spec.get("targetDedicatedNodes"),
            "taskSlotsPerNode": spec.get("taskSlotsPerNode"),
        },
    )


def pool_resized(pool_id: str, previous: int | None, target: int) -> None:
    """A resize of the pool to ``target`` dedicated nodes was asked for."""
    _emit(
        f"{PREFIX}.pool.resized",
        _resource(pool_resource_id(pool_id), pool_id, "pool"),
        {"previousTargetDedicatedNodes": previous, "targetDedicatedNodes": target},
    )


def pool_updated(pool_id: str, changed: list[str]) -> None:
    """The pool's start task or metadata was patched."""
    _emit(
        f"{PREFIX}.pool.updated",
        _resource(pool_resource_id(pool_id), pool_id, "pool"),
        {"changed": changed},
    )


def node_state_changed(pool_id: str, node_id: str, state: str, detail: dict[str, Any]) -> None:
    """A node entered ``unusable`` or ``starttaskfailed``."""
    _emit(
        f"{PREFIX}.node.{state}",
        _resource(node_resource_id(pool_id, node_id), node_id, "node"),
        {"state": state, **detail},
        [_related(pool_resource_id(pool_id), "pool")],
    )


def task_failed(job_id: str, pool_id: str | None, result: Any) -> None:
    """A task completed with failure (``result`` is a ``BatchTaskResult``)."""
    related = [_related(job_resource_id(job_id), "job")]
    if pool_id:
        related.append(_related(pool_resource_id(pool_id), "pool"))
    _emit(
        f"{PREFIX}.task.failed",
        _resource(task_resource_id(job_id, result.task_id), result.task_id, "task"),
        {
            "exitCode": result.exit_code,
            "nodeId": result.node_id,
            "retryCount": result.retry_count,
            "requeueCount": result.requeue_count,
            "failureCategory": result.failure_category,
            "failureCode": result.failure_code,
            "failureMessage": result.failure_message,
        },
        related,
    )


def job_completed(job_id: str, pool_id: str | None, payload: dict[str, Any]) -> None:
    """A followed job ended."""
    related = [_related(pool_resource_id(pool_id), "pool")] if pool_id else []
    _emit(
        f"{PREFIX}.job.completed",
        _resource(job_resource_id(job_id), job_id, "job"),
        payload,
        related,
    )
