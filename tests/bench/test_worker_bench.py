"""bench/worker.py runs end to end on one pair of flow runs (it must not rot); no time asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import worker  # noqa: E402


@pytest.mark.slow
def test_worker_bench_measures_both_workers(capsys: pytest.CaptureFixture[str]) -> None:
    assert worker.main(["--runs", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("created -> Running", "created -> Completed"):
        assert re.search(
            rf"{re.escape(row)}\s+[\d.]+ s\s+[\d.]+ s\s+[\d.]+ s\s+[\d.]+ s\s+[\d.]+x", out
        ), out
    assert re.search(r"created -> task started\s+-\s+[\d.]+ s", out), out
    assert "overhead per run" in out


def test_worker_bench_bounds_the_number_of_runs() -> None:
    with pytest.raises(SystemExit):
        worker.main(["--runs", str(worker.MAX_RUNS + 1)])
