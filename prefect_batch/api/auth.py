"""SharedKey authentication of requests, and the account a request acts for.

Every Batch route depends on :func:`authenticated`, which runs the app's :class:`Authenticator`:
it rebuilds the string the client signed (``core/sharedkey.py``, exactly as the azure-batch SDK
signs), computes the HMAC with each of the account's two keys and compares in constant time. It
rejects, in this order:

* no ``Authorization`` header -> 400 ``MissingRequiredHeader`` (``HeaderName: Authorization``);
* a header not of the form ``SharedKey <account>:<signature>`` -> 403 ``AuthenticationFailed``;
* neither ``ocp-date`` nor ``Date`` -> 400 ``MissingRequiredHeader`` (``ocp-date``); a date that
  is not RFC 1123 -> 400 ``InvalidHeaderValue``;
* a date more than 15 minutes from the server's clock (replay window) -> 403
  ``AuthenticationFailed``;
* an unknown account or a wrong signature -> 403 ``AuthenticationFailed`` (the same answer for
  both).

The account named in a verified header is the only one the request can see: routes get a
``BatchService`` bound to it.

Keys are read from the store and cached for a few seconds; a signature that matches no cached key
re-reads the account once, so a rotated or newly created key works at once, while a retired key
stops working within the cache time. Nothing here logs a key or a signature.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from fastapi import Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader

from prefect_batch.api.errors import authentication_failed, invalid_header, missing_header
from prefect_batch.core.sharedkey import (
    decode_key,
    derive_job_key,
    in_job_scope,
    parse_authorization,
    sign,
    split_scoped_name,
    string_to_sign,
)
from prefect_batch.service.ops.accounts import AccountOperations
from prefect_batch.store import Store

__all__ = [
    "MAX_CLOCK_SKEW_SECONDS",
    "Authenticator",
    "KeyRing",
    "authenticated",
    "shared_key_scheme",
]

MAX_CLOCK_SKEW_SECONDS = 15 * 60
"""How far a request's ``ocp-date`` may be from the server's clock (Azure: 15 minutes)."""

KEY_CACHE_SECONDS = 5.0
"""How long keys read from the store are trusted before they are read again."""

shared_key_scheme = APIKeyHeader(
    name="Authorization",
    scheme_name="SharedKey",
    description=(
        "Azure Batch SharedKey: `SharedKey <account>:<base64 HMAC-SHA256 of the canonical "
        "request>` with an `ocp-date` header within 15 minutes of the server's clock. "
        "The official azure-batch SDK signs with `AzureNamedKeyCredential(account, key)`."
    ),
    auto_error=False,
)

_BAD_SIGNATURE = (
    "The MAC signature found in the HTTP request is not the same as any computed signature."
)


class KeyRing:
    """The accounts' keys, read from the store and cached briefly (thread-safe).

    Args:
        store: Where the ``accounts`` table is.
        on_load: Called with an account's name whenever its keys are read from the store.
    """

    def __init__(
        self,
        store: Store,
        *,
        on_load: Callable[[str], None] | None = None,
        ttl_seconds: float = KEY_CACHE_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._accounts = AccountOperations(store)
        self._on_load = on_load or (lambda _name: None)
        self._ttl = ttl_seconds
        self._monotonic = monotonic
        self._cache: dict[str, tuple[float, tuple[bytes, ...]]] = {}
        self._lock = threading.Lock()

    def cached(self, name: str) -> tuple[bytes, ...] | None:
        """The account's keys if the cache holds them fresh (``None``: read the store)."""
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and self._monotonic() - hit[0] < self._ttl:
            return hit[1]
        return None

    def keys(self, name: str, *, reread: bool = False) -> tuple[bytes, ...]:
        """The account's raw keys (empty when there is no such account).

        ``reread`` reads the store instead of the cache (a signature that matched no cached key:
        the key may be new). A signature that fails costs one primary-key read.
        """
        now = self._monotonic()
        with self._lock:
            hit = self._cache.get(name)
        if hit is not None and not reread and now - hit[0] < self._ttl:
            return hit[1]
        account = self._accounts.find(name)
        if account is None:
            # Not cached: names that do not exist must not grow the cache.
            with self._lock:
                self._cache.pop(name, None)
            return ()
        keys = tuple(decode_key(k) for k in account.keys)
        with self._lock:
            self._cache[name] = (now, keys)
        self._on_load(name)
        return keys


