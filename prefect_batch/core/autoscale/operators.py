"""The operators: which operand types each accepts, what it returns, and how it computes.

One table (:data:`BINARY`, :data:`UNARY`) is both the type rules the compiler checks and the
code the evaluator runs, so the two cannot disagree. It is the table of Azure's docs:

==================================  ==========================  ============
operands                            operators                   result
==================================  ==========================  ============
double, double                      ``+ - * /``                 double
double, timeinterval                ``*``                       timeinterval
doubleVec, double                   ``+ - * /``                 doubleVec
doubleVec, doubleVec                ``+ - * /``                 doubleVec
timeinterval, double                ``* /``                     timeinterval
timeinterval, timeinterval          ``+ -``                     timeinterval
timeinterval, timestamp             ``+``                       timestamp
timestamp, timeinterval             ``+``                       timestamp
timestamp, timestamp                ``-``                       timeinterval
double                              unary ``- !``               double
timeinterval                        unary ``-``                 timeinterval
double/string/timestamp/interval    ``< <= == >= > !=``         double
double, double                      ``&& ||``                   double
==================================  ==========================  ============

Nothing else type-checks -- notably not ``timestamp - timeinterval`` (the docs shift a time
with ``time() + (-6 * TimeInterval_Hour)``) nor ``double op doubleVec``. Arithmetic follows
IEEE 754: ``x / 0`` is ``Infinity``, ``-Infinity`` or ``NaN``, not an error. Vectors combine
element by element and must have the same length. Comparisons and logic give 1 or 0; strings
compare by code point; ``!x`` is 1 when ``x`` is 0. ``&&`` and ``||`` are evaluated left to
right and stop early (the compiler builds them; they are listed here for their types).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

from prefect_batch.core.autoscale.errors import EvaluationFailure
from prefect_batch.core.autoscale.values import TimeInterval, Timestamp, Type

__all__ = ["BINARY", "LOGICAL", "UNARY", "BinaryRule", "UnaryRule"]

BinaryRule = tuple[Type, Callable[[Any, Any], Any]]
UnaryRule = tuple[Type, Callable[[Any], Any]]

D, V, S, TS, TI = Type.DOUBLE, Type.VECTOR, Type.STRING, Type.TIMESTAMP, Type.INTERVAL


def _divide(a: float, b: float) -> float:
    if b == 0.0:
        if a == 0.0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _vector_scalar(op: Callable[[float, float], float]) -> Callable[[Any, Any], Any]:
    def apply(vector: tuple[float, ...], scalar: float) -> tuple[float, ...]:
        return tuple(op(x, scalar) for x in vector)

    return apply


def _vector_vector(op: Callable[[float, float], float]) -> Callable[[Any, Any], Any]:
    def apply(left: tuple[float, ...], right: tuple[float, ...]) -> tuple[float, ...]:
        if len(left) != len(right):
            raise EvaluationFailure(
                f"vectors of different lengths ({len(left)} and {len(right)}) cannot be combined"
            )
        return tuple(op(x, y) for x, y in zip(left, right, strict=True))

    return apply


def _interval_times(interval: TimeInterval, factor: float) -> TimeInterval:
    if math.isfinite(factor) and factor.is_integer():  # exact for whole factors
        return TimeInterval.checked(interval.ticks * int(factor))
    return TimeInterval.checked(interval.ticks * factor)


def _interval_divided(interval: TimeInterval, divisor: float) -> TimeInterval:
    return TimeInterval.checked(_divide(float(interval.ticks), divisor))


def _shift(moment: Timestamp, interval: TimeInterval) -> Timestamp:
    return Timestamp.checked(moment.ticks + interval.ticks)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], float]:
    def apply(left: Any, right: Any) -> float:
        return 1.0 if op(left, right) else 0.0

    return apply


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}

BINARY: dict[tuple[str, Type, Type], BinaryRule] = {
    **{(op, D, D): (D, fn) for op, fn in _ARITHMETIC.items()},
    **{(op, V, D): (V, _vector_scalar(fn)) for op, fn in _ARITHMETIC.items()},
    **{(op, V, V): (V, _vector_vector(fn)) for op, fn in _ARITHMETIC.items()},
    ("*", D, TI): (TI, lambda d, ti: _interval_times(ti, d)),
    ("*", TI, D): (TI, _interval_times),
    ("/", TI, D): (TI, _interval_divided),
    ("+", TI, TI): (TI, lambda a, b: TimeInterval.checked(a.ticks + b.ticks)),
    ("-", TI, TI): (TI, lambda a, b: TimeInterval.checked(a.ticks - b.ticks)),
    ("+", TI, TS): (TS, lambda ti, ts: _shift(ts, ti)),
    ("+", TS, TI): (TS, _shift),
    ("-", TS, TS): (TI, lambda a, b: TimeInterval.checked(a.ticks - b.ticks)),
    **{
        (op, t, t): (D, _compare(fn))
        for op, fn in {
            "<": operator.lt,
            "<=": operator.le,
            "==": operator.eq,
            ">=": operator.ge,
            ">": operator.gt,
            "!=": operator.ne,
        }.items()
        for t in (D, S, TS, TI)
    },
}
"""``(operator, left type, right type)`` -> (result type, implementation)."""

LOGICAL: dict[str, Type] = {"&&": D, "||": D}
"""The short-circuit operators: both operands and the result are doubles."""

UNARY: dict[tuple[str, Type], UnaryRule] = {
    ("-", D): (D, operator.neg),
    ("!", D): (D, lambda x: 1.0 if x == 0.0 else 0.0),
    ("-", TI): (TI, lambda ti: TimeInterval(-ti.ticks)),
}
"""``(operator, operand type)`` -> (result type, implementation)."""
