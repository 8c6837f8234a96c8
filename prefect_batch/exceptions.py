"""Errors raised by prefect-batch.

Every error a user can see derives from :class:`PrefectBatchError`. Errors that answer a request
carry an Azure Batch error code, a message and the offending values, so the same object can be
turned into Azure's OData error body by the REST layer (``api/errors.py``) and back into an
exception by the HTTP client.

```
PrefectBatchError
├── BatchServiceError                 an Azure-coded answer to a request (code, message, values)
│   ├── BatchInvalidRequestError      400, also ValueError   (InvalidPropertyValue, ...)
│   ├── BatchAuthenticationError      403                    (AuthenticationFailed, ...)
│   ├── BatchNotFoundError            404, also LookupError  (PoolNotFound, JobNotFound, ...)
│   └── BatchConflictError            409                    (JobExists, TaskCompleted, ...)
├── IllegalTransitionError            a state change the transition table forbids (a bug)
└── AgentError                        a node agent broke its protocol or could not be reached
    └── HostKeyError                  an SSH host's key is unknown or changed (host, fingerprint)
```

This module does not map errors to HTTP responses; it only defines them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = [
    "AgentError",
    "BatchAuthenticationError",
    "BatchConflictError",
    "BatchInvalidRequestError",
    "BatchNotFoundError",
    "BatchServiceError",
    "HostKeyError",
    "IllegalTransitionError",
    "PrefectBatchError",
    "invalid_property",
    "validation_error",
]


class PrefectBatchError(Exception):
    """Root of every prefect-batch error."""


class BatchServiceError(PrefectBatchError):
    """An error answer with an Azure Batch error code.

    Attributes:
        code: Azure's error code, e.g. ``PoolNotFound``.
        message: A human-readable sentence.
        values: Extra key/value details (e.g. ``PropertyName``), in Azure's ``values`` order.
        status_code: The HTTP status Azure uses for this error.
    """

    status_code: int = 500

    def __init__(
        self,
        code: str,
        message: str,
        values: Mapping[str, Any] | None = None,
        *,
        status_code: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.values: dict[str, str] = {k: str(v) for k, v in (values or {}).items()}
        if status_code is not None:
            self.status_code = status_code

    def to_body(self) -> dict[str, Any]:
        """Azure's OData error body for this error."""
        body: dict[str, Any] = {
            "code": self.code,
            "message": {"lang": "en-US", "value": self.message},
        }
        if self.values:
            body["values"] = [{"key": k, "value": v} for k, v in self.values.items()]
        return body


class BatchInvalidRequestError(BatchServiceError, ValueError):
    """The request is malformed or a property value is invalid (HTTP 400)."""

    status_code = 400


class BatchAuthenticationError(BatchServiceError):
    """The request could not be authenticated (HTTP 403)."""

    status_code = 403


class BatchNotFoundError(BatchServiceError, LookupError):
    """The resource does not exist in this account (HTTP 404)."""

    status_code = 404


class BatchConflictError(BatchServiceError):
    """The resource exists already or its state forbids the operation (HTTP 409)."""

    status_code = 409


class IllegalTransitionError(PrefectBatchError, RuntimeError):
    """A state change that the resource's transition table does not allow."""


class AgentError(PrefectBatchError):
    """A node agent could not be started, reached, or broke the protocol."""


class HostKeyError(AgentError):
    """An SSH host showed a key that is not pinned or known (or differs from the known one).

    Attributes:
        host: The host as known_hosts names it (``address`` or ``[address]:port``).
        fingerprint: The SHA256 fingerprint of the key it offered (``SHA256:...``).
        reason: ``"unknown"`` (no key on record) or ``"changed"`` (a different key on record).
        expected: Fingerprints on record for the host (empty when unknown).
    """

    def __init__(
        self,
        message: str,
        *,
        host: str,
        fingerprint: str,
        reason: str = "unknown",
        expected: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.host = host
        self.fingerprint = fingerprint
        self.reason = reason
        self.expected = list(expected or [])


def invalid_property(name: str, value: Any, reason: str) -> BatchInvalidRequestError:
    """Build Azure's ``InvalidPropertyValue`` error naming the offending property."""
    return BatchInvalidRequestError(
        "InvalidPropertyValue",
        f"The value provided for one of the properties in the request body is invalid: "
        f"{name}: {reason}",
        {"PropertyName": name, "PropertyValue": value, "Reason": reason},
    )


def validation_error(exc: ValidationError) -> BatchInvalidRequestError:
    """Turn a pydantic error into Azure's InvalidPropertyValue naming the wire field."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    kind = first.get("type", "")
    if kind == "missing":
        return BatchInvalidRequestError(
            "MissingRequiredProperty",
            f"A required property was not specified in the request body: {loc}",
            {"PropertyName": loc},
        )
    if kind == "extra_forbidden":
        return BatchInvalidRequestError(
            "UnsupportedProperty",
            f"The property is not supported: {loc}",
            {"PropertyName": loc},
        )
    value = first.get("input")
    return BatchInvalidRequestError(
        "InvalidPropertyValue",
        f"The value provided for one of the properties in the request body is invalid: "
        f"{loc}: {first.get('msg')}",
        {"PropertyName": loc, "PropertyValue": _short(value), "Reason": first.get("msg", "")},
    )


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:197] + "..."
