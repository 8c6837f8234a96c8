"""Nodes on SSH hosts, as the engine and the file operations reach them.

* :class:`RemoteNodes` is the engine's side: it builds an
  :class:`~prefect_batch.providers.ssh.SSHNodeSource` per registered host group (cached, built
  again when the group changes), starts agents on a few worker threads — an SSH connect can
  take seconds or time out, and the engine loop must not wait for it — and hands the outcome
  back to the loop as an event (``_agent_started`` with the connection, or ``_agent_failed``
  with a message naming the host). It also wipes a host's node directories, through its agent,
  when a node leaves or a fresh node takes the host.
* :class:`AgentCalls` sends a request that expects an answer (``list_files``, ``read_file``,
  ``delete_file``, ``delete`` with an id) over a connection that also carries the engine's
  traffic, and waits for the answer with that id; answers never reach the engine loop.
* :class:`RemoteDir` is a directory on an SSH node (a task's directory, or the node root) for
  the file operations: through the agent of an engine of this process that holds the node, or
  else through a short-lived agent session of its own on the host.

Private keys are never stored or logged: a group names a key file, or a Prefect ``Secret`` block
that is resolved here, in the process that connects.

What this module does not do: decide node states, requeue tasks or pick hosts (the engine's
node runtime and ``service/sshnodes.py`` do), or validate groups
(``service/nodesources.py``).
"""

from __future__ import annotations

import base64
import itertools
import logging
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect_batch.exceptions import (
    AgentError,
    BatchConflictError,
    BatchNotFoundError,
    HostKeyError,
    PrefectBatchError,
    invalid_property,
)
from prefect_batch.models import BatchNodeFile
from prefect_batch.service.common import iso
from prefect_batch.service.nodesources import group_row, ssh_group_name

__all__ = [
    "AgentCallError",
    "AgentCalls",
    "HostSlot",
    "RemoteDir",
    "RemoteNodes",
    "build_source",
    "group_hosts",
    "live_calls",
    "wipe_node_root",
]

log = logging.getLogger("prefect_batch.engine")

CALL_TIMEOUT_SECONDS = 30.0
"""Longest wait for an agent's answer to one request."""
START_WORKERS = 8
"""Agent starts (SSH connects) that may run at once, per engine."""
_DEFAULT_ROOT = "~/.prefect-batch-node"

