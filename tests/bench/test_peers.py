"""bench/peers.py runs end to end on small numbers, every peer included (it must not rot).

No figure is asserted: benchmarks print, tests only check that each row was measured.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import peers  # noqa: E402


@pytest.mark.slow
def test_peers_bench_measures_every_row(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))  # main() extends it
    assert peers.main(["--tasks", "30", "--rounds", "1", "--nodes", "2", "--slots", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("(a) subprocess.run loop", "(b) whole stack", "(dk) Dask", "(pl) Parsl"):
        line = next(line for line in out.splitlines() if line.strip().startswith(row))
        assert "skipped" not in line, line
        assert re.search(r"[\d,]+ tasks/s", line), line
    assert "(b)/(dk) = " in out and "(b)/(pl) = " in out
