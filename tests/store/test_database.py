"""The store refuses a database written by another schema version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import update

from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.store import Store
from prefect_batch.store.schema import SCHEMA_VERSION, schema_info


def test_a_fresh_store_is_stamped_and_opens_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'batch.db'}"
    Store(url).dispose()
    store = Store(url)
    with store.read() as conn:
        assert conn.execute(schema_info.select()).scalars().all() == [SCHEMA_VERSION]
    store.dispose()


def test_another_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'batch.db'}"
    store = Store(url)
    with store.begin() as conn:
        conn.execute(update(schema_info).values(version=SCHEMA_VERSION + 1))
    store.dispose()
    with pytest.raises(PrefectBatchError, match="schema version"):
        Store(url)


def test_a_store_from_before_versioning_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE pools (pk INTEGER PRIMARY KEY)")
    with pytest.raises(PrefectBatchError, match="schema version 1"):
        Store(f"sqlite:///{path}")
