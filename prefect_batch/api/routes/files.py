"""Task and node file paths: list, download (with byte ranges), properties (HEAD), delete.

A download streams the file in 1 MiB reads, up to the size it had when the request arrived (a
task's ``stdout.txt`` may still grow), so a large file never sits in the server's memory. Ranges
come as Azure's ``ocp-range: bytes=start-end`` (answered 200, as the SDK expects) or the standard
``Range`` header (answered 206 with ``Content-Range``). Both downloads and HEAD carry Azure's file
headers: ``ocp-creation-time``, ``ocp-batch-file-isdirectory``, ``ocp-batch-file-url``,
``ocp-batch-file-mode``, ``Last-Modified``, ``Content-Length``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Header, Query, Request
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.responses import Response, StreamingResponse

from prefect_batch.api.context import list_response, ok
from prefect_batch.api.errors import condition_not_met, invalid_header
from prefect_batch.api.routes._spec import (
    FilePath,
    JobId,
    NodeId,
    Opts,
    PoolId,
    Svc,
    TaskId,
    filtered_page,
    spec,
)
from prefect_batch.exceptions import BatchServiceError
from prefect_batch.models import BatchNodeFile

__all__ = ["router"]

router = APIRouter(tags=["files"])


class _FilePathConvertor(PathConvertor):
    """Starlette's ``path``, newlines included: a task may name a file ``"a\\nb"``."""

    regex = "[\\s\\S]*"


register_url_convertor("filepath", _FilePathConvertor())

CHUNK_BYTES = 1024 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")

Recursive = Annotated[
    bool, Query(description="List the whole tree below the directory, not only its entries.")
]
OcpRange = Annotated[
    str | None,
    Header(alias="ocp-range", description="Byte range `bytes=start-end` (answered with 200)."),
]
HttpRange = Annotated[
    str | None, Header(alias="range", description="Standard byte range (answered with 206).")
]
ReadFn = Callable[[int, int], bytes]


def _range(value: str, name: str, size: int) -> tuple[int, int]:
    """``bytes=a-b`` / ``bytes=a-`` / ``bytes=-n`` -> (offset, length) within ``size``."""
    m = _RANGE.match(value)
    if m is None or (not m.group(1) and not m.group(2)):
        raise invalid_header(name, value, "expected bytes=start-end")
    first, last = m.group(1), m.group(2)
    if not first:  # the last n bytes
        n = min(int(last), size)
        return size - n, n
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        raise invalid_header(name, value, "the range ends before it starts")
    if start >= size and size > 0:
        raise BatchServiceError(
            "InvalidRange",
            "The range specified is invalid for the current size of the resource.",
            {"FileSize": size},
            status_code=416,
        )
    return start, max(end - start + 1, 0)


def _headers(entry: BatchNodeFile) -> dict[str, str]:
    props = entry.properties
    out = {
        "ocp-batch-file-isdirectory": "true" if entry.is_directory else "false",
        "ocp-batch-file-url": quote(entry.url or "", safe=":/"),
    }
    if props is not None:
        if props.creation_time is not None:
            out["ocp-creation-time"] = format_datetime(props.creation_time, usegmt=True)
        if props.last_modified is not None:
            out["Last-Modified"] = format_datetime(props.last_modified, usegmt=True)
        if props.file_mode:
            out["ocp-batch-file-mode"] = props.file_mode
    return out


def _check_modified(request: Request, entry: BatchNodeFile) -> None:
    modified = entry.properties.last_modified if entry.properties else None
    for name, read in (("if-modified-since", True), ("if-unmodified-since", False)):
        value = request.headers.get(name)
        if not value or modified is None:
            continue
        try:
            since = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError) as exc:
            raise invalid_header(name, value, "not an RFC 1123 date") from exc
        changed = int(modified.timestamp()) > since
        if read and not changed:
            raise condition_not_met(read=True)
        if not read and changed:
            raise condition_not_met(read=False)


def _download(
    request: Request,
    entry: BatchNodeFile,
    read: ReadFn,
    ocp_range: str | None,
    http_range: str | None,
) -> Response:
    _check_modified(request, entry)
    size = entry.properties.content_length if entry.properties else 0
    size = int(size or 0)
    headers = _headers(entry)
    status = 200
    offset, length = 0, size
    if ocp_range:
        offset, length = _range(ocp_range, "ocp-range", size)
    elif http_range:
        offset, length = _range(http_range, "range", size)
        status = 206
        headers["Content-Range"] = f"bytes {offset}-{offset + max(length - 1, 0)}/{size}"
    # The first read happens now, so a missing file or a directory is an error answer, not a
    # broken stream.
    first = read(offset, min(length, CHUNK_BYTES))
    if length <= CHUNK_BYTES:
        return Response(
            first, status_code=status, headers=headers, media_type="application/octet-stream"
        )
    headers["Content-Length"] = str(length)

    def chunks() -> Iterator[bytes]:
        yield first
        done = len(first)
        while done < length:
            part = read(offset + done, min(CHUNK_BYTES, length - done))
            if not part:  # the file shrank meanwhile: the answer ends short
                return
            yield part
            done += len(part)

    return StreamingResponse(
        chunks(), status_code=status, headers=headers, media_type="application/octet-stream"
    )


