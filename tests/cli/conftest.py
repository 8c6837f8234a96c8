"""Fixtures for the CLI tests: a runner bound to a fresh ``--home`` per test.

The commands run in-process through typer's ``CliRunner``, against the embedded service with
real local nodes (agent subprocesses) when a command starts an engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from prefect_batch import BatchClient
from prefect_batch.cli import app
from prefect_batch.testing import check_invariants

Invoke = Callable[..., Result]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A state directory of its own; settings from the environment cannot redirect it."""
    for name in (
        "PREFECT_BATCH_HOME",
        "PREFECT_BATCH_DATABASE_URL",
        "PREFECT_BATCH_NODE_ROOT",
        "PREFECT_BATCH_SERVICE_URL",
        "PREFECT_BATCH_ACCOUNT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "home"


@pytest.fixture
def cli(home: Path) -> Iterator[Invoke]:
    """``cli("pool", "list", expect=0)`` runs ``prefect-batch --home <home> pool list``.

    ``expect`` is the exit code the test requires (checked with the output in the message).
    """
    runner = CliRunner()

    def invoke(*args: str, expect: int | None = 0) -> Result:
        result = runner.invoke(app, ["--home", str(home), *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect} for {args}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    yield invoke
    # Whatever the commands did, the jobs' bookkeeping must still agree with their tasks.
    if (home / "batch.db").exists():
        with BatchClient(home=home, engine=False) as client:
            for job in client.list_jobs():
                check_invariants(client, job.id)
