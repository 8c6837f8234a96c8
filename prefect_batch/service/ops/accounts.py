"""Accounts of a batch server: a name and two base64 keys (primary and secondary), rotatable.

A server authenticates every request against these keys (SharedKey), and an account sees only its
own pools, jobs and files. Each account has node quotas the operator sets (``set_quota``). The
embedded service needs no account row: it acts for one account name and trusts its process.

Keys are stored as given (the server needs them to compute HMACs, so they cannot be hashed):
protect the database like the keys themselves. Nothing here logs a key.

What this module does not do: authenticate requests (``api/auth.py``) or print keys (the CLI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import delete, insert, select, update

from prefect_batch.core.sharedkey import decode_key, new_key
from prefect_batch.exceptions import BatchConflictError, BatchNotFoundError, invalid_property
from prefect_batch.service.ops.quotas import AccountQuota, read_quota, set_quota
from prefect_batch.service.rows.common import Clock, now
from prefect_batch.store import Store
from prefect_batch.store.schema import accounts

__all__ = ["ACCOUNT_NAME_PATTERN", "Account", "AccountOperations", "KeyName"]

ACCOUNT_NAME_PATTERN = re.compile(r"^[a-z0-9]{3,24}$")
"""Azure's rule for Batch account names: 3-24 lower-case letters and digits."""

KeyName = Literal["primary", "secondary"]


@dataclass(frozen=True)
class Account:
    """An account and its keys (``repr`` hides the keys)."""

    name: str
    primary: str
    secondary: str
    creation_time: float

    def __repr__(self) -> str:
        return f"Account(name={self.name!r}, keys=<hidden>)"

    @property
    def keys(self) -> tuple[str, str]:
        """(primary, secondary)."""
        return self.primary, self.secondary


def _check_name(name: str) -> None:
    if not ACCOUNT_NAME_PATTERN.match(name):
        raise invalid_property(
            "accountName", name, "3-24 lower-case letters and digits, as Azure Batch requires"
        )


def _check_key(key: str, prop: str) -> str:
    try:
        decode_key(key)
    except ValueError as exc:
        raise invalid_property(prop, "<hidden>", str(exc)) from exc
    return key


class AccountOperations:
    """Create, read, rotate and delete accounts in a store (not bound to one account)."""

    def __init__(self, store: Store, *, clock: Clock = now) -> None:
        self.store = store
        self.clock = clock

    def create(
        self, name: str, *, primary: str | None = None, secondary: str | None = None
    ) -> Account:
        """Create an account; keys are generated unless given (base64).

        Raises:
            BatchInvalidRequestError: A bad name or key.
            BatchConflictError: ``AccountExists``.
        """
        _check_name(name)
        primary = _check_key(primary, "primaryKey") if primary else new_key()
        secondary = _check_key(secondary, "secondaryKey") if secondary else new_key()
        created = self.clock()
        with self.store.begin() as conn:
            if conn.execute(select(accounts.c.name).where(accounts.c.name == name)).first():
                raise BatchConflictError(
                    "AccountExists", f"The account already exists: {name}", {"AccountName": name}
                )
            conn.execute(
                insert(accounts).values(
                    name=name, key1=primary, key2=secondary, creation_time=created
                )
            )
        return Account(name, primary, secondary, created)

    def ensure(self, name: str, primary: str) -> Account:
        """Make ``name`` exist with ``primary`` as its primary key (the secondary is kept).

        What ``PREFECT_BATCH_ACCOUNT_NAME``/``PREFECT_BATCH_ACCOUNT_KEY`` do for
        ``server start``: idempotent, and a changed key replaces the old primary key.
        """
        _check_name(name)
        _check_key(primary, "primaryKey")
        with self.store.begin() as conn:
            row = conn.execute(select(accounts).where(accounts.c.name == name)).one_or_none()
            if row is None:
                created = self.clock()
                secondary = new_key()
                conn.execute(
                    insert(accounts).values(
                        name=name, key1=primary, key2=secondary, creation_time=created
                    )
                )
                return Account(name, primary, secondary, created)
            if row.key1 != primary:
                conn.execute(update(accounts).where(accounts.c.name == name).values(key1=primary))
            return Account(name, primary, row.key2, row.creation_time)

    def get(self, name: str) -> Account:
        """One account with its keys.

        Raises:
            BatchNotFoundError: ``AccountNotFound``.
        """
        with self.store.read() as conn:
            row = conn.execute(select(accounts).where(accounts.c.name == name)).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "AccountNotFound", f"The account does not exist: {name}", {"AccountName": name}
            )
        return Account(row.name, row.key1, row.key2, row.creation_time)

    def find(self, name: str) -> Account | None:
        """One account, or ``None``."""
        try:
            return self.get(name)
        except BatchNotFoundError:
            return None

    def list(self) -> list[Account]:
        """Every account, by name."""
        with self.store.read() as conn:
            rows = conn.execute(select(accounts).order_by(accounts.c.name)).all()
        return [Account(r.name, r.key1, r.key2, r.creation_time) for r in rows]

    def rotate(self, name: str, which: KeyName = "primary") -> Account:
        """Replace one key with a fresh random key; the other keeps working meanwhile."""
        if which not in ("primary", "secondary"):
            raise invalid_property("keyName", which, "'primary' or 'secondary'")
        column = "key1" if which == "primary" else "key2"
        with self.store.begin() as conn:
            if not conn.execute(select(accounts.c.name).where(accounts.c.name == name)).first():
                raise BatchNotFoundError(
                    "AccountNotFound", f"The account does not exist: {name}", {"AccountName": name}
                )
            conn.execute(
                update(accounts).where(accounts.c.name == name).values({column: new_key()})
            )
        return self.get(name)

    def quota(self, name: str) -> AccountQuota:
        """The account's node quotas (``service/ops/quotas.py``)."""
        self.get(name)
        with self.store.read() as conn:
            return read_quota(conn, name)

    def set_quota(
        self,
        name: str,
        *,
        dedicated_nodes: int | None = None,
        low_priority_nodes: int | None = None,
    ) -> AccountQuota:
        """Set an account's node quotas (the one not given keeps its value); returns both.

        Raises:
            BatchNotFoundError: ``AccountNotFound``.
            BatchInvalidRequestError: A negative or non-integer quota.
        """
        self.get(name)
        return set_quota(
            self.store,
            name,
            dedicated_nodes=dedicated_nodes,
            low_priority_nodes=low_priority_nodes,
        )

    def delete(self, name: str) -> None:
        """Remove an account's credentials (its pools and jobs stay in the store)."""
        with self.store.begin() as conn:
            done = conn.execute(delete(accounts).where(accounts.c.name == name)).rowcount
        if not done:
            raise BatchNotFoundError(
                "AccountNotFound", f"The account does not exist: {name}", {"AccountName": name}
            )
