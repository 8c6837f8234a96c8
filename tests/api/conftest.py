"""Fixtures: a real batch server (uvicorn on 127.0.0.1, a free port) over SQLite or PostgreSQL.

``store_url`` is parametrized: every module that uses ``server`` runs on SQLite and — when
``PREFECT_BATCH_TEST_POSTGRES_URL`` names a PostgreSQL database whose user may create databases
(``.ci/run`` sets one up) — again on a fresh PostgreSQL database of its own.

``server`` is one server per module: the app and an engine (local nodes) in this process, uvicorn
in a thread. ``sdk`` is the official ``azure.batch.BatchClient`` signed with the account's key.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.batch import BatchClient as SdkClient
from azure.core.credentials import AzureNamedKeyCredential
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from prefect_batch.api import create_app
from prefect_batch.client import build_engine
from prefect_batch.core.sharedkey import authorization_header, http_date
from prefect_batch.service.engine import Engine
from prefect_batch.service.ops.accounts import Account, AccountOperations
from prefect_batch.store import Store
from prefect_batch.testing import fast_settings
from prefect_batch.testing.webapp import free_port, serve_app

POSTGRES_ENV = "PREFECT_BATCH_TEST_POSTGRES_URL"
API = {"api-version": "2025-06-01"}


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh database on the server of ``admin_url``, dropped afterwards."""
    name = f"pb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE ends the database's sessions; an autovacuum worker on it belongs to no role, so
        # ending it needs pg_signal_backend (granted by .ci/run): else wait for it, boundedly.
        for attempt in range(20):
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except ProgrammingError:
                if attempt == 19:
                    raise
                time.sleep(0.5)
        admin.dispose()


@contextmanager
def database(kind: str, directory: Path) -> Iterator[str]:
    """A database URL: SQLite in ``directory``, or a fresh PostgreSQL database (else skip)."""
    if kind == "sqlite":
        yield f"sqlite:///{directory / 'batch.db'}"
        return
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        # Developer machines without PostgreSQL run the SQLite half; .ci/run starts a cluster,
        # sets the variable and stops with an error when it cannot, so CI runs both halves.
        pytest.skip(f"{POSTGRES_ENV} is not set (see .ci/run)")
    with postgres_database(admin_url) as url:
        yield url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A database for one module: SQLite in a temp dir, or a fresh PostgreSQL database."""
    with database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@dataclass
class Server:
    """A running batch server and what tests need to talk to it."""

    url: str
    store: Store
    engine: Engine
    home: Path
    account: Account

    def add_account(self, name: str) -> Account:
        """Create another account in the server's store."""
        return AccountOperations(self.store).create(name)

    def sdk(self, account: Account | None = None, key: str | None = None) -> SdkClient:
        """The official SDK client for an account (default: the main one)."""
        account = account or self.account
        credential = AzureNamedKeyCredential(account.name, key or account.primary)
        return SdkClient(self.url, credential, connection_timeout=10, read_timeout=60)


@contextmanager
def running_server(
    store_url: str, home: Path, *, settings: dict[str, Any] | None = None, **app_options: Any
) -> Iterator[Server]:
    """Start the app and an engine on a free loopback port; stop both (tasks killed) after.

    ``settings``: settings to change besides the fast test ones (e.g. the storage endpoint).
    """
    store = Store(store_url)
    settings = fast_settings(home, **(settings or {}))
    # A store that served before (a restart) keeps its account.
    accounts = AccountOperations(store)
    account = accounts.find("acct") or accounts.create("acct")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    engine = build_engine(store, settings, {account.name: url}, server=True)
    app = create_app(store, engine, account_url=url, manage_engine=False, **app_options)
    engine.start()
    try:
        with serve_app(app, port=port):
            yield Server(url=url, store=store, engine=engine, home=home, account=account)
    finally:
        engine.stop(kill_tasks=True)
        store.dispose()


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One running server per module (and per store)."""
    with running_server(store_url, tmp_path_factory.mktemp("home")) as s:
        yield s


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[SdkClient]:
    """The official azure-batch client of the server's main account."""
    client = server.sdk()
    yield client
    client.close()


def wait_for(predicate: Any, *, timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not reached within {timeout} s (last: {value!r})")
        time.sleep(interval)


def signed_send(
    http: httpx.Client,
    method: str,
    path: str,
    *,
    account: str,
    key: str,
    params: dict[str, Any] | None = None,
    body: Any = None,
    date: datetime | None = None,
    headers: dict[str, str] | None = None,
    sign: bool = True,
) -> httpx.Response:
    """One request through ``http`` (a real server's client, or an in-process ``TestClient``)
    signed with SharedKey like the SDK does (or not at all, with ``sign=False``). ``body``:
    bytes as they are, anything else as JSON."""
    hdrs = {"ocp-date": http_date(date or datetime.now(timezone.utc))}
    hdrs.update(headers or {})
    content = None
    if body is not None:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs["content-type"] = "application/json; odata=minimalmetadata"
    request = http.build_request(
        method, path, params={**API, **(params or {})}, content=content, headers=hdrs
    )
    if method not in ("GET", "HEAD") and "content-length" not in request.headers:
        request.headers["content-length"] = "0"
    if sign:
        raw_path, _, query = request.url.raw_path.decode().partition("?")
        request.headers["Authorization"] = authorization_header(
            method, raw_path, query, list(request.headers.items()), account, key
        )
    return http.send(request)
