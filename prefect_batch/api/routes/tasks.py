"""Task paths: add one, add a collection (at most 100, a result per task), list, get, update,
delete, terminate, reactivate (files are in ``files.py``).

Task lists are paged by the database (``list_tasks_page``), and the states a ``$filter`` allows
are part of that query, so listing a job of 100,000 tasks stays one pass.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from prefect_batch.api.context import (
    created,
    guard,
    json_response,
    list_response,
    no_content,
    object_body,
    ok,
    resource_response,
)
from prefect_batch.api.errors import invalid_query, invalid_request_body
from prefect_batch.api.routes._spec import (
    Body,
    JobId,
    Opts,
    Select,
    Svc,
    TaskId,
    spec,
)
from prefect_batch.models import (
    BatchCreateTaskCollectionResult,
    BatchSubtask,
    BatchTask,
    BatchTaskCreateOptions,
    BatchTaskGroup,
    BatchTaskUpdateOptions,
)

__all__ = ["router"]

router = APIRouter(tags=["tasks"])


@router.post(
    "/jobs/{jobId}/tasks",
    **spec("create_task", "Add a task to a job", status=201, body=BatchTaskCreateOptions),
)
def create_task(job_id: JobId, svc: Svc, body: Body) -> Response:
    task = object_body(body)
    svc.create_task(job_id, task)
    return created(f"{svc.base_url}/jobs/{job_id}/tasks/{task.get('id')}")


@router.post(
    "/jobs/{jobId}/addtaskcollection",
    **spec(
        "create_task_collection",
        "Add up to 100 tasks to a job, with a result per task",
        body=BatchTaskGroup,
        returns=BatchCreateTaskCollectionResult,
        description=(
            "Each task is validated on its own: a bad or duplicate task gets its own "
            "`clienterror` result and the others are added. More than 100 tasks answer 413 "
            "`RequestBodyTooLarge`."
        ),
    ),
)
def create_task_collection(job_id: JobId, svc: Svc, body: Body) -> Response:
    group = object_body(body)
    if "value" not in group:
        raise invalid_request_body("the body must have a 'value' list of tasks")
    values = group["value"]
    if not isinstance(values, list):
        raise invalid_request_body("'value' must be a list of tasks")
    result = svc.create_task_collection(job_id, values)
    return json_response(result.to_wire())


@router.get(
    "/jobs/{jobId}/tasks",
    **spec("list_tasks", "List a job's tasks", returns=list[BatchTask]),
)
def list_tasks(job_id: JobId, request: Request, svc: Svc, opts: Opts) -> Response:
    if opts.marker is not None and not isinstance(opts.marker, int):
        raise invalid_query("$skiptoken", opts.marker, "not a token of this list")
    states = opts.filter.states if opts.filter is not None else None
    tasks, marker = svc.list_tasks_page(job_id, states=states, after=opts.marker, limit=opts.limit)
    items: list[dict[str, Any]] = [t.to_wire() for t in tasks]
    if opts.filter is not None:
        items = [t for t in items if opts.filter(t)]
    return list_response(items, opts.select, request, "tasks", marker)


@router.get(
    "/jobs/{jobId}/tasks/{taskId}",
    **spec("get_task", "Get a task", returns=BatchTask),
)
def get_task(job_id: JobId, task_id: TaskId, request: Request, svc: Svc, names: Select) -> Response:
    task = guard(svc, request, "task", read=True).get_task(job_id, task_id)
    return resource_response(task, names, request, "tasks")


@router.put(
    "/jobs/{jobId}/tasks/{taskId}",
    **spec(
        "replace_task",
        "Update a task's constraints",
        body=BatchTaskUpdateOptions,
        method="update_task",
    ),
)
def replace_task(
    job_id: JobId, task_id: TaskId, request: Request, svc: Svc, body: Body
) -> Response:
    guard(svc, request, "task").update_task(job_id, task_id, object_body(body))
    return ok(f"{svc.base_url}/jobs/{job_id}/tasks/{task_id}")


@router.delete(
    "/jobs/{jobId}/tasks/{taskId}",
    **spec("delete_task", "Delete a task and its files"),
)
def delete_task(job_id: JobId, task_id: TaskId, request: Request, svc: Svc) -> Response:
    guard(svc, request, "task").delete_task(job_id, task_id)
    return ok()


@router.post(
    "/jobs/{jobId}/tasks/{taskId}/terminate",
    **spec("terminate_task", "Terminate a task", status=204),
)
def terminate_task(job_id: JobId, task_id: TaskId, request: Request, svc: Svc) -> Response:
    guard(svc, request, "task").terminate_task(job_id, task_id)
    return no_content()


@router.post(
    "/jobs/{jobId}/tasks/{taskId}/reactivate",
    **spec("reactivate_task", "Queue a failed task again", status=204),
)
def reactivate_task(job_id: JobId, task_id: TaskId, request: Request, svc: Svc) -> Response:
    guard(svc, request, "task").reactivate_task(job_id, task_id)
    return no_content()


@router.get(
    "/jobs/{jobId}/tasks/{taskId}/subtasksinfo",
    **spec(
        "list_subtasks",
        "List the subtasks of a multi-instance task",
        returns=list[BatchSubtask],
    ),
)
def list_subtasks(job_id: JobId, task_id: TaskId, request: Request, svc: Svc) -> Response:
    items = guard(svc, request, "task", read=True).list_subtasks(job_id, task_id)
    return json_response({"value": [s.to_wire() for s in items]})


@router.get(
    "/jobs/{jobId}/tasks/{taskId}/attempts",
    **spec(
        "list_task_attempts",
        "The node each attempt of a task was sent to",
        extension=True,
        description="Items: `attempt`, `poolId`, `nodeId`, `dispatchTime`.",
    ),
)
def list_task_attempts(job_id: JobId, task_id: TaskId, svc: Svc) -> Response:
    return json_response({"value": svc.list_task_attempts(job_id, task_id)})
