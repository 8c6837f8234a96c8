"""``LocalNodeSource``: agent subprocesses with a scrubbed environment."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from prefect_batch.agent import AGENT_PATH
from prefect_batch.exceptions import AgentError
from prefect_batch.providers import AgentConnection, LocalNodeSource, NodeProvider
from prefect_batch.providers.local import scrub_environment

pytestmark = pytest.mark.timeout(60)


def test_scrub_environment_drops_secrets_only() -> None:
    env = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PREFECT_BATCH_ACCOUNT_KEY": "k",
        "PREFECT_BATCH_HOME": "/h",
        "PREFECT_API_KEY": "pnu_x",
        "PREFECT_API_URL": "http://localhost:4200/api",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_SESSION_TOKEN": "t",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "GITHUB_TOKEN": "g",
        "DB_PASSWORD": "p",
        "my_secret_value": "x",
        "LANG": "C.UTF-8",
    }
    assert scrub_environment(env) == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "PREFECT_API_URL": "http://localhost:4200/api",
        "AWS_ACCESS_KEY_ID": "AKIA",
        "LANG": "C.UTF-8",
    }


def test_local_source_is_a_node_source() -> None:
    source = LocalNodeSource()
    assert isinstance(source, NodeProvider) and source.name == "local"
    command = source.agent_command(Path("/nodes/n1"))
    assert command[0] == sys.executable and str(AGENT_PATH) in command
    assert command[-2:] == ["--root", "/nodes/n1"]


def _start(tmp_path: Path, **kwargs: Any) -> tuple[AgentConnection, list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []
    cond = threading.Condition()

    def on_event(msg: dict[str, Any]) -> None:
        with cond:
            events.append(msg)
            cond.notify_all()

    def wait(pred: Any, timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with cond:
            while True:
                for ev in events:
                    if pred(ev):
                        return ev
                assert time.monotonic() < deadline, events
                cond.wait(0.1)

    conn = LocalNodeSource(**kwargs).start_agent("node-1", tmp_path / "node", on_event)
    return conn, events, wait


def test_agent_environment_is_scrubbed(tmp_path: Path) -> None:
    conn, _, wait = _start(
        tmp_path, environ={"PATH": "/usr/bin:/bin", "PREFECT_BATCH_ACCOUNT_KEY": "k", "KEEP": "1"}
    )
    try:
        pid = conn.pid
        assert pid is not None
        conn.send({"op": "ping"})
        wait(lambda m: m["ev"] == "pong")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert b"KEEP=1" in environ
        assert not [v for v in environ if v.startswith(b"PREFECT_BATCH_")]
    finally:
        conn.kill(tasks=True)
        conn.wait(10)


def test_close_drains_and_wait_returns_the_exit_status(tmp_path: Path) -> None:
    conn, events, wait = _start(tmp_path)
    conn.send_many(
        [
            {"op": "hello", "v": 1, "node_id": "node-1", "pool_id": "p"},
            {"op": "run", "key": "a", "argv": ["/bin/sh", "-c", "sleep 0.3"], "dir": "j/a"},
        ]
    )
    wait(lambda m: m["ev"] == "started")
    conn.close()
    assert conn.wait(20) == 0
    kinds = [m["ev"] for m in events]
    assert kinds[0] == "hello" and kinds[-3:] == ["exited", "bye", "closed"]
    assert conn.closed
    assert (tmp_path / "node" / ".agent" / "agent.log").exists()


def test_kill_with_tasks_kills_them_too(tmp_path: Path) -> None:
    conn, events, wait = _start(tmp_path)
    conn.send({"op": "run", "key": "a", "argv": ["sleep", "30"], "dir": "j/a"})
    wait(lambda m: m["ev"] == "started")
    conn.kill(tasks=True)
    exited = wait(lambda m: m["ev"] == "exited")
    assert exited["killed"] is True
    assert conn.wait(10) is not None


def test_kill_without_tasks_leaves_them_running(tmp_path: Path) -> None:
    conn, events, wait = _start(tmp_path)
    conn.send({"op": "run", "key": "a", "argv": ["sleep", "30"], "dir": "j/a"})
    pid = wait(lambda m: m["ev"] == "started")["pid"]
    conn.kill()
    assert conn.wait(10) == -signal.SIGKILL
    wait(lambda m: m["ev"] == "closed")
    try:
        assert Path(f"/proc/{pid}").exists()
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_start_failure_raises_agent_error(tmp_path: Path) -> None:
    with pytest.raises(AgentError):
        LocalNodeSource(python=str(tmp_path / "no-python")).start_agent(
            "n", tmp_path / "node", lambda m: None
        )
