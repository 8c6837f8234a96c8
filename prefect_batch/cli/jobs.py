"""``prefect-batch job ...``: create, list, show, update, disable, enable, terminate, delete,
counts, prep-status, wait.

Only ``job wait`` runs an engine (so the job's tasks progress while it waits); the others
change or read the database and return at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_batch.cli._common import (
    AutoPoolOptions,
    JsonOption,
    batch_client,
    fail,
    list_table,
    pool_info_option,
    print_json,
    print_resources,
    read_body,
    resource_table,
    stderr_console,
    stdout_console,
)
from prefect_batch.cli._common import parse_duration as parse_duration_option
from prefect_batch.cli.progress import follow_job
from prefect_batch.core.states import DisableJobOption, OnAllTasksComplete
from prefect_batch.exceptions import BatchNotFoundError
from prefect_batch.models import BatchJob, BatchTaskCountsResult

__all__ = ["app"]

app = typer.Typer(help="Jobs: collections of tasks that run on a pool.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(metavar="JOB", help="The job id.", show_default=False)]
JOB_COLUMNS = ["ID", "State", "Pool", "Priority", "Max parallel", "On all complete", "Created"]


def job_row(job: BatchJob) -> list[Any]:
    """The columns of ``job list``."""
    return [
        job.id,
        job.state,
        job_pool_id(job),
        job.priority,
        job.max_parallel_tasks,
        job.all_tasks_complete_mode,
        job.creation_time,
    ]


def job_pool_id(job: BatchJob) -> str | None:
    """The pool a job runs on: the one it names, or its auto pool."""
    if job.execution_info is not None and job.execution_info.pool_id:
        return job.execution_info.pool_id
    return job.pool_info.pool_id if job.pool_info else None


def counts_table(job_id: str, counts: BatchTaskCountsResult) -> Any:
    """Tasks and slots per state."""
    columns = ["", "Active", "Running", "Completed", "Succeeded", "Failed"]
    rows = []
    for name, c in (("tasks", counts.task_counts), ("slots", counts.task_slot_counts)):
        rows.append([name, c.active, c.running, c.completed, c.succeeded, c.failed])
    return list_table(f"Task counts of job {job_id}", columns, rows)


def _show(job: BatchJob, json_out: bool) -> None:
    if json_out:
        print_json(job.to_wire())
    else:
        stdout_console().print(resource_table(f"Job {job.id}", job.to_wire()))


@app.command("create")
def create_job(
    ctx: typer.Context,
    job_id: Annotated[
        str | None,
        typer.Argument(
            metavar="JOB", help="The job id (overrides the id in --file).", show_default=False
        ),
    ] = None,
    pool: Annotated[str | None, typer.Option("--pool", help="The pool the tasks run on.")] = None,
    auto_pool: Annotated[
        int | None,
        typer.Option(
            "--auto-pool",
            min=0,
            help="Instead of --pool: a pool of this many local nodes made for the job, "
            "deleted when the job completes or is deleted.",
        ),
    ] = None,
    auto_pool_prefix: Annotated[
        str | None, typer.Option("--auto-pool-prefix", help="The auto pool's id prefix.")
    ] = None,
    auto_pool_slots: Annotated[
        int | None, typer.Option("--auto-pool-slots", min=1, help="Task slots per node.")
    ] = None,
    keep_alive: Annotated[
        bool, typer.Option("--keep-alive", help="Keep the auto pool after the job.")
    ] = False,
    priority: Annotated[
        int | None, typer.Option("--priority", min=-1000, max=1000, help="-1000 to 1000.")
    ] = None,
    max_wall_clock: Annotated[
        str | None,
        typer.Option("--max-wall-clock", help="Job run-time limit: seconds or ISO-8601 (PT2H)."),
    ] = None,
    max_task_retries: Annotated[
        int | None,
        typer.Option("--max-task-retries", min=-1, help="Retries per task; -1 = unlimited."),
    ] = None,
    max_parallel_tasks: Annotated[
        int | None, typer.Option("--max-parallel-tasks", help="-1 (no limit) or > 0.")
    ] = None,
    on_all_tasks_complete: Annotated[
        OnAllTasksComplete | None,
        typer.Option("--on-all-tasks-complete", help="What happens when all tasks complete."),
    ] = None,
    uses_task_dependencies: Annotated[
        bool,
        typer.Option("--uses-task-dependencies", help="Allow tasks to depend on other tasks."),
    ] = False,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="A job body in Azure's wire JSON; options given on the line override it.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a job on a pool (from options, or from Azure wire JSON with --file)."""
    body = read_body(file, job_id, "job")
    pool_info = pool_info_option(
        pool, AutoPoolOptions(auto_pool, auto_pool_prefix, keep_alive, slots=auto_pool_slots)
    )
    if pool_info is not None:
        body["poolInfo"] = pool_info
    if "poolInfo" not in body:
        raise typer.BadParameter(
            "give --pool, --auto-pool, or --file with poolInfo", param_hint="--pool"
        )
    if priority is not None:
        body["priority"] = priority
    constraints = dict(body.get("constraints") or {})
    wall = parse_duration_option(max_wall_clock, "--max-wall-clock")
    if wall is not None:
        constraints["maxWallClockTime"] = wall
    if max_task_retries is not None:
        constraints["maxTaskRetryCount"] = max_task_retries
    if constraints:
        body["constraints"] = constraints
    if max_parallel_tasks is not None:
        body["maxParallelTasks"] = max_parallel_tasks
    if on_all_tasks_complete is not None:
        body["onAllTasksComplete"] = on_all_tasks_complete.value
    if uses_task_dependencies:
        body["usesTaskDependencies"] = True
    if display_name is not None:
        body["displayName"] = display_name
    with batch_client(ctx) as client:
        client.create_job(body)
        job = client.get_job(body["id"])
    if json_out:
        print_json(job.to_wire())
    else:
        console = stdout_console()
        console.print(f"Created job [bold]{job.id}[/bold].", highlight=False)
        console.print(list_table("", JOB_COLUMNS, [job_row(job)]))


