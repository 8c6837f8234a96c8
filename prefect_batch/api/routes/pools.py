"""Pool paths: ``/pools``, ``/pools/{poolId}`` and its actions, ``/supportedimages``,
``/nodecounts``.

Each route authenticates (through the ``Svc`` dependency), calls one ``BatchService`` method
and answers with Azure's status. Conditional headers apply to the pool a route names.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from prefect_batch.api.context import (
    accepted,
    created,
    guard,
    json_response,
    list_response,
    no_content,
    object_body,
    ok,
    resource_response,
)
from prefect_batch.api.routes._spec import (
    Body,
    Opts,
    PoolId,
    Select,
    Svc,
    call,
    filtered_page,
    spec,
)
from prefect_batch.models import (
    AutoScaleRun,
    BatchNodeRemoveOptions,
    BatchPool,
    BatchPoolCreateOptions,
    BatchPoolEnableAutoScaleOptions,
    BatchPoolEvaluateAutoScaleOptions,
    BatchPoolNodeCounts,
    BatchPoolReplaceOptions,
    BatchPoolResizeOptions,
    BatchPoolUpdateOptions,
    BatchSupportedImage,
)

__all__ = ["router"]

router = APIRouter(tags=["pools"])


def _by_creation(item: dict[str, Any]) -> tuple[str, str]:
    return (item.get("creationTime") or "", item.get("id") or "")


@router.post(
    "/pools", **spec("create_pool", "Create a pool", status=201, body=BatchPoolCreateOptions)
)
def create_pool(svc: Svc, body: Body) -> Response:
    pool = object_body(body)
    svc.create_pool(pool)
    return created(f"{svc.base_url}/pools/{pool.get('id')}")


@router.get("/pools", **spec("list_pools", "List the account's pools", returns=list[BatchPool]))
def list_pools(request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(svc.list_pools(), opts, _by_creation)
    return list_response(items, opts.select, request, "pools", marker)


@router.head("/pools/{poolId}", **spec("pool_exists", "Whether a pool exists"))
def pool_exists(pool_id: PoolId, request: Request, svc: Svc) -> Response:
    # Through get_pool, so conditional headers apply; 404 (PoolNotFound) when it does not exist.
    guard(svc, request, "pool", read=True).get_pool(pool_id)
    return Response(status_code=200)


@router.get("/pools/{poolId}", **spec("get_pool", "Get a pool", returns=BatchPool))
def get_pool(pool_id: PoolId, request: Request, svc: Svc, names: Select) -> Response:
    pool = guard(svc, request, "pool", read=True).get_pool(pool_id)
    return resource_response(pool, names, request, "pools")


@router.patch(
    "/pools/{poolId}",
    **spec("update_pool", "Update a pool's properties", body=BatchPoolUpdateOptions),
)
def update_pool(pool_id: PoolId, request: Request, svc: Svc, body: Body) -> Response:
    guard(svc, request, "pool").update_pool(pool_id, object_body(body))
    return ok(f"{svc.base_url}/pools/{pool_id}")


@router.delete("/pools/{poolId}", **spec("delete_pool", "Delete a pool", status=202))
def delete_pool(pool_id: PoolId, request: Request, svc: Svc) -> Response:
    guard(svc, request, "pool").delete_pool(pool_id)
    return accepted()


@router.post(
    "/pools/{poolId}/updateproperties",
    **spec(
        "replace_pool_properties",
        "Replace a pool's start task, application packages and metadata",
        status=204,
        body=BatchPoolReplaceOptions,
    ),
)
def replace_pool_properties(pool_id: PoolId, request: Request, svc: Svc, body: Body) -> Response:
    call(guard(svc, request, "pool"), "replace_pool_properties", pool_id, object_body(body))
    return no_content()


@router.post(
    "/pools/{poolId}/resize",
    **spec("resize_pool", "Resize a pool", status=202, body=BatchPoolResizeOptions),
)
def resize_pool(pool_id: PoolId, request: Request, svc: Svc, body: Body) -> Response:
    guard(svc, request, "pool").resize_pool(pool_id, object_body(body))
    return accepted(f"{svc.base_url}/pools/{pool_id}")


@router.post(
    "/pools/{poolId}/stopresize",
    **spec("stop_pool_resize", "Stop resizing a pool", status=202),
)
def stop_pool_resize(pool_id: PoolId, request: Request, svc: Svc) -> Response:
    guard(svc, request, "pool").stop_pool_resize(pool_id)
    return accepted(f"{svc.base_url}/pools/{pool_id}")


@router.post(
    "/pools/{poolId}/removenodes",
    **spec("remove_nodes", "Remove nodes from a pool", status=202, body=BatchNodeRemoveOptions),
)
def remove_nodes(pool_id: PoolId, request: Request, svc: Svc, body: Body) -> Response:
    call(guard(svc, request, "pool"), "remove_nodes", pool_id, object_body(body))
    return accepted(f"{svc.base_url}/pools/{pool_id}")


@router.post(
    "/pools/{poolId}/enableautoscale",
    **spec(
        "enable_pool_auto_scale",
        "Enable autoscale on a pool",
        body=BatchPoolEnableAutoScaleOptions,
    ),
)
def enable_pool_auto_scale(pool_id: PoolId, request: Request, svc: Svc, body: Body) -> Response:
    call(guard(svc, request, "pool"), "enable_pool_auto_scale", pool_id, object_body(body))
    return ok(f"{svc.base_url}/pools/{pool_id}")


@router.post(
    "/pools/{poolId}/disableautoscale",
    **spec("disable_pool_auto_scale", "Disable autoscale on a pool"),
)
def disable_pool_auto_scale(pool_id: PoolId, request: Request, svc: Svc) -> Response:
    call(guard(svc, request, "pool"), "disable_pool_auto_scale", pool_id)
    return ok(f"{svc.base_url}/pools/{pool_id}")


@router.post(
    "/pools/{poolId}/evaluateautoscale",
    **spec(
        "evaluate_pool_auto_scale",
        "Evaluate an autoscale formula on a pool",
        body=BatchPoolEvaluateAutoScaleOptions,
        returns=AutoScaleRun,
    ),
)
def evaluate_pool_auto_scale(pool_id: PoolId, svc: Svc, body: Body) -> Response:
    run = call(svc, "evaluate_pool_auto_scale", pool_id, object_body(body))
    return json_response(run.to_wire())


@router.get(
    "/supportedimages",
    **spec(
        "list_supported_images",
        "List the node sources pools can use",
        returns=list[BatchSupportedImage],
        description="The node sources (local processes, SSH hosts, EC2) are this service's images.",
    ),
)
def list_supported_images(request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(
        svc.list_supported_images(), opts, lambda i: (i.get("nodeAgentSKUId") or "",)
    )
    return list_response(items, opts.select, request, "supportedimages", marker)


@router.get(
    "/nodecounts",
    **spec(
        "list_pool_node_counts",
        "Count the nodes of each pool by state",
        returns=list[BatchPoolNodeCounts],
    ),
)
def list_pool_node_counts(request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(
        svc.list_pool_node_counts(), opts, lambda i: (i.get("poolId") or "",)
    )
    return list_response(items, opts.select, request, "poolnodecounts", marker)


@router.get(
    "/quotas",
    **spec(
        "get_account_quotas",
        "The account's node quotas and the nodes it holds",
        extension=True,
        description="`dedicatedNodeQuota` and `lowPriorityNodeQuota` (set by the operator with "
        "`prefect-batch account set-quota`), and the account's `dedicatedNodes` now.",
    ),
)
def get_account_quotas(svc: Svc) -> Response:
    return json_response(svc.get_account_quotas())
