"""Helpers shared by the service modules: clock, ETags, time and duration formats, ids.

Times are stored as float UNIX seconds and shown on the wire as ISO-8601 UTC; durations are
stored as float seconds and shown as ISO-8601 durations (``PT1H30M``) as Azure does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect_batch.exceptions import BatchInvalidRequestError, validation_error
from prefect_batch.providers.kinds import LOCAL_NODE_AGENT_SKU

__all__ = [
    "DEFAULT_RETENTION_SECONDS",
    "Clock",
    "etag",
    "iso",
    "iso_duration",
    "new_node_id",
    "parse_duration",
    "refuse_unsupported",
    "seconds",
    "node_source_of",
    "validation_error",
]

Clock = Callable[[], float]

DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600.0
"""Azure's default task retentionTime: 7 days."""

# Azure shows "unlimited" durations as this value (TimeSpan.MaxValue).
UNLIMITED = "P10675199DT2H48M5.4775807S"


def now() -> float:
    """The current time (the only place the service reads the clock)."""
    return time.time()


def iso(ts: float | None) -> str | None:
    """UNIX seconds -> ISO-8601 UTC with a ``Z``."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def etag(pk: int, version: int) -> str:
    """An opaque ETag that changes with every write of the resource."""
    return f'"0x8{pk:07X}{version:07X}"'


def iso_duration(value: float | None) -> str | None:
    """Seconds -> ISO-8601 duration (``PT1H2M3S``)."""
    if value is None:
        return None
    total = float(value)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    out = "P"
    if days:
        out += f"{int(days)}D"
    out += "T"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    if secs or out.endswith("T"):
        out += (f"{secs:.6f}".rstrip("0").rstrip(".")) + "S"
    return out


def parse_duration(value: Any) -> float | None:
    """A wire duration (ISO string, timedelta or seconds) -> seconds."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float):
        return float(value)
    from pydantic import TypeAdapter

    return TypeAdapter(timedelta).validate_python(value).total_seconds()


def seconds(value: Any, limit_unlimited: float = 10 * 365 * 86400) -> float | None:
    """Like :func:`parse_duration` but "unlimited" (huge) durations become ``None``."""
    out = parse_duration(value)
    if out is not None and out >= limit_unlimited:
        return None
    return out


def new_node_id() -> str:
    """A fresh, unique node id (Azure-style ``tvmps_`` prefix)."""
    return "tvmps_" + uuid.uuid4().hex[:20]


def chunked(items: list[Any], size: int) -> Iterable[list[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def refuse_unsupported(
    spec: dict[str, Any],
    names: Iterable[str],
    *,
    prefix: str = "",
    reason: str = "is not supported by this version of the service",
) -> None:
    """Refuse with ``UnsupportedProperty`` the first of ``names`` that ``spec`` sets."""
    for name in names:
        if spec.get(name):
            prop = f"{prefix}{name}"
            raise BatchInvalidRequestError(
                "UnsupportedProperty", f"{prop} {reason}", {"PropertyName": prop}
            )


def node_source_of(spec: dict[str, Any]) -> str:
    """The node source (``nodeAgentSKUId``) a pool spec names; local by default."""
    vmc = spec.get("virtualMachineConfiguration") or {}
    return vmc.get("nodeAgentSKUId") or LOCAL_NODE_AGENT_SKU
