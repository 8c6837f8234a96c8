"""``prefect-batch server start`` as a process on 127.0.0.1, for tests and benchmarks.

:func:`server_env` is the environment of one account's server on a home (a lease and a tick
short enough for tests); :func:`server_command` the command line that starts it with this
interpreter. Those who start it keep the process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["server_command", "server_env"]


def server_env(
    home: Path,
    account: str,
    key: str,
    *,
    database_url: str | None = None,
    task_paths: Sequence[Path] = (),
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of a server of ``account`` (its key from ``PREFECT_BATCH_ACCOUNT_KEY``) on
    ``home``: SQLite there unless ``database_url``; ``base`` (default: this process's) without a
    service URL or a database URL of its own. ``task_paths``: directories its confined tasks may
    use (they must exist before the server starts)."""
    env = {
        **(os.environ if base is None else base),
        "PREFECT_BATCH_HOME": str(home),
        "PREFECT_BATCH_ACCOUNT_NAME": account,
        "PREFECT_BATCH_ACCOUNT_KEY": key,
        "PREFECT_BATCH_LEASE_SECONDS": "1.5",
        "PREFECT_BATCH_ENGINE_TICK_SECONDS": "0.05",
    }
    env.pop("PREFECT_BATCH_SERVICE_URL", None)
    env.pop("PREFECT_BATCH_DATABASE_URL", None)
    if database_url:
        env["PREFECT_BATCH_DATABASE_URL"] = database_url
    if task_paths:
        env["PREFECT_BATCH_TASK_PATHS"] = json.dumps([str(p) for p in task_paths])
    return env


def server_command(port: int, *extra_args: str) -> list[str]:
    """``prefect-batch server start`` on 127.0.0.1:``port`` with this interpreter (warnings only
    in its log); ``extra_args`` go to ``server start``."""
    return [
        sys.executable,
        "-c",
        "from prefect_batch.cli import app; app(prog_name='prefect-batch')",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *extra_args,
    ]
