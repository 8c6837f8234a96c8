"""Agent starts and node releases, on worker threads, for every kind of provider.

Connecting to a node's agent can take seconds (an SSH handshake, a machine that boots) or time
out, and the engine loop must not wait for it. :class:`AgentStarts` runs
:meth:`~prefect_batch.providers.contract.NodeProvider.connect` and
:meth:`~prefect_batch.providers.contract.NodeProvider.release` on a few worker threads and hands
each start's outcome back to the loop as an event: ``_agent_started`` with the connection, or
``_agent_failed`` with an error code and a message naming the node. It also keeps every node's
usable connection for the file operations of this process (registered with
:func:`~prefect_batch.service.rows.providers.hold_connections`), and the machines
being emptied after their node left, which no new node takes until that is done.

What this module does not do: decide node states or requeue tasks (the engine's node runtime
does).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect_batch.exceptions import HostKeyError, PrefectBatchError
from prefect_batch.providers.agentcalls import AgentCalls, wipe_node_root
from prefect_batch.providers.contract import NodeProvider, NodeRef
from prefect_batch.service.rows.providers import drop_connections, hold_connections

__all__ = ["START_WORKERS", "AgentStarts"]

log = logging.getLogger("prefect_batch.engine")

START_WORKERS = 8
"""Agent starts and releases that may run at once, per engine."""


EventSink = Callable[[int, dict[str, Any], int], None]
"""``(node_pk, event, generation)``: how a start reports to the engine loop."""


def _failure(node: NodeRef, exc: BaseException) -> tuple[str, str]:
    """(error code, message naming the node's machine) for an agent that did not start."""
    where = node.machine_id or node.node_id
    text = str(exc) or type(exc).__name__
    if where not in text:
        text = f"{where}: {text}"
    if isinstance(exc, HostKeyError):
        return "HostKeyVerificationFailed", text
    return "NodeAgentStartFailed", text


class AgentStarts:
    """The engine's worker threads for agent starts and releases, and its live connections.

    Args:
        store: The engine's store (the key of its connections for the file operations).
        workers: Starts and releases that may run at once.
    """

    def __init__(self, store: Any, *, workers: int = START_WORKERS) -> None:
        self.store = store
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._live: dict[int, AgentCalls] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._closed = False
        hold_connections(self)

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:  # a stopped engine that runs again
                self._closed = False
                hold_connections(self)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix="prefect-batch-start"
                )
            self._executor.submit(job)

    def start(
        self,
        provider: NodeProvider,
        node_pk: int,
        node: NodeRef,
        generation: int,
        on_event: EventSink,
        *,
        wipe: bool = False,
    ) -> None:
        """Connect to a node's agent on a worker thread.

        ``on_event(node_pk, msg, generation)`` then gets ``{"ev": "_agent_started",
        "connection": ..., "calls": ..., "root": ...}`` or ``{"ev": "_agent_failed", "code":
        ..., "message": ...}``, followed by the agent's own events. With ``wipe`` the node
        root is emptied first, through the new agent (a fresh node on a used machine, a
        reimage).
        """

        def job() -> None:
            box: list[AgentCalls] = []

            def deliver(msg: dict[str, Any]) -> None:
                if box and box[0].deliver(msg):
                    return
                on_event(node_pk, msg, generation)

            try:
                conn = provider.connect(node, deliver)
            except Exception as exc:  # noqa: BLE001 - every failure becomes node state
                code, message = _failure(node, exc)
                log.warning("node %s: %s", node.node_id, message)
                on_event(
                    node_pk, {"ev": "_agent_failed", "code": code, "message": message}, generation
                )
                return
            calls = AgentCalls(conn, f"node {node.node_id} ({node.machine_id or node.root})")
            box.append(calls)
            if wipe:
                try:
                    wipe_node_root(calls)
                except PrefectBatchError as exc:
                    log.warning("could not wipe the node root of %s: %s", node.node_id, exc)
            if self._closed:  # the engine stopped meanwhile
                conn.close()
                return
            on_event(
                node_pk,
                {
                    "ev": "_agent_started",
                    "connection": conn,
                    "calls": calls,
                    "root": conn.root,
                    "address": getattr(conn, "address", None),
                },
                generation,
            )

        self._submit(job)

    def release(self, provider: NodeProvider, request_id: str, node: NodeRef) -> None:
        """Give back what a departed node held, on a worker thread.

        Its machine stays reserved (no new node of this engine takes it) until done. A node on
        this machine is released at once (its directory is removed before the call returns).
        """
        key = (node.account, node.machine_id) if node.machine_id is not None else None
        if key is not None:
            with self._lock:
                self._reserved[key] = self._reserved.get(key, 0) + 1

        def job() -> None:
            try:
                provider.release(request_id, node)
            except Exception as exc:  # noqa: BLE001 - best effort: a new node wipes again
                log.warning("could not release node %s: %s", node.node_id, exc)
            finally:
                if key is not None:
                    with self._lock:
                        left = self._reserved.get(key, 1) - 1
                        if left > 0:
                            self._reserved[key] = left
                        else:
                            self._reserved.pop(key, None)

        if provider.traits.same_machine:
            job()
        else:
            self._submit(job)

    def later(self, job: Callable[[], None]) -> None:
        """Run ``job`` on a worker thread (after the releases submitted before it started)."""

        def guarded() -> None:
            try:
                job()
            except Exception:  # noqa: BLE001 - best effort, like a release
                log.warning("a provider's cleanup failed", exc_info=True)

        self._submit(guarded)

    def reserved(self, account: str) -> set[str]:
        """Machines of ``account`` whose node just left and that are being released."""
        with self._lock:
            return {m for (a, m) in self._reserved if a == account}

    # -- live connections ------------------------------------------------------------------

    def set_live(self, node_pk: int, calls: AgentCalls | None) -> None:
        """Offer (or with None withdraw) a node's connection to this process's file reads."""
        if calls is None:
            self._live.pop(node_pk, None)
        else:
            self._live[node_pk] = calls

    def live(self, node_pk: int) -> AgentCalls | None:
        """The usable connection of a node this engine holds, if any."""
        calls = self._live.get(node_pk)
        return calls if calls is not None and calls.usable else None

    def close(self) -> None:
        """Stop starting agents (connections still being made are closed when they come)."""
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        self._live.clear()
        drop_connections(self)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
