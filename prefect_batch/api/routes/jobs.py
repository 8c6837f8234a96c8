"""Job paths: ``/jobs``, ``/jobs/{jobId}`` and its actions, task counts, and the job preparation
and release task status. Conditional headers apply to the job a route names.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from prefect_batch.api.context import (
    accepted,
    created,
    guard,
    json_response,
    list_response,
    object_body,
    ok,
    resource_response,
)
from prefect_batch.api.routes._spec import (
    Body,
    JobId,
    Opts,
    Select,
    Svc,
    call,
    filtered_page,
    spec,
)
from prefect_batch.models import (
    BatchJob,
    BatchJobCreateOptions,
    BatchJobDisableOptions,
    BatchJobPreparationAndReleaseTaskStatus,
    BatchJobTerminateOptions,
    BatchJobUpdateOptions,
    BatchTaskCountsResult,
)

__all__ = ["router"]

router = APIRouter(tags=["jobs"])

Force = Annotated[
    bool,
    Query(description="Accepted for compatibility; the service never waits on nodes here."),
]


def _by_creation(item: dict[str, Any]) -> tuple[str, str]:
    return (item.get("creationTime") or "", item.get("id") or "")


@router.post("/jobs", **spec("create_job", "Create a job", status=201, body=BatchJobCreateOptions))
def create_job(svc: Svc, body: Body) -> Response:
    job = object_body(body)
    svc.create_job(job)
    return created(f"{svc.base_url}/jobs/{job.get('id')}")


@router.get("/jobs", **spec("list_jobs", "List the account's jobs", returns=list[BatchJob]))
def list_jobs(request: Request, svc: Svc, opts: Opts) -> Response:
    items, marker = filtered_page(svc.list_jobs(), opts, _by_creation)
    return list_response(items, opts.select, request, "jobs", marker)


@router.get("/jobs/{jobId}", **spec("get_job", "Get a job", returns=BatchJob))
def get_job(job_id: JobId, request: Request, svc: Svc, names: Select) -> Response:
    job = guard(svc, request, "job", read=True).get_job(job_id)
    return resource_response(job, names, request, "jobs")


@router.patch(
    "/jobs/{jobId}",
    **spec("update_job", "Update a job's properties (given ones only)", body=BatchJobUpdateOptions),
)
def update_job(job_id: JobId, request: Request, svc: Svc, body: Body) -> Response:
    guard(svc, request, "job").update_job(job_id, object_body(body))
    return ok(f"{svc.base_url}/jobs/{job_id}")


@router.put(
    "/jobs/{jobId}",
    **spec(
        "replace_job",
        "Replace a job's properties (omitted ones return to defaults)",
        body=BatchJobUpdateOptions,
    ),
)
def replace_job(job_id: JobId, request: Request, svc: Svc, body: Body) -> Response:
    guard(svc, request, "job").replace_job(job_id, object_body(body))
    return ok(f"{svc.base_url}/jobs/{job_id}")


@router.delete("/jobs/{jobId}", **spec("delete_job", "Delete a job and its tasks", status=202))
def delete_job(job_id: JobId, request: Request, svc: Svc, force: Force = False) -> Response:
    guard(svc, request, "job").delete_job(job_id)
    return accepted()


@router.post(
    "/jobs/{jobId}/disable",
    **spec("disable_job", "Disable a job", status=202, body=BatchJobDisableOptions),
)
def disable_job(job_id: JobId, request: Request, svc: Svc, body: Body) -> Response:
    guard(svc, request, "job").disable_job(job_id, object_body(body))
    return accepted(f"{svc.base_url}/jobs/{job_id}")


@router.post("/jobs/{jobId}/enable", **spec("enable_job", "Enable a disabled job", status=202))
def enable_job(job_id: JobId, request: Request, svc: Svc) -> Response:
    guard(svc, request, "job").enable_job(job_id)
    return accepted(f"{svc.base_url}/jobs/{job_id}")


@router.post(
    "/jobs/{jobId}/terminate",
    **spec(
        "terminate_job",
        "Terminate a job",
        status=202,
        body=BatchJobTerminateOptions,
        body_required=False,
    ),
)
def terminate_job(
    job_id: JobId, request: Request, svc: Svc, body: Body, force: Force = False
) -> Response:
    options = object_body(body, required=False) or None
    guard(svc, request, "job").terminate_job(job_id, options)
    return accepted(f"{svc.base_url}/jobs/{job_id}")


@router.get(
    "/jobs/{jobId}/taskcounts",
    **spec(
        "get_job_task_counts",
        "Count a job's tasks and slots by state",
        returns=BatchTaskCountsResult,
    ),
)
def get_job_task_counts(job_id: JobId, svc: Svc) -> Response:
    return json_response(svc.get_job_task_counts(job_id).to_wire())


@router.get(
    "/jobs/{jobId}/jobpreparationandreleasetaskstatus",
    **spec(
        "list_job_preparation_and_release_task_status",
        "The job preparation and release tasks on each node",
        returns=list[BatchJobPreparationAndReleaseTaskStatus],
    ),
)
def list_job_preparation_and_release_task_status(
    job_id: JobId, request: Request, svc: Svc, opts: Opts
) -> Response:
    statuses = call(svc, "list_job_preparation_and_release_task_status", job_id)
    items, marker = filtered_page(
        statuses, opts, lambda i: (i.get("poolId") or "", i.get("nodeId") or "")
    )
    return list_response(items, opts.select, request, "jobpreparationandreleasetaskstatus", marker)
