"""Simulated nodes for measuring the control plane alone: the ``sim`` kind.

A pool on a ``sim`` node source gets nodes whose agents live in the service's own process and
speak the agent protocol (:mod:`prefect_batch.agent`) without running anything: a ``run`` is
answered by ``started`` and, ``taskSeconds`` later (0: at once), by ``exited`` with exit code 0.
No process is spawned, no file is written, so what a benchmark measures on such a pool is the
engine, the store and the client — the service's own cost per task — at a scale this machine
could never hold as real agents (1,000 nodes × 8 slots).

Every simulated agent of one provider shares one delivery thread, which hands events to the
engine's callback in the order they fall due, as the agents' reader threads would. The agent
answers only what the engine needs: ``hello``, ``run``, ``kill``, ``recover`` (every key is
``lost``: a simulated node keeps nothing across a restart of the service), ``forget``,
``delete``, ``ping``, ``metrics`` and ``shutdown``; file requests answer ``FileNotFound``.

Register the kind once per process with :func:`install`, then a source of it like any other::

    install()
    client.create_node_source({"kind": "sim", "name": "fleet", "taskSeconds": 0})
    client.create_pool({"id": "big", "vmSize": "sim", "targetDedicatedNodes": 1000,
        "taskSlotsPerNode": 8,
        "virtualMachineConfiguration": {"nodeAgentSKUId": "batch.node.sim.fleet"}})

:func:`sent_runs` tells, per source, when each ``run`` request reached its agent (for dispatch
latency). Nothing here imports pytest.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from prefect_batch.agent import PROTOCOL_VERSION
from prefect_batch.core.ids import validate_id
from prefect_batch.exceptions import AgentError, BatchInvalidRequestError, invalid_property
from prefect_batch.providers.base import AgentConnection, EventCallback
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    NodeSlot,
    Placement,
    PoolRef,
    ProviderTraits,
)
from prefect_batch.providers.kinds import BuildContext, ProviderKind, image_entry, register_kind

__all__ = [
    "KIND",
    "TRAITS",
    "SimAgent",
    "SimProvider",
    "build_provider",
    "install",
    "sent_runs",
    "supported_image",
    "validate_registration",
]

KIND = ProviderKind("sim", __name__)
"""The kind; pools name a source of it ``batch.node.sim.<name>``."""

TRAITS = ProviderTraits()
"""Remote in every respect the engine knows of: files through the agent, nothing on disk."""

_FIELDS = {"kind", "name", "taskSeconds"}


def install() -> None:
    """Register the ``sim`` kind in this process (idempotent)."""
    register_kind(KIND)


class _Deliverer:
    """One thread that hands simulated agents' events to their callbacks when they fall due."""

    def __init__(self, name: str) -> None:
        self._heap: list[tuple[float, int, EventCallback, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name=f"sim-agents-{name}", daemon=True)
        self._thread.start()

    def post(self, at: float, callback: EventCallback, events: Iterable[dict[str, Any]]) -> None:
        with self._cv:
            for event in events:
                heapq.heappush(self._heap, (at, next(self._seq), callback, event))
            self._cv.notify()

    def stop(self) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cv.wait(wait)
                if self._stopped:
                    return
                now = time.monotonic()
                due = []
                while self._heap and self._heap[0][0] <= now:
                    due.append(heapq.heappop(self._heap))
            for _, _, callback, event in due:
                try:
                    callback(event)
                except Exception:  # noqa: BLE001 - as a reader thread, never stop delivering
                    continue


class _NoProcess:
    """The process handle of an agent that is not a process."""

    pid = None

    def __init__(self, agent: SimAgent) -> None:
        self._agent = agent

    def kill(self) -> None:
        self._agent.close()

    def wait(self, timeout: float | None = None) -> int | None:
        return 0 if self._agent.closed else None

    def poll(self) -> int | None:
        return 0 if self._agent.closed else None


class SimAgent:
    """A node agent in this process: answers the protocol, runs nothing.

    It stands where an :class:`~prefect_batch.providers.base.AgentChannel` would (the
    connection's ``channel``): ``send``, ``send_many``, ``close``, ``closed``, ``wait_closed``.
    """

    def __init__(
        self,
        provider: SimProvider,
        node_id: str,
        root: str,
        on_event: EventCallback,
    ) -> None:
        self.name = node_id
        self._provider = provider
        self._root = root
        self._on_event = on_event
        self._running: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        return self._closed.wait(timeout)

    def send(self, msg: dict[str, Any]) -> None:
        self.send_many([msg])

    def send_many(self, msgs: Iterable[dict[str, Any]]) -> None:
        if self.closed:
            raise AgentError(f"agent channel {self.name!r} is closed for writing")
        now = time.monotonic()
        at_once: list[dict[str, Any]] = []
        for msg in msgs:
            at_once.extend(self._answer(msg, now))
        if at_once:
            self._provider.deliverer.post(now, self._deliver, at_once)

    def close(self) -> None:
        """The service closed its side: the agent says bye and its stream ends."""
        if self._closed.is_set():
            return
        self._closed.set()
        self._provider.deliverer.post(
            time.monotonic(),
            self._on_event,
            [{"ev": "bye", "reason": "eof"}, {"ev": "closed", "reason": "eof"}],
        )

    def _deliver(self, event: dict[str, Any]) -> None:
        if not self.closed:
            self._on_event(event)

    def _finish(self, event: dict[str, Any]) -> None:
        """A run's ``exited`` falling due: sent unless the run was killed meanwhile."""
        with self._lock:
            if event["key"] not in self._running:
                return  # killed: its exited event went out then
            self._running.discard(event["key"])
        self._deliver(event)

    def _answer(self, msg: dict[str, Any], now: float) -> list[dict[str, Any]]:
        op = msg.get("op")
        wall = time.time()
        if op == "hello":
            return [
                {
                    "ev": "hello",
                    "v": PROTOCOL_VERSION,
                    "agent_version": "sim",
                    "pid": os.getpid(),
                    "hostname": self.name,
                    "cpu_count": 1,
                    "memory_bytes": 1 << 30,
                    "root": self._root,
                    "time": wall,
                    "reaper": "sim",
                    "spawn": "sim",
                    "confined": False,
                }
            ]
        if op == "run":
            return self._run(msg, now, wall)
        if op == "kill":
            key = msg.get("key")
            with self._lock:
                if key not in self._running:
                    return []
                self._running.discard(key)
            return [_exited(key, wall, wall, exit_code=None, killed=True)]
        if op == "recover":
            return [
                {"ev": "lost", "key": key, "reason": "a simulated node keeps nothing"}
                for key in msg.get("keys") or []
            ]
        if op == "delete":
            if msg.get("ev_id") is None:
                return []
            return [{"ev": "deleted", "dir": msg.get("dir"), "ev_id": msg["ev_id"]}]
        if op == "ping":
            with self._lock:
                running = sorted(self._running)
            return [
                {
                    "ev": "pong",
                    "time": wall,
                    "running": running,
                    "adopted": [],
                    "load": [0.0, 0.0, 0.0],
                    "memory_available_bytes": None,
                    "disk_free_bytes": None,
                }
            ]
        if op == "metrics":
            return [{"ev": "metrics", "req": msg.get("req"), "time": wall, "interval": None}]
        if op in ("list_files", "read_file", "delete_file"):
            return [
                {
                    "ev": "error",
                    "op": op,
                    "req": msg.get("req"),
                    "code": "FileNotFound",
                    "message": "a simulated node holds no files",
                }
            ]
        if op == "shutdown":
            self.close()
            return []
        return []  # forget, and anything else: nothing to answer

    def _run(self, msg: dict[str, Any], now: float, wall: float) -> list[dict[str, Any]]:
        key = str(msg.get("key"))
        with self._lock:
            if key in self._running:
                return [{"ev": "error", "op": "run", "key": key, "code": "TaskKeyInUse"}]
            self._running.add(key)
        self._provider.note_run(str(msg.get("dir")), now)
        seconds = self._provider.task_seconds
        started = {"ev": "started", "key": key, "pid": 0, "time": wall}
        exited = _exited(key, wall, wall + seconds, exit_code=0)
        if seconds <= 0:
            with self._lock:
                self._running.discard(key)
            return [started, exited]
        self._provider.deliverer.post(now + seconds, self._finish, [exited])
        return [started]


def _exited(
    key: Any, start: float, end: float, *, exit_code: int | None, killed: bool = False
) -> dict[str, Any]:
    return {
        "ev": "exited",
        "key": key,
        "exit_code": exit_code,
        "start_time": start,
        "end_time": end,
        "timed_out": False,
        "killed": killed,
        "error": None,
        "upload_error": None,
    }


_SENT: dict[tuple[str, str], dict[str, float]] = {}
_SENT_LOCK = threading.Lock()


def sent_runs(account: str, name: str) -> dict[str, float]:
    """``<job>/<task>`` -> ``time.monotonic()`` when the task's first ``run`` request came.

    The dict is the live one, filled from the delivery of requests (copy it to read a moment).
    """
    with _SENT_LOCK:
        return _SENT.setdefault((account, name), {})


class SimProvider(NodeProvider):
    """The provider of one ``sim`` source: as many nodes as asked, each an in-process agent."""

    kind = "sim"
    traits = TRAITS

    def __init__(self, sku: str, spec: Mapping[str, Any], account: str) -> None:
        super().__init__(sku)
        self.task_seconds = float(spec.get("taskSeconds", 0.0))
        self.name = str(spec["name"])
        self.deliverer = _Deliverer(self.name)
        self._sent = sent_runs(account, self.name)

    def note_run(self, task_dir: str, at: float) -> None:
        self._sent.setdefault(task_dir, at)

    def place(
        self,
        pool: PoolRef,
        node_ids: Sequence[str],
        in_use: Collection[str],
        *,
        dedicated: bool = True,
    ) -> Placement:
        return Placement(
            [
                NodeSlot(node_id, address="127.0.0.1", root=f"/sim/{pool.pool_id}/{node_id}")
                for node_id in node_ids
            ]
        )

    def connect(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        agent = SimAgent(self, node.node_id, node.root, on_event)
        return AgentConnection(node.node_id, node.root, agent, _NoProcess(agent))  # type: ignore[arg-type]

    def release(self, request_id: str, node: NodeRef, *, wipe_only: bool = False) -> None:
        """Nothing is held: a simulated node leaves nothing behind."""

    def close(self) -> None:
        self.deliverer.stop()


# -- the kind ----------------------------------------------------------------------------------


def validate_registration(body: Any) -> dict[str, Any]:
    """The stored spec of a ``sim`` source (raises naming the offending field)."""
    if not isinstance(body, Mapping):
        raise BatchInvalidRequestError("InvalidRequestBody", "A sim node source is a JSON object.")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise invalid_property(unknown[0], body[unknown[0]], "is not a field of this kind")
    name = body.get("name")
    if not isinstance(name, str):
        raise invalid_property("name", name, "is required")
    validate_id(name, "name")
    seconds = body.get("taskSeconds", 0.0)
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= 3600
    ):
        raise invalid_property("taskSeconds", seconds, "must be a number of seconds from 0 to 3600")
    return {"name": name, "taskSeconds": float(seconds)}


def supported_image(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return image_entry(KIND.sku(name), "sim", name, "Simulated")


def build_provider(sku: str, spec: Mapping[str, Any], context: BuildContext) -> SimProvider:
    return SimProvider(sku, spec, context.account)
