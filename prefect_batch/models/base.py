"""Base classes and shared field types for the Azure Batch wire models.

Every model here speaks Azure Batch's JSON (api-version 2025-06-01): attribute names are the
Python names of the official ``azure-batch`` SDK, aliases are its wire names, and
:meth:`BatchModel.to_wire` produces the body Azure would send or accept.

Two bases:

* :class:`RequestModel` (``extra="forbid"``) for what a client sends, and for the small value
  objects that appear both in requests and in responses (``ResourceFile``, constraints, ...):
  the service only ever returns what it accepted, so those stay strict.
* :class:`ResponseModel` (``extra="ignore"``) for what the service returns.

Shared field types carry Azure's formats: durations are ISO-8601 (``PT1H30M``, days never folded
into years, so Azure's "infinite" ``P10675199DT2H48M5.4775807S`` survives), datetimes are UTC,
and 64-bit counters travel as JSON strings as Azure sends them.

This module does no I/O and knows nothing about storage or HTTP.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    PlainSerializer,
    StringConstraints,
)

__all__ = [
    "DISPLAY_NAME_MAX_LENGTH",
    "ID_MAX_LENGTH",
    "ID_PATTERN",
    "BatchId",
    "BatchModel",
    "DisplayName",
    "Duration",
    "Int64String",
    "NonEmptyStr",
    "NonNegativeDuration",
    "OpaqueObject",
    "RequestModel",
    "ResponseModel",
    "UtcDateTime",
    "duration_to_iso",
]

ID_PATTERN = r"^[A-Za-z0-9_-]+$"
"""Pool, job and task ids: letters, digits, hyphens and underscores."""
ID_MAX_LENGTH = 64
"""Longest id Azure accepts."""
DISPLAY_NAME_MAX_LENGTH = 1024
"""Longest display name Azure accepts."""


def duration_to_iso(value: timedelta) -> str:
    """Format a timedelta as an ISO-8601 duration the way Azure does.

    Days are kept as days (``P400D``, never ``P1Y35D``): a year has no fixed length, and the SDK's
    parser turns year durations into a type that is not a ``timedelta``.

    Args:
        value: The duration.

    Returns:
        E.g. ``"PT1H30M"``, ``"P2DT0.5S"``, ``"PT0S"``; negative values get a leading ``-``.
    """
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    hours, rest = divmod(value.seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    date_part = f"{value.days}D" if value.days else ""
    time_part = ""
    if hours:
        time_part += f"{hours}H"
    if minutes:
        time_part += f"{minutes}M"
    if seconds or value.microseconds:
        if value.microseconds:
            time_part += f"{seconds}.{value.microseconds:06d}".rstrip("0") + "S"
        else:
            time_part += f"{seconds}S"
    if not date_part and not time_part:
        return "PT0S"
    return f"{sign}P{date_part}" + (f"T{time_part}" if time_part else "")


def _non_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError(f"must be a non-negative duration, got {duration_to_iso(value)}")
    return value


def _to_utc(value: datetime) -> datetime:
    # Naive datetimes are taken as UTC: Azure never sends local times.
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


Duration = Annotated[timedelta, PlainSerializer(duration_to_iso, return_type=str, when_used="json")]
"""A timedelta that is an ISO-8601 duration on the wire."""
NonNegativeDuration = Annotated[Duration, AfterValidator(_non_negative)]
"""A :data:`Duration` that must not be negative."""
UtcDateTime = Annotated[datetime, AfterValidator(_to_utc)]
"""A datetime normalised to UTC (``...Z`` on the wire)."""
Int64String = Annotated[int, PlainSerializer(str, return_type=str, when_used="json")]
"""An int that Azure sends as a JSON string (int64 counters in statistics)."""
BatchId = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX_LENGTH, pattern=ID_PATTERN)
]
"""A pool, job or task id: 1-64 of ``A-Z a-z 0-9 _ -``."""
DisplayName = Annotated[str, StringConstraints(max_length=DISPLAY_NAME_MAX_LENGTH)]
"""Any Unicode text up to 1024 characters."""
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
"""A string with at least one character."""
OpaqueObject = dict[str, Any]
"""A JSON object accepted and returned as given, not interpreted by prefect-batch."""


class BatchModel(BaseModel):
    """Root of all wire models: Python names in code, Azure's names on the wire."""

    model_config = ConfigDict(populate_by_name=True)

    def to_wire(self) -> dict[str, Any]:
        """Return the Azure JSON body: wire names, ISO-8601 strings, no null fields."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class RequestModel(BatchModel):
    """A body a client sends: unknown fields are an error."""

    model_config = ConfigDict(extra="forbid")


class ResponseModel(BatchModel):
    """A body the service returns: unknown fields are dropped, so newer servers stay readable."""

    model_config = ConfigDict(extra="ignore")
