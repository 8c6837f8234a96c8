"""The formula case file: every case of ``formula_cases.yaml`` through one parametrized test.

The file's header explains a case. Samples are laid out backwards from ``now``: the newest at
``now - last_age``, the others ``every`` seconds apart.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest
import yaml

from prefect_batch.core.autoscale import (
    AutoScaleEnvironment,
    SampleSeries,
    compile_formula,
    evaluate_formula,
)
from prefect_batch.exceptions import BatchInvalidRequestError

CASES_FILE = Path(__file__).with_name("formula_cases.yaml")
DATA = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = DATA["cases"]


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _series(spec: dict[str, Any], now: datetime, period: float) -> SampleSeries:
    if "repeat" in spec:
        value, count = spec["repeat"]
        values = [value] * count
    else:
        values = spec["values"]
    every = timedelta(seconds=spec.get("every", period))
    newest = now - timedelta(seconds=spec.get("last_age", 0))
    return SampleSeries.of(
        (newest - every * (len(values) - 1 - i), float(v)) for i, v in enumerate(values)
    )


def _environment(case: dict[str, Any]) -> AutoScaleEnvironment:
    now = _time(case.get("now", DATA["defaults"]["now"]))
    fields = dict(case.get("env", {}))
    period = float(fields.pop("sample_period", 30))
    numbers = fields.pop("random", None)
    source: Iterator[float] | None = cycle(numbers) if numbers else None
    series = {name: _series(spec, now, period) for name, spec in case.get("samples", {}).items()}
    return AutoScaleEnvironment(
        now=now,
        sample_period=timedelta(seconds=period),
        series=series,
        random=(lambda: next(source)) if source is not None else None,  # type: ignore[arg-type]
        **fields,
    )


def test_the_file_covers_enough_and_every_official_example() -> None:
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(ids) >= 60
    official = {name for name in DATA["formulas"]}
    used = {
        name
        for name, text in DATA["formulas"].items()
        if any(case["formula"] == text for case in CASES)
    }
    assert used == official, f"official formulas without a case: {official - used}"
    for prefix in ("F1-", "F2-", "F3-", "F4-", "F5-", "F6-", "F7-", "F8-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case", CASES, ids=[case["id"] for case in CASES])
def test_formula_case(case: dict[str, Any]) -> None:
    expect = case["expect"]
    if "rejected" in expect:
        rejected = expect["rejected"]
        with pytest.raises(BatchInvalidRequestError) as info:
            compile_formula(case["formula"])
        error = info.value
        assert error.code == rejected["code"]
        assert (error.values["Line"], error.values["Column"]) == (
            str(rejected["line"]),
            str(rejected["column"]),
        ), error.values["Message"]
        assert rejected["contains"] in error.values["Message"]
        return

    environment = _environment(case)
    run = evaluate_formula(case["formula"], environment)
    assert run.timestamp == environment.now

    if "error" in expect:
        assert run.error is not None, run.results
        assert run.error.code == expect["error"]["code"]
        assert dict(run.error.values)["Message"] == expect["error"]["message"]
        assert run.results == ""
        assert run.decision is None
        return

    assert run.error is None, run.error
    assert run.decision is not None
    if "results" in expect:
        assert run.results == expect["results"]
    shown = dict(part.split("=", 1) for part in run.results.split(";"))
    for name, value in expect.get("vars", {}).items():
        assert shown.get(name) == value, (name, run.results)
    if "dedicated" in expect:
        assert run.decision.target_dedicated_nodes == expect["dedicated"]
    if "low_priority" in expect:
        assert run.decision.target_low_priority_nodes == expect["low_priority"]
    if "option" in expect:
        assert run.decision.node_deallocation_option.value == expect["option"]
    # The results always echo the decision.
    assert shown["$TargetDedicatedNodes"] == str(run.decision.target_dedicated_nodes)
    assert shown["$NodeDeallocationOption"] == run.decision.node_deallocation_option.value
