"""Task and node files: list, read (with ranges), properties, delete.

Nodes on this machine (their provider's ``same_machine`` trait) keep their directories here,
so their files are read from disk (``service/rows/localfiles.py``); other nodes keep theirs on their
machines, and their files are listed, read and deleted through the node's agent
(``service/ops/agentfiles.py``). Both follow the agent's rules: no symlink below the node root is
followed, only regular files and directories are served (a FIFO never blocks a request), a
file with several hard links only when all of them are inside the directory asked about, and
task files stay inside the task's directory. Removing a
directory on another machine is queued as a node command (``rows.queue_dir_deletion``), which
the agent of the engine that holds the node carries out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from prefect_batch.core.states import TaskState
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchNotFoundError,
)
from prefect_batch.models import BatchNodeFile
from prefect_batch.providers.kinds import sku_traits
from prefect_batch.service.ops.agentfiles import AgentDir
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.ops.tasks import TaskOperations
from prefect_batch.service.rows.common import node_source_of
from prefect_batch.service.rows.localfiles import LocalDir
from prefect_batch.service.rows.providers import node_ref
from prefect_batch.store.schema import nodes, pools

__all__ = ["FileOperations"]


class FileOperations(ServiceBase):
    """File operations of one account."""

    # -- task files ------------------------------------------------------------------------

    def _task_dir(self, job_id: str, task_id: str) -> tuple[LocalDir | AgentDir, str, str]:
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            row = TaskOperations._task_row(self, conn, job, task_id)  # type: ignore[arg-type]
            node_pk = row.node_pk if row.node_pk is not None else row.files_node_pk
            if node_pk is None and row.state == TaskState.COMPLETED.value and row.start_time:
                raise _cleaned_up(row.id)  # it ran; its retention ended
            if node_pk is None:
                raise BatchConflictError(
                    "TaskFilesUnavailable",
                    f"The task has not run on a node yet: {row.id}",
                    {"TaskId": row.id},
                )
            node = conn.execute(
                select(nodes, pools.c.spec.label("pool_spec"), pools.c.id.label("pool_id"))
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(nodes.c.pk == node_pk)
            ).one_or_none()
            if node is None:
                raise BatchConflictError(
                    "TaskFilesUnavailable",
                    f"The node that ran the task is gone: {row.id}",
                    {"TaskId": row.id},
                )
            if not sku_traits(node_source_of(node.pool_spec)).same_machine:
                return self._agent_dir(node, f"{job.id}/{row.id}"), job.id, row.id
        task_dir = LocalDir(Path(node.root_dir), f"{job.id}/{row.id}")
        if not task_dir.exists():
            raise _cleaned_up(row.id)
        return task_dir, job.id, row.id

    def list_task_files(
        self, job_id: str, task_id: str, *, recursive: bool = False
    ) -> list[BatchNodeFile]:
        """Files in the task's directory on its node (``stdout.txt``, ``stderr.txt``, ``wd/``)."""
        task_dir, jid, tid = self._task_dir(job_id, task_id)
        url = f"{self.base_url}/jobs/{jid}/tasks/{tid}/files"
        try:
            return task_dir.list("", recursive, url)
        except BatchNotFoundError:
            raise _cleaned_up(tid) from None

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
        _check_range(offset, length)
        task_dir, _, tid = self._task_dir(job_id, task_id)
        try:
            return task_dir.read(file_path, offset, length)
        except BatchNotFoundError:
            if task_dir.exists():
                raise
            # Its retention ended while it was read: the file went with the directory (the
            # agent renames a directory aside before removing it, so it is whole or gone).
            raise _cleaned_up(tid) from None

    def get_task_file_properties(self, job_id: str, task_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a task file."""
        task_dir, jid, tid = self._task_dir(job_id, task_id)
        url = f"{self.base_url}/jobs/{jid}/tasks/{tid}/files/{file_path}"
        return task_dir.properties(file_path, url)

    def delete_task_file(
        self, job_id: str, task_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a file (or with ``recursive`` a directory) of a task."""
        task_dir, _, _ = self._task_dir(job_id, task_id)
        task_dir.delete(file_path, recursive)

    # -- node files ------------------------------------------------------------------------

    def _node_root(self, pool_id: str, node_id: str) -> LocalDir | AgentDir:
        row = self._node_of_pool(pool_id, node_id)
        if not sku_traits(node_source_of(row.pool_spec)).same_machine:
            return self._agent_dir(row, "")
        return LocalDir(Path(row.root_dir))

    def _agent_dir(self, node: Any, base: str) -> AgentDir:
        """A directory (``base`` under the root) of the node of a ``nodes`` row, by its agent."""
        return AgentDir(
            store=self.store,
            sku=node_source_of(node.pool_spec),
            node_pk=node.pk,
            node=node_ref(node, node.pool_id),
            base=base,
        )

    def list_node_files(
        self, pool_id: str, node_id: str, *, recursive: bool = False, path: str = ""
    ) -> list[BatchNodeFile]:
        """Files under the node's root directory (or ``path`` below it)."""
        root = self._node_root(pool_id, node_id)
        url = f"{self.base_url}/pools/{pool_id}/nodes/{node_id}/files"
        prefix = (path.strip("/") + "/") if path.strip("/") else ""
        return [
            f
            for f in root.list(path, recursive, url, prefix=prefix)
            if not (f.name or "").startswith(".agent")
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
        _check_range(offset, length)
        return self._node_root(pool_id, node_id).read(file_path, offset, length)

    def get_node_file_properties(self, pool_id: str, node_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a node file."""
        url = f"{self.base_url}/pools/{pool_id}/nodes/{node_id}/files/{file_path}"
        return self._node_root(pool_id, node_id).properties(file_path, url)

    def delete_node_file(
        self, pool_id: str, node_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a file (or with ``recursive`` a directory) under the node's root."""
        self._node_root(pool_id, node_id).delete(file_path, recursive)


def _check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise BatchConflictError("InvalidRange", "The byte range is invalid", status_code=416)


def _cleaned_up(task_id: str) -> BatchConflictError:
    return BatchConflictError(
        "TaskFilesCleanedup", f"The task's files were cleaned up: {task_id}", {"TaskId": task_id}
    )
