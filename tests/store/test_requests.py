"""Client request records (``store/requests.py``), on SQLite and PostgreSQL.

A record is written by the write transaction it belongs to and by nothing else: rolled back
with it, refused (``RequestSeen``) while live, taken over once expired or refused, purged when
expired; a store made before the table existed gets it when opened.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select, text, update

from prefect_batch.store import Store
from prefect_batch.store.requests import (
    LIFETIME_SECONDS,
    ClientRequest,
    RequestSeen,
    current_request,
    find,
    purge,
    record_answer,
)
from prefect_batch.store.schema import accounts, client_requests
from tests.api.conftest import database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with database(request.param, tmp_path) as url:
        s = Store(url)
        yield s
        s.dispose()


def _request(request_id: str = "r1", body: bytes = b"body") -> ClientRequest:
    return ClientRequest(request_id, hashlib.sha256(body), success_status=201, account="acct")


def _write(store: Store, request: ClientRequest, name: str, *, fail: bool = False) -> None:
    """A write transaction of ``request``'s context: one row (then an error, with ``fail``)."""
    token = current_request.set(request)
    try:
        with store.begin() as conn:
            conn.execute(insert(accounts).values(name=name, key1="k", key2="k", creation_time=0.0))
            if fail:
                raise ValueError("refused")
    finally:
        current_request.reset(token)


def _rows(store: Store) -> int:
    with store.read() as conn:
        return conn.execute(select(func.count()).select_from(accounts)).scalar_one()


def test_a_record_lands_with_its_write_only(store: Store) -> None:
    request = _request()
    with pytest.raises(ValueError):
        _write(store, request, "a1", fail=True)
    assert not request.claimed
    assert find(store.engine, "acct", "r1") is None and _rows(store) == 0
    _write(store, request, "a1")
    assert request.claimed
    seen = find(store.engine, "acct", "r1")
    assert seen is not None and seen.fingerprint == request.fingerprint and seen.status is None
    assert find(store.engine, "other", "r1") is None  # per account


def test_a_live_id_is_not_written_twice(store: Store) -> None:
    _write(store, _request(), "a1")
    with pytest.raises(RequestSeen):
        _write(store, _request(), "a2")  # a retry: a new request object, the same id
    assert _rows(store) == 1  # a2 never written: the transaction was rolled back
    # The claimed request's later transactions record nothing more.
    request = _request("r2")
    _write(store, request, "a3")
    _write(store, request, "a4")
    assert _rows(store) == 3


def test_answers_are_kept_and_refused_or_expired_rows_taken_over(store: Store) -> None:
    request = _request()
    _write(store, request, "a1")
    record_answer(store.engine, request, 201, {"Location": "x"}, b"")
    seen = find(store.engine, "acct", "r1")
    assert seen is not None and (seen.status, seen.headers) == (201, {"Location": "x"})
    # Refused (4xx): the next request of the id runs, whatever its body.
    record_answer(store.engine, request, 400, {}, b"{}")
    _write(store, _request(body=b"corrected"), "a2")
    assert _rows(store) == 2
    # Expired: gone from find, taken over by a claim, purged.
    with store.begin() as conn:
        conn.execute(update(client_requests).values(expires=time.time() - 1))
    assert find(store.engine, "acct", "r1") is None
    _write(store, _request(), "a3")
    assert _rows(store) == 3
    with store.begin() as conn:
        assert purge(conn, now=time.time() + LIFETIME_SECONDS + 1) == 1
        assert conn.execute(select(func.count()).select_from(client_requests)).scalar_one() == 0


def test_a_store_from_before_the_table_gets_it(store: Store) -> None:
    with store.begin() as conn:
        conn.execute(text("DROP TABLE client_requests"))
    store.dispose()
    again = Store(store.url)  # same schema version: the new table is simply added
    try:
        request = _request()
        _write(again, request, "a1")
        assert request.claimed
    finally:
        again.dispose()
