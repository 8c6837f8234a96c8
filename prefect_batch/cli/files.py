"""``prefect-batch file ...``: list, get and tail the files of a task or of a node.

A file is named either by ``--job J --task T`` (a path inside the task's directory on the node
that ran it: ``stdout.txt``, ``stderr.txt``, ``wd/...``) or by ``--pool P --node N`` (a path
under the node's root directory). ``file get`` writes the raw bytes; it has no ``--json``
because those bytes are already the machine-readable answer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from prefect_batch.cli._common import (
    JsonOption,
    batch_client,
    list_table,
    print_json,
    stderr_console,
    stdout_console,
)
from prefect_batch.client import BatchClient
from prefect_batch.models import BatchNodeFile

__all__ = ["app"]

app = typer.Typer(help="Files of tasks and nodes.", no_args_is_help=True)

JobOpt = Annotated[str | None, typer.Option("--job", help="The job of the task.")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="The task whose files to use.")]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="The pool of the node.")]
NodeOpt = Annotated[str | None, typer.Option("--node", help="The node whose files to use.")]
TAIL_WINDOW_BYTES = 64 * 1024


@dataclass(frozen=True)
class FileOwner:
    """A task (``job``, ``task``) or a node (``pool``, ``node``)."""

    kind: str
    parent: str
    child: str

    def label(self) -> str:
        """For titles: ``task J/T`` or ``node P/N``."""
        return f"{self.kind} {self.parent}/{self.child}"

    def list(self, client: BatchClient, recursive: bool) -> list[BatchNodeFile]:
        """The files of the owner."""
        if self.kind == "task":
            return client.list_task_files(self.parent, self.child, recursive=recursive)
        return client.list_node_files(self.parent, self.child, recursive=recursive)

    def read(
        self, client: BatchClient, path: str, offset: int = 0, length: int | None = None
    ) -> bytes:
        """Bytes of one file."""
        if self.kind == "task":
            return client.get_task_file(self.parent, self.child, path, offset=offset, length=length)
        return client.get_node_file(self.parent, self.child, path, offset=offset, length=length)

    def size(self, client: BatchClient, path: str) -> int:
        """Length of one file in bytes."""
        if self.kind == "task":
            props = client.get_task_file_properties(self.parent, self.child, path)
        else:
            props = client.get_node_file_properties(self.parent, self.child, path)
        return (props.properties.content_length or 0) if props.properties else 0


def _owner(job: str | None, task: str | None, pool: str | None, node: str | None) -> FileOwner:
    if job is not None and task is not None and pool is None and node is None:
        return FileOwner("task", job, task)
    if pool is not None and node is not None and job is None and task is None:
        return FileOwner("node", pool, node)
    raise typer.BadParameter("give either --job and --task, or --pool and --node")


@app.command("list")
def list_files(
    ctx: typer.Context,
    job: JobOpt = None,
    task: TaskOpt = None,
    pool: PoolOpt = None,
    node: NodeOpt = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="Include files in subdirectories.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """List the files of a task (--job --task) or a node (--pool --node)."""
    owner = _owner(job, task, pool, node)
    with batch_client(ctx) as client:
        files = owner.list(client, recursive)
    if json_out:
        print_json([f.to_wire() for f in files])
        return
    rows = []
    for f in files:
        props = f.properties
        rows.append(
            [
                (f.name or "") + ("/" if f.is_directory else ""),
                None if f.is_directory or props is None else props.content_length,
                props.last_modified if props else None,
                props.file_mode if props else None,
            ]
        )
    stdout_console().print(
        list_table(f"Files of {owner.label()}", ["Name", "Bytes", "Modified", "Mode"], rows)
    )


@app.command("get")
def get_file(
    ctx: typer.Context,
    path: Annotated[
        str,
        typer.Argument(
            metavar="PATH", help="The file, e.g. stdout.txt or wd/out.csv.", show_default=False
        ),
    ],
    job: JobOpt = None,
    task: TaskOpt = None,
    pool: PoolOpt = None,
    node: NodeOpt = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", dir_okay=False, help="Write here instead of stdout."),
    ] = None,
) -> None:
    """Write a file's raw bytes to stdout (or to --output)."""
    owner = _owner(job, task, pool, node)
    with batch_client(ctx) as client:
        data = owner.read(client, path)
    if output is None:
        stream = sys.stdout.buffer
        stream.write(data)
        stream.flush()
        return
    output.write_bytes(data)
    stderr_console().print(f"Wrote {len(data)} bytes to {output}", highlight=False, markup=False)


@app.command("tail")
def tail_file(
    ctx: typer.Context,
    path: Annotated[str, typer.Argument(metavar="PATH", help="The file.")] = "stdout.txt",
    job: JobOpt = None,
    task: TaskOpt = None,
    pool: PoolOpt = None,
    node: NodeOpt = None,
    lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines.")] = 10,
) -> None:
    """Print the last lines of a file (default: a task's stdout.txt)."""
    owner = _owner(job, task, pool, node)
    with batch_client(ctx) as client:
        size = owner.size(client, path)
        offset = max(0, size - TAIL_WINDOW_BYTES)
        data = owner.read(client, path, offset=offset)
    text_lines = data.splitlines(keepends=True)
    if offset and text_lines:
        text_lines = text_lines[1:]  # the first line of the window may be cut
    stream = sys.stdout.buffer
    stream.write(b"".join(text_lines[-lines:]))
    stream.flush()
