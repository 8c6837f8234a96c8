"""The one place errors become HTTP answers: Azure's OData error body and status code.

Every error a route raises ends here. A :class:`~prefect_batch.exceptions.BatchServiceError`
(what the service raises: ``PoolNotFound``, ``JobExists``, ``InvalidPropertyValue``...) is
answered with its own status and body::

    {"code": "PoolNotFound",
     "message": {"lang": "en-US", "value": "The specified pool does not exist: p1"},
     "values": [{"key": "PoolId", "value": "p1"}]}

Query and header parameters FastAPI validates become ``InvalidQueryParameterValue`` /
``InvalidHeaderValue``; an unknown path ``ResourceNotFound``; a known path with another verb
``UnsupportedHttpVerb``; the store unreachable (a database connection refused or dropped,
PostgreSQL shutting down, SQLite locked past its timeout) 503 ``ServerBusy`` with a
``Retry-After``, so clients retry; anything else unexpected ``InternalError`` (logged with its
traceback, never with the request's headers). A ``304`` (``ConditionNotMet`` on a read) has no body.

This module decides statuses and bodies only; it raises nothing of its own accord.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from prefect_batch.exceptions import (
    BatchAuthenticationError,
    BatchInvalidRequestError,
    BatchServiceError,
)
from prefect_batch.store import store_unreachable

__all__ = [
    "ODATA_JSON",
    "authentication_failed",
    "condition_not_met",
    "error_response",
    "install_error_handlers",
    "invalid_header",
    "invalid_query",
    "invalid_request_body",
    "missing_header",
    "not_implemented",
    "store_unavailable",
]

log = logging.getLogger("prefect_batch.api")

ODATA_JSON = "application/json;odata=minimalmetadata"
"""The content type Azure Batch answers JSON with."""

# Statuses of FastAPI/Starlette's own HTTP errors, as Azure codes.
_HTTP_CODES = {
    404: ("ResourceNotFound", "The specified resource does not exist."),
    405: ("UnsupportedHttpVerb", "The resource doesn't support the specified HTTP verb."),
}


def error_response(err: BatchServiceError) -> Response:
    """The HTTP answer for a service error (no body for 304 and for HEAD-like statuses)."""
    if err.status_code == 304:
        return Response(status_code=304)
    return Response(
        content=json.dumps(err.to_body()).encode(),
        status_code=err.status_code,
        media_type=ODATA_JSON,
    )


# -- errors the API layer itself raises ------------------------------------------------------


def not_implemented(operation: str) -> BatchServiceError:
    """501 ``NotImplemented``: a REST operation this version of the service does not offer."""
    return BatchServiceError(
        "NotImplemented",
        f"The operation is not implemented by this version of prefect-batch: {operation}",
        {"Operation": operation},
        status_code=501,
    )


def condition_not_met(*, read: bool) -> BatchServiceError:
    """``ConditionNotMet``: 304 on a read, 412 on a write (Azure's statuses)."""
    return BatchServiceError(
        "ConditionNotMet",
        "The condition specified using HTTP conditional header(s) is not met.",
        status_code=304 if read else 412,
    )


def invalid_query(name: str, value: Any, reason: str) -> BatchInvalidRequestError:
    """400 ``InvalidQueryParameterValue`` naming the parameter."""
    return BatchInvalidRequestError(
        "InvalidQueryParameterValue",
        f"Value for one of the query parameters specified in the request URI is invalid: {name}",
        {"QueryParameterName": name, "QueryParameterValue": value, "Reason": reason},
    )


def invalid_header(name: str, value: Any, reason: str) -> BatchInvalidRequestError:
    """400 ``InvalidHeaderValue`` naming the header."""
    return BatchInvalidRequestError(
        "InvalidHeaderValue",
        f"The value for one of the HTTP headers is not in the correct format: {name}",
        {"HeaderName": name, "HeaderValue": value, "Reason": reason},
    )


def missing_header(name: str) -> BatchInvalidRequestError:
    """400 ``MissingRequiredHeader`` naming the header."""
    return BatchInvalidRequestError(
        "MissingRequiredHeader",
        f"An HTTP header that's mandatory for this request is not specified: {name}",
        {"HeaderName": name},
    )


def store_unavailable(reason: str = "unreachable") -> BatchServiceError:
    """503 ``ServerBusy``: the service's store cannot be reached (or is busy) just now."""
    what = "busy" if reason == "busy" else "unreachable"
    return BatchServiceError(
        "ServerBusy",
        f"The server is currently unable to receive requests: its store is {what}. "
        "Please retry your request.",
        {"Reason": f"store {what}"},
        status_code=503,
    )


RETRY_AFTER_SECONDS = 1
"""The ``Retry-After`` of a 503 for a store that cannot be reached."""


def authentication_failed(detail: str) -> BatchAuthenticationError:
    """403 ``AuthenticationFailed`` with Azure's ``AuthenticationErrorDetail``."""
    return BatchAuthenticationError(
        "AuthenticationFailed",
        "Server failed to authenticate the request. Make sure the value of Authorization header "
        "is formed correctly including the signature.",
        {"AuthenticationErrorDetail": detail},
    )


def invalid_request_body(reason: str, status_code: int = 400) -> BatchInvalidRequestError:
    """``InvalidRequestBody`` (400), or ``RequestBodyTooLarge`` when ``status_code`` is 413."""
    if status_code == 413:
        return BatchInvalidRequestError(
            "RequestBodyTooLarge", f"The request body is too large: {reason}", status_code=413
        )
    return BatchInvalidRequestError(
        "InvalidRequestBody",
        f"The specified Request Body is not syntactically valid: {reason}",
        {"Reason": reason},
    )


# -- handlers ---------------------------------------------------------------------------------


def _from_validation(exc: RequestValidationError) -> BatchServiceError:
    first = exc.errors()[0] if exc.errors() else {}
    loc = [str(p) for p in first.get("loc", ())]
    where, name = (loc[0], ".".join(loc[1:])) if loc else ("body", "")
    reason = str(first.get("msg", "invalid"))
    value = first.get("input")
    if where == "query":
        return invalid_query(name, "" if value is None else value, reason)
    if where == "header":
        if first.get("type") == "missing":
            return missing_header(name)
        return invalid_header(name, "" if value is None else value, reason)
    if where == "path":
        return BatchInvalidRequestError(
            "InvalidUri", f"The requested URI does not represent any resource: {name}: {reason}"
        )
    return invalid_request_body(f"{name}: {reason}" if name else reason)


async def _service_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BatchServiceError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(_from_validation(exc))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code, message = _HTTP_CODES.get(exc.status_code, ("InvalidUri", str(exc.detail)))
    return error_response(BatchServiceError(code, message, status_code=exc.status_code))


async def _store_error(request: Request, exc: Exception) -> Response:
    reason = store_unreachable(exc)
    if reason is None:
        raise exc  # a wrong statement, a bug: on to _unexpected (500, its traceback logged)
    log.warning("%s %s: store %s: %s", request.method, request.url.path, reason, type(exc).__name__)
    response = error_response(store_unavailable(reason))
    response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    # Method and path only: headers carry the signature and are never logged. (Starlette
    # re-raises the exception after this answer, so the server logs its traceback once.)
    log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(
        BatchServiceError(
            "InternalError", "The server encountered an internal error.", status_code=500
        )
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error of ``app`` through this module."""
    app.add_exception_handler(BatchServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(sa_exc.DBAPIError, _store_error)
    app.add_exception_handler(sa_exc.DisconnectionError, _store_error)
    app.add_exception_handler(Exception, _unexpected)
