"""``prefect-batch schedule ...``: create, list, show, jobs, disable, enable, terminate, delete.

A job schedule creates a job ``<SCHEDULE>:job-<n>`` from its job specification at each run; an
engine does that (``engine run``, ``job wait``, a server, or any client with an engine on the
same store), not these commands, which change or read the database and return.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_batch.cli._common import (
    AutoPoolOptions,
    JsonOption,
    batch_client,
    list_table,
    pool_info_option,
    print_json,
    print_resources,
    read_body,
    resource_table,
    stdout_console,
)
from prefect_batch.cli._common import parse_duration as parse_duration_option
from prefect_batch.cli.jobs import JOB_COLUMNS, job_row
from prefect_batch.core.states import PoolLifetimeOption
from prefect_batch.models import BatchJobSchedule

__all__ = ["app"]

app = typer.Typer(
    help="Job schedules: a job created from a specification at each run.", no_args_is_help=True
)

ScheduleId = Annotated[
    str, typer.Argument(metavar="SCHEDULE", help="The job schedule id.", show_default=False)
]
SCHEDULE_COLUMNS = ["ID", "State", "Pool", "Every", "Next run", "Recent job", "Created"]


def schedule_row(schedule: BatchJobSchedule) -> list[Any]:
    """The columns of ``schedule list``."""
    spec = schedule.job_specification
    info = schedule.execution_info
    return [
        schedule.id,
        schedule.state,
        spec.pool_info.pool_id if spec else None,
        schedule.schedule.recurrence_interval if schedule.schedule else None,
        info.next_run_time if info else None,
        info.recent_job.id if info and info.recent_job else None,
        schedule.creation_time,
    ]


def _show(schedule: BatchJobSchedule, json_out: bool) -> None:
    if json_out:
        print_json(schedule.to_wire())
    else:
        stdout_console().print(resource_table(f"Job schedule {schedule.id}", schedule.to_wire()))


def _time(value: str | None, option: str) -> str | None:
    """An ISO-8601 date and time (UTC unless it says otherwise), as Azure's wire form."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"expected an ISO-8601 time like 2025-06-01T12:00:00Z, got {value!r}",
            param_hint=option,
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


