"""Node source paths: ``/nodesources`` and ``/nodesources/{name}`` — a prefect-batch extension.

Azure Batch's images are fixed; here an account registers the SSH host groups its pools take
nodes from (``batch.node.ssh.<name>`` in ``list_supported_images``). Bodies use the field names
of :class:`prefect_batch.providers.hostgroup.SSHHostGroup` (snake_case) and never carry key
material: a group names a key file on the server's machine (``private_key_path``) or a Prefect
``Secret`` block (``private_key_secret_name``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from starlette.responses import Response

from prefect_batch.api.context import created, list_response, object_body, ok, resource_response
from prefect_batch.api.routes._spec import Body, Opts, Select, Svc, call, filtered_page, spec
from prefect_batch.models import BatchNodeSource

__all__ = ["router"]

router = APIRouter(tags=["node sources"])

SourceName = Path(alias="nodeSourceName", description="The name of the SSH host group.")


def _by_name(item: dict[str, Any]) -> tuple[str]:
    return (item.get("name") or "",)


@router.post(
    "/nodesources",
    **spec(
        "create_node_source",
        "Register an SSH host group as a node source",
        status=201,
        extension=True,
        description="Pools may then name `batch.node.ssh.<name>` as their nodeAgentSKUId.",
    ),
)
def create_node_source(svc: Svc, body: Body) -> Response:
    group = object_body(body)
    call(svc, "create_node_source", group)
    return created(f"{svc.base_url}/nodesources/{group.get('name', 'ssh')}")


@router.get(
    "/nodesources",
    **spec(
        "list_node_sources",
        "List the registered node sources",
        returns=list[BatchNodeSource],
        extension=True,
    ),
)
def list_node_sources(request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(call(svc, "list_node_sources"), opts, _by_name)
    return list_response(items, opts.select, request, "nodesources", marker)


@router.get(
    "/nodesources/{nodeSourceName}",
    **spec(
        "get_node_source", "Get a registered node source", returns=BatchNodeSource, extension=True
    ),
)
def get_node_source(request: Request, svc: Svc, names: Select, name: str = SourceName) -> Response:
    return resource_response(call(svc, "get_node_source", name), names, request, "nodesources")


@router.put(
    "/nodesources/{nodeSourceName}",
    **spec(
        "update_node_source",
        "Replace a registered node source",
        extension=True,
        description="Hosts that nodes run on cannot be dropped.",
    ),
)
def update_node_source(svc: Svc, body: Body, name: str = SourceName) -> Response:
    call(svc, "update_node_source", name, object_body(body))
    return ok(f"{svc.base_url}/nodesources/{name}")


@router.delete(
    "/nodesources/{nodeSourceName}",
    **spec(
        "delete_node_source",
        "Delete a registered node source",
        extension=True,
        description="Refused (409 NodeSourceInUse) while a pool names it.",
    ),
)
def delete_node_source(svc: Svc, name: str = SourceName) -> Response:
    call(svc, "delete_node_source", name)
    return ok()
