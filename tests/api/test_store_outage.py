"""The store unreachable: requests answer 503 ``ServerBusy`` (not 500), the engine resumes.

* fast: a store whose connections fail as PostgreSQL's do when it is down answers 503
  ``ServerBusy`` with ``Retry-After`` and a message naming the store; SQLite locked past its
  timeout answers 503 too; an ``OperationalError`` that is a wrong statement stays a 500;
* real: a server on a private PostgreSQL cluster (``initdb`` in a temporary directory, never the
  machine's own cluster) stopped for a few seconds mid-job: requests meanwhile answer 503
  ``ServerBusy``; once it is started again every task completes, each exactly once.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from azure.batch import models
from sqlalchemy.exc import DisconnectionError, OperationalError

from prefect_batch.store import store_unreachable
from prefect_batch.testing import gate_command
from prefect_batch.testing.postgres import private_postgres
from tests.api.conftest import Server, running_server, wait_for
from tests.api.test_auth import error, send


@contextmanager
def failing_store(server: Server, exc: BaseException) -> Iterator[None]:
    """Every transaction of ``server``'s store raises ``exc`` while this is open."""

    @contextmanager
    def refuse(*_args: Any, **_kwargs: Any) -> Iterator[Any]:
        raise exc
        yield  # pragma: no cover

    store = server.store
    store.read, store.begin = refuse, refuse  # type: ignore[method-assign]
    try:
        yield
    finally:
        del store.read, store.begin


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("home")
    with running_server(f"sqlite:///{home / 'batch.db'}", home) as s:
        yield s


REFUSED = OperationalError(
    "SELECT 1",
    {},
    psycopg.OperationalError('connection to server at "127.0.0.1" failed: Connection refused'),
)


def test_an_unreachable_store_answers_503_server_busy(sqlite_server: Server) -> None:
    body = {"id": "outage-job", "poolInfo": {"poolId": "nowhere"}}
    assert send(sqlite_server, "POST", "/jobs", body=body).status_code == 201
    with failing_store(sqlite_server, REFUSED):
        for method, path, body in (
            ("GET", "/jobs/outage-job", None),
            ("GET", "/jobs", None),
            ("POST", "/jobs", {"id": "during-outage", "poolInfo": {"poolId": "nowhere"}}),
        ):
            answer = send(sqlite_server, method, path, body=body)
            assert answer.status_code == 503, answer.text
            code, values = error(answer)
            assert code == "ServerBusy"
            assert "store is unreachable" in answer.json()["message"]["value"]
            assert values["Reason"] == "store unreachable"
            assert answer.headers["Retry-After"] == "1"
    # Back: nothing half-written, the job made during the outage does not exist.
    assert send(sqlite_server, "GET", "/jobs/outage-job").status_code == 200
    assert send(sqlite_server, "GET", "/jobs/during-outage").status_code == 404


def test_a_dropped_connection_and_a_locked_sqlite_answer_503(sqlite_server: Server) -> None:
    locked = OperationalError("BEGIN", {}, sqlite3.OperationalError("database is locked"))
    for exc, what in ((DisconnectionError("gone"), "unreachable"), (locked, "busy")):
        with failing_store(sqlite_server, exc):
            answer = send(sqlite_server, "GET", "/jobs")
        assert answer.status_code == 503, answer.text
        assert error(answer) == ("ServerBusy", {"Reason": f"store {what}"})


def test_a_wrong_statement_is_still_an_internal_error(sqlite_server: Server) -> None:
    wrong = OperationalError("SELECT x", {}, sqlite3.OperationalError("no such table: x"))
    with failing_store(sqlite_server, wrong):
        answer = send(sqlite_server, "GET", "/jobs")
    assert answer.status_code == 500
    assert error(answer)[0] == "InternalError"


def test_which_errors_mean_the_store_cannot_serve() -> None:
    def pg(message: str, sqlstate: str | None) -> OperationalError:
        orig = psycopg.OperationalError(message)
        orig.sqlstate = sqlstate  # type: ignore[misc]
        return OperationalError("SELECT 1", {}, orig)

    assert store_unreachable(REFUSED) == "unreachable"
    assert store_unreachable(pg("terminating connection", "57P01")) == "unreachable"
    assert store_unreachable(pg("the database system is starting up", "57P03")) == "unreachable"
    assert store_unreachable(pg("too many connections", "53300")) == "unreachable"
    assert store_unreachable(pg("lock not available", "55P03")) == "busy"
    assert store_unreachable(pg("division by zero", "22012")) is None
    assert store_unreachable(ValueError("no")) is None
    try:
        try:
            raise REFUSED
        except OperationalError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert store_unreachable(outer) == "unreachable"


# -- a real outage ------------------------------------------------------------------------------


@pytest.mark.slow
def test_postgres_stopped_mid_job_then_every_task_completes(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    marks = tmp_path / "marks"
    marks.mkdir()
    mark = f"mktemp {marks}/$AZ_BATCH_TASK_ID.XXXXXX"
    with private_postgres() as pg, running_server(pg.url, tmp_path / "home") as server:
        sdk = server.sdk()
        sdk.create_pool(
            models.BatchPoolCreateOptions(
                id="pool", vm_size="local", target_dedicated_nodes=2, task_slots_per_node=4
            )
        )
        sdk.create_job(
            models.BatchJobCreateOptions(id="job", pool_info=models.BatchPoolInfo(pool_id="pool"))
        )
        # 8 finish at once; 8 run on the gate (in flight through the outage); 24 queue.
        tasks = [
            models.BatchTaskCreateOptions(
                id=f"t{i:02d}",
                command_line=f"/bin/sh -c '{mark}'" if i < 8 else gate_command(gate, then=mark),
            )
            for i in range(40)
        ]
        sdk.create_task_collection("job", models.BatchTaskGroup(task_values=tasks))
        wait_for(lambda: sdk.get_job_task_counts("job").task_counts.completed == 8, timeout=60)
        wait_for(lambda: sdk.get_job_task_counts("job").task_counts.running == 8, timeout=60)
        pg.stop("fast")
        try:
            # The gated tasks end while the store is away: their results wait on the nodes.
            gate.touch()
            answers = []
            for _ in range(10):  # a few seconds of requests against the stopped store
                answers.append(send(server, "GET", "/jobs/job"))
                time.sleep(0.3)
        finally:
            pg.start()
        assert {a.status_code for a in answers} == {503}, [a.text for a in answers]
        assert {error(a)[0] for a in answers} == {"ServerBusy"}
        wait_for(lambda: sdk.get_job_task_counts("job").task_counts.completed == 40, timeout=120)
        counts = sdk.get_job_task_counts("job").task_counts
        assert counts.succeeded == 40
        sdk.close()
    runs: dict[str, int] = {}
    for path in marks.iterdir():
        task_id = path.name.split(".")[0]
        runs[task_id] = runs.get(task_id, 0) + 1
    assert sorted(runs) == [f"t{i:02d}" for i in range(40)]
    assert set(runs.values()) == {1}
