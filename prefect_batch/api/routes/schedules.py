"""Job schedule paths: ``/jobschedules``, a schedule's actions, and the jobs it created.

Each route calls the service method of the Azure SDK's name (``create_job_schedule``,
``get_job_schedule``...). Conditional headers apply to the schedule a route names. The jobs of
a schedule (``<scheduleId>:job-<n>``) are created by the engine, not here.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from prefect_batch.api.context import (
    accepted,
    created,
    guard,
    list_response,
    no_content,
    object_body,
    ok,
    resource_response,
)
from prefect_batch.api.routes._spec import (
    Body,
    Opts,
    ScheduleId,
    Select,
    Svc,
    call,
    filtered_page,
    spec,
)
from prefect_batch.exceptions import BatchNotFoundError
from prefect_batch.models import (
    BatchJob,
    BatchJobSchedule,
    BatchJobScheduleCreateOptions,
    BatchJobScheduleUpdateOptions,
)

__all__ = ["router"]

router = APIRouter(tags=["job schedules"])


def _by_creation(item: dict[str, Any]) -> tuple[str, str]:
    return (item.get("creationTime") or "", item.get("id") or "")


@router.post(
    "/jobschedules",
    **spec(
        "create_job_schedule",
        "Create a job schedule",
        status=201,
        body=BatchJobScheduleCreateOptions,
    ),
)
def create_job_schedule(svc: Svc, body: Body) -> Response:
    schedule = object_body(body)
    call(svc, "create_job_schedule", schedule)
    return created(f"{svc.base_url}/jobschedules/{schedule.get('id')}")


@router.get(
    "/jobschedules",
    **spec("list_job_schedules", "List job schedules", returns=list[BatchJobSchedule]),
)
def list_job_schedules(request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(call(svc, "list_job_schedules"), opts, _by_creation)
    return list_response(items, opts.select, request, "jobschedules", marker)


@router.head(
    "/jobschedules/{jobScheduleId}",
    **spec("job_schedule_exists", "Whether a job schedule exists"),
)
def job_schedule_exists(schedule_id: ScheduleId, svc: Svc) -> Response:
    if not call(svc, "job_schedule_exists", schedule_id):
        raise BatchNotFoundError(
            "JobScheduleNotFound",
            f"The specified job schedule does not exist: {schedule_id}",
            {"JobScheduleId": schedule_id},
        )
    return Response(status_code=200)


@router.get(
    "/jobschedules/{jobScheduleId}",
    **spec("get_job_schedule", "Get a job schedule", returns=BatchJobSchedule),
)
def get_job_schedule(
    schedule_id: ScheduleId, request: Request, svc: Svc, names: Select
) -> Response:
    schedule = call(guard(svc, request, "jobschedule", read=True), "get_job_schedule", schedule_id)
    return resource_response(schedule, names, request, "jobschedules")


@router.patch(
    "/jobschedules/{jobScheduleId}",
    **spec(
        "update_job_schedule",
        "Update a job schedule (given properties only; later jobs use them)",
        body=BatchJobScheduleUpdateOptions,
    ),
)
def update_job_schedule(
    schedule_id: ScheduleId, request: Request, svc: Svc, body: Body
) -> Response:
    call(guard(svc, request, "jobschedule"), "update_job_schedule", schedule_id, object_body(body))
    return ok()


@router.put(
    "/jobschedules/{jobScheduleId}",
    **spec(
        "replace_job_schedule",
        "Replace a job schedule (omitted properties return to defaults)",
        body=BatchJobScheduleUpdateOptions,
    ),
)
def replace_job_schedule(
    schedule_id: ScheduleId, request: Request, svc: Svc, body: Body
) -> Response:
    call(guard(svc, request, "jobschedule"), "replace_job_schedule", schedule_id, object_body(body))
    return ok()


@router.delete(
    "/jobschedules/{jobScheduleId}",
    **spec("delete_job_schedule", "Delete a job schedule", status=202),
)
def delete_job_schedule(schedule_id: ScheduleId, request: Request, svc: Svc) -> Response:
    call(guard(svc, request, "jobschedule"), "delete_job_schedule", schedule_id)
    return accepted()


@router.post(
    "/jobschedules/{jobScheduleId}/disable",
    **spec("disable_job_schedule", "Disable a job schedule", status=204),
)
def disable_job_schedule(schedule_id: ScheduleId, request: Request, svc: Svc) -> Response:
    call(guard(svc, request, "jobschedule"), "disable_job_schedule", schedule_id)
    return no_content()


@router.post(
    "/jobschedules/{jobScheduleId}/enable",
    **spec("enable_job_schedule", "Enable a job schedule", status=204),
)
def enable_job_schedule(schedule_id: ScheduleId, request: Request, svc: Svc) -> Response:
    call(guard(svc, request, "jobschedule"), "enable_job_schedule", schedule_id)
    return no_content()


@router.post(
    "/jobschedules/{jobScheduleId}/terminate",
    **spec("terminate_job_schedule", "Terminate a job schedule", status=202),
)
def terminate_job_schedule(schedule_id: ScheduleId, request: Request, svc: Svc) -> Response:
    call(guard(svc, request, "jobschedule"), "terminate_job_schedule", schedule_id)
    return accepted()


@router.get(
    "/jobschedules/{jobScheduleId}/jobs",
    **spec("list_jobs_from_schedule", "List the jobs a schedule created", returns=list[BatchJob]),
)
def list_jobs_from_schedule(
    schedule_id: ScheduleId, request: Request, svc: Svc, opts: Opts
) -> Response:
    jobs = call(svc, "list_jobs_from_schedule", schedule_id)
    items, marker = filtered_page(jobs, opts, _by_creation)
    return list_response(items, opts.select, request, "jobs", marker)
