"""Node paths: ``/pools/{poolId}/nodes`` and a node's actions (files are in ``files.py``).

Node actions are recorded by the service and carried out by the engine that holds the node's
pool; the answer (202 or 200, as Azure's) comes once the request is durable.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from prefect_batch.api.context import (
    accepted,
    json_response,
    list_response,
    object_body,
    ok,
    resource_response,
)
from prefect_batch.api.routes._spec import (
    Body,
    NodeId,
    Opts,
    PoolId,
    Select,
    Svc,
    call,
    filtered_page,
    spec,
)
from prefect_batch.models import (
    BatchNode,
    BatchNodeDisableSchedulingOptions,
    BatchNodeRebootOptions,
    BatchNodeReimageOptions,
)

__all__ = ["router"]

router = APIRouter(tags=["nodes"])


def _by_id(item: dict[str, Any]) -> tuple[str]:
    return (item.get("id") or "",)


def _options(body: Any) -> dict[str, Any] | None:
    return object_body(body, required=False) or None


@router.get(
    "/pools/{poolId}/nodes",
    **spec("list_nodes", "List the nodes of a pool", returns=list[BatchNode]),
)
def list_nodes(pool_id: PoolId, request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(svc.list_nodes(pool_id), opts, _by_id)
    return list_response(items, opts.select, request, "nodes", marker)


@router.get("/pools/{poolId}/nodes/{nodeId}", **spec("get_node", "Get a node", returns=BatchNode))
def get_node(
    pool_id: PoolId, node_id: NodeId, request: Request, svc: Svc, names: Select
) -> Response:
    return resource_response(svc.get_node(pool_id, node_id), names, request, "nodes")


@router.get(
    "/pools/{poolId}/nodes/{nodeId}/metrics",
    **spec(
        "get_node_metrics",
        "A node's liveness and latest resource readings",
        extension=True,
        description="`lastHeartbeat`, `time` of the reading, `cpuPercent` (0-100), "
        "`memoryBytes`, `diskBytes`, and disk/network counters since the previous reading.",
    ),
)
def get_node_metrics(pool_id: PoolId, node_id: NodeId, svc: Svc) -> Response:
    return json_response(svc.get_node_metrics(pool_id, node_id))


@router.post(
    "/pools/{poolId}/nodes/{nodeId}/reboot",
    **spec(
        "reboot_node",
        "Reboot a node",
        status=202,
        body=BatchNodeRebootOptions,
        body_required=False,
    ),
)
def reboot_node(pool_id: PoolId, node_id: NodeId, svc: Svc, body: Body) -> Response:
    call(svc, "reboot_node", pool_id, node_id, _options(body))
    return accepted()


@router.post(
    "/pools/{poolId}/nodes/{nodeId}/reimage",
    **spec(
        "reimage_node",
        "Reimage a node",
        status=202,
        body=BatchNodeReimageOptions,
        body_required=False,
    ),
)
def reimage_node(pool_id: PoolId, node_id: NodeId, svc: Svc, body: Body) -> Response:
    call(svc, "reimage_node", pool_id, node_id, _options(body))
    return accepted()


@router.post(
    "/pools/{poolId}/nodes/{nodeId}/disablescheduling",
    **spec(
        "disable_node_scheduling",
        "Stop scheduling tasks on a node",
        body=BatchNodeDisableSchedulingOptions,
        body_required=False,
    ),
)
def disable_node_scheduling(pool_id: PoolId, node_id: NodeId, svc: Svc, body: Body) -> Response:
    call(svc, "disable_node_scheduling", pool_id, node_id, _options(body))
    return ok()


@router.post(
    "/pools/{poolId}/nodes/{nodeId}/enablescheduling",
    **spec("enable_node_scheduling", "Schedule tasks on a node again"),
)
def enable_node_scheduling(pool_id: PoolId, node_id: NodeId, svc: Svc) -> Response:
    call(svc, "enable_node_scheduling", pool_id, node_id)
    return ok()
