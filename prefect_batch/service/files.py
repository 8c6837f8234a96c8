"""Task and node files: list, read (with ranges), properties, delete.

Local nodes keep their directories on this machine, so their files are read from disk here;
every path is resolved (symlinks included) and must stay inside the node's root directory — and
for task files inside the task's directory. SSH nodes keep theirs on their hosts: their files are
listed, read and deleted through the node's agent (``service/remotenodes.py``), which keeps every
path inside the node root. Removing a directory on a node that an engine holds is queued as a
node command, which that engine's agent carries out.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from prefect_batch.exceptions import (
    BatchConflictError,
    BatchNotFoundError,
    BatchServiceError,
    invalid_property,
)
from prefect_batch.models import BatchNodeFile
from prefect_batch.service.base import ServiceBase
from prefect_batch.service.common import iso
from prefect_batch.service.pools import LOCAL_NODE_AGENT_SKU, node_source_of
from prefect_batch.service.remotenodes import RemoteDir
from prefect_batch.store.schema import node_commands, nodes, pools

__all__ = ["FileOperations", "queue_dir_deletion", "safe_path"]


def queue_dir_deletion(conn: Any, node_pk: int | None, rel_dir: str, now: float) -> None:
    """Remove ``rel_dir`` under a node's root: at once for a local node, else through its agent.

    Local nodes live on this machine, so their directories go now — a job deleted and created
    again under the same id must not lose its new files to a deletion that ran late.
    """
    if node_pk is None:
        return
    row = conn.execute(
        select(nodes.c.root_dir, pools.c.spec)
        .join(pools, pools.c.pk == nodes.c.pool_pk)
        .where(nodes.c.pk == node_pk)
    ).one_or_none()
    if row is None:
        return
    if node_source_of(row.spec) == LOCAL_NODE_AGENT_SKU:
        try:
            target = safe_path(Path(row.root_dir), rel_dir, "dir")
        except BatchServiceError:
            return
        if target != Path(row.root_dir).resolve():
            shutil.rmtree(target, ignore_errors=True)
        return
    conn.execute(
        insert(node_commands).values(
            node_pk=node_pk, op={"op": "delete", "dir": rel_dir}, creation_time=now
        )
    )


def safe_path(root: Path, rel: str, prop: str = "filePath") -> Path:
    """``root / rel`` resolved, refusing anything that leaves ``root``."""
    if rel.startswith("/") or "\x00" in rel:
        raise invalid_property(prop, rel, "must be a relative path inside the directory")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise invalid_property(prop, rel, "must not contain '..'")
    base = root.resolve()
    target = (base.joinpath(*parts)).resolve()
    if target != base and base not in target.parents:
        raise invalid_property(prop, rel, "resolves outside the directory")
    return target


def _file_entry(path: Path, name: str, url: str) -> BatchNodeFile:
    st = path.stat()
    is_dir = stat.S_ISDIR(st.st_mode)
    return BatchNodeFile.model_validate(
        {
            "name": name,
            "url": url,
            "isDirectory": is_dir,
            "properties": {
                "creationTime": iso(st.st_ctime),
                "lastModified": iso(st.st_mtime),
                "contentLength": 0 if is_dir else st.st_size,
                "contentType": "application/octet-stream",
                "fileMode": oct(stat.S_IMODE(st.st_mode)),
            },
        }
    )


def _walk(base: Path, recursive: bool) -> list[tuple[Path, str]]:
    out: list[tuple[Path, str]] = []
    if not base.exists():
        return out
    if recursive:
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for n in sorted(dirnames) + sorted(filenames):
                p = Path(dirpath) / n
                out.append((p, p.relative_to(base).as_posix()))
    else:
        for p in sorted(base.iterdir()):
            out.append((p, p.name))
    return out


class FileOperations(ServiceBase):
    """File operations of one account."""

    # -- task files ------------------------------------------------------------------------

    def _task_dir(self, job_id: str, task_id: str) -> tuple[Path | RemoteDir, str, str]:
        from prefect_batch.service.tasks import TaskOperations

        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            row = TaskOperations._task_row(self, conn, job, task_id)  # type: ignore[arg-type]
            node_pk = row.node_pk if row.node_pk is not None else row.files_node_pk
            if node_pk is None:
                raise BatchConflictError(
                    "TaskFilesUnavailable",
                    f"The task has not run on a node yet: {row.id}",
                    {"TaskId": row.id},
                )
            node = conn.execute(
                select(nodes, pools.c.spec.label("pool_spec"))
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(nodes.c.pk == node_pk)
            ).one_or_none()
            if node is None:
                raise BatchConflictError(
                    "TaskFilesUnavailable",
                    f"The node that ran the task is gone: {row.id}",
                    {"TaskId": row.id},
                )
            if node.host_id is not None:
                return self._remote_dir(node, f"{job.id}/{row.id}"), job.id, row.id
            task_dir = Path(node.root_dir) / job.id / row.id
            if not task_dir.exists():
                raise BatchConflictError(
                    "TaskFilesCleanedup",
                    f"The task's files were cleaned up: {row.id}",
                    {"TaskId": row.id},
                )
            return task_dir, job.id, row.id

    def list_task_files(
        self, job_id: str, task_id: str, *, recursive: bool = False
    ) -> list[BatchNodeFile]:
        """Files in the task's directory on its node (``stdout.txt``, ``stderr.txt``, ``wd/``)."""
        task_dir, jid, tid = self._task_dir(job_id, task_id)
        url = f"{self.base_url}/jobs/{jid}/tasks/{tid}/files"
        if isinstance(task_dir, RemoteDir):
            try:
                return task_dir.list("", recursive, url)
            except BatchNotFoundError:
                raise BatchConflictError(
                    "TaskFilesCleanedup",
                    f"The task's files were cleaned up: {tid}",
                    {"TaskId": tid},
                ) from None
        return [_file_entry(p, n, f"{url}/{n}") for p, n in _walk(task_dir, recursive)]

    def get_task_file(
        self,
        job_id: str,
        task_id: str,
        file_path: str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """Content of a task file, optionally a byte range."""
        task_dir, _, _ = self._task_dir(job_id, task_id)
        if isinstance(task_dir, RemoteDir):
            return _read_remote(task_dir, file_path, offset, length)
        return _read(safe_path(task_dir, file_path), file_path, offset, length)

    def get_task_file_properties(self, job_id: str, task_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a task file."""
        task_dir, jid, tid = self._task_dir(job_id, task_id)
        url = f"{self.base_url}/jobs/{jid}/tasks/{tid}/files/{file_path}"
        if isinstance(task_dir, RemoteDir):
            return task_dir.properties(file_path, url)
        path = safe_path(task_dir, file_path)
        _exists(path, file_path)
        return _file_entry(path, file_path, url)

    def delete_task_file(
        self, job_id: str, task_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a file (or with ``recursive`` a directory) of a task."""
        task_dir, _, _ = self._task_dir(job_id, task_id)
        if isinstance(task_dir, RemoteDir):
            task_dir.delete(file_path, recursive)
            return
        _delete(safe_path(task_dir, file_path), file_path, recursive, task_dir)

    # -- node files ------------------------------------------------------------------------

    def _node_root(self, pool_id: str, node_id: str) -> Path | RemoteDir:
        with self.store.read() as conn:
            pool = self._pool_row(conn, pool_id)
            row = conn.execute(
                select(nodes, pools.c.spec.label("pool_spec"))
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(nodes.c.pool_pk == pool.pk, nodes.c.node_id == node_id)
            ).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "NodeNotFound", f"The specified node does not exist: {node_id}", {"NodeId": node_id}
            )
        if row.host_id is not None:
            return self._remote_dir(row, "")
        return Path(row.root_dir)

    def _remote_dir(self, node: Any, base: str) -> RemoteDir:
        """A directory (``base`` under the root) of the SSH node of a ``nodes`` row."""
        return RemoteDir(
            store=self.store,
            account=self.account,
            pool_spec=node.pool_spec,
            node_pk=node.pk,
            node_id=node.node_id,
            host_id=node.host_id,
            root=node.root_dir,
            base=base,
        )

    def list_node_files(
        self, pool_id: str, node_id: str, *, recursive: bool = False, path: str = ""
    ) -> list[BatchNodeFile]:
        """Files under the node's root directory (or ``path`` below it)."""
        root = self._node_root(pool_id, node_id)
        url = f"{self.base_url}/pools/{pool_id}/nodes/{node_id}/files"
        prefix = (path.strip("/") + "/") if path.strip("/") else ""
        if isinstance(root, RemoteDir):
            return [
                f
                for f in root.list(path, recursive, url, prefix=prefix)
                if not (f.name or "").startswith(".agent")
            ]
        base = safe_path(root, path) if path else root.resolve()
        return [
            _file_entry(p, prefix + n, f"{url}/{prefix}{n}")
            for p, n in _walk(base, recursive)
            if not (prefix + n).startswith(".agent")
        ]

    def get_node_file(
        self,
        pool_id: str,
        node_id: str,
        file_path: str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """Content of a file under the node's root, optionally a byte range."""
        root = self._node_root(pool_id, node_id)
        if isinstance(root, RemoteDir):
            return _read_remote(root, file_path, offset, length)
        return _read(safe_path(root, file_path), file_path, offset, length)

    def get_node_file_properties(self, pool_id: str, node_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a node file."""
        root = self._node_root(pool_id, node_id)
        url = f"{self.base_url}/pools/{pool_id}/nodes/{node_id}/files/{file_path}"
        if isinstance(root, RemoteDir):
            return root.properties(file_path, url)
        path = safe_path(root, file_path)
        _exists(path, file_path)
        return _file_entry(path, file_path, url)

    def delete_node_file(
        self, pool_id: str, node_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a file (or with ``recursive`` a directory) under the node's root."""
        root = self._node_root(pool_id, node_id)
        if isinstance(root, RemoteDir):
            root.delete(file_path, recursive)
            return
        _delete(safe_path(root, file_path), file_path, recursive, root)


def _exists(path: Path, name: str) -> None:
    if not path.exists():
        raise BatchNotFoundError(
            "FileNotFound", f"The specified file does not exist: {name}", {"FilePath": name}
        )


def _read_remote(where: RemoteDir, name: str, offset: int, length: int | None) -> bytes:
    if offset < 0 or (length is not None and length < 0):
        raise BatchConflictError("InvalidRange", "The byte range is invalid", status_code=416)
    return where.read(name, offset, length)


def _read(path: Path, name: str, offset: int, length: int | None) -> bytes:
    _exists(path, name)
    if path.is_dir():
        raise invalid_property("filePath", name, "is a directory")
    if offset < 0 or (length is not None and length < 0):
        raise BatchConflictError("InvalidRange", "The byte range is invalid", status_code=416)
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read() if length is None else fh.read(length)


def _delete(path: Path, name: str, recursive: bool, root: Path) -> None:
    _exists(path, name)
    if path == root.resolve():
        raise invalid_property("filePath", name, "cannot delete the root directory")
    if path.is_dir():
        if not recursive:
            raise BatchConflictError(
                "OperationInvalidForCurrentState",
                f"{name} is a directory; delete it with recursive=True",
                {"FilePath": name},
            )
        shutil.rmtree(path)
    else:
        path.unlink()
