"""bench/scale.py runs end to end on small numbers (it must not rot).

No figure is asserted: the benchmark prints, the test checks that each row was measured and
that the engine saw every task of the run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import scale  # noqa: E402
from prefect_batch.service.engine import Engine  # noqa: E402


@pytest.mark.slow
def test_scale_bench_measures_every_row(capsys: pytest.CaptureFixture[str]) -> None:
    step = Engine.step
    assert scale.main(["--nodes", "20", "--queued", "2000", "--measure", "1000", "--profile"]) == 0
    assert Engine.step is step  # the profile is taken off again
    out = capsys.readouterr().out
    figures = {
        "(s) 20 nodes": r"[\d.]+ s",
        "(l) dispatch latency": r"p50 [\d.]+ ms .*p99 [\d.]+ ms",
        "(r1) dispatch": r"[\d,]+ runs/s",
        "(rN) dispatch, 2,000 queued": r"[\d,]+ runs/s .*rN/r1 = [\d.]+",
        "(c) service CPU": r"[\d,]+ µs",
        "(m) RSS": r"[\d]+ / [\d]+ / [\d]+ / [\d]+ MiB",
        "(q) store work": r"[\d.]+ stmts .*[\d.]+ row operations",
    }
    for row, pattern in figures.items():
        line = next(line for line in out.splitlines() if line.startswith(row))
        assert re.search(pattern, line), line
    # The highest-priority job ran every task it was given: 200 of the deep 2,000, 5 batches
    # of 100 latency tasks and 5 rounds x 100 of the shallow ones (10 jobs share each).
    top = next(line for line in out.splitlines() if "highest-priority job" in line)
    assert int(re.search(r"([\d,]+)\s*$", top).group(1).replace(",", "")) == 200 + 500 + 500
    assert "µs of own time per run" in out
