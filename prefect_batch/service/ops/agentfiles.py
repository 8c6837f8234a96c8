"""Directories of nodes that are not on this machine, reached through their agents.

:class:`AgentDir` is a directory on a node (a task's directory, or the node root) for the file
operations: every call goes through the node's agent — the connection of an engine of this
process that holds the node, or else a short-lived agent session of its own, opened by the
node's provider. It has the methods of :class:`~prefect_batch.service.rows.localfiles.LocalDir`, and
the agent applies the same rules (no link followed below the root, only regular files and
directories served, task files kept inside the task's directory).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prefect_batch.exceptions import (
    AgentError,
    BatchConflictError,
    BatchNotFoundError,
    invalid_property,
)
from prefect_batch.models import BatchNodeFile
from prefect_batch.providers.agentcalls import AgentCallError, AgentCalls
from prefect_batch.providers.contract import NodeRef
from prefect_batch.service.rows.common import iso
from prefect_batch.service.rows.providers import directory_of, live_calls

__all__ = ["AgentDir", "agent_session", "unreachable"]


def unreachable(node: NodeRef, exc: BaseException) -> BatchConflictError:
    """Azure's ``NodeStateUnusable`` for a node whose agent cannot be reached."""
    return BatchConflictError(
        "NodeStateUnusable",
        f"The node {node.node_id} cannot be reached on {node.machine_id or node.address}: {exc}",
        {"NodeId": node.node_id},
    )


@contextmanager
def agent_session(store: Any, sku: str, node_pk: int, node: NodeRef) -> Iterator[AgentCalls]:
    """Requests to a node's agent: over the connection an engine of this process holds, or
    else a short-lived agent session of its own, opened by the node's provider.

    Raises:
        BatchConflictError: ``NodeStateUnusable``: the agent cannot be reached.
    """
    calls = live_calls(store.url, node_pk)
    if calls is not None:
        yield calls
        return
    try:
        provider = directory_of(store).get(node.account, sku)
        if provider is None:
            raise AgentError(f"the node source {sku} is not registered")
        box: list[AgentCalls] = []

        def deliver(msg: dict[str, Any]) -> None:
            if box:
                box[0].deliver(msg)

        conn = provider.attach(node, deliver)
    except AgentError as exc:
        raise unreachable(node, exc) from exc
    box.append(AgentCalls(conn, f"node {node.node_id} ({node.machine_id or node.root})"))
    try:
        yield box[0]
    finally:
        conn.close()


def _rel(path: str, prop: str) -> str:
    """A relative path below a directory, ``/``-separated, refusing ``..`` and absolute paths."""
    if path.startswith("/") or "\x00" in path:
        raise invalid_property(prop, path, "must be a relative path inside the directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise invalid_property(prop, path, "must not contain '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class AgentDir:
    """A directory on a node: ``base`` (relative to the node root, ``""`` for the root).

    Attributes:
        store: The node's store.
        sku: The node's source (``nodeAgentSKUId``).
        node_pk: The node's row.
        node: The node as its provider knows it.
        base: The directory below the node root.
    """

    store: Any
    sku: str
    node_pk: int
    node: NodeRef
    base: str = ""

    def _path(self, rel: str, prop: str = "filePath") -> str:
        rel = _rel(rel, prop)
        return "/".join(p for p in (self.base, rel) if p)

    @contextmanager
    def _session(self) -> Iterator[AgentCalls]:
        with agent_session(self.store, self.sku, self.node_pk, self.node) as calls:
            yield calls

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
            raise unreachable(self.node, exc) from exc

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
