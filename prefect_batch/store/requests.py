"""Client request ids: a write recorded with the request that made it, for replays.

A caller that wants its write to be idempotent sets :data:`current_request` to a
:class:`ClientRequest` (the REST layer does, for a write that carries ``client-request-id``;
``api/idempotency.py``). The next write transaction of that context (:meth:`Store.begin
<prefect_batch.store.Store.begin>`) first inserts a ``client_requests`` row for
``(account, request_id)`` — in the same transaction as the write, so the row exists exactly when
the write landed. When a live row is already there (the same id was used by a write that
landed and was not refused), the insert changes nothing and :class:`RequestSeen` is raised
before the caller's statements run: the transaction is rolled back and the caller answers
with what :func:`find` returns instead of writing again. Two simultaneous requests with one id are
serialized by the row's key: SQLite's ``BEGIN IMMEDIATE``, or PostgreSQL's wait on the
uncommitted key of the other transaction; the second sees the first's row.

Rows live :data:`LIFETIME_SECONDS` (Azure's window for ``ocp-date``, past which a retry is
refused anyway); expired rows are deleted by a write transaction every
:data:`PURGE_EVERY` claims, and an expired row is taken over by a new claim of its id.

What it does not do: decide what an answer is, or read HTTP (that is the REST layer's).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from prefect_batch.store.schema import client_requests

__all__ = [
    "LIFETIME_SECONDS",
    "AnswerWriter",
    "MAX_ANSWER_BYTES",
    "ClientRequest",
    "RequestSeen",
    "SeenRequest",
    "claim",
    "current_request",
    "answer_of",
    "find",
    "purge",
    "refused",
    "record_answer",
    "record_answers",
]

LIFETIME_SECONDS = 15 * 60.0
"""How long a request id is remembered (Azure refuses a request signed longer ago than this)."""

MAX_ANSWER_BYTES = 1024 * 1024
"""Largest answer body kept for a replay; a larger one is not kept (the replay has no body)."""

PURGE_EVERY = 200
"""Claims between two deletions of expired rows (per store handle)."""

WRITER_BATCH = 500
"""Most answers :class:`AnswerWriter` keeps in one transaction."""

WRITER_IDLE_SECONDS = 5.0
"""How long :class:`AnswerWriter`'s thread waits for answers before it ends."""

log = logging.getLogger("prefect_batch.store")


@dataclass
class ClientRequest:
    """One request that wants its write recorded under its id.

    ``digest`` (a ``hashlib`` object) is fed what identifies the request — its method, path,
    query and body — while it is read; its hex digest when the row is inserted is the
    request's fingerprint. ``account`` is None until the caller is authenticated: an unarmed
    request claims nothing. ``claimed`` turns True once a transaction that inserted the row
    has committed; ``replayed`` once the request was answered from an earlier one's row.
    """

    request_id: str
    digest: Any
    success_status: int = 200
    account: str | None = None
    claimed: bool = False
    replayed: bool = False

    @property
    def fingerprint(self) -> str:
        """The hex digest of what was fed to ``digest`` so far."""
        return str(self.digest.hexdigest())


current_request: ContextVar[ClientRequest | None] = ContextVar(
    "prefect_batch_client_request", default=None
)
"""The request the current context's write transactions record (None: no record)."""


class RequestSeen(Exception):
    """A write of this request id already landed: nothing was written this time."""

    def __init__(self, request: ClientRequest) -> None:
        super().__init__(request.request_id)
        self.request = request


@dataclass(frozen=True)
class SeenRequest:
    """The row of a request id that landed: what a retry of it is answered."""

    fingerprint: str
    success_status: int
    status: int | None
    headers: dict[str, str] | None
    body: bytes | None


def _insert(conn: Connection) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(client_requests)


