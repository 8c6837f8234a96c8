"""What a route gets per request, and how it answers.

* :func:`service` — the authenticated account's ``BatchService`` (URLs in answers use the
  address the client called), waking the server's engine on writes;
* :func:`json_body` — the request's JSON (at most 4 MiB, nested at most
  :data:`MAX_JSON_DEPTH` deep), validated later by the service, so a server rejects exactly what
  the embedded service rejects, with the same Azure error; a ``Content-MD5`` header, when sent,
  must match the body (400 ``Md5Mismatch``): the signature covers the header, so this check is
  what makes a signed body tamper-evident;
* :func:`conditions` — ``If-Match``, ``If-None-Match``, ``If-Modified-Since``,
  ``If-Unmodified-Since`` turned into a check the service runs on the resource's row inside its
  own transaction (so the check and the change see the same version);
* ``*_response`` — Azure's answers: JSON with ``ETag``/``Last-Modified`` for a resource, lists
  with ``odata.nextLink``, and the empty 201/202/204/200 answers of writes.

No Batch rules here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import Depends, Query, Request
from pydantic import BaseModel
from starlette.responses import Response

from prefect_batch.api.auth import authenticated
from prefect_batch.api.errors import (
    ODATA_JSON,
    condition_not_met,
    invalid_header,
    invalid_query,
    invalid_request_body,
)
from prefect_batch.api.idempotency import arm
from prefect_batch.api.odata import encode_token, select
from prefect_batch.exceptions import BatchInvalidRequestError, invalid_property
from prefect_batch.service import BatchService
from prefect_batch.service.rows.common import etag

__all__ = [
    "API_VERSIONS",
    "CERTIFICATE_API_VERSIONS",
    "LEGACY_CERTIFICATE_API_VERSION",
    "MAX_BODY_BYTES",
    "MAX_JSON_DEPTH",
    "check_content_md5",
    "accepted",
    "certificate_service",
    "conditions",
    "created",
    "json_body",
    "json_response",
    "list_response",
    "no_content",
    "ok",
    "resource_response",
    "service",
]

API_VERSIONS = ("2025-06-01",)
"""The api-version values answered (what azure-batch 15.x sends)."""

LEGACY_CERTIFICATE_API_VERSION = "2024-07-01.20.0"
"""The last api-version with Azure's (deprecated) ``/certificates``: answered by those routes
only, so clients of that API (azure-batch 14.x) can manage certificates."""
CERTIFICATE_API_VERSIONS = (*API_VERSIONS, LEGACY_CERTIFICATE_API_VERSION)

MAX_BODY_BYTES = 4 * 1024 * 1024
"""Largest request body accepted (Azure's addtaskcollection limit is about 1 MB of JSON)."""

MAX_JSON_DEPTH = 32
"""Deepest nesting of objects and arrays accepted in a body (Azure's bodies need about 8)."""


def base_url(request: Request) -> str:
    """The address the client called (scheme, host, port), for URLs in answers."""
    return str(request.base_url).rstrip("/")


async def api_version(
    value: str | None = Query(
        None,
        alias="api-version",
        description=f"The REST API version; this service speaks {', '.join(API_VERSIONS)}.",
    ),
) -> str:
    """The required ``api-version`` query parameter (Azure's error when missing or unknown)."""
    return _checked_version(value, API_VERSIONS)


async def certificate_api_version(
    value: str | None = Query(
        None,
        alias="api-version",
        description=f"The REST API version: {', '.join(CERTIFICATE_API_VERSIONS)}.",
    ),
) -> str:
    """``api-version`` of the ``/certificates`` routes: today's, or the last that had them."""
    return _checked_version(value, CERTIFICATE_API_VERSIONS)


def _checked_version(value: str | None, allowed: tuple[str, ...]) -> str:
    if not value:
        raise BatchInvalidRequestError(
            "MissingRequiredQueryParameter",
            "A query parameter that's mandatory for this request is not specified: api-version",
            {"QueryParameterName": "api-version"},
        )
    if value not in allowed:
        raise invalid_query("api-version", value, f"supported: {', '.join(allowed)}")
    return value


async def service(
    request: Request,
    account: str = Depends(authenticated),
    _version: str = Depends(api_version),
) -> BatchService:
    """The request's ``BatchService``, bound to its authenticated account.

    (This and the other dependencies that do no I/O are ``async``: they run on the event loop
    instead of costing a thread hop each; the routes, which do I/O, run in the thread pool.)
    """
    return _bound_service(request, account)


async def certificate_service(
    request: Request,
    account: str = Depends(authenticated),
    _version: str = Depends(certificate_api_version),
) -> BatchService:
    """:func:`service` for the ``/certificates`` routes (which also answer their last
    api-version, ``LEGACY_CERTIFICATE_API_VERSION``)."""
    return _bound_service(request, account)


def _bound_service(request: Request, account: str) -> BatchService:
    state = request.app.state
    engine = state.engine
    # A write carrying client-request-id is recorded under this (authenticated) account.
    arm(account, request.scope.get("route"))
    return BatchService(
        state.store,
        account,
        base_url=base_url(request),
        wake=engine.wake if engine is not None else None,
        file_sandbox=getattr(state, "ssh_files_dir", None),
        strict=True,
        cloud_accounts=getattr(state, "cloud_accounts", ()),
    )


ServiceDep = Depends(service)


async def json_body(request: Request) -> Any:
    """The parsed JSON body (``None`` when there is none)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise invalid_request_body(f"more than {MAX_BODY_BYTES} bytes", status_code=413)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY_BYTES:
            raise invalid_request_body(f"more than {MAX_BODY_BYTES} bytes", status_code=413)
    check_content_md5(request.headers.get("content-md5"), bytes(raw))
    if not raw.strip():
        return None
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError as exc:  # the parser gives up far deeper than MAX_JSON_DEPTH
        raise invalid_request_body(_TOO_DEEP) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_request_body(f"not JSON: {exc}") from exc
    if _depth_over(body, MAX_JSON_DEPTH):
        raise invalid_request_body(_TOO_DEEP)
    _check_numbers(body)
    return body


def _no_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity`` are not JSON (Python's parser accepts them)."""
    raise ValueError(f"{name} is not a JSON value")


_INT64 = (-(2**63), 2**63 - 1)


def _check_numbers(body: Any) -> None:
    """Refuse a number no 64-bit integer holds, anywhere in the body, naming its property.

    No property of the API takes one, and such a value cannot be stored (SQLite's integers are
    64-bit: before, it was a 500 ``OverflowError``, or a value accepted into a stored spec that
    failed later). Floats count too: ``1e300`` where an integer belongs would become one.
    """
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(item))
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            if not _INT64[0] <= item <= _INT64[1]:
                raise invalid_property(
                    where or "body", str(item)[:40], "outside the range of a 64-bit integer"
                )