def _properties(request: Request, entry: BatchNodeFile) -> Response:
    _check_modified(request, entry)
    headers = _headers(entry)
    size = entry.properties.content_length if entry.properties else 0
    headers["Content-Length"] = str(int(size or 0))
    return Response(status_code=200, headers=headers, media_type="application/octet-stream")


def _by_name(item: dict[str, object]) -> tuple[str]:
    return (str(item.get("name") or ""),)


# -- task files -------------------------------------------------------------------------------


@router.get(
    "/jobs/{jobId}/tasks/{taskId}/files",
    **spec("list_task_files", "List a task's files", returns=list[BatchNodeFile]),
)
def list_task_files(
    job_id: JobId,
    task_id: TaskId,
    request: Request,
    svc: Svc,
    opts: Opts,
    recursive: Recursive = False,
) -> Response:
    files = svc.list_task_files(job_id, task_id, recursive=recursive)
    items, marker = filtered_page(files, opts, _by_name)
    return list_response(items, opts.select, request, "files", marker)


@router.get(
    "/jobs/{jobId}/tasks/{taskId}/files/{filePath:filepath}",
    **spec(
        "download_task_file",
        "Download a task file (or a byte range of it)",
        method="get_task_file",
    ),
)
def download_task_file(
    job_id: JobId,
    task_id: TaskId,
    file_path: FilePath,
    request: Request,
    svc: Svc,
    ocp_range: OcpRange = None,
    http_range: HttpRange = None,
) -> Response:
    entry = svc.get_task_file_properties(job_id, task_id, file_path)
    return _download(
        request,
        entry,
        lambda off, n: svc.get_task_file(job_id, task_id, file_path, offset=off, length=n),
        ocp_range,
        http_range,
    )


@router.head(
    "/jobs/{jobId}/tasks/{taskId}/files/{filePath:filepath}",
    **spec("get_task_file_properties", "A task file's properties, as headers"),
)
def get_task_file_properties(
    job_id: JobId, task_id: TaskId, file_path: FilePath, request: Request, svc: Svc
) -> Response:
    return _properties(request, svc.get_task_file_properties(job_id, task_id, file_path))


@router.delete(
    "/jobs/{jobId}/tasks/{taskId}/files/{filePath:filepath}",
    **spec("delete_task_file", "Delete a task file (or directory, with recursive)"),
)
def delete_task_file(
    job_id: JobId, task_id: TaskId, file_path: FilePath, svc: Svc, recursive: Recursive = False
) -> Response:
    svc.delete_task_file(job_id, task_id, file_path, recursive=recursive)
    return ok()


# -- node files -------------------------------------------------------------------------------


@router.get(
    "/pools/{poolId}/nodes/{nodeId}/files",
    **spec("list_node_files", "List files under a node's root", returns=list[BatchNodeFile]),
)
def list_node_files(
    pool_id: PoolId,
    node_id: NodeId,
    request: Request,
    svc: Svc,
    opts: Opts,
    recursive: Recursive = False,
) -> Response:
    files = svc.list_node_files(pool_id, node_id, recursive=recursive)
    items, marker = filtered_page(files, opts, _by_name)
    return list_response(items, opts.select, request, "files", marker)


@router.get(
    "/pools/{poolId}/nodes/{nodeId}/files/{filePath:filepath}",
    **spec(
        "download_node_file",
        "Download a node file (or a byte range of it)",
        method="get_node_file",
    ),
)
def download_node_file(
    pool_id: PoolId,
    node_id: NodeId,
    file_path: FilePath,
    request: Request,
    svc: Svc,
    ocp_range: OcpRange = None,
    http_range: HttpRange = None,
) -> Response:
    entry = svc.get_node_file_properties(pool_id, node_id, file_path)
    return _download(
        request,
        entry,
        lambda off, n: svc.get_node_file(pool_id, node_id, file_path, offset=off, length=n),
        ocp_range,
        http_range,
    )


@router.head(
    "/pools/{poolId}/nodes/{nodeId}/files/{filePath:filepath}",
    **spec("get_node_file_properties", "A node file's properties, as headers"),
)
def get_node_file_properties(
    pool_id: PoolId, node_id: NodeId, file_path: FilePath, request: Request, svc: Svc
) -> Response:
    return _properties(request, svc.get_node_file_properties(pool_id, node_id, file_path))


@router.delete(
    "/pools/{poolId}/nodes/{nodeId}/files/{filePath:filepath}",
    **spec("delete_node_file", "Delete a node file (or directory, with recursive)"),
)
def delete_node_file(
    pool_id: PoolId, node_id: NodeId, file_path: FilePath, svc: Svc, recursive: Recursive = False
) -> Response:
    svc.delete_node_file(pool_id, node_id, file_path, recursive=recursive)
    return ok()