@app.command("list")
def list_jobs(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the jobs of the account."""
    with batch_client(ctx) as client:
        jobs = client.list_jobs()
    print_resources(jobs, "Jobs", JOB_COLUMNS, job_row, json_out)


@app.command("show")
def show_job(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Show one job (and, without --json, its task counts)."""
    with batch_client(ctx) as client:
        job = client.get_job(job_id)
        counts = None if json_out else client.get_job_task_counts(job_id)
    _show(job, json_out)
    if counts is not None:
        stdout_console().print(counts_table(job.id, counts))


@app.command("update")
def update_job(
    ctx: typer.Context,
    job_id: JobId,
    priority: Annotated[
        int | None, typer.Option("--priority", min=-1000, max=1000, help="-1000 to 1000.")
    ] = None,
    max_parallel_tasks: Annotated[
        int | None, typer.Option("--max-parallel-tasks", help="-1 (no limit) or > 0.")
    ] = None,
    on_all_tasks_complete: Annotated[
        OnAllTasksComplete | None,
        typer.Option("--on-all-tasks-complete", help="What happens when all tasks complete."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Change a job's priority, parallelism or completion action (others stay)."""
    patch: dict[str, Any] = {}
    if priority is not None:
        patch["priority"] = priority
    if max_parallel_tasks is not None:
        patch["maxParallelTasks"] = max_parallel_tasks
    if on_all_tasks_complete is not None:
        patch["onAllTasksComplete"] = on_all_tasks_complete.value
    if not patch:
        raise typer.BadParameter(
            "give at least one of --priority, --max-parallel-tasks, --on-all-tasks-complete"
        )
    with batch_client(ctx) as client:
        client.update_job(job_id, patch)
        job = client.get_job(job_id)
    _show(job, json_out)


@app.command("disable")
def disable_job(
    ctx: typer.Context,
    job_id: JobId,
    tasks: Annotated[
        DisableJobOption,
        typer.Option("--tasks", help="What happens to running tasks: requeue, terminate, wait."),
    ] = DisableJobOption.REQUEUE,
    json_out: JsonOption = False,
) -> None:
    """Disable a job: no new task starts."""
    with batch_client(ctx) as client:
        client.disable_job(job_id, tasks.value)
        job = client.get_job(job_id)
    _show(job, json_out)


@app.command("enable")
def enable_job(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Enable a disabled job: its queued tasks are scheduled again."""
    with batch_client(ctx) as client:
        client.enable_job(job_id)
        job = client.get_job(job_id)
    _show(job, json_out)


@app.command("terminate")
def terminate_job(
    ctx: typer.Context,
    job_id: JobId,
    reason: Annotated[
        str | None, typer.Option("--reason", help="Recorded as terminateReason.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Terminate a job: running tasks are ended, queued ones never run."""
    with batch_client(ctx) as client:
        client.terminate_job(job_id, {"terminateReason": reason} if reason else None)
        job = client.get_job(job_id)
    _show(job, json_out)


@app.command("delete")
def delete_job(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Delete a job, its tasks and their files (--json prints {"id": ..., "deleted": true})."""
    with batch_client(ctx) as client:
        client.delete_job(job_id)
    if json_out:
        print_json({"id": job_id, "deleted": True})
    else:
        stdout_console().print(f"Deleted job [bold]{job_id}[/bold].", highlight=False)


@app.command("counts")
def job_counts(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Count a job's tasks (and their slots) by state."""
    with batch_client(ctx) as client:
        counts = client.get_job_task_counts(job_id)
    if json_out:
        print_json(counts.to_wire())
    else:
        stdout_console().print(counts_table(job_id, counts))


PREP_COLUMNS = [
    "Node",
    "Pool",
    "Prep state",
    "Prep result",
    "Prep exit",
    "Prep retries",
    "Release state",
    "Release result",
    "Release exit",
]


@app.command("prep-status")
def prep_status(ctx: typer.Context, job_id: JobId, json_out: JsonOption = False) -> None:
    """Job preparation and release task status on each node that ran them."""
    with batch_client(ctx) as client:
        found = client.list_job_preparation_and_release_task_status(job_id)
    if json_out:
        print_json([s.to_wire() for s in found])
        return
    rows = []
    for s in found:
        prep = s.job_preparation_task_execution_info
        release = s.job_release_task_execution_info
        rows.append(
            [
                s.node_id,
                s.pool_id,
                prep.state if prep else None,
                prep.result if prep else None,
                prep.exit_code if prep else None,
                prep.retry_count if prep else None,
                release.state if release else None,
                release.result if release else None,
                release.exit_code if release else None,
            ]
        )
    stdout_console().print(
        list_table(f"Preparation and release tasks of job {job_id}", PREP_COLUMNS, rows)
    )


@app.command("wait")
def wait_job(
    ctx: typer.Context,
    job_id: JobId,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Give up after this many seconds.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run the engine here and follow the job until all its tasks are complete.

    A progress bar (on stderr) shows completed/total tasks with succeeded, failed and running
    columns; then the task counts are printed.

    Exit code: 0 when every task succeeded (or the job has none); 1 when a task failed, the wait
    timed out, or the job does not exist.
    """
    with batch_client(ctx, engine=True) as client:
        job = client.get_job(job_id)
        err = stderr_console()
        pool_id = job_pool_id(job)
        if pool_id:
            try:
                pool = client.get_pool(pool_id)
            except BatchNotFoundError:
                err.print(
                    f"Warning: pool {pool_id} does not exist; tasks cannot run.", highlight=False
                )
            else:
                if not pool.target_dedicated_nodes:
                    err.print(f"Warning: pool {pool_id} has no nodes; resize it.", highlight=False)
        try:
            counts = follow_job(client, job.id, console=err, timeout=timeout)
        except TimeoutError as exc:
            fail(exc, "Timeout")
    if json_out:
        print_json(counts.to_wire())
    else:
        stdout_console().print(counts_table(job.id, counts))
    raise typer.Exit(1 if counts.task_counts.failed else 0)
