"""Guarded task, job and pool state writes: edges checked at definition, illegal rows refused at
run time.

The rows are made through an embedded service without an engine, so nothing moves them but the
writes under test.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import bindparam, select

from prefect_batch import BatchClient
from prefect_batch.core.states import AllocationState, JobState, PoolState, TaskState
from prefect_batch.exceptions import IllegalTransitionError
from prefect_batch.service.rows.autopools import mark_pool_deleting
from prefect_batch.service.rows.statewrites import (
    POOL_SETTLED,
    STRICT_ENV,
    allocation_edge,
    job_edge,
    pool_edge,
    strict,
    task_edge,
)
from prefect_batch.store.schema import jobs, pools, tasks

_ENDED = task_edge((TaskState.PREPARING, TaskState.RUNNING), TaskState.COMPLETED)
_ENDED_BY_PK = _ENDED.statement(tasks.c.pk == bindparam("b_pk"), end_time=bindparam("b_now"))


@pytest.fixture
def service(client_factory: Callable[..., BatchClient]) -> BatchClient:
    """A service without an engine, with one job ``j`` of two active tasks ``a`` and ``b``."""
    client = client_factory(engine=False)
    client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 0})
    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    client.create_tasks("j", [{"id": t, "commandLine": "true"} for t in ("a", "b")])
    return client


def _task_rows(client: BatchClient) -> dict[str, Any]:
    with client.store.read() as conn:
        return {r.id: r for r in conn.execute(select(tasks)).all()}


@pytest.fixture
def lenient(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strict mode off: refused rows are logged, not raised about."""
    monkeypatch.setenv(STRICT_ENV, "0")
    yield


def test_the_suite_runs_strict() -> None:
    assert strict()


@pytest.mark.parametrize(
    "make",
    [
        lambda: task_edge((TaskState.ACTIVE,), TaskState.RUNNING),
        lambda: task_edge((TaskState.PREPARING, TaskState.COMPLETED), TaskState.RUNNING),
        lambda: task_edge((TaskState.COMPLETED,), TaskState.COMPLETED),
        lambda: job_edge((JobState.COMPLETED,), JobState.ACTIVE),
        lambda: job_edge((JobState.DELETING,), JobState.DELETING),
        lambda: pool_edge((PoolState.DELETING,), PoolState.ACTIVE),
        lambda: allocation_edge((AllocationState.STEADY,), AllocationState.STOPPING),
        lambda: allocation_edge((AllocationState.STOPPING,), AllocationState.RESIZING),
    ],
)
def test_an_edge_the_table_lacks_raises_when_it_is_defined(make: Callable[[], Any]) -> None:
    with pytest.raises(IllegalTransitionError):
        make()


def test_an_edge_needs_a_state_to_start_from() -> None:
    with pytest.raises(ValueError):
        task_edge((), TaskState.ACTIVE)


def test_the_statement_guards_on_the_from_states() -> None:
    sql = str(_ENDED_BY_PK.update)
    assert "tasks.state = " in sql and " OR " in sql


def test_a_legal_write_moves_its_rows(service: BatchClient) -> None:
    pk = _task_rows(service)["a"].pk
    with service.store.begin() as conn:
        moved = task_edge((TaskState.ACTIVE,), TaskState.PREPARING).write(
            conn, tasks.c.pk == pk, expected=1, previous_state=TaskState.ACTIVE.value
        )
    assert moved == 1
    assert _task_rows(service)["a"].state == "preparing"
    assert _task_rows(service)["b"].state == "active"


def test_an_illegal_write_raises_in_strict_mode_and_changes_nothing(service: BatchClient) -> None:
    before = _task_rows(service)
    with service.store.begin() as conn:
        with pytest.raises(IllegalTransitionError, match="active -> completed"):
            _ENDED_BY_PK.execute(conn, [{"b_pk": r.pk, "b_now": 1.0} for r in before.values()])
        # Raised before anything was written, in the same transaction.
        states = dict(conn.execute(select(tasks.c.id, tasks.c.state)).all())
        assert states == {"a": "active", "b": "active"}
    assert _task_rows(service) == before


