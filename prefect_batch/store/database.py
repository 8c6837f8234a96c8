"""The database connection: engine creation, SQLite tuning, and transactions.

SQLite (the embedded default) runs in WAL mode with ``synchronous=NORMAL`` — a commit survives a
crash of the process (the failure the service promises to survive); and every write transaction
starts with ``BEGIN IMMEDIATE`` so that two processes never deadlock upgrading a read lock.
PostgreSQL is used as is, through the same Core statements.

This module knows nothing of pools or jobs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url

from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.store import requests
from prefect_batch.store.schema import SCHEMA_VERSION, metadata, schema_info

__all__ = ["Store", "store_unreachable"]


class Store:
    """A handle on the batch database.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:////home/me/.prefect-batch/batch.db`` or
            ``postgresql+psycopg://user@127.0.0.1/batch``.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 60}
            )
            _tune_sqlite(self.engine)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._claims = 0  # client request ids recorded by this handle (requests.PURGE_EVERY)
        existing = set(inspect(self.engine).get_table_names())
        metadata.create_all(self.engine)
        if self.is_sqlite:
            _private_files(parsed.database)
        # A store made before versioning has tables but no schema_info: refuse it too.
        self._check_version(fresh=not existing)

    def _check_version(self, *, fresh: bool) -> None:
        with self.engine.begin() as conn:
            found = conn.execute(select(schema_info.c.version)).scalars().all()
            if not found and not fresh:
                found = [1]
            if not found:
                conn.execute(insert(schema_info).values(version=SCHEMA_VERSION))
            elif found != [SCHEMA_VERSION]:
                raise PrefectBatchError(
                    f"the store at {self.engine.url.render_as_string(hide_password=True)} was "
                    f"written by schema version {found[0]}, this version uses {SCHEMA_VERSION}; "
                    "use a fresh PREFECT_BATCH_HOME (or database)"
                )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on error.

        When the context carries a client request (``requests.current_request``) not yet
        recorded, its row is inserted first, in this transaction (``requests.RequestSeen``
        when that id already landed: nothing is written).
        """
        request = requests.current_request.get()
        if request is None or request.claimed or request.account is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self.engine.begin() as conn:
            requests.claim(conn, request)
            if self._claims % requests.PURGE_EVERY == 0:
                requests.purge(conn)
            self._claims += 1
            yield conn
        request.claimed = True

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (no write lock taken on SQLite)."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(batch_readonly=True)
            with conn.begin():
                yield conn

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()


# SQLSTATE classes of PostgreSQL errors that say the server cannot serve now, not that the
# statement is wrong: connection exception, insufficient resources, operator intervention
# (shutdown, "cannot connect now"), system error.
_UNREACHABLE_SQLSTATE_CLASSES = ("08", "53", "57P", "58")
# What SQLite says when the file is locked past its busy timeout or cannot be opened or read.
_SQLITE_UNAVAILABLE = (
    "database is locked",
    "database is busy",
    "database table is locked",
    "unable to open database file",
    "disk i/o error",
)


def store_unreachable(exc: BaseException) -> str | None:
    """Why the store could not serve, when ``exc`` (or what it was raised from) says so.

    A connection refused, dropped or invalidated, a PostgreSQL server shutting down or starting
    up, SQLite's file locked past its busy timeout: a short reason (``"unreachable"`` or
    ``"busy"``). Anything else — a wrong statement, a constraint violated, a bug — is None.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        reason = _unreachable(current)
        if reason:
            return reason
        current = current.__cause__ or current.__context__
    return None


def _unreachable(exc: BaseException) -> str | None:
    if isinstance(exc, sa_exc.DisconnectionError):
        return "unreachable"
    if not isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError):
        return None
    if exc.connection_invalidated:
        return "unreachable"
    orig = exc.orig
    module = type(orig).__module__ or ""
    if module.startswith("sqlite3"):
        text = str(orig).lower()
        if any(m in text for m in _SQLITE_UNAVAILABLE):
            return "busy" if "locked" in text or "busy" in text else "unreachable"
        return None  # "no such table", a syntax error...: a bug, not an outage
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate is None:
        return "unreachable"  # failed before the server answered: refused, reset, timed out
    if str(sqlstate).startswith(_UNREACHABLE_SQLSTATE_CLASSES):
        return "unreachable"
    if str(sqlstate) in ("55P03", "40P01", "57014"):
        return "busy"  # lock not available, deadlock detected, statement timed out
    return None


def _private_files(database: str | None) -> None:
    """The SQLite file and its journals readable by their owner only (they hold the keys)."""
    if not database or database == ":memory:":
        return
    for suffix in ("", "-wal", "-shm"):
        path = Path(database + suffix)
        try:
            if path.exists() and path.stat().st_uid == os.geteuid():
                path.chmod(0o600)
        except OSError:
            pass  # not ours to change


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's begin event issue BEGIN itself (pysqlite's own is too late).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        if conn.get_execution_options().get("batch_readonly"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
