"""Writes idempotent on ``client-request-id``: a retry gets the original's answer.

A client that timed out (or got a 5xx) cannot tell whether its write landed. Sent again with the
same ``client-request-id`` (the azure-batch SDK keeps one id across its own retries of a call),
the write is not done twice:

* a write (POST, PUT, PATCH, DELETE) whose ``client-request-id`` is a plausible id (1 to
  :data:`MAX_ID_LENGTH` printable ASCII characters, no space) is recorded, per account, in the
  same store transaction as the change it makes (``store/requests.py``): the record exists
  exactly when the write landed. Its fingerprint is the SHA-256 of the method, path, query,
  conditional headers and body. A request that changed nothing (refused with a 4xx, or failed
  before its write) leaves no record that counts, so sending it again — corrected or not —
  runs it normally (a 4xx changes nothing: the record of a refused write is taken over by the
  next request with its id);
* as it is answered, the answer's status, the headers a client reads (``ETag``, ``Last-Modified``,
  ``Location``, ``DataServiceId``, ``Content-Type``) and its body (at most
  ``MAX_ANSWER_BYTES``) are kept on the record (by a thread of their own, many answers per
  transaction: the request does not wait for it) — for a 5xx (the write landed, then the answer
  failed) the operation's success status with no body is kept instead, so the retry a client
  makes of a 5xx learns that its write landed;
* a retry with the same id and the same fingerprint is answered with the kept answer (and
  ``x-prefect-batch-replayed: true``), or, when no answer was kept (the service stopped between
  the commit and the answer), the operation's success status with no body; a retry that arrives
  while the first is still answering waits for its answer (at most
  :data:`ANSWER_WAIT_SECONDS`). Nothing is written again;
* the same id with another fingerprint is 400 ``InvalidHeaderValue`` naming
  ``client-request-id``;
* an id is remembered 15 minutes (the ``ocp-date`` window).

The write's own transaction finds the record first (``RequestSeen``) before changing anything;
a retry that the service refuses before it writes (a precondition that no longer holds, a check
outside the transaction) is answered from the record too, when there is one.

What it does not do: make writes idempotent that do not change the store (a file deleted on a
node: the agent is asked again), or cover the web page (``/ui``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefect_batch.api.errors import RETRY_AFTER_SECONDS, error_response, invalid_header
from prefect_batch.exceptions import BatchServiceError
from prefect_batch.store import Store
from prefect_batch.store.requests import (
    AnswerWriter,
    ClientRequest,
    RequestSeen,
    SeenRequest,
    answer_of,
    current_request,
    find,
    record_answers,
    refused,
)

__all__ = [
    "ANSWER_WAIT_SECONDS",
    "HEADER",
    "MAX_ID_LENGTH",
    "IdempotencyMiddleware",
    "arm",
    "install_replay_handler",
]

log = logging.getLogger("prefect_batch.api")

HEADER = "client-request-id"
MAX_ID_LENGTH = 128
"""Longest ``client-request-id`` that takes part (the SDK's are 36-character UUIDs)."""

ANSWER_WAIT_SECONDS = 5.0
"""How long a retry waits for the answer of a first attempt that is still answering."""

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_PLAUSIBLE_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_ID_LENGTH)
# What a replay gives back of the original's headers (request-id is each attempt's own).
_KEPT_HEADERS = frozenset({"etag", "last-modified", "location", "dataserviceid", "content-type"})
# Conditional headers change what a write does: part of the fingerprint.
_CONDITIONS = (b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since")
REPLAYED = "x-prefect-batch-replayed"


def arm(account: str, route: Any) -> None:
    """Record the current write under ``account`` (authenticated); ``route`` gives its status."""
    request = current_request.get()
    if request is not None:
        request.account = account
        request.success_status = getattr(route, "status_code", None) or 200


def _mismatch(request: ClientRequest) -> Response:
    return error_response(
        invalid_header(
            HEADER,
            request.request_id,
            "already used by a different request (method, path, query or body) in the last "
            "15 minutes; use a new id for a new request",
        )
    )


def _replay(request: ClientRequest, seen: SeenRequest) -> Response:
    if seen.fingerprint != request.fingerprint:
        return _mismatch(request)
    request.replayed = True
    if seen.status is None:
        response = Response(status_code=seen.success_status)
    else:
        response = Response(
            content=seen.body or b"", status_code=seen.status, headers=seen.headers or {}
        )
    response.headers[REPLAYED] = "true"
    return response


def _seen(store: Store, request: ClientRequest, *, wait: bool) -> SeenRequest | None:
    """The landed request's record; with ``wait``, until its answer is kept (bounded)."""
    assert request.account is not None
    deadline = time.monotonic() + (ANSWER_WAIT_SECONDS if wait else 0.0)
    while True:
        seen = find(store.engine, request.account, request.request_id)
        if seen is None or seen.status is not None or seen.fingerprint != request.fingerprint:
            return seen
        if time.monotonic() >= deadline:
            return seen
        time.sleep(0.05)


def install_replay_handler(app: FastAPI) -> None:
    """Answer a write whose id already landed (``RequestSeen``) with the landed one's answer."""

    async def replay(http: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestSeen)
        store: Store = http.app.state.store
        request = exc.request
        seen = await run_in_threadpool(_seen, store, request, wait=True)
        if seen is None or (
            seen.status is not None
            and refused(seen.status)
            and seen.fingerprint != request.fingerprint
        ):
            # The row expired, or a concurrent attempt with this id was refused, between the
            # claim and this read: nothing was written; the retry the client makes will run.
            response = error_response(
                BatchServiceError(
                    "ServerBusy",
                    f"Another request with this {HEADER} was being answered. Please retry "
                    "your request.",
                    {"HeaderName": HEADER, "HeaderValue": request.request_id},
                    status_code=503,
                )
            )
            response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
            return response
        return _replay(request, seen)

    app.add_exception_handler(RequestSeen, replay)


class IdempotencyMiddleware:
    """Keeps the answers of recorded writes, and answers retries of them (see the module)."""

    def __init__(self, app: ASGIApp, store: Store) -> None:
        self.app = app
        self.store = store
        self.answers = AnswerWriter(store.engine)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        raw_id = headers.get(HEADER.encode())
        if not raw_id or not _PLAUSIBLE_ID.fullmatch(raw_id):
            await self.app(scope, receive, send)
            return
        digest = hashlib.sha256()
        for part in (scope["method"].encode(), scope.get("raw_path") or scope["path"].encode()):
            digest.update(part + b"\0")
        digest.update(scope.get("query_string", b"") + b"\0")
        for name in _CONDITIONS:
            digest.update(headers.get(name, b"") + b"\0")
        request = ClientRequest(raw_id.decode("ascii"), digest)

        async def hashing_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                digest.update(message.get("body", b""))
            return message

        start: Message | None = None
        chunks: list[bytes] = []

        async def settling_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            first, body = await self._settle(request, start, b"".join(chunks))
            await send(first)
            await send({"type": "http.response.body", "body": body})

        token = current_request.set(request)
        try:
            await self.app(scope, hashing_receive, settling_send)
        finally:
            current_request.reset(token)

    async def _settle(
        self, request: ClientRequest, start: Message, body: bytes
    ) -> tuple[Message, bytes]:
        """The answer to send: kept on the record of a landed write, or replayed from one."""
        status = int(start["status"])
        if request.claimed:
            kept = {
                k.decode("latin-1"): v.decode("latin-1")
                for k, v in start.get("headers") or []
                if k.decode("latin-1").lower() in _KEPT_HEADERS
            }
            if status >= 500:
                # The write landed all the same: a retry (the SDK retries a 5xx) is told so.
                kept, kept_status, kept_body = {}, request.success_status, b""
            else:
                kept_status, kept_body = status, body
            answer = answer_of(request, kept_status, kept, kept_body)
            if not refused(kept_status):
                self.answers.put(answer)
                return start, body
            # Refused: marked so before the client hears it, so that the corrected request it
            # may send at once with the same id runs (rare: worth a transaction of its own).
            try:
                await run_in_threadpool(record_answers, self.store.engine, [answer])
            except Exception as exc:  # the row stays unanswered: a retry is answered its status
                log.warning("%s: refusal not kept: %s", HEADER, type(exc).__name__)
            return start, body
        if status < 400 or request.replayed or request.account is None:
            return start, body
        # Refused before writing: was it a retry of a write of this id that landed?
        try:
            seen = await run_in_threadpool(_seen, self.store, request, wait=True)
        except Exception as exc:  # the store is down: the refusal stands
            log.warning("%s: record not read: %s", HEADER, type(exc).__name__)
            return start, body
        if seen is None or (seen.status is not None and refused(seen.status)):
            return start, body  # no write of this id landed: the refusal stands
        response = _replay(request, seen)
        first: Message = {
            "type": "http.response.start",
            "status": response.status_code,
            "headers": response.raw_headers,
        }
        return first, bytes(response.body)