class Authenticator:
    """The FastAPI dependency that verifies SharedKey and returns the request's account.

    Args:
        keyring: The accounts' keys.
        clock: Wall-clock time in UNIX seconds (for the 15-minute window).
    """

    def __init__(self, keyring: KeyRing, *, clock: Callable[[], float] = time.time) -> None:
        self.keyring = keyring
        self.clock = clock

    async def __call__(self, request: Request, authorization: str | None) -> str:
        """Verify ``request``; return its account name or raise the Azure error.

        Runs on the event loop: only reading keys from the store (a cache miss) goes to a
        thread.
        """
        pairs = list(request.headers.items())
        if not authorization:
            raise missing_header("Authorization")
        try:
            signer, signature = parse_authorization(authorization)
        except ValueError as exc:
            raise authentication_failed(str(exc)) from exc
        # A job manager signs as "<account>/jobs/<job>" with that job's derived key.
        account, job_id = split_scoped_name(signer)
        self._check_date(pairs)
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        text = string_to_sign(
            request.method,
            raw_path.decode("latin-1").split("?", 1)[0],
            request.scope.get("query_string", b"").decode("latin-1"),
            pairs,
            signer,
        )
        keys = self.keyring.cached(account)
        if keys is None:
            keys = await run_in_threadpool(self.keyring.keys, account)
        if not self._matches(self._scoped(keys, job_id), text, signature):
            # No key matched: the account's keys may have changed since they were cached.
            keys = await run_in_threadpool(self.keyring.keys, account, reread=True)
            if not self._matches(self._scoped(keys, job_id), text, signature):
                raise authentication_failed(_BAD_SIGNATURE)
        if job_id is not None and not in_job_scope(request.url.path, job_id):
            raise authentication_failed(
                f"The key is scoped to job {job_id}; this request is outside it."
            )
        return account

    @staticmethod
    def _scoped(keys: tuple[bytes, ...], job_id: str | None) -> tuple[bytes, ...]:
        if job_id is None:
            return keys
        return tuple(derive_job_key(k, job_id) for k in keys)

    @staticmethod
    def _matches(keys: tuple[bytes, ...], text: str, signature: str) -> bool:
        found = False
        for key in keys:  # both keys, always: no early exit to time
            found |= hmac.compare_digest(sign(key, text), signature)
        return found

    def _check_date(self, pairs: list[tuple[str, str]]) -> None:
        by_name = {k.lower(): v for k, v in pairs}
        name = "ocp-date" if by_name.get("ocp-date") else "date"
        value = by_name.get(name)
        if not value:
            raise missing_header("ocp-date")
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError) as exc:
            raise invalid_header(name, value, "not an RFC 1123 date") from exc
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        skew = abs(self.clock() - when.timestamp())
        if skew > MAX_CLOCK_SKEW_SECONDS:
            raise authentication_failed(
                f"The request's {name} ({value}) is more than 15 minutes from the server's "
                f"time ({datetime.fromtimestamp(self.clock(), timezone.utc):%a, %d %b %Y %H:%M:%S} "
                "GMT)."
            )


async def authenticated(
    request: Request, authorization: str | None = Security(shared_key_scheme)
) -> str:
    """The FastAPI dependency of every Batch route: the verified account of the request."""
    authenticator: Authenticator = request.app.state.authenticator
    account = await authenticator(request, authorization)
    request.state.account = account
    return account
