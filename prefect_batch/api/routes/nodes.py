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
    created,
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
    UserName,
    call,
    filtered_page,
    spec,
)
from prefect_batch.models import (
    BatchNode,
    BatchNodeDisableSchedulingOptions,
    BatchNodeRebootOptions,
    BatchNodeReimageOptions,
    BatchNodeRemoteLoginSettings,
    BatchNodeUserCreateOptions,
    BatchNodeUserReplaceOptions,
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


@router.get(
    "/pools/{poolId}/nodes/{nodeId}/remoteloginsettings",
    **spec(
        "get_node_remote_login_settings",
        "The SSH address and port of a node's machine",
        returns=BatchNodeRemoteLoginSettings,
        description="Refused with `OperationNotValidOnNode` for nodes on the service's machine.",
    ),
)
def get_node_remote_login_settings(pool_id: PoolId, node_id: NodeId, svc: Svc) -> Response:
    settings = call(svc, "get_node_remote_login_settings", pool_id, node_id)
    return json_response(settings.to_wire())


@router.post(
    "/pools/{poolId}/nodes/{nodeId}/users",
    **spec(
        "create_node_user",
        "Add a login user to a node",
        status=201,
        body=BatchNodeUserCreateOptions,
        description="SSH and EC2 nodes whose agent runs as root; the user is removed when it "
        "expires (`expiryTime`, default one day) or the node leaves the pool.",
    ),
)
def create_node_user(pool_id: PoolId, node_id: NodeId, svc: Svc, body: Body) -> Response:
    call(svc, "create_node_user", pool_id, node_id, object_body(body))
    return created()


@router.put(
    "/pools/{poolId}/nodes/{nodeId}/users/{userName}",
    **spec(
        "replace_node_user",
        "Replace a node user's password, key and expiry",
        body=BatchNodeUserReplaceOptions,
    ),
)
def replace_node_user(
    pool_id: PoolId, node_id: NodeId, user_name: UserName, svc: Svc, body: Body
) -> Response:
    call(svc, "replace_node_user", pool_id, node_id, user_name, object_body(body))
    return ok()


@router.delete(
    "/pools/{poolId}/nodes/{nodeId}/users/{userName}",
    **spec("delete_node_user", "Remove a login user from a node"),
)
def delete_node_user(pool_id: PoolId, node_id: NodeId, user_name: UserName, svc: Svc) -> Response:
    call(svc, "delete_node_user", pool_id, node_id, user_name)
    return ok()
