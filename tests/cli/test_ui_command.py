"""``prefect-batch ui``: the account to sign in with, the app it serves, the TLS warning.

uvicorn.run is replaced by a recorder, so the command's setup is checked without a socket; the
served app itself is exercised in tests/ui.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from starlette.routing import NoMatchFound

from prefect_batch.service.ops.accounts import AccountOperations
from prefect_batch.store import Store
from tests.cli.conftest import Invoke


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def run(app: Any, **options: Any) -> None:
        calls.append({"app": app, **options})

    monkeypatch.setattr(uvicorn, "run", run)
    return calls


def _has(app: FastAPI, name: str) -> bool:
    try:
        app.url_path_for(name)
    except NoMatchFound:
        return False
    return True


def test_ui_creates_the_embedded_account_and_serves_only_the_page(
    cli: Invoke, home: Path, served: list[dict[str, Any]]
) -> None:
    result = cli("ui", "--port", "8799")
    assert "Created account local" in result.stderr and "/ui" in result.stderr
    assert "Warning" not in result.stderr
    (call,) = served
    assert call["host"] == "127.0.0.1" and call["port"] == 8799
    assert call["app"].state.engine is None  # no engine unless --engine
    app = call["app"]
    assert app.url_path_for("pools_page") == "/ui/pools" and _has(app, "signin")
    assert not _has(app, "list_pools")  # the REST API is the server's, not this page's
    store = Store(f"sqlite:///{home / 'batch.db'}")
    try:
        assert AccountOperations(store).find("local") is not None
    finally:
        store.dispose()
    # A second start keeps the account (and its keys) as they are.
    assert "Created account" not in cli("ui").stderr


def test_ui_warns_when_bound_beyond_loopback_and_runs_an_engine_when_asked(
    cli: Invoke, served: list[dict[str, Any]]
) -> None:
    result = cli("--account", "lab", "ui", "--host", "192.0.2.10", "--engine")
    assert "Warning: serving plain HTTP on 192.0.2.10" in result.stderr
    assert "sign in as lab" in result.stderr
    assert served[0]["app"].state.engine is not None
