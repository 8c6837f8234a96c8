"""Sign-in, session cookies and CSRF tokens of the web page.

Signing in takes an account name and one of its two keys, checked against the store in constant
time (an unknown account and a wrong key get the same answer). It gives a session cookie:

* **signed** (HMAC-SHA256 with a secret of the app, random per process unless given) over the
  account, an expiry time, a random session id and a fingerprint of the key used;
* **expiring** (``max_age`` seconds; the expiry is inside the signed part, so a kept cookie
  stops working even if the browser ignores ``Max-Age``);
* ``HttpOnly``, ``SameSite=Strict``, ``Path=/ui``, and ``Secure`` when the page is served over
  HTTPS (directly or behind a proxy that says so).

Every request checks the signature, the expiry and that the key is still one of the account's
keys (through the same :class:`~prefect_batch.api.auth.KeyRing` as SharedKey, so rotating a key
ends the sessions signed in with it within the key cache's few seconds).

Each session has a CSRF token (an HMAC of its session id); every action is a POST whose form
carries it, compared in constant time. The cookie never holds the key, and nothing here logs a
key, a token or a cookie.

What it does not do: render pages or run operations (``routes.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from prefect_batch.api.auth import KeyRing
from prefect_batch.core.sharedkey import decode_key

__all__ = ["COOKIE_NAME", "DEFAULT_MAX_AGE_SECONDS", "Session", "Sessions"]

COOKIE_NAME = "pb_session"
"""The session cookie's name."""

DEFAULT_MAX_AGE_SECONDS = 8 * 3600
"""How long a sign-in lasts (a working day)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Session:
    """A signed-in browser: its account, session id and expiry (UNIX seconds)."""

    account: str
    sid: str
    expires: float
    key_print: str


class Sessions:
    """Issues and checks session cookies and CSRF tokens for one app.

    Args:
        keyring: The accounts' keys (shared with SharedKey authentication).
        secret: The signing secret (random when not given: sessions end with the process).
        max_age: Seconds a sign-in lasts.
        clock: Wall clock (tests move it).
    """

    def __init__(
        self,
        keyring: KeyRing,
        *,
        secret: bytes | None = None,
        max_age: float = DEFAULT_MAX_AGE_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self._secret = secret or os.urandom(32)
        self.max_age = max_age
        self.clock = clock

    def _mac(self, purpose: str, data: bytes) -> bytes:
        return hmac.new(self._secret, purpose.encode() + b"\0" + data, hashlib.sha256).digest()

    def _key_print(self, key: bytes) -> str:
        # Names the key a session signed in with, without revealing it.
        return _b64(self._mac("key", key)[:12])

    def sign_in(self, account: str, key: str) -> str | None:
        """The cookie value for ``account`` signed in with ``key``, or ``None`` if wrong."""
        try:
            given = decode_key(key.strip())
        except ValueError:
            given = b""
        keys = self.keyring.keys(account.strip(), reread=True) if account.strip() else ()
        match = None
        for candidate in keys:  # every key, always: no early exit to time
            if hmac.compare_digest(candidate, given) and given:
                match = candidate
        if match is None:
            return None
        payload = json.dumps(
            {
                "a": account.strip(),
                "e": round(self.clock() + self.max_age),
                "s": secrets.token_urlsafe(16),
                "k": self._key_print(match),
            },
            separators=(",", ":"),
        ).encode()
        return f"{_b64(payload)}.{_b64(self._mac('session', payload))}"

    def check(self, cookie: str | None) -> Session | None:
        """The session of a cookie value, or ``None`` (absent, forged, expired, key retired)."""
        if not cookie or "." not in cookie:
            return None
        body, _, mac = cookie.partition(".")
        try:
            payload = _unb64(body)
            if not hmac.compare_digest(_unb64(mac), self._mac("session", payload)):
                return None
            data = json.loads(payload)
            session = Session(str(data["a"]), str(data["s"]), float(data["e"]), str(data["k"]))
        except (ValueError, KeyError, TypeError):
            return None
        if session.expires <= self.clock():
            return None
        keys = self.keyring.cached(session.account)
        if keys is None:
            keys = self.keyring.keys(session.account)
        if not any(hmac.compare_digest(self._key_print(k), session.key_print) for k in keys):
            return None  # the key was rotated or the account deleted
        return session

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of a session (what every action's form carries)."""
        return _b64(self._mac("csrf", session.sid.encode()))

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        """Whether ``token`` is the session's CSRF token."""
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")
