"""Shared fixtures: embedded clients on temporary homes, jobs checked for invariants at teardown.

``client`` is one embedded service per test module (its pools are shared by the module's tests;
each test makes its own jobs with ``make_job``). ``client_factory`` opens extra clients on a
home of the test's own, for tests that restart or share a service. Every client is closed with
``kill_tasks=True``, so no task process outlives its test module.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchClient, PrefectBatchError
from prefect_batch.service.rows.statewrites import STRICT_ENV
from prefect_batch.testing import check_invariants, embedded_client

# A task or job state write along an edge its table lacks raises instead of being refused.
os.environ.setdefault(STRICT_ENV, "1")

_counter = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def _task_paths(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Confined tasks (a server confines by default) may use the files tests keep in their
    temporary directories (gates, markers, ledgers); each service's home stays out of reach.
    Set in the environment, so servers started as processes get it too."""
    name = "PREFECT_BATCH_TASK_PATHS"
    before = os.environ.get(name)
    os.environ[name] = json.dumps([str(tmp_path_factory.getbasetemp())])
    yield
    if before is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = before


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchClient]:
    """An embedded client with an engine, on a home of its own, for one test module."""
    with embedded_client(tmp_path_factory.mktemp("home")) as c:
        yield c


@pytest.fixture
def client_factory(tmp_path: Path) -> Iterator[Callable[..., BatchClient]]:
    """Open embedded clients (default home: the test's ``tmp_path/home``); all closed at the end.

    ``client_factory(home=None, engine=True, **settings)``.
    """
    with ExitStack() as stack:

        def make(home: Path | None = None, *, engine: bool = True, **overrides: Any) -> BatchClient:
            return stack.enter_context(
                embedded_client(home or tmp_path / "home", engine=engine, **overrides)
            )

        yield make


@pytest.fixture
def make_job(client: BatchClient, request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """Create a job on the module's client with an id unique to the test; check it at teardown.

    ``make_job(pool_id, **wire_properties) -> job id``. At teardown every job made is checked
    with :func:`check_invariants` and then terminated, so that tasks left running (a gate
    never opened by a failed test) free their slots for the next test.
    """
    made: list[str] = []
    base = re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:40]

    def make(pool_id: str, **props: Any) -> str:
        job_id = f"{base}-{next(_counter)}"
        client.create_job({"id": job_id, "poolInfo": {"poolId": pool_id}, **props})
        made.append(job_id)
        return job_id

    yield make
    for job_id in made:
        check_invariants(client, job_id)
    for job_id in made:
        try:
            client.terminate_job(job_id)
        except PrefectBatchError:
            pass  # already completed, or deleted by the test


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    """A file path that does not exist yet: ``gate_command(gate)`` tasks wait for it."""
    return tmp_path / "gate"