_ENGINES: weakref.WeakSet[RemoteNodes] = weakref.WeakSet()
"""Every engine-side helper of this process, for :func:`live_calls`."""


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

    The agent makes ``shared``, ``startup`` and the rest again on ``hello``.
    """
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


# -- host groups ---------------------------------------------------------------------------


@dataclass(frozen=True)
class HostSlot:
    """A host of a group as a node sees it: id, address, node root and declared size."""

    id: str
    address: str
    root: str
    vm_size: str | None


def group_hosts(spec: Mapping[str, Any]) -> list[HostSlot]:
    """The hosts of a stored group, in order (no connection, no key needed)."""
    out = []
    for h in spec.get("hosts") or []:
        user = h.get("user") or spec.get("user")
        out.append(
            HostSlot(
                id=f"{user}@{h['address']}:{h.get('port', 22)}",
                address=str(h["address"]),
                root=str(h.get("root") or spec.get("node_root") or _DEFAULT_ROOT),
                vm_size=spec.get("vm_size"),
            )
        )
    return out


def _resolve_secret(name: str) -> str:
    """The value of the Prefect ``Secret`` block ``name`` (never logged)."""
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name, _sync=True).get()  # type: ignore[call-arg,union-attr]
    except Exception as exc:  # noqa: BLE001 - any failure to load it is one clear error
        raise AgentError(
            f"cannot load the private key from the Prefect Secret block {name!r}: "
            f"{type(exc).__name__}"
        ) from None
    return value if isinstance(value, str) else str(value)


def build_source(spec: Mapping[str, Any]) -> Any:
    """An ``SSHNodeSource`` for a stored group (its Secret block resolved here, if it names one).

    Raises:
        AgentError: The Secret block cannot be loaded, or the group is no longer valid.
    """
    from pydantic import SecretStr, ValidationError

    from prefect_batch.providers.ssh import SSHNodeSource

    fields = dict(spec)
    secret = fields.pop("private_key_secret_name", None)
    if secret:
        fields["private_key"] = SecretStr(_resolve_secret(str(secret)))
    try:
        return SSHNodeSource(fields)
    except ValidationError as exc:
        raise AgentError(f"the SSH host group {spec.get('name')!r} is not valid: {exc}") from None


def _failure(host_id: str, exc: BaseException) -> tuple[str, str]:
    """(error code, message naming the host) for an agent that could not be started."""
    text = str(exc) or type(exc).__name__
    if host_id not in text:
        text = f"{host_id}: {text}"
    if isinstance(exc, HostKeyError):
        return "HostKeyVerificationFailed", text
    return "NodeAgentStartFailed", text


class RemoteNodes:
    """The engine's side of SSH nodes: sources, agent starts on workers, live connections.

    Args:
        store: The engine's store (its groups, and the key of :func:`live_calls`).
        workers: Agent starts that may run at once.
    """

    def __init__(self, store: Any, *, workers: int = START_WORKERS) -> None:
        self.store = store
        self._workers = workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._sources: dict[tuple[str, str], tuple[int, Any]] = {}
        self._live: dict[int, AgentCalls] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._closed = False
        _ENGINES.add(self)

    # -- sources ---------------------------------------------------------------------------

    def source(self, account: str, sku: str) -> Any:
        """The ``SSHNodeSource`` of an account's group ``batch.node.ssh.<name>``, or None.

        Built once per version of the group; a changed group gets a new one.

        Raises:
            AgentError: The group's Secret block cannot be loaded.
        """
        name = ssh_group_name(sku)
        if name is None:
            return None
        with self.store.read() as conn:
            row = group_row(conn, account, name)
        key = (account, name)
        if row is None:
            self._sources.pop(key, None)
            return None
        cached = self._sources.get(key)
        if cached is not None and cached[0] == row.version:
            return cached[1]
        source = build_source(row.spec)
        self._sources[key] = (row.version, source)
        return source

    def reserved(self, account: str) -> set[str]:
        """Hosts of ``account`` whose node just left and whose directories are being wiped."""
        with self._lock:
            return {h for (a, h) in self._reserved if a == account}

    # -- agents ----------------------------------------------------------------------------

    def _submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:  # a stopped engine that runs again
                self._closed = False
                _ENGINES.add(self)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._workers, thread_name_prefix="prefect-batch-ssh"
                )
            self._executor.submit(job)

    def start_agent(
        self,
        source: Any,
        node_pk: int,
        node_id: str,
        host_id: str,
        generation: int,
        on_event: Callable[[int, dict[str, Any], int], None],
        *,
        wipe: bool = False,
    ) -> None:
        """Start the agent of a node on its host, on a worker thread.

        ``on_event(node_pk, msg, generation)`` then gets ``{"ev": "_agent_started",
        "connection": ..., "calls": ..., "root": ...}`` or ``{"ev": "_agent_failed", "code":
        ..., "message": ...}``, followed by the agent's own events. With ``wipe`` the node
        root is emptied first (a fresh node, or a reimage).
        """

        def job() -> None:
            box: list[AgentCalls] = []

            def deliver(msg: dict[str, Any]) -> None:
                if box and box[0].deliver(msg):
                    return
                on_event(node_pk, msg, generation)

            try:
                conn = source.start_agent_on(host_id, node_id, deliver)
            except Exception as exc:  # noqa: BLE001 - every failure becomes node state
                code, message = _failure(host_id, exc)
                log.warning("node %s: %s", node_id, message)
                on_event(
                    node_pk, {"ev": "_agent_failed", "code": code, "message": message}, generation
                )
                return
            calls = AgentCalls(conn, f"node {node_id} ({host_id})")
            box.append(calls)
            if wipe:
                try:
                    wipe_node_root(calls)
                except PrefectBatchError as exc:
                    log.warning("could not wipe the node root of %s: %s", node_id, exc)
            if self._closed:  # the engine stopped meanwhile
                conn.close()
                return
            on_event(
                node_pk,
                {"ev": "_agent_started", "connection": conn, "calls": calls, "root": conn.root},
                generation,
            )

        self._submit(job)

    def wipe_host(self, source: Any, account: str, host_id: str, root: str, node_id: str) -> None:
        """Empty a host's node root through an agent of its own, on a worker thread.

        The host stays reserved (not given to a new node by this engine) until done.
        """
        key = (account, host_id)
        with self._lock:
            self._reserved[key] = self._reserved.get(key, 0) + 1

        def job() -> None:
            box: list[AgentCalls] = []
            try:
                conn = source.start_agent_on(
                    host_id, f"{node_id}-wipe", lambda m: box and box[0].deliver(m), root=root
                )
                try:
                    box.append(AgentCalls(conn, f"host {host_id}"))
                    wipe_node_root(box[0])
                finally:
                    conn.close()
            except Exception as exc:  # noqa: BLE001 - best effort: a new node wipes again
                log.warning("could not wipe %s after node %s left: %s", host_id, node_id, exc)
            finally:
                with self._lock:
                    left = self._reserved.get(key, 1) - 1
                    if left > 0:
                        self._reserved[key] = left
                    else:
                        self._reserved.pop(key, None)

        self._submit(job)

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
        _ENGINES.discard(self)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)


def live_calls(store_url: str, node_pk: int) -> AgentCalls | None:
    """The connection an engine of this process holds to a node of the store at ``store_url``."""
    for engine in list(_ENGINES):
        if engine.store.url == store_url:
            calls = engine.live(node_pk)
            if calls is not None:
                return calls
    return None


# -- files on SSH nodes ----------------------------------------------------------------------


_SERVICE_SOURCES: dict[tuple[str, str, str], tuple[int, Any]] = {}
_SERVICE_LOCK = threading.Lock()


def _rel(path: str, prop: str) -> str:
    """A relative path below a directory, ``/``-separated, refusing ``..`` and absolute paths."""
    if path.startswith("/") or "\x00" in path:
        raise invalid_property(prop, path, "must be a relative path inside the directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise invalid_property(prop, path, "must not contain '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class RemoteDir:
    """A directory on an SSH node: ``base`` (relative to the node root, ``""`` for the root).

    Every method reaches the node's agent: the connection of an engine of this process that
    holds the node, or else a short-lived agent session of its own on the host.
    """

    store: Any
    account: str
    pool_spec: Mapping[str, Any]
    node_pk: int
    node_id: str
    host_id: str
    root: str
    base: str = ""

    def _path(self, rel: str, prop: str = "filePath") -> str:
        rel = _rel(rel, prop)
        return "/".join(p for p in (self.base, rel) if p)

    @contextmanager
    def _session(self) -> Iterator[AgentCalls]:
        calls = live_calls(self.store.url, self.node_pk)
        if calls is not None:
            yield calls
            return
        try:
            source = self._source()
            box: list[AgentCalls] = []
            conn = source.start_agent_on(
                self.host_id,
                f"{self.node_id}-files",
                lambda m: box and box[0].deliver(m),
                root=self.root,
            )
        except AgentError as exc:
            raise self._unreachable(exc) from exc
        box.append(AgentCalls(conn, f"node {self.node_id} ({self.host_id})"))
        try:
            yield box[0]
        finally:
            conn.close()

    def _source(self) -> Any:
        from prefect_batch.service.pools import node_source_of

        name = ssh_group_name(node_source_of(dict(self.pool_spec))) or ""
        with self.store.read() as conn:
            row = group_row(conn, self.account, name)
        if row is None:
            raise AgentError(f"the SSH host group {name!r} is not registered")
        key = (self.store.url, self.account, name)
        with _SERVICE_LOCK:
            cached = _SERVICE_SOURCES.get(key)
            if cached is not None and cached[0] == row.version:
                return cached[1]
        source = build_source(row.spec)
        with _SERVICE_LOCK:
            _SERVICE_SOURCES[key] = (row.version, source)
        return source

    def _unreachable(self, exc: BaseException) -> BatchConflictError:
        return BatchConflictError(
            "NodeStateUnusable",
            f"The node {self.node_id} cannot be reached on {self.host_id}: {exc}",
            {"NodeId": self.node_id},
        )

    def _call(self, calls: AgentCalls, request: dict[str, Any], name: str) -> dict[str, Any]:
        if self.base:
            # The agent resolves symlinks and keeps the path inside this directory (a task's),
            # not merely inside the node root.
            request = {**request, "within": self.base}
        try:
            return calls.call(request)
        except AgentCallError as exc:
            if exc.code == "FileNotFound":
                raise BatchNotFoundError(
                    "FileNotFound",
                    f"The specified file does not exist: {name}",
                    {"FilePath": name},
                ) from None
            raise invalid_property("filePath", name, exc.message) from None
        except AgentError as exc:
            raise self._unreachable(exc) from exc

    def list(self, rel: str, recursive: bool, url: str, *, prefix: str = "") -> list[BatchNodeFile]:
        """Entries under ``rel`` (names relative to it, with ``prefix`` in front)."""
        path = self._path(rel, "path" if rel else "filePath")
        with self._session() as calls:
            answer = self._call(
                calls, {"op": "list_files", "path": path, "recursive": recursive}, rel or "."
            )
        return [
            _file_model(e, prefix + e["name"], f"{url}/{prefix}{e['name']}")
            for e in answer["files"]
        ]

    def exists(self) -> bool:
        """Whether the directory itself is there."""
        try:
            with self._session() as calls:
                self._call(calls, {"op": "list_files", "path": self.base, "recursive": False}, ".")
        except BatchNotFoundError:
            return False
        return True

    def read(self, rel: str, offset: int, length: int | None) -> bytes:
        """Bytes of a file from ``offset`` (all of it, or ``length``), in ≤ 4 MiB requests."""
        path = self._path(rel)
        out = bytearray()
        pos = offset
        with self._session() as calls:
            while True:
                want = None if length is None else length - len(out)
                answer = self._call(
                    calls, {"op": "read_file", "path": path, "offset": pos, "length": want}, rel
                )
                data = base64.b64decode(answer.get("data_b64") or "")
                out += data
                pos += len(data)
                if not data or pos >= int(answer.get("size") or 0):
                    break
                if length is not None and len(out) >= length:
                    break
        return bytes(out)

    def _entry(self, calls: AgentCalls, rel: str) -> dict[str, Any]:
        """The listing entry of ``rel`` (from its parent's listing), as the agent sent it."""
        path = self._path(rel)
        if not path or path == self.base:
            raise invalid_property("filePath", rel, "names the directory itself")
        parent, _, name = path.rpartition("/")
        answer = self._call(calls, {"op": "list_files", "path": parent, "recursive": False}, rel)
        for entry in answer["files"]:
            if entry["name"] == name:
                return dict(entry)
        raise BatchNotFoundError(
            "FileNotFound", f"The specified file does not exist: {rel}", {"FilePath": rel}
        )

    def properties(self, rel: str, url: str) -> BatchNodeFile:
        """Size, times and mode of one regular file or directory (links are not followed)."""
        with self._session() as calls:
            entry = self._entry(calls, rel)
            kind = entry.get("kind", "dir" if entry.get("is_directory") else "file")
            if kind not in ("dir", "file"):
                what = "a symbolic link" if kind == "link" else "not a regular file"
                raise invalid_property("filePath", rel, f"is {what}")
            if kind == "file":  # the agent's checks on the opened file (hard links...)
                request = {"op": "read_file", "path": self._path(rel), "offset": 0, "length": 0}
                self._call(calls, request, rel)
        return _file_model(entry, rel, url)

    def delete(self, rel: str, recursive: bool) -> None:
        """Delete a file or link (never a link's target), or with ``recursive`` a directory."""
        path = self._path(rel)
        if path == self.base:
            raise invalid_property("filePath", rel, "cannot delete the root directory")
        with self._session() as calls:
            entry = self._entry(calls, rel)
            if entry.get("is_directory") and not recursive:
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    f"{rel} is a directory; delete it with recursive=True",
                    {"FilePath": rel},
                )
            self._call(
                calls, {"op": "delete_file", "path": path, "recursive": bool(recursive)}, rel
            )


def _file_model(entry: Mapping[str, Any], name: str, url: str) -> BatchNodeFile:
    return BatchNodeFile.model_validate(
        {
            "name": name,
            "url": url,
            "isDirectory": bool(entry.get("is_directory")),
            "properties": {
                "creationTime": iso(entry.get("creation_time")),
                "lastModified": iso(entry.get("last_modified")),
                "contentLength": int(entry.get("content_length") or 0),
                "contentType": "application/octet-stream",
                "fileMode": entry.get("file_mode"),
            },
        }
    )
