"""A real ``prefect server start`` on loopback for the tests that need one (one per module)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomllib

REPO = Path(__file__).resolve().parents[2]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def entry_point_dist(root: Path) -> Path:
    """A directory with a dist-info carrying pyproject's entry points, as ``pip install`` would
    write it: first on PYTHONPATH, Prefect finds the ``batch`` worker type through it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    points = project["entry-points"]["prefect.collections"]
    dist = root / "dist" / "prefect_batch-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: prefect-batch\nVersion: 0.1.0\n")
    lines = ["[prefect.collections]"] + [f"{k} = {v}" for k, v in points.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return dist.parent


class Server:
    """A ``prefect server start`` process and the environment to talk to it."""

    def __init__(self, root: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.batch_home = root / "batch"
        self.env = {
            **os.environ,
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_BATCH_HOME": str(self.batch_home),
            "PREFECT_BATCH_LEASE_SECONDS": "1.5",
            "PREFECT_BATCH_ENGINE_TICK_SECONDS": "0.05",
        }
        self.log = (root / "server.log").open("wb")
        self.process = subprocess.Popen(
            [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def healthy(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def cli(self, *args: str, timeout: float = 120) -> str:
        done = subprocess.run(
            list(args), env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )
        assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.url)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its own children
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