def check_content_md5(header: str | None, raw: bytes) -> None:
    """Refuse a body whose ``Content-MD5`` (base64 of the MD5 digest) does not match it."""
    if not header:
        return
    try:
        claimed = base64.b64decode(header.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid_header("Content-MD5", header, "not a base64 MD5 digest") from exc
    if len(claimed) != 16:
        raise invalid_header("Content-MD5", header, "not a base64 MD5 digest")
    actual = hashlib.md5(raw, usedforsecurity=False).digest()
    if not hmac.compare_digest(claimed, actual):
        raise BatchInvalidRequestError(
            "Md5Mismatch",
            "The MD5 value specified in the request did not match the MD5 value calculated by "
            "the server.",
            {
                "UserSpecifiedMd5": header,
                "ServerCalculatedMd5": base64.b64encode(actual).decode(),
            },
        )


_TOO_DEEP = f"objects and arrays nested more than {MAX_JSON_DEPTH} deep"


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests objects/arrays deeper than ``limit`` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def object_body(body: Any, *, required: bool = True) -> dict[str, Any]:
    """The body as a JSON object (``{}`` when optional and absent), without OData annotations.

    Annotations (``odata.metadata``...) are not properties: the SDK sends back those it read
    when a fetched resource is passed to a replace operation, and Azure ignores them.
    """
    if body is None and not required:
        return {}
    if not isinstance(body, dict):
        raise invalid_request_body("the body must be a JSON object")
    return {k: v for k, v in body.items() if not k.startswith("odata.")}


# -- conditional requests ---------------------------------------------------------------------


def _http_time(request: Request, name: str) -> float | None:
    value = request.headers.get(name)
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError) as exc:
        raise invalid_header(name, value, "not an RFC 1123 date") from exc


def _tags(value: str) -> set[str]:
    return {t.strip() for t in value.split(",") if t.strip()}


