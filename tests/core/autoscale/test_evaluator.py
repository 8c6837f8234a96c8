"""The evaluator's interface: environments, sample series from node readings, runs, reuse."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from prefect_batch.core.autoscale import (
    INSUFFICIENT_SAMPLE_DATA,
    SYNTAX_ERROR,
    AutoScaleDecision,
    AutoScaleEnvironment,
    MetricReading,
    SampleSeries,
    compile_formula,
    evaluate_formula,
    node_count_series,
    parse_formula,
    series_from_readings,
)
from prefect_batch.core.states import NodeDeallocationOption
from prefect_batch.exceptions import BatchInvalidRequestError

NOW = datetime(2024, 5, 6, 12, 0, tzinfo=timezone.utc)


def _ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# --- environment ---------------------------------------------------------------------------------


def test_series_are_sorted_and_keyed_by_canonical_name() -> None:
    series = SampleSeries.of([(_ago(0), 3.0), (_ago(60), 1.0), (_ago(30), 2.0)])
    assert series.values == (1.0, 2.0, 3.0)
    env = AutoScaleEnvironment(now=NOW, series={"activetasks": series, "$CurrentDedicated": series})
    assert set(env.series) == {"$ActiveTasks", "$CurrentDedicatedNodes"}


@pytest.mark.parametrize("name", ["$TargetDedicatedNodes", "$TaskSlotsPerNode", "$Bogus"])
def test_series_only_for_sampled_variables(name: str) -> None:
    with pytest.raises(ValueError, match="not a sampled service variable"):
        AutoScaleEnvironment(now=NOW, series={name: SampleSeries()})


def test_series_reject_non_finite_values_and_bad_periods() -> None:
    with pytest.raises(ValueError):
        SampleSeries.of([(NOW, float("nan"))])
    with pytest.raises(ValueError):
        AutoScaleEnvironment(now=NOW, sample_period=timedelta(0))


def test_naive_now_is_utc() -> None:
    naive = AutoScaleEnvironment(now=NOW.replace(tzinfo=None))
    assert naive.now_ticks == AutoScaleEnvironment(now=NOW).now_ticks


def test_node_readings_combine_by_the_metric_rule() -> None:
    readings = [
        MetricReading(_ago(30), "n1", 20.0),
        MetricReading(_ago(30), "n2", 60.0),
        MetricReading(_ago(0), "n1", 10.0),
        MetricReading(_ago(0), "n2", 30.0),
        MetricReading(_ago(0), "n3", 50.0),
    ]
    assert series_from_readings("$CPUPercent", readings).values == (40.0, 30.0)  # mean
    assert series_from_readings("NetworkInBytes", readings).values == (80.0, 90.0)  # sum
    assert node_count_series(readings).values == (2.0, 3.0)
    with pytest.raises(ValueError, match="not a per-node metric"):
        series_from_readings("$ActiveTasks", readings)


def test_per_node_series_feed_a_formula() -> None:
    readings = [MetricReading(_ago(30 * i), f"n{k}", 10.0 * k) for i in range(20) for k in (1, 3)]
    env = AutoScaleEnvironment(
        now=NOW,
        series={
            "$CPUPercent": series_from_readings("$CPUPercent", readings),
            "$SampleNodeCount": node_count_series(readings),
        },
    )
    run = evaluate_formula(
        "c = avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 100));"
        "n = max($SampleNodeCount.GetSample(1));",
        env,
    )
    assert run.results.endswith(";$c=20;$n=2")


# --- runs ----------------------------------------------------------------------------------------


def test_a_successful_run() -> None:
    run = evaluate_formula(
        "$TargetDedicatedNodes = 2.7; $TargetLowPriority = 4;"
        "$NodeDeallocationOption = retaineddata",
        AutoScaleEnvironment(now=NOW),
    )
    assert run.timestamp == NOW
    assert run.error is None
    assert run.decision == AutoScaleDecision(2, 4, NodeDeallocationOption.RETAINED_DATA)
    assert run.results == (
        "$TargetDedicatedNodes=2;$TargetLowPriorityNodes=4;$NodeDeallocationOption=retaineddata"
    )


def test_a_failed_run_leaves_the_pool_alone() -> None:
    run = evaluate_formula(
        "$TargetDedicatedNodes = 5;\nx = $PendingTasks.GetSample(TimeInterval_Minute * 3, 70);",
        AutoScaleEnvironment(
            now=NOW, series={"$PendingTasks": SampleSeries.of([(_ago(0), 1.0), (_ago(30), 1.0)])}
        ),
    )
    assert run.decision is None and run.results == ""
    assert run.error is not None
    assert run.error.code == INSUFFICIENT_SAMPLE_DATA
    assert run.error.message == "Autoscale evaluation failed due to insufficient sample data"
    assert run.error.values == (
        (
            "Message",
            "Line 2, Col 19: Insufficient data from data set: $PendingTasks wanted 70%, "
            "received 33%",
        ),
    )
    assert (run.error.line, run.error.column) == (2, 19)


def test_a_bad_formula_raises_before_evaluating() -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        evaluate_formula("$TargetDedicatedNodes = ", AutoScaleEnvironment(now=NOW))
    assert info.value.code == SYNTAX_ERROR


def test_compiled_formulas_are_reused_and_keep_their_source() -> None:
    text = "$TargetDedicatedNodes = max($ActiveTasks.GetSample(1), 0);"
    compiled = compile_formula(text)
    assert compiled.source == text
    assert compile_formula(parse_formula(text)).formula == compiled.formula
    for active in (0.0, 4.0, 9.0):
        env = AutoScaleEnvironment(
            now=NOW, series={"$ActiveTasks": SampleSeries.of([(NOW, active)])}
        )
        decision = evaluate_formula(compiled, env).decision
        assert decision is not None and decision.target_dedicated_nodes == int(active)


def test_samples_after_now_are_not_seen() -> None:
    env = AutoScaleEnvironment(
        now=NOW,
        series={"$ActiveTasks": SampleSeries.of([(_ago(30), 1.0), (_ago(-30), 99.0)])},
    )
    run = evaluate_formula("a = $ActiveTasks.GetSample(5); n = $ActiveTasks.Count();", env)
    assert run.results.endswith("$a=[1];$n=1")


def test_rand_defaults_to_a_source_seeded_from_now() -> None:
    formula = compile_formula("r = rand();")
    first = evaluate_formula(formula, AutoScaleEnvironment(now=NOW)).results
    assert evaluate_formula(formula, AutoScaleEnvironment(now=NOW)).results == first
    later = evaluate_formula(formula, AutoScaleEnvironment(now=NOW + timedelta(seconds=1)))
    assert later.results != first
    seeded = AutoScaleEnvironment(now=NOW, random=random.Random(7).random)
    assert evaluate_formula(formula, seeded).results.endswith(f"$r={random.Random(7).random()!r}")


def test_infinite_target_fails() -> None:
    run = evaluate_formula("$TargetLowPriorityNodes = 1 / 0;", AutoScaleEnvironment(now=NOW))
    assert run.error is not None
    assert "must be a finite number, not Infinity" in run.error.values[0][1]


def test_compiled_formula_lists_the_series_it_needs() -> None:
    compiled = compile_formula(
        "a = $pendingtasks.GetSamplePercent(TimeInterval_Minute);"
        "b = $CurrentDedicated.Count() + $CurrentDedicatedNodes + $TaskSlotsPerNode;"
    )
    assert compiled.metrics == {"$PendingTasks", "$CurrentDedicatedNodes"}
