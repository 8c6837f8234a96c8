"""Values of the formula language: its types, time values, and how values print in results.

A value at run time is one of:

========================  ===================  ==========================================
language type             Python value         notes
========================  ===================  ==========================================
``double``                ``float``            booleans are 1.0 / 0.0
``doubleVec``             ``tuple[float,...]`` from ``GetSample``, ``lg``/``ln``/``log``, ``[...]``
``string``                ``str``              literals and the deallocation keywords
``timestamp``             :class:`Timestamp`   UTC, 100-ns ticks since 1970-01-01
``timeinterval``          :class:`TimeInterval` 100-ns ticks, like .NET's ``TimeSpan``
========================  ===================  ==========================================

Times are whole 100-ns ticks (``TimeInterval_100ns`` is the smallest constant), so adding and
comparing them is exact. Timestamps range over years 1 to 9999; an operation that leaves that
range fails the evaluation.

Printing (:func:`format_value`), as Azure's ``results`` string shows values: a whole double
without decimals (``10``), others in the shortest form that reads back exactly (``7.5``,
``0.1``, ``1e+20``), ``NaN``/``Infinity``/``-Infinity``; a vector as ``[1,2.5,3]``; a
timestamp as ISO-8601 with milliseconds and ``Z`` (``2016-10-13T19:18:47.805Z``); a time
interval as .NET prints a ``TimeSpan`` (``[-][d.]hh:mm:ss[.fffffff]``, e.g. ``01:00:00``);
a string as it is.

This module reads no clock: ``time()`` gets "now" from the environment.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_tz

from prefect_batch.core.autoscale.errors import EvaluationFailure

__all__ = [
    "EPOCH",
    "TICKS_PER_SECOND",
    "TIME_INTERVAL_CONSTANTS",
    "TimeInterval",
    "Timestamp",
    "Type",
    "Value",
    "format_double",
    "format_value",
    "parse_time",
    "ticks_from_datetime",
]

TICKS_PER_SECOND = 10_000_000
"""100-ns ticks in a second."""

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
"""Tick 0 of a :class:`Timestamp`."""

_MIN_TICKS = -62_135_596_800 * TICKS_PER_SECOND  # 0001-01-01T00:00:00Z
_MAX_TICKS = 253_402_300_800 * TICKS_PER_SECOND - 1  # 9999-12-31T23:59:59.9999999Z
_MAX_INTERVAL_TICKS = 2**63 - 1  # .NET TimeSpan.MaxValue


class Type(enum.Enum):
    """The static type of an expression, as the compiler infers it."""

    DOUBLE = "double"
    """A number; also the result of comparisons and logic (1 or 0)."""
    VECTOR = "doubleVec"
    """A vector of numbers."""
    STRING = "string"
    """A string (literals, deallocation keywords)."""
    TIMESTAMP = "timestamp"
    """A point in time (UTC)."""
    INTERVAL = "timeinterval"
    """A duration."""
    METRIC = "metric"
    """A sampled service variable, usable only through its sample methods."""
    NEVER = "never"
    """The type of ``stop()``: evaluation does not come back from it."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True, order=True)
class TimeInterval:
    """A duration in 100-ns ticks (may be negative)."""

    ticks: int

    @classmethod
    def checked(cls, ticks: float | int) -> TimeInterval:
        """An interval of ``ticks`` rounded to a whole tick, or an evaluation failure."""
        if isinstance(ticks, float):
            if not math.isfinite(ticks):
                raise EvaluationFailure("time interval is not finite")
            ticks = round(ticks)
        if abs(ticks) > _MAX_INTERVAL_TICKS:
            raise EvaluationFailure("time interval out of range")
        return cls(ticks)

    @property
    def seconds(self) -> float:
        """The duration in seconds."""
        return self.ticks / TICKS_PER_SECOND


