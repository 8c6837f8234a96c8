"""``prefect-batch task ...``: add, add-many, list, show, terminate, reactivate, delete.

Adding a task queues it; it runs when an engine holds the job's pool (``engine run``,
``job wait``). A task's command line runs without a shell, split as ``sh`` would split it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_batch.cli._common import (
    JsonOption,
    batch_client,
    list_table,
    parse_pairs,
    print_json,
    print_resources,
    read_json_records,
    resource_table,
    stdout_console,
)
from prefect_batch.cli._common import parse_duration as parse_duration_option
from prefect_batch.core.states import TaskState
from prefect_batch.models import BatchTask

__all__ = ["app"]

app = typer.Typer(help="Tasks: command lines that run on a pool's nodes.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(metavar="JOB", help="The job id.", show_default=False)]
TaskId = Annotated[str, typer.Argument(metavar="TASK", help="The task id.", show_default=False)]
TASK_COLUMNS = ["ID", "State", "Result", "Exit code", "Retries", "Requeues", "Node", "Command"]
_COMMAND_WIDTH = 60


def task_row(task: BatchTask) -> list[Any]:
    """The columns of ``task list``."""
    info = task.execution_info
    command = task.command_line or ""
    if len(command) > _COMMAND_WIDTH:
        command = command[: _COMMAND_WIDTH - 3] + "..."
    return [
        task.id,
        task.state,
        info.result if info else None,
        info.exit_code if info else None,
        info.retry_count if info else None,
        info.requeue_count if info else None,
        task.node_info.node_id if task.node_info else None,
        command,
    ]


def _show(task: BatchTask, json_out: bool) -> None:
    if json_out:
        print_json(task.to_wire())
    else:
        stdout_console().print(resource_table(f"Task {task.id}", task.to_wire()))


@app.command("add")
def add_task(
    ctx: typer.Context,
    job_id: JobId,
    task_id: TaskId,
    command_line: Annotated[
        str,
        typer.Argument(
            metavar="COMMAND_LINE",
            help="The command line (one argument: quote it).",
            show_default=False,
        ),
    ],
    env: Annotated[
        list[str] | None, typer.Option("--env", help="NAME=VALUE; repeat for more.")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", min=-1, help="Retries; -1 = unlimited.")
    ] = None,
    max_wall_clock: Annotated[
        str | None,
        typer.Option("--max-wall-clock", help="Run-time limit: seconds or ISO-8601 (PT10M)."),
    ] = None,
    slots: Annotated[
        int | None, typer.Option("--slots", min=1, help="Scheduling slots the task takes.")
    ] = None,
    depends_on: Annotated[
        list[str] | None,
        typer.Option("--depends-on", help="A task id this task waits for; repeat for more."),
    ] = None,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    json_out: JsonOption = False,
) -> None:
    """Add one task to a job."""
    body: dict[str, Any] = {"id": task_id, "commandLine": command_line}
    if env:
        body["environmentSettings"] = [
            {"name": k, "value": v} for k, v in parse_pairs(env, "--env")
        ]
    constraints: dict[str, Any] = {}
    if retries is not None:
        constraints["maxTaskRetryCount"] = retries
    wall = parse_duration_option(max_wall_clock, "--max-wall-clock")
    if wall is not None:
        constraints["maxWallClockTime"] = wall
    if constraints:
        body["constraints"] = constraints
    if slots is not None:
        body["requiredSlots"] = slots
    if depends_on:
        body["dependsOn"] = {"taskIds": list(depends_on)}
    if display_name is not None:
        body["displayName"] = display_name
    with batch_client(ctx) as client:
        client.create_task(job_id, body)
        task = client.get_task(job_id, task_id)
    if json_out:
        print_json(task.to_wire())
    else:
        console = stdout_console()
        console.print(f"Added task [bold]{task.id}[/bold] to job {job_id}.", highlight=False)
        console.print(list_table("", TASK_COLUMNS, [task_row(task)]))


@app.command("add-many")
def add_tasks(
    ctx: typer.Context,
    job_id: JobId,
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help='Task bodies (wire JSON): a JSON list, {"value": [...]}, or JSON lines.',
        ),
    ],
    json_out: JsonOption = False,
) -> None:
    """Add many tasks; report each one that was rejected and count the rest.

    Exit code: 0 when every task was added, 1 when any was rejected.
    """
    specs = read_json_records(file)
    with batch_client(ctx) as client:
        result = client.create_tasks(job_id, specs)
    values = result.result_values or []
    failures = [r for r in values if r.error is not None or r.status.value != "success"]
    if json_out:
        print_json(result.to_wire())
    else:
        console = stdout_console()
        if failures:
            rows = []
            for r in failures:
                err = r.error
                if err is None:
                    rows.append([r.task_id, r.status, "", ""])
                    continue
                details = ", ".join(f"{d.key}={d.value}" for d in err.error_values or [])
                rows.append(
                    [r.task_id, err.code, err.message.value if err.message else "", details]
                )
            console.print(list_table("Rejected tasks", ["Task", "Code", "Message", "Values"], rows))
        console.print(
            f"Added {len(values) - len(failures)} of {len(values)} tasks to job {job_id}"
            + (f"; {len(failures)} rejected." if failures else "."),
            highlight=False,
        )
    if failures:
        raise typer.Exit(1)


@app.command("list")
def list_tasks(
    ctx: typer.Context,
    job_id: JobId,
    state: Annotated[
        TaskState | None, typer.Option("--state", help="Only tasks in this state.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """List the tasks of a job."""
    with batch_client(ctx) as client:
        tasks = client.list_tasks(job_id, state=state.value if state else None)
    print_resources(tasks, f"Tasks of job {job_id}", TASK_COLUMNS, task_row, json_out)


@app.command("show")
def show_task(
    ctx: typer.Context, job_id: JobId, task_id: TaskId, json_out: JsonOption = False
) -> None:
    """Show one task: state, exit code, retries, the node it ran on."""
    with batch_client(ctx) as client:
        task = client.get_task(job_id, task_id)
    _show(task, json_out)


@app.command("terminate")
def terminate_task(
    ctx: typer.Context, job_id: JobId, task_id: TaskId, json_out: JsonOption = False
) -> None:
    """End a task: a queued one completes at once (failed), a running one is killed."""
    with batch_client(ctx) as client:
        client.terminate_task(job_id, task_id)
        task = client.get_task(job_id, task_id)
    _show(task, json_out)


@app.command("reactivate")
def reactivate_task(
    ctx: typer.Context, job_id: JobId, task_id: TaskId, json_out: JsonOption = False
) -> None:
    """Queue a failed task again, with its retry count reset."""
    with batch_client(ctx) as client:
        client.reactivate_task(job_id, task_id)
        task = client.get_task(job_id, task_id)
    _show(task, json_out)


@app.command("delete")
def delete_task(
    ctx: typer.Context, job_id: JobId, task_id: TaskId, json_out: JsonOption = False
) -> None:
    """Delete a task and its files (--json prints {"id": ..., "deleted": true})."""
    with batch_client(ctx) as client:
        client.delete_task(job_id, task_id)
    if json_out:
        print_json({"id": task_id, "deleted": True})
    else:
        stdout_console().print(
            f"Deleted task [bold]{task_id}[/bold] of job {job_id}.", highlight=False
        )
