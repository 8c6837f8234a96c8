"""The built-in functions: their signatures (checked before a formula runs) and their code.

List functions take a ``doubleVecList`` -- any number of doubles and doubleVecs, at least one --
and **flatten** it first: with ``v = [1,2,3]``, ``avg(v, 7)`` is ``avg(1,2,3,7)`` = 3.25.

=========================  ============  ==================================================
function                   returns       notes
=========================  ============  ==================================================
``avg(list)``              double        mean; fails on an empty list
``len(list)``              double        number of elements
``lg(x)`` / ``lg(list)``   double / vec  log base 2; one double gives a double, anything
                                         else a vector, element by element
``ln`` / ``log``           as ``lg``     natural log / log base 10 (log 0 = -Infinity,
                                         log of a negative = NaN)
``max(list)`` ``min``      double        fails on an empty list
``norm(list)``             double        two-norm (0 for an empty list)
``percentile(v, p)``       double        linear interpolation between the closest ranks
                                         (``percentile(v, 50)`` is the median); p in 0..100
``rand()``                 double        uniform in [0, 1], from the environment's source
``range(list)``            double        max - min; fails on an empty list
``std(list)``              double        **sample** standard deviation (n - 1); 0 for one
                                         element; fails on an empty list
``stop()``                 (never)       ends the evaluation; earlier assignments stand
``sum(list)``              double        0 for an empty list
``time()``                 timestamp     the evaluation time
``time("...")``            timestamp     a W3C-DTF (ISO-8601) or RFC 1123 date and time
``val(v, i)``              double        element ``i`` (0-based, truncated) of a doubleVec
=========================  ============  ==================================================

Function names are case-insensitive. A failure (empty list, index out of range, bad date) ends
the evaluation with ``AutoScalingFormulaEvaluationError``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prefect_batch.core.autoscale.errors import EvaluationFailure
from prefect_batch.core.autoscale.values import Timestamp, Type, Value, parse_time

__all__ = ["FUNCTIONS", "Function", "FunctionContext", "StopEvaluation"]

D, V, S = Type.DOUBLE, Type.VECTOR, Type.STRING


class FunctionContext(Protocol):
    """What functions may read from the running evaluation."""

    @property
    def now(self) -> Timestamp:
        """The evaluation time."""

    def rand(self) -> float:
        """A number from the environment's random source."""


class StopEvaluation(Exception):  # noqa: N818 -- a signal, not an error
    """Raised by ``stop()``: the evaluator ends the run without an error."""


@dataclass(frozen=True)
class Function:
    """A built-in function.

    Attributes:
        name: Canonical (lower-case) name.
        signature: How messages show its parameters, e.g. ``avg(doubleVecList)``.
        result: The result type for argument types, or ``None`` when they do not fit.
        run: The code, given the evaluation context and the argument values.
    """

    name: str
    signature: str
    result: Callable[[tuple[Type, ...]], Type | None]
    run: Callable[[FunctionContext, tuple[Any, ...]], Value]


def _flatten(args: tuple[Any, ...]) -> tuple[float, ...]:
    if len(args) == 1 and isinstance(args[0], tuple):
        only: tuple[float, ...] = args[0]
        return only
    flat: list[float] = []
    for arg in args:
        if isinstance(arg, tuple):
            flat.extend(arg)
        else:
            flat.append(arg)
    return tuple(flat)


def _nonempty(name: str, args: tuple[Any, ...]) -> tuple[float, ...]:
    values = _flatten(args)
    if not values:
        raise EvaluationFailure(f"{name}() of an empty list")
    return values


def _list_of_doubles(types: tuple[Type, ...]) -> Type | None:
    return D if types and all(t in (D, V) for t in types) else None


def _logarithm(types: tuple[Type, ...]) -> Type | None:
    if types == (D,):
        return D
    return V if _list_of_doubles(types) else None


def _safe_log(base: Callable[[float], float]) -> Callable[[float], float]:
    def log(x: float) -> float:
        if x > 0.0:
            return base(x)  # inf stays inf
        if x == 0.0:
            return -math.inf
        return math.nan  # negative or NaN

    return log


def _log_function(name: str, base: Callable[[float], float]) -> Function:
    log = _safe_log(base)

    def run(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
        if len(args) == 1 and isinstance(args[0], float):
            return log(args[0])
        return tuple(log(x) for x in _flatten(args))

    return Function(name, f"{name}(double | doubleVecList)", _logarithm, run)


def _avg(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    values = _nonempty("avg", args)
    return sum(values, 0.0) / len(values)


def _std(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    values = _nonempty("std", args)
    if len(values) == 1:
        return 0.0
    mean = sum(values, 0.0) / len(values)
    return math.sqrt(sum(((x - mean) ** 2 for x in values), 0.0) / (len(values) - 1))


def _range(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    values = _nonempty("range", args)
    return max(values) - min(values)


def _percentile(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    vector, p = args[0], float(args[1])
    values = sorted(_nonempty("percentile", (vector,)))
    if not 0.0 <= p <= 100.0:
        raise EvaluationFailure(f"percentile(): p must be between 0 and 100, not {p}")
    rank = p / 100.0 * (len(values) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def _val(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    vector, index = args
    if not math.isfinite(index):
        raise EvaluationFailure(f"val(): the index must be a finite number, not {index}")
    i = int(index)
    if not 0 <= i < len(vector):
        raise EvaluationFailure(f"val(): index {i} is outside the vector (length {len(vector)})")
    return float(vector[i])


def _time(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    if not args or args[0] == "":
        return ctx.now
    return parse_time(args[0])


def _stop(ctx: FunctionContext, args: tuple[Any, ...]) -> Value:
    raise StopEvaluation


def _fixed(*expected: Type, result: Type) -> Callable[[tuple[Type, ...]], Type | None]:
    return lambda types: result if types == expected else None


def _list_function(name: str, run: Callable[[FunctionContext, tuple[Any, ...]], Value]) -> Function:
    return Function(name, f"{name}(doubleVecList)", _list_of_doubles, run)


_ALL: tuple[Function, ...] = (
    _list_function("avg", _avg),
    _list_function("len", lambda ctx, args: float(len(_flatten(args)))),
    _log_function("lg", math.log2),
    _log_function("ln", math.log),
    _log_function("log", math.log10),
    _list_function("max", lambda ctx, args: max(_nonempty("max", args))),
    _list_function("min", lambda ctx, args: min(_nonempty("min", args))),
    _list_function("norm", lambda ctx, args: math.sqrt(sum((x * x for x in _flatten(args)), 0.0))),
    Function(
        "percentile",
        "percentile(doubleVec, double)",
        lambda types: D if len(types) == 2 and types[0] in (D, V) and types[1] is D else None,
        _percentile,
    ),
    Function("rand", "rand()", _fixed(result=D), lambda ctx, args: ctx.rand()),
    _list_function("range", _range),
    _list_function("std", _std),
    Function("stop", "stop()", _fixed(result=Type.NEVER), _stop),
    _list_function("sum", lambda ctx, args: sum(_flatten(args), 0.0)),
    Function(
        "time",
        'time() or time("date and time")',
        lambda types: Type.TIMESTAMP if types in ((), (S,)) else None,
        _time,
    ),
    Function("val", "val(doubleVec, double)", _fixed(V, D, result=D), _val),
)

FUNCTIONS: dict[str, Function] = {f.name: f for f in _ALL}
"""The built-in functions by lower-case name."""
