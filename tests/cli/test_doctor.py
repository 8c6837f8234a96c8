"""``prefect-batch doctor``: confinement as this kernel allows it, the home's and store's modes,
a store URL's password never shown, ``--json`` with the same checks, an unreachable store.

The commands run in-process through the ``cli`` fixture, except the unreachable store, which
runs the command in a subprocess so that a hang would end at the call's timeout.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefect_batch.service.engine import confinement
from prefect_batch.store import Store
from tests.cli.conftest import Invoke

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-Pa55word"


@pytest.fixture(autouse=True)
def _default_confinement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_BATCH_CONFINE_TASKS", raising=False)


def _checks(cli: Invoke, *args: str, expect: int | None = 0) -> dict[str, dict[str, Any]]:
    result = cli("doctor", "--json", *args, expect=expect)
    report = json.loads(result.stdout)
    assert report["ok"] is (result.exit_code == 0)
    return {c["name"]: c for c in report["checks"]}


def _text_lines(cli: Invoke, expect: int | None = 0) -> dict[str, tuple[str, str]]:
    lines = cli("doctor", expect=expect).stdout.splitlines()
    parsed = {}
    for line in lines:
        status, name, detail = line.split(None, 2)
        parsed[name] = (status, detail)
    return parsed


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_fresh_home_reports_confinement_as_this_kernel_allows(cli: Invoke, home: Path) -> None:
    checks = _checks(cli)
    reason = confinement.confinement_unavailable()
    server = checks["confinement-server"]
    if reason is None:
        assert server["status"] == "ok" and "confined" in server["detail"]
        assert checks["landlock"]["status"] == "ok"
        assert checks["landlock"]["detail"] == f"ABI {confinement.landlock_abi()}"
    else:
        assert server["status"] == "warn" and reason in server["detail"]
        assert checks["landlock"]["status"] == "warn"
    # An embedded client leaves tasks unconfined unless asked: by design, not a problem.
    assert checks["confinement-embedded"]["status"] == "ok"
    assert "unconfined" in checks["confinement-embedded"]["detail"]
    assert checks["python"]["status"] == "ok" and sys.platform in checks["python"]["detail"]
    assert checks["home"]["status"] == "warn" and "does not exist" in checks["home"]["detail"]
    assert checks["store"]["status"] == "warn" and "not created yet" in checks["store"]["detail"]
    assert checks["disk"]["status"] == "ok" and "free" in checks["disk"]["detail"]
    # It only looks: no home, store or node root made.
    assert not home.exists()


def test_kernel_without_landlock_is_reported_with_the_reason(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(confinement, "confinement_unavailable", lambda: "no Landlock in this test")
    checks = _checks(cli)
    assert checks["landlock"]["status"] == "warn"
    assert checks["confinement-server"]["status"] == "warn"
    assert "no Landlock in this test" in checks["confinement-server"]["detail"]
    assert "no Landlock in this test" in checks["confinement-embedded"]["detail"]
    # Asked to confine where it cannot: local nodes would refuse every task.
    monkeypatch.setenv("PREFECT_BATCH_CONFINE_TASKS", "true")
    checks = _checks(cli, expect=1)
    assert checks["confinement-server"]["status"] == "fail"
    assert checks["confinement-embedded"]["status"] == "fail"


def test_confinement_turned_off_is_a_warning(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_BATCH_CONFINE_TASKS", "false")
    checks = _checks(cli)
    for name in ("confinement-server", "confinement-embedded"):
        assert checks[name]["status"] == "warn"
        assert "PREFECT_BATCH_CONFINE_TASKS=false" in checks[name]["detail"]


def test_home_mode_0755_is_reported_and_0700_is_ok(cli: Invoke, home: Path) -> None:
    home.mkdir()
    home.chmod(0o755)
    checks = _checks(cli)
    assert checks["home"]["status"] in ("warn", "fail")
    assert "0755" in checks["home"]["detail"]
    home.chmod(0o700)
    checks = _checks(cli)
    assert checks["home"]["status"] == "ok" and "0700" in checks["home"]["detail"]


def test_sqlite_store_files_and_probe(cli: Invoke, home: Path) -> None:
    Store(f"sqlite:///{home / 'batch.db'}").dispose()
    checks = _checks(cli)
    assert checks["home"]["status"] == "ok"
    assert checks["store-files"]["status"] == "ok"
    assert checks["store"]["status"] == "ok" and "answers" in checks["store"]["detail"]
    # Readable by others: a warning behind a private home, a failure behind an open one.
    (home / "batch.db").chmod(0o644)
    checks = _checks(cli)
    assert checks["store-files"]["status"] == "warn" and "0644" in checks["store-files"]["detail"]
    home.chmod(0o755)
    checks = _checks(cli, expect=1)
    assert checks["store-files"]["status"] == "fail"


def test_json_has_the_same_checks_as_the_text(cli: Invoke, home: Path) -> None:
    Store(f"sqlite:///{home / 'batch.db'}").dispose()
    checks = _checks(cli)
    lines = _text_lines(cli)
    assert list(lines) == list(checks)
    for name, (status, detail) in lines.items():
        assert status == checks[name]["status"]
        assert detail == checks[name]["detail"]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql+psycopg://batch:{PASSWORD}@127.0.0.1:{{port}}/batch",
        f"postgresql+psycopg://batch:{PASSWORD}@127.0.0.1:not-a-port/batch",  # unparseable
    ],
)
def test_store_password_is_never_shown(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("PREFECT_BATCH_DATABASE_URL", url.format(port=_closed_port()))
    for args in ((), ("--json",)):
        result = cli("doctor", *args, expect=1)
        assert PASSWORD not in result.stdout and PASSWORD not in result.stderr
        assert "batch:***@127.0.0.1" in result.stdout


def test_unreachable_store_fails_with_exit_1(home: Path) -> None:
    url = f"postgresql+psycopg://batch:{PASSWORD}@127.0.0.1:{_closed_port()}/batch"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_BATCH_")}
    env |= {"PREFECT_BATCH_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", "from prefect_batch.cli import app; app()"]
        + ["--home", str(home), "doctor", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,  # far above the probe's own few seconds
        check=False,
    )
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    (store,) = [c for c in report["checks"] if c["name"] == "store"]
    assert store["status"] == "fail" and "does not answer" in store["detail"]
    assert PASSWORD not in result.stdout + result.stderr
