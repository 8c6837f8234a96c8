"""What ``prefect-batch server start`` does to keep its secrets to itself: the home 0700, the
SQLite store and its journals 0600, and the process not dumpable (``PR_SET_DUMPABLE=0``).

The helpers are called directly; ``serve()`` itself runs with ``uvicorn.run`` replaced by a
recorder and ``set_not_dumpable`` by a counter, so that this test process stays dumpable. The
real ``set_not_dumpable`` runs in a child process, which reports ``prctl(PR_GET_DUMPABLE)``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from prefect_batch.cli.server import _private_home, serve
from prefect_batch.service.engine import confinement
from prefect_batch.settings import BatchSettings
from prefect_batch.store import Store

ROOT = Path(__file__).resolve().parents[2]
PR_GET_DUMPABLE = 3


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def _umask_022() -> Iterator[None]:
    """The usual umask: files and directories would be readable by others without the fix."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _store_files(home: Path) -> list[Path]:
    db = home / "batch.db"
    return [p for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists()]


def test_private_home_makes_a_new_home_0700(tmp_path: Path) -> None:
    home = tmp_path / "a" / "home"
    _private_home(home)
    assert _mode(home) == 0o700


def test_private_home_closes_an_existing_open_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    _private_home(home)
    assert _mode(home) == 0o700


def test_sqlite_store_files_are_0600(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = Store(f"sqlite:///{home / 'batch.db'}")
    try:
        files = _store_files(home)
        assert home / "batch.db" in files
        assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
        assert _mode(home) == 0o700  # the directory the store made for itself
    finally:
        store.dispose()


def test_store_closes_files_left_open(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Store(f"sqlite:///{home / 'batch.db'}").dispose()
    (home / "batch.db").chmod(0o644)
    store = Store(f"sqlite:///{home / 'batch.db'}")
    try:
        files = _store_files(home)
        assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o600) for p in files}
    finally:
        store.dispose()


def test_set_not_dumpable_in_a_child_process() -> None:
    code = (
        "import ctypes\n"
        "from prefect_batch.service.engine.confinement import set_not_dumpable\n"
        "prctl = ctypes.CDLL(None, use_errno=True).prctl\n"
        f"before = prctl({PR_GET_DUMPABLE}, 0, 0, 0, 0)\n"
        "done = set_not_dumpable()\n"
        f"print(before, done, prctl({PR_GET_DUMPABLE}, 0, 0, 0, 0))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "True", "0"]  # a fresh process is dumpable until then


def test_serve_hardens_before_serving(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    home.chmod(0o755)
    for name in list(os.environ):
        if name.startswith("PREFECT_BATCH_"):
            monkeypatch.delenv(name)
    calls: list[str] = []
    seen: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:
        # What the process looks like when it starts answering requests.
        calls.append("run")
        seen["home"] = _mode(home)
        seen["files"] = {p.name: _mode(p) for p in _store_files(home)}

    def not_dumpable() -> bool:
        calls.append("not_dumpable")
        return True

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(confinement, "set_not_dumpable", not_dumpable)
    serve(BatchSettings(home=home), port=8799)
    assert calls == ["not_dumpable", "run"]
    assert seen["home"] == 0o700
    assert "batch.db" in seen["files"]
    assert set(seen["files"].values()) == {0o600}