def test_an_illegal_job_write_raises_in_strict_mode(service: BatchClient) -> None:
    with service.store.begin() as conn:
        with pytest.raises(IllegalTransitionError, match="active -> completed"):
            job_edge((JobState.TERMINATING,), JobState.COMPLETED).write(
                conn, jobs.c.id == "j", expected=1
            )
    assert service.get_job("j").state == "active"


@pytest.mark.usefixtures("lenient")
def test_outside_strict_mode_illegal_rows_are_refused_and_logged(
    service: BatchClient, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _task_rows(service)
    with service.store.begin() as conn:
        task_edge((TaskState.ACTIVE,), TaskState.PREPARING).write(conn, tasks.c.pk == rows["a"].pk)
    with caplog.at_level(logging.WARNING, logger="prefect_batch.engine"):
        with service.store.begin() as conn:
            moved = _ENDED_BY_PK.execute(
                conn, [{"b_pk": r.pk, "b_now": 1.0} for r in rows.values()], expected=2
            )
    # "a" (preparing) completes; "b" (active) is refused and keeps its state.
    assert moved == 1
    after = _task_rows(service)
    assert after["a"].state == "completed" and after["a"].end_time == 1.0
    assert after["b"].state == "active" and after["b"].end_time is None
    assert any("1 of 2 rows refused" in r.getMessage() for r in caplog.records)


def test_a_write_only_from_its_states_skips_others_quietly(
    service: BatchClient, caplog: pytest.LogCaptureFixture
) -> None:
    rows = _task_rows(service)
    started = task_edge((TaskState.PREPARING,), TaskState.RUNNING).statement(
        tasks.c.pk == bindparam("b_pk"), only_from=True
    )
    with caplog.at_level(logging.WARNING, logger="prefect_batch.engine"):
        with service.store.begin() as conn:
            moved = started.execute(conn, [{"b_pk": r.pk} for r in rows.values()], expected=2)
    assert moved == 0
    assert {r.state for r in _task_rows(service).values()} == {"active"}
    assert not caplog.records


def _pool(client: BatchClient) -> Any:
    with client.store.read() as conn:
        return conn.execute(select(pools).where(pools.c.id == "p")).one()


def test_a_pool_moves_along_its_allocation_edges(service: BatchClient) -> None:
    assert _pool(service).allocation_state == "steady"
    service.resize_pool("p", {"targetDedicatedNodes": 2})
    assert _pool(service).allocation_state == "resizing"
    service.stop_pool_resize("p")
    assert _pool(service).allocation_state == "steady"
    service.stop_pool_resize("p")  # stopping no resize: the pool stays steady, quietly
    assert _pool(service).allocation_state == "steady"


def test_an_illegal_pool_allocation_write_raises_in_strict_mode(service: BatchClient) -> None:
    before = _pool(service)
    with service.store.begin() as conn:
        with pytest.raises(IllegalTransitionError, match="steady -> steady"):
            POOL_SETTLED.write(conn, pools.c.pk == before.pk, expected=1, resize_errors=[])
    after = _pool(service)
    assert (after.allocation_state, after.resize_errors) == ("steady", before.resize_errors)


def test_a_pool_is_deleted_once(service: BatchClient) -> None:
    pk = _pool(service).pk
    with service.store.begin() as conn:
        mark_pool_deleting(conn, pk, 5.0)
    assert (_pool(service).state, _pool(service).state_transition_time) == ("deleting", 5.0)
    with service.store.begin() as conn:
        with pytest.raises(IllegalTransitionError, match="deleting -> deleting"):
            mark_pool_deleting(conn, pk, 6.0)
    assert _pool(service).state_transition_time == 5.0
