"""An agent asked to confine where the kernel has no Landlock: it refuses, or, with
``--confine-optional`` (remote hosts), runs tasks unconfined and says why in ``hello``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from prefect_batch.agent import AGENT_PATH
from prefect_batch.service.engine.confinement import unconfined_errors


def test_an_agent_without_landlock_starts_unconfined_when_confining_is_optional(
    tmp_path: Path,
) -> None:
    # An agent whose kernel has no Landlock (its Confinement cannot be built).
    script = (
        "import errno, runpy, sys\n"
        f"ns = runpy.run_path({str(AGENT_PATH)!r}, run_name='agent')\n"
        "def refuse(*args):\n"
        "    raise OSError(errno.ENOSYS, 'Landlock is not available on this kernel')\n"
        "ns['Confinement'].__init__ = refuse\n"
        "sys.exit(ns['main'](sys.argv[1:]))\n"
    )
    hello = json.dumps({"op": "hello", "v": 1, "node_id": "n", "pool_id": "p"}) + "\n"

    def run(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-I", "-c", script, "--root", str(tmp_path / "root"), *flags]
        return subprocess.run(argv, input=hello, capture_output=True, text=True, timeout=60)

    refused = run("--confine")
    assert refused.returncode == 3 and "cannot confine tasks" in refused.stderr
    started = run("--confine", "--confine-optional")
    assert started.returncode == 0, started.stderr
    answer = next(
        json.loads(line) for line in started.stdout.splitlines() if '"ev":"hello"' in line
    )
    assert answer["confined"] is False
    assert "Landlock is not available" in answer["unconfined"]
    (error,) = unconfined_errors(answer) or []
    assert error["code"] == "TasksUnconfined"
    assert error["message"].startswith("tasks unconfined: cannot confine tasks on ")
