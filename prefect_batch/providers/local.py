"""The ``local`` node source: node agents as subprocesses of this machine.

Each node is one agent process (``python -I agent.py --root ROOT``) started with pipes for its
stdin/stdout, in a new session so that signals aimed at the service (Ctrl-C in a terminal) do
not reach it, and with an environment from which secrets are removed: tasks inherit the agent's
environment, so anything the service knows (account keys, API keys, cloud credentials) must not
be there. The agent's stderr (diagnostics only) goes to ``<root>/.agent/agent.log``.

As a :class:`~prefect_batch.providers.contract.NodeProvider` (the ``local`` kind, pools name it
``batch.node.local``): every node it is asked for is placed at once, in a directory under the
service's node root; releasing a node removes that directory.

This module does not confine tasks (the agent does, when asked) and does not limit their
resources or count nodes (the service's quotas do).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect_batch.agent import AGENT_PATH
from prefect_batch.exceptions import AgentError, BatchInvalidRequestError
from prefect_batch.providers.base import AgentChannel, AgentConnection, EventCallback
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    NodeSlot,
    Placement,
    PoolRef,
    ProviderTraits,
)
from prefect_batch.providers.kinds import LOCAL_NODE_AGENT_SKU, BuildContext, image_entry

__all__ = ["TRAITS", "LocalNodeSource", "loopback_address", "scrub_environment"]

TRAITS = ProviderTraits(same_machine=True, local_node_limit=True)
"""Local nodes: on this machine, restarted a few times before their tasks go elsewhere."""

_SECRET_NAMES = frozenset({"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PREFECT_API_AUTH_STRING"})
_SECRET_PREFIXES = ("PREFECT_BATCH_", "PREFECT_API_KEY")
_SECRET_PARTS = ("SECRET", "PASSWORD", "TOKEN")


def loopback_address(node_id: str) -> str:
    """A stable address in 127.0.0.0/8 for a node (all of it is this machine's loopback).

    Derived from the node id (no state to keep across restarts); two nodes share one with
    a chance of about 1 in 16 million per pair, which the pool would show as equal addresses.
    """
    digest = hashlib.sha256(node_id.encode()).digest()
    return f"127.{digest[0]}.{digest[1]}.{1 + digest[2] % 254}"


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


class LocalNodeSource(NodeProvider):
    """Runs each node's agent as a local subprocess.

    Args:
        python: Interpreter for the agent (default: this one).
        agent_args: Extra agent arguments (e.g. ``["--reaper", "sigchld"]``).
        environ: Base environment for agents and their tasks (default ``os.environ``); it is
            always scrubbed with :func:`scrub_environment`.
    """

    kind = "local"
    name = "local"
    traits = TRAITS

    def __init__(
        self,
        *,
        python: str | None = None,
        agent_args: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
        sku: str = LOCAL_NODE_AGENT_SKU,
    ) -> None:
        super().__init__(sku)
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

    # -- the provider contract ---------------------------------------------------------------

    def place(
        self,
        pool: PoolRef,
        node_ids: Sequence[str],
        in_use: Collection[str],
        *,
        dedicated: bool = True,
    ) -> Placement:
        """Every node asked for, each in its own directory under the service's node root.

        Nodes of a pool with inter-node communication get a loopback address of their own
        (:func:`loopback_address`), so the tasks of a multi-instance task can tell their nodes
        apart and listen on the same port on each; the others show 127.0.0.1.
        """
        if pool.inter_node_communication:
            return Placement([NodeSlot(node_id=n, address=loopback_address(n)) for n in node_ids])
        return Placement([NodeSlot(node_id=n) for n in node_ids])

    def connect(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        """Start the node's agent as a subprocess of this machine."""
        return self.start_agent(node.node_id, Path(node.root), on_event)

    def release(self, request_id: str, node: NodeRef, *, wipe_only: bool = False) -> None:
        """Remove the node's directory (a reimage too: the next agent makes it again)."""
        shutil.rmtree(node.root, ignore_errors=True)


# -- the kind ----------------------------------------------------------------------------------


def validate_registration(body: Any) -> dict[str, Any]:
    """Local nodes come with the service: there is nothing to register."""
    raise BatchInvalidRequestError(
        "InvalidPropertyValue",
        f"{LOCAL_NODE_AGENT_SKU} is always there; it is not registered",
        {"PropertyName": "kind", "PropertyValue": "local"},
    )


def supported_image(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """The ``list_supported_images`` entry of local nodes."""
    return image_entry(LOCAL_NODE_AGENT_SKU, "local", "process", "LocalProcess", verified=True)


def build_provider(sku: str, spec: Mapping[str, Any], context: BuildContext) -> LocalNodeSource:
    return LocalNodeSource(sku=sku)
