"""Fuzzing: no input crashes the parser or the evaluator, and none takes long.

Three generators, from blind to well-formed: any text; soups of the language's own tokens
(which get much deeper into the grammar); and random well-typed formulas, which must also
evaluate to a run -- never raise -- on an environment with samples.

``deadline`` bounds each example's time; inputs are kept small enough for that to be a real
bound (the largest legal formula, 8 KB, is timed separately).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_batch.core.autoscale import (
    FORMULA_TOO_LONG,
    INSUFFICIENT_SAMPLE_DATA,
    MAX_FORMULA_LENGTH,
    SYNTAX_ERROR,
    AutoScaleEnvironment,
    SampleSeries,
    compile_formula,
    evaluate_formula,
    parse_formula,
    tokenize,
)
from prefect_batch.core.autoscale.errors import EVALUATION_ERROR
from prefect_batch.exceptions import BatchInvalidRequestError

FUZZ = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=500),
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NOW = datetime(2024, 5, 6, 12, 0, tzinfo=timezone.utc)
ENVIRONMENT = AutoScaleEnvironment(
    now=NOW,
    target_dedicated_nodes=3,
    current_dedicated_nodes=3,
    series={
        "$ActiveTasks": SampleSeries.of(
            (NOW - timedelta(seconds=30 * i), float(i % 7)) for i in range(40)
        ),
        "$CPUPercent": SampleSeries.of(
            (NOW - timedelta(seconds=30 * i), 50.0 + i) for i in range(5)
        ),
    },
)

TOKENS = [
    "$TargetDedicatedNodes", "$TargetLowPriorityNodes", "$NodeDeallocationOption", "$x", "x",
    "y", "$ActiveTasks", "$CPUPercent", "$CurrentDedicatedNodes", "TimeInterval_Minute",
    "requeue", "avg", "max", "time", "val", "stop", "lg", "percentile", "GetSample",
    "GetSamplePercent", "Count", "hour", "weekday", "=", "==", "!=", "<", "<=", ">", ">=", "+",
    "-", "*", "/", "!", "&&", "||", "?", ":", "(", ")", "[", "]", ",", ".", ";", "\n", "0",
    "1", "2.5", "1e308", '"2024-01-01"', '"x"', "//c\n", "/*", "*/", "$", "#",
]  # fmt: skip


def _assert_formula_error(error: BatchInvalidRequestError) -> None:
    assert error.code in (SYNTAX_ERROR, FORMULA_TOO_LONG)
    if error.code == SYNTAX_ERROR:
        assert int(error.values["Line"]) >= 1
        assert int(error.values["Column"]) >= 1


@FUZZ
@given(st.text(max_size=300))
def test_any_text_parses_or_fails_with_our_error(text: str) -> None:
    try:
        parse_formula(text)
    except BatchInvalidRequestError as error:
        _assert_formula_error(error)
    try:
        tokenize(text)
    except BatchInvalidRequestError as error:
        _assert_formula_error(error)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=80).map(" ".join))
def test_token_soup_compiles_or_fails_with_our_error(text: str) -> None:
    try:
        compiled = compile_formula(text)
    except BatchInvalidRequestError as error:
        _assert_formula_error(error)
        return
    run = evaluate_formula(compiled, ENVIRONMENT)  # must not raise
    assert run.error is None or run.error.code in (INSUFFICIENT_SAMPLE_DATA, EVALUATION_ERROR)


# --- well-typed formulas -------------------------------------------------------------------------

_numbers = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.floats(allow_nan=False, allow_infinity=False, min_value=0, max_value=1e12).map(repr),
    st.sampled_from(["$CurrentDedicatedNodes", "$TargetDedicatedNodes", "x", "rand()"]),
    st.sampled_from(
        [
            "avg($ActiveTasks.GetSample(TimeInterval_Minute * 5))",
            "max($CPUPercent.GetSample(10), 0)",
            "$ActiveTasks.GetSamplePercent(TimeInterval_Hour)",
            "$ActiveTasks.Count()",
            "time().hour",
            "len($CPUPercent.GetSample(TimeInterval_Minute * 10, 50))",
        ]
    ),
)


def _combine(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    binary = st.tuples(children, st.sampled_from(list("+-*/<>") + ["==", "&&", "||"]), children)
    return st.one_of(
        binary.map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda c: f"-({c})"),
        children.map(lambda c: f"!({c})"),
        st.tuples(children, children, children).map(lambda t: f"({t[0]} ? {t[1]} : {t[2]})"),
        st.lists(children, min_size=1, max_size=3).flatmap(
            lambda args: st.sampled_from(["avg", "min", "max", "sum", "std", "norm", "range"]).map(
                lambda name: f"{name}({', '.join(args)})"
            )
        ),
        children.map(lambda c: f"val([1, 2, 3], {c})"),
        children.map(lambda c: f"lg({c})"),
        children.map(lambda c: f"percentile([1, 5, 9], {c})"),
    )


_expressions = st.recursive(_numbers, _combine, max_leaves=12)


@FUZZ
@given(st.lists(_expressions, min_size=1, max_size=5))
def test_well_typed_formulas_always_produce_a_run(expressions: list[str]) -> None:
    lines = ["x = 2"] + [f"x = {e}" for e in expressions] + ["$TargetDedicatedNodes = x"]
    compiled = compile_formula(";\n".join(lines))
    run = evaluate_formula(compiled, ENVIRONMENT)
    assert run.timestamp == NOW
    if run.error is None:
        assert run.decision is not None
        assert run.decision.target_dedicated_nodes >= 0
        assert run.results.startswith(
            f"$TargetDedicatedNodes={run.decision.target_dedicated_nodes};"
        )
    else:
        assert run.error.code in (INSUFFICIENT_SAMPLE_DATA, EVALUATION_ERROR)
        assert run.results == "" and run.decision is None


def test_the_largest_formulas_end_without_blowing_up() -> None:
    """The worst shapes of the longest formula still end, with a result or the documented error.

    A guard against exponential work, not a speed test (``bench/autoscale.py`` times them:
    each takes milliseconds): the bound is the process's CPU time, which other programs on the
    machine do not stretch, and it is ten times what the slowest took on a loaded machine."""
    worst = [
        "a=" + "(" * 4000 + "1" + ")" * 4000,
        "a = " + "1+" * 199 + "1;" + "b = 1;\n" * 98,
        "a = " + "[1," * 2700,
        "a = " + "1 ? " * 2040,
        "x" * MAX_FORMULA_LENGTH,
    ]
    for text in worst:
        text = text[:MAX_FORMULA_LENGTH]
        started = time.process_time()
        try:
            evaluate_formula(text, ENVIRONMENT)
        except BatchInvalidRequestError as error:
            _assert_formula_error(error)
        assert time.process_time() - started < 10.0
