"""Sealed environment settings: secrets a task needs that GET must never return.

An environment setting named ``PREFECT_BATCH_SECRET_<NAME>`` (on a task, a job manager task or a
job's ``commonEnvironmentSettings``) is sealed when it is added: the store, and so every GET,
keeps only ``sealed:v1:<token>`` (Fernet, AES-128-CBC + HMAC-SHA256). At dispatch the engine
unseals it and the node's process gets ``<NAME>`` with the value; ``PREFECT_BATCH_SECRET_<NAME>``
itself is not passed on. The Prefect worker delivers ``PREFECT_API_KEY`` and
``PREFECT_API_AUTH_STRING`` this way.

The key is random, made on first use and kept in the store's ``sealing_keys`` table, so every
engine and server on the database can unseal (as Prefect keeps its block-document key in its own
database): a reader of a dump of the ``tasks`` or ``jobs`` table, a log or a GET response does
not see the value. A task whose token cannot be unsealed (a key from another database) runs
without the variable, and the engine logs the variable's name (never its value).

The same module reads the task option ``PREFECT_BATCH_TERMINATE_GRACE_SECONDS``: how long a
terminated task's process group has between SIGTERM and SIGKILL.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from prefect_batch.core.commandline import TERMINATE_GRACE_VARIABLE
from prefect_batch.store.schema import sealing_keys

__all__ = [
    "DEFAULT_TERMINATE_GRACE_SECONDS",
    "SEALED_PREFIX",
    "SECRET_PREFIX",
    "TERMINATE_GRACE_VARIABLE",
    "fernet",
    "seal_settings",
    "terminate_grace_seconds",
    "unseal_environment",
]

log = logging.getLogger(__name__)

SECRET_PREFIX = "PREFECT_BATCH_SECRET_"
SEALED_PREFIX = "sealed:v1:"
DEFAULT_TERMINATE_GRACE_SECONDS = 10.0
"""SIGTERM to SIGKILL when a task is terminated (or its node removed): long enough for Prefect's
supervisor to record its intent, short enough that a terminate still means stop."""
MAX_TERMINATE_GRACE_SECONDS = 600.0


def fernet(conn: Any) -> Any:
    """The store's sealing key as a ``Fernet`` (made on first use)."""
    from cryptography.fernet import Fernet

    key = conn.execute(select(sealing_keys.c.key).where(sealing_keys.c.pk == 1)).scalar()
    if key is None:
        fresh = Fernet.generate_key().decode("ascii")
        try:
            with conn.begin_nested():
                conn.execute(insert(sealing_keys).values(pk=1, key=fresh))
            key = fresh
        except IntegrityError:  # another engine made it first
            key = conn.execute(select(sealing_keys.c.key).where(sealing_keys.c.pk == 1)).scalar()
    return Fernet(key.encode("ascii"))


def seal_settings(conn: Any, settings: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """``settings`` with the values of ``PREFECT_BATCH_SECRET_*`` names sealed (a new list)."""
    if not settings or not any(str(e.get("name", "")).startswith(SECRET_PREFIX) for e in settings):
        return settings
    box = fernet(conn)
    out = []
    for e in settings:
        value = e.get("value") or ""
        if str(e.get("name", "")).startswith(SECRET_PREFIX) and not value.startswith(SEALED_PREFIX):
            token = box.encrypt(value.encode("utf-8")).decode("ascii")
            e = {**e, "value": SEALED_PREFIX + token}
        out.append(e)
    return out


def unseal_environment(conn: Any, env: dict[str, str]) -> dict[str, str]:
    """``env`` with each ``PREFECT_BATCH_SECRET_<NAME>`` replaced by ``<NAME>`` and its value."""
    names = [n for n in env if n.startswith(SECRET_PREFIX)]
    if not names:
        return env
    from cryptography.fernet import InvalidToken

    box = fernet(conn)
    out = {n: v for n, v in env.items() if not n.startswith(SECRET_PREFIX)}
    for name in names:
        value = env[name]
        target = name[len(SECRET_PREFIX) :]
        if not target:
            continue
        if not value.startswith(SEALED_PREFIX):
            out[target] = value  # added before sealing existed; still never shown twice
            continue
        try:
            out[target] = box.decrypt(value[len(SEALED_PREFIX) :].encode("ascii")).decode()
        except (InvalidToken, ValueError):
            log.warning("sealed environment setting %s cannot be unsealed; left out", name)
    return out


def terminate_grace_seconds(spec: dict[str, Any] | None) -> float:
    """The task's SIGTERM grace period: its ``PREFECT_BATCH_TERMINATE_GRACE_SECONDS`` or 10 s."""
    for e in (spec or {}).get("environmentSettings") or []:
        if e.get("name") == TERMINATE_GRACE_VARIABLE:
            try:
                value = float(e.get("value") or "")
            except ValueError:
                break
            if math.isfinite(value):
                return min(max(value, 0.0), MAX_TERMINATE_GRACE_SECONDS)
            break
    return DEFAULT_TERMINATE_GRACE_SECONDS
