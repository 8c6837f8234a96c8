"""bench/startup.py runs on small numbers (it must not rot); no time is asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import startup  # noqa: E402


def test_startup_bench_times_each_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert startup.main(["--repeat", "1", "--no-quickstart"]) == 0
    out = capsys.readouterr().out
    for row in ("python -c pass", "import prefect_batch", "prefect-batch --help"):
        assert re.search(rf"{re.escape(row)}\s+\d+\.\d\d s", out), out
