"""Azure Batch's SharedKey scheme: the string to sign, the signature, the Authorization header.

Exactly what the official ``azure-batch`` SDK (15.x, ``BatchSharedKeyAuthPolicy``) signs::

    VERB\\n
    Content-Encoding\\n Content-Language\\n Content-Length\\n Content-MD5\\n Content-Type\\n
    Date\\n If-Modified-Since\\n If-Match\\n If-None-Match\\n If-Unmodified-Since\\n Range\\n
    ocp-*:value\\n ...                      (every header whose name contains "ocp-", sorted)
    /<account><raw URL path>
    \\n<name>:<first value>  ...            (query parameters, decoded, sorted by name)

A header the request does not carry is an empty line; a request other than GET or HEAD without
a Content-Length signs ``0``; query parameters with an empty value are left out. The signature is
``base64(HMAC-SHA256(base64decode(key), utf8(string)))``.

Both sides use this module: the server (``api/auth.py``) to verify, the HTTP client
(``remote.py``) to sign, the service to make account keys and job keys. Standard library only;
no I/O and no clock: the caller passes the date it signs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from email.utils import format_datetime
from urllib.parse import parse_qs

__all__ = [
    "KEY_BYTES",
    "SIGNED_HEADERS",
    "authorization_header",
    "decode_key",
    "http_date",
    "new_key",
    "parse_authorization",
    "sign",
    "string_to_sign",
]

SIGNED_HEADERS = (
    "content-encoding",
    "content-language",
    "content-length",
    "content-md5",
    "content-type",
    "date",
    "if-modified-since",
    "if-match",
    "if-none-match",
    "if-unmodified-since",
    "range",
)
"""The standard headers in the order they are signed (lower-case)."""

KEY_BYTES = 64
"""Length of a generated account key before base64 (Azure's keys are 64 bytes too)."""


def new_key() -> str:
    """A fresh random account key, base64 like Azure's (88 characters)."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def decode_key(key: str) -> bytes:
    """The raw bytes of a base64 key.

    Raises:
        ValueError: The key is not valid base64, or is empty.
    """
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("an account key must be base64") from exc
    if not raw:
        raise ValueError("an account key must not be empty")
    return raw


def http_date(when: datetime) -> str:
    """``when`` as an RFC 1123 date (``Tue, 24 Nov 2026 05:06:32 GMT``)."""
    return format_datetime(when.astimezone(timezone.utc), usegmt=True)


def string_to_sign(
    method: str,
    raw_path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    account: str,
) -> str:
    """The canonical string of a request, as the azure-batch SDK builds it.

    Args:
        method: HTTP verb (upper-case).
        raw_path: The URL path exactly as sent (percent-encoding kept), without the query.
        query: The raw query string (without ``?``).
        headers: The request's headers as (name, value) pairs.
        account: The account name the request claims.
    """
    method = method.upper()
    pairs = list(headers)
    by_name: dict[str, str] = {}
    for name, value in pairs:
        if value:
            by_name.setdefault(name.lower(), value)
    if method not in ("GET", "HEAD") and "content-length" not in by_name:
        by_name["content-length"] = "0"
    out = method + "\n" + "\n".join(by_name.get(h, "") for h in SIGNED_HEADERS) + "\n"
    ocp = sorted((name.lower(), value) for name, value in pairs if "ocp-" in name.lower() and value)
    for name, value in ocp:
        out += f"{name}:{value}\n"
    out += f"/{account}{raw_path}"
    params = parse_qs(query)
    for name in sorted(params):
        value = params[name][0]
        if value:
            out += f"\n{name}:{value}"
    return out


def sign(key: bytes, text: str) -> str:
    """``base64(HMAC-SHA256(key, text))``."""
    digest = hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def authorization_header(
    method: str,
    raw_path: str,
    query: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    account: str,
    key: str | bytes,
) -> str:
    """The ``Authorization`` header value (``SharedKey <account>:<signature>``) for a request."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    raw_key = decode_key(key) if isinstance(key, str) else key
    text = string_to_sign(method, raw_path, query, items, account)
    return f"SharedKey {account}:{sign(raw_key, text)}"


def parse_authorization(value: str) -> tuple[str, str]:
    """``SharedKey <account>:<signature>`` -> (account, signature).

    Raises:
        ValueError: The header is not of that form.
    """
    scheme, _, rest = value.strip().partition(" ")
    if scheme != "SharedKey" or not rest:
        raise ValueError("the Authorization header must be 'SharedKey <account>:<signature>'")
    account, sep, signature = rest.strip().rpartition(":")
    if not sep or not account or not signature:
        raise ValueError("the Authorization header must be 'SharedKey <account>:<signature>'")
    return account, signature


JOB_SCOPE = "/jobs/"
"""An account name ``<account>/jobs/<job id>`` signs with a key good for that job only."""


def job_scoped_name(account: str, job_id: str) -> str:
    """The account name a job manager signs with: ``<account>/jobs/<job id>``."""
    return f"{account}{JOB_SCOPE}{job_id}"


def split_scoped_name(name: str) -> tuple[str, str | None]:
    """``acct/jobs/j1`` -> (``acct``, ``j1``); a plain account name -> (name, None)."""
    account, sep, job_id = name.partition(JOB_SCOPE)
    return (account, job_id) if sep and job_id else (name, None)


def derive_job_key(account_key: bytes, job_id: str) -> bytes:
    """The key of one job, derived from an account key (HMAC-SHA256; ids are case-insensitive).

    Whoever holds it can act on that job and its tasks and nothing else; rotating the account
    key revokes it.
    """
    return hmac.new(
        account_key, b"prefect-batch job " + job_id.casefold().encode("utf-8"), hashlib.sha256
    ).digest()


def in_job_scope(path: str, job_id: str) -> bool:
    """Whether a request path is the job's own (``/jobs/<id>`` or below it)."""
    path, scope = path.casefold().rstrip("/"), f"/jobs/{job_id}".casefold()
    return path == scope or path.startswith(scope + "/")
