"""Files of local nodes, read from this machine's disk with the node agent's rules, in bounded time.

:class:`LocalDir` is a directory of a local node (a task's directory, or the node root) with the
same methods as :class:`~prefect_batch.service.ops.agentfiles.AgentDir`, so the file operations
treat both alike. It uses the agent's own helpers (``open_beneath``, ``check_links``,
``scan_beneath``, ``remove_beneath``), so a local and an SSH node refuse the same things:

* no symlink below the node root is followed — each component is opened relative to its parent
  with ``O_NOFOLLOW``, and the checks run on the opened descriptor (``fstat``), never on a path a
  task could swap meanwhile; listings show links as entries of their own;
* only regular files and directories are served: a FIFO is opened ``O_NONBLOCK`` and refused, so
  a pipe a task leaves behind never blocks a request;
* a regular file with several hard links is served only when every link is inside the directory
  asked about (``ln /etc/passwd wd/pw`` is refused, two links inside a task's directory are not).

Every operation runs on a small pool of its own and is waited for at most
:data:`FILE_OP_SECONDS`: a file system that hangs (or a huge tree) answers 503 ``ServerBusy``
instead of holding one of the server's request threads, and other requests keep being served.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect_batch.agent.agent import (
    PathRefused,
    check_links,
    open_beneath,
    remove_beneath,
    scan_beneath,
)
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchNotFoundError,
    BatchServiceError,
    invalid_property,
)
from prefect_batch.models import BatchNodeFile
from prefect_batch.service.rows.common import iso

__all__ = ["FILE_OP_SECONDS", "LocalDir", "bounded", "file_model"]

FILE_OP_SECONDS = 20.0
"""Longest wait for one file operation on a local node's disk."""
FILE_WORKERS = 8
"""File operations that may run at once; more wait their turn (within the same bound)."""

T = TypeVar("T")
_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def bounded(action: Callable[[], T], timeout: float | None = None) -> T:
    """``action()`` on the file pool, waited for at most ``timeout`` (default FILE_OP_SECONDS).

    Raises:
        BatchServiceError: 503 ``ServerBusy`` when it did not finish in time (it may still run
            to its end on its worker: a thread blocked in the kernel cannot be stopped).
    """
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(FILE_WORKERS, thread_name_prefix="prefect-batch-files")
        future = _POOL.submit(action)
    try:
        return future.result(FILE_OP_SECONDS if timeout is None else timeout)
    except FutureTimeout:
        future.cancel()
        raise BatchServiceError(
            "ServerBusy",
            "The file operation did not finish in time; retry later.",
            status_code=503,
        ) from None


def _refused(exc: PathRefused, name: str) -> BatchServiceError:
    if exc.code == "ServerBusy":
        return BatchServiceError("ServerBusy", exc.message, status_code=503)
    if exc.code == "FileNotFound":
        return BatchNotFoundError(
            "FileNotFound", f"The specified file does not exist: {name}", {"FilePath": name}
        )
    return invalid_property("filePath", name, exc.message)


def file_model(name: str, url: str, st: os.stat_result, kind: str) -> BatchNodeFile:
    """An entry of a listing (or a file's properties) from its ``lstat``/``fstat``."""
    is_dir = kind == "dir"
    return BatchNodeFile.model_validate(
        {
            "name": name,
            "url": url,
            "isDirectory": is_dir,
            "properties": {
                "creationTime": iso(st.st_ctime),
                "lastModified": iso(st.st_mtime),
                "contentLength": st.st_size if kind == "file" else 0,
                "contentType": "application/octet-stream",
                "fileMode": oct(stat.S_IMODE(st.st_mode)),
            },
        }
    )


def _rel(path: str) -> str:
    if path.startswith("/") or "\x00" in path:
        raise invalid_property("filePath", path, "must be a relative path inside the directory")
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise invalid_property("filePath", path, "must not contain '..'")
    return "/".join(parts)


