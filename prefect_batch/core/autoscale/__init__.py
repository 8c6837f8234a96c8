"""The Azure Batch autoscale formula language: parse, check and evaluate formulas.

Pipeline: text -> tokens and parse tree (:mod:`.grammar`, a ``lark`` LALR grammar) -> syntax
tree of frozen dataclasses (:mod:`.nodes`, built by :mod:`.parser`) -> checked closures
(:mod:`.compiler`) -> an :class:`AutoScaleRun` from an explicit :class:`AutoScaleEnvironment`
(:mod:`.evaluator`). Everything is pure: "now", the samples and the random source come in with
the environment. Sampling metrics, evaluating on an interval and resizing pools are the
service's job, not this package's.

Usage::

    compiled = compile_formula(text)                  # raises on a bad formula
    run = evaluate_formula(compiled, AutoScaleEnvironment(now=now, series={...}))
    run.results   # "$TargetDedicatedNodes=3;$NodeDeallocationOption=taskcompletion;$x=1"
    run.error     # None, or AutoScaleRunError("InsufficientSampleData", ...)
    run.decision  # AutoScaleDecision(3, 0, NodeDeallocationOption.TASK_COMPLETION) or None

The language, as Azure documents it (research/anchors-features.md §2), with these decisions
where the docs are silent or ambiguous:

* **Limits**: at most 8,192 characters (``AutoScaleFormulaTooLong``) and 100 statements; an
  expression at most 200 operators deep.
* **Statements** are assignments (or a bare call such as ``stop()``) separated by ``;``. The
  last ``;`` is optional, and a missing one is accepted across a line break (the CPU example
  in Azure's docs omits one); two statements on one line need it.
* **Comments**: ``// to end of line`` and ``/* block */``.
* **Case**: every name -- service variables, user variables, functions, methods, members,
  constants -- is case-insensitive (``$targetDedicatedNodes``, as in Azure's evaluate example,
  is the target). Results use canonical spellings, and a user variable's first spelling.
* **``x`` and ``$x``** are the same user variable; results print it ``$x``. Names of service
  variables and constants cannot be user variables. Reading a variable before any statement
  assigned it is an error.
* **Types** are checked before evaluation: the operator table of the docs exactly (so
  ``timestamp - timeinterval`` is an error; write ``t + (-1 * TimeInterval_Hour)``), function
  and method signatures, ``?:`` branches of one type. Errors name line and column
  (``AutoScalingFormulaSyntaxError``, Azure's code).
* **Weekday**: ``0`` = Sunday, ``1`` = Monday ... ``6`` = Saturday (.NET's ``DayOfWeek``; the
  docs only say 1 = Monday). Times are UTC; members are year, month, day, weekday, hour, minute,
  second.
* **Ternary, ``&&``, ``||``** evaluate only what they need, so ``GetSamplePercent(...) < 70 ? 1
  : avg(GetSample(...))`` guards as the docs intend.
* **Samples**: see :mod:`.runtime`. ``GetSample`` with a percent fails the whole evaluation with
  ``InsufficientSampleData`` when the window holds less (results empty, no decision: the pool
  is unchanged); without a percent it never fails. Vectors are oldest first.
* **Targets** are truncated toward zero (0.5 -> 0, 2.9 -> 2); negative ones become 0; NaN or
  infinite ones fail the evaluation. Results show these applied values.
* **Results order**: ``$TargetDedicatedNodes``, ``$TargetLowPriorityNodes`` (only if assigned),
  ``$NodeDeallocationOption``, then user variables by name, case-insensitively.
* **``$CPUPercent``** is 0-100 (a percent, as its name says; Azure's CPU example compares it
  with 0.7, which only makes sense for a fraction). ``$MemoryBytes`` and ``$DiskBytes`` are
  bytes, whatever the docs' "megabytes"/"gigabytes" say.
* **Errors while evaluating** other than missing samples (an empty ``avg()``, ``val()`` out of
  range, vectors of different lengths, a bad ``time()`` string...) use our code
  ``AutoScalingFormulaEvaluationError``. Division by zero is IEEE (``Infinity``/``NaN``).
* **rand()** reads the environment's source; by default one seeded from ``now``.

Extensions (not in Azure): ``$ActiveTaskSlots``, ``$RunningTaskSlots``, ``$PendingTaskSlots``
(task metrics counted in ``requiredSlots``); ``$UsableNodeCount`` (newer Azure docs list it);
vector literals ``[1, 2, 3]`` (as results print vectors); ``/* */`` comments.
"""

from __future__ import annotations

from prefect_batch.core.autoscale.compiler import CompiledFormula, compile_formula
from prefect_batch.core.autoscale.environment import (
    DEFAULT_SAMPLE_PERIOD,
    AutoScaleEnvironment,
    MetricReading,
    SampleSeries,
    node_count_series,
    series_from_readings,
)
from prefect_batch.core.autoscale.errors import (
    EVALUATION_ERROR,
    FORMULA_TOO_LONG,
    INSUFFICIENT_SAMPLE_DATA,
    SYNTAX_ERROR,
)
from prefect_batch.core.autoscale.evaluator import (
    AutoScaleDecision,
    AutoScaleRun,
    AutoScaleRunError,
    evaluate_formula,
)
from prefect_batch.core.autoscale.grammar import Token, tokenize
from prefect_batch.core.autoscale.nodes import Formula
from prefect_batch.core.autoscale.parser import MAX_FORMULA_LENGTH, MAX_STATEMENTS, parse_formula
from prefect_batch.core.autoscale.variables import METRIC_NAMES

__all__ = [
    "DEFAULT_SAMPLE_PERIOD",
    "EVALUATION_ERROR",
    "FORMULA_TOO_LONG",
    "INSUFFICIENT_SAMPLE_DATA",
    "MAX_FORMULA_LENGTH",
    "MAX_STATEMENTS",
    "METRIC_NAMES",
    "SYNTAX_ERROR",
    "AutoScaleDecision",
    "AutoScaleEnvironment",
    "AutoScaleRun",
    "AutoScaleRunError",
    "CompiledFormula",
    "Formula",
    "MetricReading",
    "SampleSeries",
    "Token",
    "compile_formula",
    "evaluate_formula",
    "node_count_series",
    "parse_formula",
    "series_from_readings",
    "tokenize",
]
