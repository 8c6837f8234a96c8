"""How a route is declared: its OpenAPI text, body schema and answers, and its service method.

Every route names the ``BatchService`` method it calls (the Azure SDK's operation name). When
this version's service has no such method the route still exists, answers 501
``NotImplemented``, and says so in the OpenAPI document — so the document always tells which
operations work, and an operation lights up as soon as the service grows the method.

Request bodies are read as JSON and validated by the service (so a server rejects exactly what
the embedded service rejects); :func:`spec` documents their model in the OpenAPI document, and
``BODY_MODELS`` collects those models for the app to publish.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path, Query
from pydantic import BaseModel

from prefect_batch.api.context import json_body, service
from prefect_batch.api.errors import not_implemented
from prefect_batch.api.odata import (
    Filter,
    decode_token,
    page,
    parse_filter,
    parse_max_results,
    parse_select,
)
from prefect_batch.models import BatchError
from prefect_batch.service import BatchService

__all__ = [
    "BODY_MODELS",
    "Body",
    "FilePath",
    "JobId",
    "ListOptions",
    "NodeId",
    "Opts",
    "PoolId",
    "ScheduleId",
    "Select",
    "Svc",
    "TaskId",
    "UserName",
    "call",
    "filtered_page",
    "implemented",
    "list_options",
    "select_option",
    "spec",
]

BODY_MODELS: dict[str, type[BaseModel]] = {}
"""Request body models referenced by routes, by schema name (published by ``create_app``)."""

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": BatchError, "description": "An Azure Batch error (code, message, values)."},
}


def implemented(operation: str) -> bool:
    """Whether this version's ``BatchService`` offers ``operation``."""
    return callable(getattr(BatchService, operation, None))


def call(svc: BatchService, operation: str, *args: Any, **kwargs: Any) -> Any:
    """Run ``svc.<operation>(...)``, or raise 501 ``NotImplemented`` when it has none."""
    method = getattr(svc, operation, None)
    if not callable(method):
        raise not_implemented(operation)
    return method(*args, **kwargs)


def spec(
    operation: str,
    summary: str,
    *,
    status: int = 200,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    returns: Any = None,
    extension: bool = False,
    description: str = "",
    method: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for a FastAPI route decorator.

    Args:
        operation: The Azure SDK's name of the operation (the OpenAPI ``operationId``), and the
            ``BatchService`` method unless ``method`` names another.
        summary: One line for the OpenAPI document.
        status: The success status (Azure's: 200, 201, 202 or 204).
        body: The request body's model, for the document (the service validates it).
        body_required: Whether the body must be present.
        returns: The success answer's model, for the document.
        extension: Not an Azure Batch operation (a prefect-batch extension).
        description: More text for the document.
        method: The ``BatchService`` method, when its name differs from ``operation``.
    """
    available = implemented(method or operation)
    text = description
    if extension:
        text = "A prefect-batch extension; not part of the Azure Batch REST API. " + text
    if not available:
        text = (
            "**Not implemented in this version**: answers 501 `NotImplemented` until the "
            "service offers this operation. " + text
        )
    responses: dict[int | str, dict[str, Any]] = dict(_ERROR_RESPONSES)
    ok: dict[str, Any] = {"description": "Success."}
    if returns is not None:
        ok["model"] = returns
    responses[status] = ok
    if not available:
        responses[501] = {"model": BatchError, "description": "Not implemented in this version."}
    extra: dict[str, Any] = {"x-prefect-batch-implemented": available}
    if extension:
        extra["x-prefect-batch-extension"] = True
    if body is not None:
        BODY_MODELS[body.__name__] = body
        extra["requestBody"] = {
            "required": body_required,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{body.__name__}"}}
            },
        }
    return {
        "summary": summary,
        "description": text.strip() or None,
        "operation_id": operation,
        "status_code": status,
        "responses": responses,
        "openapi_extra": extra,
    }


@dataclass(frozen=True)
class ListOptions:
    """The OData options of a list request, validated."""

    filter: Filter | None
    select: frozenset[str] | None
    limit: int
    marker: Any


async def list_options(
    filter_: str | None = Query(
        None,
        alias="$filter",
        description="OData filter: eq/ne/gt/ge/lt/le, and/or/not, "
        "startswith/endswith (e.g. `state eq 'active'`).",
    ),
    select_: str | None = Query(None, alias="$select", description="Properties to return."),
    maxresults: int | None = Query(
        None, description="Items per page, 1-1000 (default 1000); more pages via odata.nextLink."
    ),
    skiptoken: str | None = Query(
        None, alias="$skiptoken", description="Where the page starts (from odata.nextLink)."
    ),
) -> ListOptions:
    """The FastAPI dependency of list routes."""
    return ListOptions(
        parse_filter(filter_),
        parse_select(select_),
        parse_max_results(maxresults),
        decode_token(skiptoken),
    )


async def select_option(
    select_: str | None = Query(None, alias="$select", description="Properties to return."),
) -> frozenset[str] | None:
    """The FastAPI dependency of get routes: ``$select``."""
    return parse_select(select_)


def filtered_page(
    items: list[BaseModel], opts: ListOptions, key: Callable[[dict[str, Any]], Sequence[Any]]
) -> tuple[list[dict[str, Any]], Any]:
    """Filter an in-memory list of resources and cut the requested page out of it."""
    wire = [i.to_wire() for i in items]  # type: ignore[attr-defined]
    if opts.filter is not None:
        wire = [w for w in wire if opts.filter(w)]
    return page(wire, key, opts.marker, opts.limit)


# Parameter types of the routes: Azure's path names on the wire, Python names in code.
PoolId = Annotated[str, Path(alias="poolId", description="The id of the pool.")]
NodeId = Annotated[str, Path(alias="nodeId", description="The id of the node.")]
JobId = Annotated[str, Path(alias="jobId", description="The id of the job.")]
TaskId = Annotated[str, Path(alias="taskId", description="The id of the task.")]
ScheduleId = Annotated[str, Path(alias="jobScheduleId", description="The id of the schedule.")]
UserName = Annotated[str, Path(alias="userName", description="The name of a node user.")]
FilePath = Annotated[
    str, Path(alias="filePath", description="The file's path under the task or node directory.")
]
Svc = Annotated[BatchService, Depends(service)]
Body = Annotated[Any, Depends(json_body)]
Opts = Annotated[ListOptions, Depends(list_options)]
Select = Annotated[frozenset[str] | None, Depends(select_option)]