@dataclass(frozen=True)
class LocalDir:
    """A directory of a local node: ``base`` relative to the node's ``root`` (``""``: the root)."""

    root: Path
    base: str = ""

    @property
    def top(self) -> str:
        """The directory's absolute path (the node root's own symlinks resolved)."""
        return (
            os.path.join(os.path.realpath(self.root), self.base)
            if self.base
            else str(os.path.realpath(self.root))
        )

    def _path(self, rel: str) -> str:
        return "/".join(p for p in (self.base, _rel(rel)) if p)

    def exists(self) -> bool:
        """Whether the directory itself is there (and is a directory, reached without links)."""

        def probe() -> bool:
            try:
                fd, _ = open_beneath(str(self.root), self.base, leaf=False)
            except PathRefused:
                return False
            os.close(fd)
            return True

        return bounded(probe)

    def list(self, rel: str, recursive: bool, url: str, *, prefix: str = "") -> list[BatchNodeFile]:
        """Entries under ``rel`` (names relative to it, with ``prefix`` in front)."""
        path = self._path(rel)
        skip = (".agent",) if not path else ()
        deadline = time.monotonic() + FILE_OP_SECONDS

        def scan() -> list[Any]:
            return scan_beneath(str(self.root), path, recursive, skip, deadline=deadline)

        try:
            found = bounded(scan)
        except PathRefused as exc:
            raise _refused(exc, rel or ".") from None
        return [file_model(prefix + n, f"{url}/{prefix}{n}", st, k) for n, st, k in found]

    def _open_file(self, rel: str) -> tuple[int, os.stat_result]:
        """An opened regular file or directory at ``rel``, its hard links checked."""
        fd, st = open_beneath(str(self.root), self._path(rel))
        try:
            check_links(self.top, rel, st, deadline=time.monotonic() + FILE_OP_SECONDS)
        except BaseException:
            os.close(fd)
            raise
        return fd, st

    def properties(self, rel: str, url: str) -> BatchNodeFile:
        """Size, times and mode of one file or directory."""

        def look() -> os.stat_result:
            fd, st = self._open_file(rel)
            os.close(fd)
            return st

        try:
            st = bounded(look)
        except PathRefused as exc:
            raise _refused(exc, rel) from None
        return file_model(rel, url, st, "dir" if stat.S_ISDIR(st.st_mode) else "file")

    def read(self, rel: str, offset: int, length: int | None) -> bytes:
        """Bytes of a regular file from ``offset`` (all of it, or ``length``)."""
        if offset < 0 or (length is not None and length < 0):
            raise BatchConflictError("InvalidRange", "The byte range is invalid", status_code=416)

        def pread() -> bytes:
            fd, st = self._open_file(rel)
            try:
                if stat.S_ISDIR(st.st_mode):
                    raise PathRefused("OperationInvalid", "is a directory")
                want = st.st_size - offset if length is None else length
                return os.pread(fd, max(want, 0), offset)
            finally:
                os.close(fd)

        try:
            return bounded(pread)
        except PathRefused as exc:
            raise _refused(exc, rel) from None

    def delete(self, rel: str, recursive: bool) -> None:
        """Delete a file or link (never a link's target), or with ``recursive`` a directory."""
        path = self._path(rel)
        if path == self.base:
            raise invalid_property("filePath", rel, "cannot delete the root directory")
        parent, _, name = path.rpartition("/")

        def remove() -> None:
            fd, _ = open_beneath(str(self.root), parent, leaf=False)
            try:
                try:
                    st = os.lstat(name, dir_fd=fd)
                except OSError:
                    raise PathRefused("FileNotFound", rel) from None
                if stat.S_ISDIR(st.st_mode) and not recursive:
                    raise BatchConflictError(
                        "OperationInvalidForCurrentState",
                        f"{rel} is a directory; delete it with recursive=True",
                        {"FilePath": rel},
                    )
                if stat.S_ISDIR(st.st_mode):
                    remove_beneath(fd, name)
                else:
                    os.unlink(name, dir_fd=fd)
            finally:
                os.close(fd)

        try:
            bounded(remove)
        except PathRefused as exc:
            raise _refused(exc, rel) from None
