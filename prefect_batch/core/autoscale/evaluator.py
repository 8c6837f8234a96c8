"""Run a formula on an environment and report it as Azure does: an :class:`AutoScaleRun`.

:func:`evaluate_formula` runs the statements in order on a fresh frame. Three endings:

* **completed** (or ended by ``stop()``): ``results`` lists the final values and ``decision``
  holds the new pool targets;
* **failed** (too few samples for a requested percent, an empty ``avg()``...): ``error`` holds
  the code, Azure's message and a ``Message`` value ``Line L, Col C: ...``; ``results`` is
  empty and there is no decision -- the pool stays as it is;
* a formula that does not parse or check raises ``BatchInvalidRequestError`` instead (Azure
  rejects such a request before evaluating).

Results (``$name=value`` joined by ``;``), in Azure's observed order:

1. ``$TargetDedicatedNodes`` -- always;
2. ``$TargetLowPriorityNodes`` -- only when the formula assigned it (or its alias);
3. ``$NodeDeallocationOption`` -- always (``requeue`` unless assigned);
4. every user variable the run assigned, ``$``-prefixed even if written without, sorted by
   name case-insensitively.

The two targets print as they are applied: a target is truncated toward zero (7.9 -> 7) and a
negative one is 0, so a dry run shows what the pool would become. A ``NaN`` or infinite target
fails the evaluation. A target the formula does not assign keeps the environment's value.
``$TargetDedicated`` and ``$TargetLowPriority`` are aliases; if a formula sets both spellings,
the full name wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from prefect_batch.core.autoscale.compiler import CompiledFormula, compile_formula
from prefect_batch.core.autoscale.environment import AutoScaleEnvironment
from prefect_batch.core.autoscale.errors import EVALUATION_ERROR, EvaluationFailure
from prefect_batch.core.autoscale.functions import StopEvaluation
from prefect_batch.core.autoscale.nodes import Formula
from prefect_batch.core.autoscale.runtime import Frame
from prefect_batch.core.autoscale.values import Value, format_value
from prefect_batch.core.states import NodeDeallocationOption

__all__ = [
    "AutoScaleDecision",
    "AutoScaleRun",
    "AutoScaleRunError",
    "evaluate_formula",
]


@dataclass(frozen=True)
class AutoScaleRunError:
    """Why an evaluation failed (Azure's ``AutoScaleRunError``).

    Attributes:
        code: ``InsufficientSampleData`` or ``AutoScalingFormulaEvaluationError``.
        message: Azure's sentence for the code.
        values: ``(name, value)`` pairs; ``Message`` is ``Line L, Col C: what happened``.
        line: 1-based line of the failing expression.
        column: 1-based column of the failing expression.
    """

    code: str
    message: str
    values: tuple[tuple[str, str], ...]
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class AutoScaleDecision:
    """What a successful evaluation asks of the pool: the targets, as they are applied."""

    target_dedicated_nodes: int
    target_low_priority_nodes: int
    node_deallocation_option: NodeDeallocationOption


@dataclass(frozen=True)
class AutoScaleRun:
    """One evaluation (Azure's ``AutoScaleRun``), plus the decision the service acts on.

    Attributes:
        timestamp: When the formula was evaluated (the environment's ``now``).
        results: ``$TargetDedicatedNodes=..;$NodeDeallocationOption=..;$var=..`` -- empty when
            the evaluation failed.
        error: Why it failed, or ``None``.
        decision: The new targets, or ``None`` when it failed.
    """

    timestamp: datetime
    results: str
    error: AutoScaleRunError | None = None
    decision: AutoScaleDecision | None = None


def evaluate_formula(
    formula: str | Formula | CompiledFormula, environment: AutoScaleEnvironment
) -> AutoScaleRun:
    """Evaluate ``formula`` on ``environment``.

    Pass a :class:`CompiledFormula` (from ``compile_formula``) to skip parsing and checking
    when the same formula runs repeatedly.

    Raises:
        BatchInvalidRequestError: The formula is too long or does not parse or check.
    """
    compiled = formula if isinstance(formula, CompiledFormula) else compile_formula(formula)
    frame = Frame(environment)
    try:
        try:
            for statement in compiled.statements:
                statement(frame)
        except StopEvaluation:
            pass
        decision, targets = _decide(frame)
    except EvaluationFailure as failure:
        return _failed(environment.now, failure)
    except ArithmeticError as exc:  # a safety net: operations are meant to fail as above
        return _failed(environment.now, EvaluationFailure(f"arithmetic error: {exc}"))
    return AutoScaleRun(environment.now, _results(compiled, frame, targets), None, decision)


def _failed(now: datetime, failure: EvaluationFailure) -> AutoScaleRun:
    error = AutoScaleRunError(
        code=failure.code or EVALUATION_ERROR,
        message=failure.message,
        values=(("Message", failure.located_detail),),
        line=failure.line,
        column=failure.column,
    )
    return AutoScaleRun(now, "", error, None)


def _applied(name: str, value: Value) -> int:
    assert isinstance(value, float)
    if not math.isfinite(value):
        raise EvaluationFailure(f"{name} must be a finite number, not {format_value(value)}")
    return max(0, math.trunc(value))


def _decide(frame: Frame) -> tuple[AutoScaleDecision, dict[str, str]]:
    env = frame.environment
    dedicated = _applied(
        "$TargetDedicatedNodes",
        frame.target("targetdedicatednodes", "targetdedicated", env.target_dedicated_nodes),
    )
    low_priority = _applied(
        "$TargetLowPriorityNodes",
        frame.target("targetlowprioritynodes", "targetlowpriority", env.target_low_priority_nodes),
    )
    option = str(frame.targets.get("nodedeallocationoption", "requeue"))
    shown = {"$TargetDedicatedNodes": str(dedicated)}
    if "targetlowprioritynodes" in frame.targets or "targetlowpriority" in frame.targets:
        shown["$TargetLowPriorityNodes"] = str(low_priority)
    shown["$NodeDeallocationOption"] = option
    return AutoScaleDecision(dedicated, low_priority, NodeDeallocationOption(option)), shown


def _results(compiled: CompiledFormula, frame: Frame, targets: dict[str, str]) -> str:
    parts = [f"{name}={value}" for name, value in targets.items()]
    names = compiled.user_names
    for key in sorted(frame.variables, key=lambda k: (k, names[k])):
        parts.append(f"{names[key]}={format_value(frame.variables[key])}")
    return ";".join(parts)
