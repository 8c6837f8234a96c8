"""Requests with answers over an agent connection, and what is built on them.

An agent connection carries the engine's traffic (``run``, ``kill``, events); :class:`AgentCalls`
sends requests that expect an answer (``list_files``, ``read_file``, ``delete_file``, ``delete``
with an id) over the same connection and waits for the answer with that id; answers never reach
the engine loop. :func:`wipe_node_root` empties a node root through an agent: how a machine that
outlives its node (an SSH host, an instance) is made ready for the next one.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any

from prefect_batch.exceptions import AgentError, PrefectBatchError

__all__ = ["CALL_TIMEOUT_SECONDS", "AgentCallError", "AgentCalls", "wipe_node_root"]

log = logging.getLogger(__name__)

CALL_TIMEOUT_SECONDS = 30.0
"""Longest wait for an agent's answer to one request."""


class AgentCallError(PrefectBatchError):
    """An agent answered a request with an error (``code``: ``FileNotFound``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class AgentCalls:
    """Requests with answers over one agent connection (thread-safe).

    Each request gets an id (``req``; ``ev_id`` for ``delete``) and the caller waits for the
    event that carries it. Feed every event of the connection to :meth:`deliver` first: it
    keeps the answers and returns True for them.
    """

    def __init__(self, connection: Any, name: str) -> None:
        self.connection = connection
        self.name = name
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[str, list[Any]] = {}
        self._closed: str | None = None

    def deliver(self, msg: dict[str, Any]) -> bool:
        """Keep ``msg`` if it answers a request made here (called on the reader thread)."""
        if msg.get("ev") == "closed":
            self.close(str(msg.get("reason") or "the agent connection closed"))
            return False
        rid = msg.get("req") if "req" in msg else msg.get("ev_id")
        if not isinstance(rid, str) or not rid.startswith("c"):
            return False
        with self._lock:
            slot = self._waiting.get(rid)
            if slot is None:
                return False
            slot[1] = msg
        slot[0].set()
        return True

    def close(self, reason: str) -> None:
        """Fail every waiting request (the connection is gone)."""
        with self._lock:
            self._closed = reason
            waiting = list(self._waiting.values())
        for slot in waiting:
            slot[0].set()

    @property
    def usable(self) -> bool:
        """Whether requests may still be sent."""
        return self._closed is None and not getattr(self.connection, "closed", False)

    def call(
        self, request: dict[str, Any], timeout: float = CALL_TIMEOUT_SECONDS
    ) -> dict[str, Any]:
        """Send ``request`` and return the agent's answer.

        Raises:
            AgentCallError: The agent answered with an error.
            AgentError: The connection is gone, or no answer came within ``timeout``.
        """
        rid = f"c{next(self._ids)}"
        msg = dict(request)
        msg["ev_id" if msg.get("op") == "delete" else "req"] = rid
        slot: list[Any] = [threading.Event(), None]
        with self._lock:
            if self._closed is not None:
                raise AgentError(f"the agent of {self.name} is gone: {self._closed}")
            self._waiting[rid] = slot
        try:
            self.connection.send(msg)
            if not slot[0].wait(timeout):
                raise AgentError(f"the agent of {self.name} did not answer within {timeout}s")
        finally:
            with self._lock:
                self._waiting.pop(rid, None)
        answer = slot[1]
        if answer is None:
            raise AgentError(f"the agent of {self.name} is gone: {self._closed}")
        if answer.get("ev") == "error":
            raise AgentCallError(
                str(answer.get("code") or "AgentError"), str(answer.get("message") or "")
            )
        return dict(answer)


def wipe_node_root(calls: AgentCalls) -> None:
    """Delete everything under the node root except the agent's own state (``.agent``).

    The agent makes ``shared``, ``startup`` and the rest again on ``hello``. The login users
    its agents made (``create_node_user``) are removed first: they belonged to the node.
    """
    try:
        removed = calls.call({"op": "remove_users"}).get("removed") or []
    except AgentCallError as exc:  # the root is still wiped; the agent retries on expiry
        log.warning("could not remove node users on %s: %s", calls.name, exc)
        removed = []
    if removed:
        log.info("removed node users %s on %s", ", ".join(removed), calls.name)
    listed = calls.call({"op": "list_files", "path": "", "recursive": False})
    for entry in listed.get("files") or []:
        name = str(entry.get("name") or "")
        if not name or name.startswith(".agent"):
            continue
        try:
            if entry.get("is_directory"):
                calls.call({"op": "delete", "dir": name})
            else:
                calls.call({"op": "delete_file", "path": name, "recursive": False})
        except AgentCallError as exc:
            log.warning("could not wipe %s on %s: %s", name, calls.name, exc)
