"""Accounts: names and base64 keys, create/ensure/rotate/delete, and ``prefect-batch account``."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prefect_batch.cli import app
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
)
from prefect_batch.service.ops.accounts import AccountOperations
from prefect_batch.service.ops.quotas import (
    DEFAULT_DEDICATED_NODE_QUOTA,
    DEFAULT_LOW_PRIORITY_NODE_QUOTA,
)
from prefect_batch.store import Store


@pytest.fixture
def ops(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'batch.db'}")
    yield AccountOperations(store)
    store.dispose()


def test_create_get_rotate_delete(ops: AccountOperations) -> None:
    acct = ops.create("team1")
    assert len(base64.b64decode(acct.primary)) == 64 and acct.primary != acct.secondary
    assert "keys=<hidden>" in repr(acct) and acct.primary not in repr(acct)
    assert ops.get("team1") == acct
    with pytest.raises(BatchConflictError) as info:
        ops.create("team1")
    assert info.value.code == "AccountExists"
    rotated = ops.rotate("team1", "secondary")
    assert rotated.primary == acct.primary and rotated.secondary != acct.secondary
    ops.delete("team1")
    assert ops.find("team1") is None
    with pytest.raises(BatchNotFoundError):
        ops.rotate("team1")


@pytest.mark.parametrize("name", ["ab", "Upper", "has-dash", "x" * 25, ""])
def test_names_follow_azure(ops: AccountOperations, name: str) -> None:
    with pytest.raises(BatchInvalidRequestError):
        ops.create(name)


def test_keys_must_be_base64(ops: AccountOperations) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        ops.create("acct", primary="not base64!")
    assert "not base64!" not in str(info.value.values)  # a rejected key is not echoed
    given = base64.b64encode(b"k" * 32).decode()
    assert ops.create("acct", primary=given).primary == given


def test_ensure_is_idempotent_and_replaces_the_primary(ops: AccountOperations) -> None:
    one = base64.b64encode(b"1" * 64).decode()
    two = base64.b64encode(b"2" * 64).decode()
    first = ops.ensure("acct", one)
    assert ops.ensure("acct", one) == first
    second = ops.ensure("acct", two)
    assert second.primary == two and second.secondary == first.secondary


def test_account_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PREFECT_BATCH_HOME", "PREFECT_BATCH_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()

    def run(*args: str, code: int = 0) -> str:
        result = runner.invoke(app, ["--home", str(tmp_path / "home"), "account", *args])
        assert result.exit_code == code, result.output + result.stderr
        return result.stdout

    created = json.loads(run("create", "team7", "--json"))
    assert created["accountName"] == "team7"
    assert json.loads(run("keys", "team7", "--json")) == created
    rotated = json.loads(run("rotate", "team7", "--key", "primary", "--json"))
    assert rotated["primary"] != created["primary"]
    assert rotated["secondary"] == created["secondary"]
    listed = json.loads(run("list", "--json"))
    assert [a["accountName"] for a in listed] == ["team7"]
    assert "primary" not in listed[0]
    assert "team7" in run("list")
    assert listed[0]["dedicatedNodeQuota"] == DEFAULT_DEDICATED_NODE_QUOTA
    quota = json.loads(run("set-quota", "team7", "--dedicated-nodes", "4", "--json"))
    assert quota == {
        "accountName": "team7",
        "dedicatedNodeQuota": 4,
        "lowPriorityNodeQuota": DEFAULT_LOW_PRIORITY_NODE_QUOTA,
    }
    run("set-quota", "team7", "--low-priority-nodes", "0")
    (listed,) = json.loads(run("list", "--json"))
    assert (listed["dedicatedNodeQuota"], listed["lowPriorityNodeQuota"]) == (4, 0)
    run("set-quota", "team7", code=2)  # no quota given
    run("set-quota", "nobody", "--dedicated-nodes", "1", code=1)
    run("create", "team7", code=1)
    run("delete", "team7")
    run("keys", "team7", code=1)
