"""Helpers to drive a real node agent (``prefect_batch/agent/agent.py``) in tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect_batch.providers import AgentConnection, LocalNodeSource

EVENT_TIMEOUT = 20.0


class AgentDriver:
    """A running agent plus every event it emitted, with waits on them."""

    def __init__(self, root: Path, source: LocalNodeSource | None = None) -> None:
        self.root = root
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self.conn: AgentConnection = (source or LocalNodeSource()).start_agent(
            "node-1", root, self._on_event
        )
        self._req = 0

    def _on_event(self, msg: dict[str, Any]) -> None:
        with self._cond:
            self.events.append(msg)
            self._cond.notify_all()

    def send(self, **msg: Any) -> None:
        self.conn.send(msg)

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = EVENT_TIMEOUT
    ) -> dict[str, Any]:
        """The first event (seen so far or arriving) that matches ``pred``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout}s: {self.events}")
                self._cond.wait(left)

    def event(self, ev: str, key: str | None = None, **match: Any) -> dict[str, Any]:
        def pred(m: dict[str, Any]) -> bool:
            if m.get("ev") != ev or (key is not None and m.get("key") != key):
                return False
            return all(m.get(k) == v for k, v in match.items())

        return self.wait_for(pred)

    def matching(self, ev: str, key: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self.events if m.get("ev") == ev and key in (None, m.get("key"))]

    def run(self, key: str, argv: list[str], dir: str | None = None, **extra: Any) -> None:
        self.send(op="run", key=key, argv=argv, dir=f"job/{key}" if dir is None else dir, **extra)

    def run_and_wait(self, key: str, argv: list[str], **extra: Any) -> dict[str, Any]:
        self.run(key, argv, **extra)
        return self.event("exited", key)

    def request(self, op: str, **msg: Any) -> dict[str, Any]:
        """Send a file request with a fresh ``req`` id; its answer (or error)."""
        self._req += 1
        req = self._req
        self.send(op=op, req=req, **msg)
        return self.wait_for(lambda m: m.get("req") == req)

    def ping(self) -> dict[str, Any]:
        """A round trip: every event caused by earlier requests has arrived when it returns."""
        count = len(self.matching("pong"))
        self.send(op="ping")
        self.wait_for(lambda m: len(self.matching("pong")) > count)
        return self.matching("pong")[count]

    def close(self, timeout: float = EVENT_TIMEOUT) -> int | None:
        self.conn.close()
        return self.conn.wait(timeout)


def process_gone(pid: int) -> bool:
    """True if ``pid`` no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return True
    return data[data.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


def wait_until(pred: Callable[[], bool], timeout: float = EVENT_TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""