def conditions(request: Request, *, read: bool) -> Callable[[Any], None] | None:
    """The check of the request's conditional headers on a resource row (``None``: none).

    The row has ``pk``, ``version`` and ``last_modified`` (UNIX seconds); its ETag is the one
    the service shows. A failed ``If-Match``/``If-Unmodified-Since`` is 412; a matched
    ``If-None-Match`` or an unmodified ``If-Modified-Since`` is 304 on a read, 412 on a write.
    """
    if_match = request.headers.get("if-match")
    if_none_match = request.headers.get("if-none-match")
    since = _http_time(request, "if-modified-since")
    unmodified_since = _http_time(request, "if-unmodified-since")
    if not (if_match or if_none_match or since is not None or unmodified_since is not None):
        return None

    def check(row: Any) -> None:
        tag = etag(row.pk, row.version)
        # HTTP dates have whole seconds: compare the resource's time at that precision.
        modified = int(row.last_modified)
        if if_match and "*" not in _tags(if_match) and tag not in _tags(if_match):
            raise condition_not_met(read=False)
        if unmodified_since is not None and modified > unmodified_since:
            raise condition_not_met(read=False)
        if if_none_match and ("*" in _tags(if_none_match) or tag in _tags(if_none_match)):
            raise condition_not_met(read=read)
        if since is not None and modified <= since:
            raise condition_not_met(read=read)

    return check


def guard(svc: BatchService, request: Request, kind: str, *, read: bool = False) -> BatchService:
    """Make ``svc`` check the request's conditional headers on the ``kind`` row it touches."""
    check = conditions(request, read=read)
    if check is not None:
        svc.preconditions[kind] = check
    return svc


# -- answers ------------------------------------------------------------------------------------


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON in Azure's content type."""
    return Response(
        content=json.dumps(data, separators=(",", ":")).encode(),
        status_code=status_code,
        media_type=ODATA_JSON,
        headers=headers,
    )


def _wire(item: BaseModel | dict[str, Any]) -> dict[str, Any]:
    return item if isinstance(item, dict) else item.to_wire()  # type: ignore[attr-defined]


def resource_response(
    model: BaseModel, names: frozenset[str] | None, request: Request, kind: str
) -> Response:
    """A single resource, with ``ETag``/``Last-Modified`` headers when it has them."""
    wire = _wire(model)
    headers: dict[str, str] = {}
    tag = getattr(model, "etag", None)
    if tag:
        headers["ETag"] = tag
    modified = getattr(model, "last_modified", None)
    if modified is not None:
        headers["Last-Modified"] = format_datetime(modified, usegmt=True)
    wire = select(wire, names)
    body = {"odata.metadata": f"{base_url(request)}/$metadata#{kind}/@Element", **wire}
    return json_response(body, headers=headers)


def list_response(
    items: list[Any],
    names: frozenset[str] | None,
    request: Request,
    kind: str,
    next_marker: Any = None,
) -> Response:
    """A page of a list, with ``odata.nextLink`` when more follow."""
    body: dict[str, Any] = {
        "odata.metadata": f"{base_url(request)}/$metadata#{kind}",
        "value": [select(_wire(i), names) for i in items],
    }
    if next_marker is not None:
        params = [
            (k, v)
            for k, v in parse_qsl(request.url.query, keep_blank_values=True)
            if k != "$skiptoken"
        ]
        params.append(("$skiptoken", encode_token(next_marker)))
        query = urlencode(params, quote_via=quote, safe="$,'()")
        body["odata.nextLink"] = f"{base_url(request)}{request.url.path}?{query}"
    return json_response(body)


def _data_headers(url: str | None) -> dict[str, str]:
    return {"DataServiceId": url, "Location": url} if url else {}


def created(url: str | None = None) -> Response:
    """201 Created (``Location``/``DataServiceId`` of the new resource)."""
    return Response(status_code=201, headers=_data_headers(url))


def accepted(url: str | None = None) -> Response:
    """202 Accepted: the change is recorded; the engine carries it out."""
    return Response(status_code=202, headers=_data_headers(url))


def ok(url: str | None = None) -> Response:
    """200 with no body (Azure's answer to a PATCH/PUT, or a file or task deletion)."""
    return Response(status_code=200, headers=_data_headers(url))


def no_content() -> Response:
    """204 No Content."""
    return Response(status_code=204)
