"""Confinement options of agents on remote hosts: ``~`` paths, the agent's own interpreter
inside a protected home, and a kernel without Landlock (the agent refuses, or, with
``--confine-optional``, runs tasks unconfined and says why in ``hello``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from prefect_batch.agent import AGENT_PATH
from prefect_batch.agent.agent import Confinement, interpreter_trees
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


def test_home_paths_are_the_agents_and_its_interpreter_stays_readable_in_a_protected_tree() -> None:
    home = os.path.realpath(os.path.expanduser("~"))
    prefix = os.path.realpath(sys.prefix)
    above = os.path.dirname(prefix)  # a protected tree that holds the interpreter
    confinement = Confinement([], [], ["~", above, "/"])
    expected = [home] + ([os.path.realpath(above)] if above != "/" else [])
    assert confinement.protect == expected  # "~" is the agent's home; "/" protects nothing
    allowed = {path for path, _ in confinement.base}
    assert prefix in {os.path.realpath(t) for t in interpreter_trees()}
    assert prefix in allowed
    assert not any(p in expected for p in allowed)