@dataclass(frozen=True, slots=True, order=True)
class Timestamp:
    """A UTC point in time, in 100-ns ticks since 1970-01-01T00:00:00Z."""

    ticks: int

    @classmethod
    def checked(cls, ticks: int) -> Timestamp:
        """A timestamp at ``ticks``, or an evaluation failure outside years 1-9999."""
        if not _MIN_TICKS <= ticks <= _MAX_TICKS:
            raise EvaluationFailure("timestamp out of range (years 1 to 9999)")
        return cls(ticks)

    @classmethod
    def from_datetime(cls, value: datetime) -> Timestamp:
        """The timestamp of ``value`` (a naive datetime is taken as UTC)."""
        return cls(ticks_from_datetime(value))

    def to_datetime(self) -> datetime:
        """The aware UTC datetime (sub-microsecond ticks dropped)."""
        return EPOCH + timedelta(microseconds=self.ticks // 10)

    def member(self, name: str) -> float:
        """``year``, ``month`` (1-12), ``day``, ``weekday`` (0 = Sunday ... 6 = Saturday),
        ``hour``, ``minute`` or ``second`` (``name`` lower-case)."""
        moment = self.to_datetime()
        if name == "weekday":
            return float(moment.isoweekday() % 7)
        return float(getattr(moment, name))


TIMESTAMP_MEMBERS = frozenset({"year", "month", "day", "weekday", "hour", "minute", "second"})
"""The members a timestamp has (lower-case; members are case-insensitive)."""

_SECOND = TICKS_PER_SECOND
TIME_INTERVAL_CONSTANTS: dict[str, TimeInterval] = {
    "TimeInterval_Zero": TimeInterval(0),
    "TimeInterval_100ns": TimeInterval(1),
    "TimeInterval_Microsecond": TimeInterval(10),
    "TimeInterval_Millisecond": TimeInterval(10_000),
    "TimeInterval_Second": TimeInterval(_SECOND),
    "TimeInterval_Minute": TimeInterval(60 * _SECOND),
    "TimeInterval_Hour": TimeInterval(3_600 * _SECOND),
    "TimeInterval_Day": TimeInterval(86_400 * _SECOND),
    "TimeInterval_Week": TimeInterval(7 * 86_400 * _SECOND),
    "TimeInterval_Year": TimeInterval(365 * 86_400 * _SECOND),
}
"""The ``TimeInterval_*`` constants (a year is 365 days)."""

Value = float | tuple[float, ...] | str | Timestamp | TimeInterval
"""Any run-time value."""


def ticks_from_datetime(value: datetime) -> int:
    """100-ns ticks since the epoch of ``value`` (a naive datetime is taken as UTC)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return (value - EPOCH) // timedelta(microseconds=1) * 10


# --- printing ------------------------------------------------------------------------------------


def format_double(value: float) -> str:
    """A double as the results string shows it: ``10``, ``7.5``, ``NaN``, ``Infinity``."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def _format_interval(ticks: int) -> str:
    sign = "-" if ticks < 0 else ""
    ticks = abs(ticks)
    seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    text = f"{sign}{f'{days}.' if days else ''}{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{fraction:07d}" if fraction else text


def _format_timestamp(value: Timestamp) -> str:
    moment = value.to_datetime()
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"


def format_value(value: Value) -> str:
    """Any value as the results string shows it (see the module docstring)."""
    if isinstance(value, float):
        return format_double(value)
    if isinstance(value, tuple):
        return "[" + ",".join(format_double(x) for x in value) + "]"
    if isinstance(value, Timestamp):
        return _format_timestamp(value)
    if isinstance(value, TimeInterval):
        return _format_interval(value.ticks)
    return value


# --- time("...") ---------------------------------------------------------------------------------

# W3C-DTF: YYYY, YYYY-MM, YYYY-MM-DD, and with Thh:mm[:ss[.s+]] plus Z or +hh:mm (no zone: UTC).
_W3C_DTF = re.compile(
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:[Tt ](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<zone>[Zz]|[+-]\d{2}:?\d{2})?)?)?)?"
)


def _parse_w3c(text: str) -> int | None:
    match = _W3C_DTF.fullmatch(text)
    if match is None:
        return None
    part = match.groupdict()
    try:
        moment = datetime(
            int(part["year"]),
            int(part["month"] or 1),
            int(part["day"] or 1),
            int(part["hour"] or 0),
            int(part["minute"] or 0),
            int(part["second"] or 0),
            tzinfo=timezone.utc,
        )
    except ValueError:
        return None
    ticks = ticks_from_datetime(moment)
    fraction = part["fraction"]
    if fraction:
        ticks += int(fraction[:7].ljust(7, "0"))
    zone = part["zone"]
    if zone and zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        offset_minutes = int(digits[:2]) * 60 + int(digits[2:])
        ticks -= sign * offset_minutes * 60 * TICKS_PER_SECOND
    return ticks


def _parse_rfc1123(text: str) -> int | None:
    try:
        parsed = parsedate_tz(text)
    except (ValueError, TypeError, IndexError, OverflowError):  # a lenient parser, odd input
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except (ValueError, OverflowError):
        return None
    return ticks_from_datetime(moment) - (parsed[9] or 0) * TICKS_PER_SECOND


def parse_time(text: str) -> Timestamp:
    """The timestamp a ``time("...")`` string names: W3C-DTF (ISO-8601) or RFC 1123.

    Raises:
        EvaluationFailure: The string is in neither format or out of range.
    """
    stripped = text.strip()
    ticks = _parse_w3c(stripped)
    if ticks is None:
        ticks = _parse_rfc1123(stripped)
    if ticks is None:
        raise EvaluationFailure(
            f'time("{text}"): not a W3C-DTF (2016-10-13T19:18:47Z) or RFC 1123 '
            f"(Thu, 13 Oct 2016 19:18:47 GMT) date and time"
        )
    return Timestamp.checked(ticks)