def claim(conn: Connection, request: ClientRequest, now: float | None = None) -> None:
    """Insert ``request``'s row in ``conn``'s transaction; :class:`RequestSeen` if it is live.

    An expired or refused (:func:`refused`) row of the same id is taken over (``ON CONFLICT
    ... DO UPDATE WHERE``), so no statement ever fails on the key: a PostgreSQL transaction is
    never left aborted.
    """
    now = time.time() if now is None else now
    values = {
        "account": request.account,
        "request_id": request.request_id,
        "fingerprint": request.fingerprint,
        "expires": now + LIFETIME_SECONDS,
        "success_status": request.success_status,
        "status": None,
        "headers": None,
        "body": None,
    }
    stmt = _insert(conn).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=[client_requests.c.account, client_requests.c.request_id],
        set_={k: stmt.excluded[k] for k in values if k not in ("account", "request_id")},
        where=(client_requests.c.expires < now) | client_requests.c.status.between(400, 499),
    )
    # RETURNING, not rowcount: psycopg reports -1 for an upsert that changed nothing.
    if conn.execute(stmt.returning(client_requests.c.request_id)).first() is None:
        raise RequestSeen(request)


def refused(status: int) -> bool:
    """Whether an answer ``status`` refused the request (4xx).

    A refused request changed nothing (the service's rule for a 4xx), even when its transaction
    committed: its row is taken over by the next claim of its id, as if it were not there.
    """
    return 400 <= status < 500


def purge(conn: Connection, now: float | None = None) -> int:
    """Delete the expired rows; how many were deleted."""
    now = time.time() if now is None else now
    return conn.execute(delete(client_requests).where(client_requests.c.expires < now)).rowcount


def _key(account: str, request_id: str) -> Any:
    return (client_requests.c.account == account) & (client_requests.c.request_id == request_id)


def find(
    engine: Engine, account: str, request_id: str, now: float | None = None
) -> SeenRequest | None:
    """The live row of ``request_id`` in ``account`` (None: no write of it landed lately)."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        row = conn.execute(
            select(client_requests).where(
                _key(account, request_id), client_requests.c.expires >= now
            )
        ).one_or_none()
    if row is None:
        return None
    return SeenRequest(row.fingerprint, row.success_status, row.status, row.headers, row.body)


def record_answer(
    engine: Engine,
    request: ClientRequest,
    status: int,
    headers: dict[str, str],
    body: bytes,
) -> None:
    """Keep the answer given to ``request`` (claimed) on its row, for a retry to get."""
    record_answers(engine, [answer_of(request, status, headers, body)])


def answer_of(
    request: ClientRequest, status: int, headers: dict[str, str], body: bytes
) -> dict[str, Any]:
    """The values :func:`record_answers` writes for ``request``'s answer."""
    assert request.account is not None
    return {
        "k_account": request.account,
        "k_request_id": request.request_id,
        "k_fingerprint": request.fingerprint,
        "status": status,
        "headers": headers,
        "body": body if len(body) <= MAX_ANSWER_BYTES else None,
    }


def record_answers(engine: Engine, answers: list[dict[str, Any]]) -> None:
    """Keep several answers (:func:`answer_of`) in one transaction."""
    if not answers:
        return
    c = client_requests.c
    stmt = (
        update(client_requests)
        .where(
            c.account == bindparam("k_account"),
            c.request_id == bindparam("k_request_id"),
            c.fingerprint == bindparam("k_fingerprint"),
        )
        .values(status=bindparam("status"), headers=bindparam("headers"), body=bindparam("body"))
    )
    with engine.begin() as conn:
        conn.execute(stmt, answers)


class AnswerWriter:
    """Keeps answers from a thread of its own, many per transaction, off the answering path.

    A request is answered without waiting for its answer to be kept (a second write
    transaction per request would take the store's write lock twice); a retry that comes
    before it is kept waits for it (``api/idempotency.py``). The thread ends after
    :data:`WRITER_IDLE_SECONDS` without answers and is started again by the next one. An
    answer not kept (the store failed, the process stopped) leaves its row without one: a retry
    is answered with the operation's success status.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._queue: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, answer: dict[str, Any]) -> None:
        """Keep ``answer`` (:func:`answer_of`) soon."""
        self._queue.put(answer)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="prefect-batch-answers", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                batch = [self._queue.get(timeout=WRITER_IDLE_SECONDS)]
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            while len(batch) < WRITER_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                record_answers(self.engine, batch)
            except Exception as exc:  # the rows keep no answer: retries get the success status
                log.warning("client request answers not kept: %s", type(exc).__name__)