@app.command("create")
def create_schedule(
    ctx: typer.Context,
    schedule_id: Annotated[
        str | None,
        typer.Argument(
            metavar="SCHEDULE",
            help="The schedule id (overrides the id in --file).",
            show_default=False,
        ),
    ] = None,
    pool: Annotated[
        str | None, typer.Option("--pool", help="The pool the jobs' tasks run on.")
    ] = None,
    auto_pool: Annotated[
        int | None,
        typer.Option(
            "--auto-pool",
            min=0,
            help="Instead of --pool: a pool of this many local nodes made for the jobs.",
        ),
    ] = None,
    auto_pool_lifetime: Annotated[
        PoolLifetimeOption,
        typer.Option(
            "--auto-pool-lifetime",
            help="job: a pool per job; jobschedule: one pool for all, gone with the schedule.",
        ),
    ] = PoolLifetimeOption.JOB,
    auto_pool_prefix: Annotated[
        str | None, typer.Option("--auto-pool-prefix", help="The auto pool's id prefix.")
    ] = None,
    keep_alive: Annotated[
        bool, typer.Option("--keep-alive", help="Keep the auto pool when its lifetime ends.")
    ] = False,
    every: Annotated[
        str | None,
        typer.Option(
            "--every",
            help="Recurrence interval: seconds or ISO-8601 (PT1H); at least 1 s. "
            "Without it, one job.",
        ),
    ] = None,
    start_window: Annotated[
        str | None,
        typer.Option(
            "--start-window", help="How long a due job may wait to be created (seconds or ISO)."
        ),
    ] = None,
    not_before: Annotated[
        str | None,
        typer.Option("--not-before", help="doNotRunUntil: no job before this ISO-8601 time."),
    ] = None,
    not_after: Annotated[
        str | None,
        typer.Option("--not-after", help="doNotRunAfter: no job after this ISO-8601 time."),
    ] = None,
    job_manager: Annotated[
        str | None,
        typer.Option(
            "--job-manager",
            help="Command line of each job's manager task (id 'jobmanager'); the job ends "
            "when it does.",
        ),
    ] = None,
    priority: Annotated[
        int | None,
        typer.Option("--priority", min=-1000, max=1000, help="The jobs' priority, -1000 to 1000."),
    ] = None,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="A job schedule body in Azure's wire JSON; options given on the line override it.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a job schedule (from options, or from Azure wire JSON with --file)."""
    body = read_body(file, schedule_id, "schedule")
    timing = dict(body.get("schedule") or {})
    for key, value in (
        ("recurrenceInterval", parse_duration_option(every, "--every")),
        ("startWindow", parse_duration_option(start_window, "--start-window")),
        ("doNotRunUntil", _time(not_before, "--not-before")),
        ("doNotRunAfter", _time(not_after, "--not-after")),
    ):
        if value is not None:
            timing[key] = value
    body["schedule"] = timing
    spec = dict(body.get("jobSpecification") or {})
    pool_info = pool_info_option(
        pool,
        AutoPoolOptions(auto_pool, auto_pool_prefix, keep_alive, auto_pool_lifetime.value),
    )
    if pool_info is not None:
        spec["poolInfo"] = pool_info
    if "poolInfo" not in spec:
        raise typer.BadParameter(
            "give --pool, --auto-pool, or --file with jobSpecification.poolInfo",
            param_hint="--pool",
        )
    if job_manager is not None:
        spec["jobManagerTask"] = {"id": "jobmanager", "commandLine": job_manager}
    if priority is not None:
        spec["priority"] = priority
    body["jobSpecification"] = spec
    if display_name is not None:
        body["displayName"] = display_name
    with batch_client(ctx) as client:
        client.create_job_schedule(body)
        schedule = client.get_job_schedule(body["id"])
    if json_out:
        print_json(schedule.to_wire())
    else:
        console = stdout_console()
        console.print(f"Created job schedule [bold]{schedule.id}[/bold].", highlight=False)
        console.print(list_table("", SCHEDULE_COLUMNS, [schedule_row(schedule)]))


@app.command("list")
def list_schedules(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the job schedules of the account."""
    with batch_client(ctx) as client:
        schedules = client.list_job_schedules()
    print_resources(schedules, "Job schedules", SCHEDULE_COLUMNS, schedule_row, json_out)


@app.command("show")
def show_schedule(
    ctx: typer.Context, schedule_id: ScheduleId, json_out: JsonOption = False
) -> None:
    """Show one job schedule (and, without --json, the jobs it created)."""
    with batch_client(ctx) as client:
        schedule = client.get_job_schedule(schedule_id)
        made = None if json_out else client.list_jobs_from_schedule(schedule_id)
    _show(schedule, json_out)
    if made is not None:
        title = f"Jobs of schedule {schedule.id}"
        stdout_console().print(list_table(title, JOB_COLUMNS, [job_row(j) for j in made]))


@app.command("jobs")
def schedule_jobs(
    ctx: typer.Context, schedule_id: ScheduleId, json_out: JsonOption = False
) -> None:
    """List the jobs a schedule created (that still exist), oldest first."""
    with batch_client(ctx) as client:
        made = client.list_jobs_from_schedule(schedule_id)
    print_resources(made, f"Jobs of schedule {schedule_id}", JOB_COLUMNS, job_row, json_out)


def _act(ctx: typer.Context, schedule_id: str, operation: str, json_out: bool) -> None:
    """Run ``client.<operation>(schedule_id)`` and show the schedule afterwards."""
    with batch_client(ctx) as client:
        getattr(client, operation)(schedule_id)
        schedule = client.get_job_schedule(schedule_id)
    _show(schedule, json_out)


@app.command("disable")
def disable_schedule(
    ctx: typer.Context, schedule_id: ScheduleId, json_out: JsonOption = False
) -> None:
    """Disable a schedule: no new job is created (a running one goes on)."""
    _act(ctx, schedule_id, "disable_job_schedule", json_out)


@app.command("enable")
def enable_schedule(
    ctx: typer.Context, schedule_id: ScheduleId, json_out: JsonOption = False
) -> None:
    """Enable a disabled schedule: jobs are created again."""
    _act(ctx, schedule_id, "enable_job_schedule", json_out)


@app.command("terminate")
def terminate_schedule(
    ctx: typer.Context, schedule_id: ScheduleId, json_out: JsonOption = False
) -> None:
    """Terminate a schedule: no more jobs, and its active job is terminated."""
    _act(ctx, schedule_id, "terminate_job_schedule", json_out)


@app.command("delete")
def delete_schedule(
    ctx: typer.Context, schedule_id: ScheduleId, json_out: JsonOption = False
) -> None:
    """Delete a schedule and its jobs (--json prints {"id": ..., "deleted": true})."""
    with batch_client(ctx) as client:
        client.delete_job_schedule(schedule_id)
    if json_out:
        print_json({"id": schedule_id, "deleted": True})
    else:
        stdout_console().print(f"Deleted job schedule [bold]{schedule_id}[/bold].", highlight=False)
