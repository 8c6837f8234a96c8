"""The ``local`` node source: node agents as subprocesses of this machine.

Each node is one agent process (``python -I agent.py --root ROOT``) started with pipes for its
stdin/stdout, in a new session so that signals aimed at the service (Ctrl-C in a terminal) do
not reach it, and with an environment from which secrets are removed: tasks inherit the agent's
environment, so anything the service knows (account keys, API keys, cloud credentials) must not
be there. The agent's stderr (diagnostics only) goes to ``<root>/.agent/agent.log``.

This module does not sandbox tasks (they run as the service's user, on the same machine) and
does not limit their resources; nodes are as many as the pool asks for, not as many as the CPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from prefect_batch.agent import AGENT_PATH
from prefect_batch.exceptions import AgentError
from prefect_batch.providers.base import (
    AgentChannel,
    AgentConnection,
    EventCallback,
    NodeSource,
)

__all__ = ["LocalNodeSource", "scrub_environment"]

_SECRET_NAMES = frozenset(
    {"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_API_AUTH_STRING"}
)
_SECRET_PREFIXES = ("PREFECT_BATCH_", "PREFECT_API_KEY")
_SECRET_PARTS = ("SECRET", "PASSWORD", "TOKEN")


def scrub_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """Copy of ``environ`` without the variables a task must never see.

    Drops names starting with ``PREFECT_BATCH_`` or ``PREFECT_API_KEY``, names containing
    ``SECRET``, ``PASSWORD`` or ``TOKEN`` (in any case), ``AWS_SECRET_ACCESS_KEY`` /
    ``AWS_SESSION_TOKEN`` and ``PREFECT_API_AUTH_STRING``.
    """
    kept = {}
    for name, value in environ.items():
        upper = name.upper()
        if (
            upper in _SECRET_NAMES
            or upper.startswith(_SECRET_PREFIXES)
            or any(part in upper for part in _SECRET_PARTS)
        ):
            continue
        kept[name] = value
    return kept


class LocalNodeSource(NodeSource):
    """Runs each node's agent as a local subprocess.

    Args:
        python: Interpreter for the agent (default: this one).
        agent_args: Extra agent arguments (e.g. ``["--reaper", "sigchld"]``).
        environ: Base environment for agents and their tasks (default ``os.environ``); it is
            always scrubbed with :func:`scrub_environment`.
    """

    name = "local"

    def __init__(
        self,
        *,
        python: str | None = None,
        agent_args: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.python = python or sys.executable
        self.agent_args = list(agent_args)
        self.environ = environ

    def agent_command(self, root: Path) -> list[str]:
        """The command line that starts an agent for ``root``."""
        # -I: ignore PYTHON* variables and the user's site-packages; the agent is stdlib-only.
        return [self.python, "-I", str(AGENT_PATH), "--root", str(root), *self.agent_args]

    def start_agent(self, node_id: str, root: Path, on_event: EventCallback) -> AgentConnection:
        """Start an agent for ``node_id`` under ``root`` and connect a channel to it."""
        root = Path(root)
        log_dir = root / ".agent"
        try:
            log_dir.mkdir(parents=True, exist_ok=True)
            log = open(log_dir / "agent.log", "ab")  # handed to the child, closed below
        except OSError as exc:
            raise AgentError(f"cannot prepare node root {root}: {exc}") from exc
        try:
            proc = subprocess.Popen(
                self.agent_command(root),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                env=scrub_environment(os.environ if self.environ is None else self.environ),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            raise AgentError(f"cannot start the agent for node {node_id}: {exc}") from exc
        finally:
            log.close()
        assert proc.stdin is not None and proc.stdout is not None
        channel = AgentChannel(node_id, proc.stdin, proc.stdout, on_event)
        return AgentConnection(node_id, root, channel, proc)
