"""The web page's pages, polled JSON and actions, registered on ``routes.router``.

Pages: ``/ui/pools`` (every pool with its heatmap), ``/ui/pools/{pool}`` (heatmap, chart of the
autoscale samples, resize), ``/ui/pools/{pool}/nodes/{node}`` (start task, metrics, recent
tasks, files), ``/ui/jobs`` (state, priority, progress), ``/ui/jobs/{job}`` (progress and a page
of its tasks, failed first, filterable by state), ``/ui/jobs/{job}/tasks/{task}`` (execution and
failure info, output tail, files). JSON under ``/ui/api/`` is what the script polls: a pool's
tiles, a job's counts, a task's output tail. Actions are POSTs (``routes.action``) that redirect
back to the resource's page.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.responses import Response

from prefect_batch.service import BatchService
from prefect_batch.ui import views
from prefect_batch.ui.routes import (
    PREFIX,
    action,
    api,
    download,
    file_size,
    now,
    page,
    render,
    router,
)
from prefect_batch.ui.session import Session

__all__: list[str] = []

CHART_HOURS = 6.0
"""How far back a pool's chart goes."""


def _q(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


# -- pools and nodes ---------------------------------------------------------------------------


@router.get("/pools")
@page
def pools_page(request: Request, session: Session, svc: BatchService) -> Response:
    summaries = [views.pool_summary(svc, p.to_wire()) for p in svc.list_pools()]
    return render(request, "pools.html", session=session, summaries=summaries)


@router.get("/pools/{pool_id}")
@page
def pool_page(request: Request, session: Session, svc: BatchService, pool_id: str) -> Response:
    summary = views.pool_summary(svc, svc.get_pool(pool_id).to_wire())
    samples = svc.list_pool_samples(pool_id, hours=CHART_HOURS)
    chart = views.chart(samples, now(), CHART_HOURS)
    return render(request, "pool.html", session=session, s=summary, chart=chart)


@router.get("/pools/{pool_id}/nodes/{node_id}")
@page
def node_page(
    request: Request, session: Session, svc: BatchService, pool_id: str, node_id: str
) -> Response:
    node = svc.get_node(pool_id, node_id).to_wire()
    # A node's start task is its pool's (as of the node's last boot, the pool's now).
    start_task = node.get("startTask") or svc.get_pool(pool_id).to_wire().get("startTask")
    metrics = svc.get_node_metrics(pool_id, node_id)
    try:
        files = [f.to_wire() for f in svc.list_node_files(pool_id, node_id, recursive=True)]
    except Exception:  # noqa: BLE001 - an unreachable node still has a page
        files = []
    return render(
        request,
        "node.html",
        session=session,
        pool_id=pool_id,
        node=node,
        start_task=start_task,
        metrics=metrics,
        files=[f for f in files if not f.get("isDirectory")][:500],
        colour=views.NODE_COLOURS.get(node.get("state") or "unknown"),
    )


@router.get("/pools/{pool_id}/nodes/{node_id}/files/{path:path}")
@page
def node_file(
    request: Request, session: Session, svc: BatchService, pool_id: str, node_id: str, path: str
) -> Response:
    size = file_size(svc.get_node_file_properties(pool_id, node_id, path))
    return download(
        path,
        size,
        lambda offset, length: svc.get_node_file(
            pool_id, node_id, path, offset=offset, length=length
        ),
    )


@router.get("/api/pools/{pool_id}/tiles")
@api
def pool_tiles(request: Request, session: Session, svc: BatchService, pool_id: str) -> Any:
    summary = views.pool_summary(svc, svc.get_pool(pool_id).to_wire())
    pool = summary["pool"]
    return {
        "tiles": summary["tiles"],
        "states": summary["states"],
        "running": summary["running"],
        "slotsUsed": summary["slotsUsed"],
        "slotsTotal": summary["slotsTotal"],
        "allocationState": pool.get("allocationState"),
        "targetDedicatedNodes": pool.get("targetDedicatedNodes"),
        "currentDedicatedNodes": pool.get("currentDedicatedNodes"),
    }


@router.post("/pools/{pool_id}/resize")
async def resize_pool(request: Request, pool_id: str) -> Response:
    def run(svc: BatchService, form: dict[str, str]) -> str:
        target = form.get("targetDedicatedNodes", "").strip()
        svc.resize_pool(
            pool_id, {"targetDedicatedNodes": int(target) if target.isdigit() else target}
        )
        return f"{PREFIX}/pools/{_q(pool_id)}"

    return await action(request, run)


@router.post("/pools/{pool_id}/nodes/{node_id}/reboot")
async def reboot_node(request: Request, pool_id: str, node_id: str) -> Response:
    def run(svc: BatchService, _form: dict[str, str]) -> str:
        svc.reboot_node(pool_id, node_id)
        return f"{PREFIX}/pools/{_q(pool_id)}/nodes/{_q(node_id)}"

    return await action(request, run)


@router.post("/pools/{pool_id}/nodes/{node_id}/remove")
async def remove_node(request: Request, pool_id: str, node_id: str) -> Response:
    def run(svc: BatchService, _form: dict[str, str]) -> str:
        svc.remove_nodes(pool_id, {"nodeList": [node_id]})
        return f"{PREFIX}/pools/{_q(pool_id)}"

    return await action(request, run)


# -- jobs and tasks ------------------------------------------------------------------------------


@router.get("/jobs")
@page
def jobs_page(request: Request, session: Session, svc: BatchService) -> Response:
    jobs = [
        {"job": j.to_wire(), "progress": views.job_progress(svc, j.id)} for j in svc.list_jobs()
    ]
    return render(request, "jobs.html", session=session, jobs=jobs)


@router.get("/jobs/{job_id}")
@page
def job_page(
    request: Request,
    session: Session,
    svc: BatchService,
    job_id: str,
    state: str = "all",
    cursor: str | None = None,
) -> Response:
    job = svc.get_job(job_id).to_wire()
    which = state if state in views.TASK_FILTERS else "all"
    rows, next_cursor = views.task_page(svc, job_id, which, cursor)
    return render(
        request,
        "job.html",
        session=session,
        job=job,
        progress=views.job_progress(svc, job_id),
        rows=rows,
        which=which,
        filters=views.TASK_FILTERS,
        cursor=cursor,
        next_cursor=next_cursor,
    )


@router.get("/jobs/{job_id}/tasks/{task_id}")
@page
def task_page(
    request: Request, session: Session, svc: BatchService, job_id: str, task_id: str
) -> Response:
    task = svc.get_task(job_id, task_id).to_wire()
    try:
        files = [f.to_wire() for f in svc.list_task_files(job_id, task_id, recursive=True)]
    except Exception:  # noqa: BLE001 - a task not yet on a node, or its files cleaned up
        files = []
    return render(
        request,
        "task.html",
        session=session,
        job_id=job_id,
        task=task,
        row=views.task_row(task),
        stdout=views.tail(svc, job_id, task_id, "stdout.txt"),
        stderr=views.tail(svc, job_id, task_id, "stderr.txt"),
        files=[f for f in files if not f.get("isDirectory")][:500],
    )


@router.get("/jobs/{job_id}/tasks/{task_id}/files/{path:path}")
@page
def task_file(
    request: Request, session: Session, svc: BatchService, job_id: str, task_id: str, path: str
) -> Response:
    size = file_size(svc.get_task_file_properties(job_id, task_id, path))
    return download(
        path,
        size,
        lambda offset, length: svc.get_task_file(
            job_id, task_id, path, offset=offset, length=length
        ),
    )


@router.get("/api/jobs/{job_id}/progress")
@api
def job_counts(request: Request, session: Session, svc: BatchService, job_id: str) -> Any:
    job = svc.get_job(job_id)
    return {"state": job.to_wire().get("state"), **views.job_progress(svc, job_id)}


@router.get("/api/jobs/{job_id}/tasks/{task_id}/output")
@api
def task_output(
    request: Request, session: Session, svc: BatchService, job_id: str, task_id: str
) -> Any:
    task = svc.get_task(job_id, task_id).to_wire()
    return {
        "state": task.get("state"),
        "row": views.task_row(task),
        "stdout": views.tail(svc, job_id, task_id, "stdout.txt"),
        "stderr": views.tail(svc, job_id, task_id, "stderr.txt"),
    }


@router.post("/jobs/{job_id}/terminate")
async def terminate_job(request: Request, job_id: str) -> Response:
    def run(svc: BatchService, _form: dict[str, str]) -> str:
        svc.terminate_job(job_id)
        return f"{PREFIX}/jobs/{_q(job_id)}"

    return await action(request, run)


@router.post("/jobs/{job_id}/tasks/{task_id}/terminate")
async def terminate_task(request: Request, job_id: str, task_id: str) -> Response:
    def run(svc: BatchService, _form: dict[str, str]) -> str:
        svc.terminate_task(job_id, task_id)
        return f"{PREFIX}/jobs/{_q(job_id)}/tasks/{_q(task_id)}"

    return await action(request, run)


@router.post("/jobs/{job_id}/tasks/{task_id}/reactivate")
async def reactivate_task(request: Request, job_id: str, task_id: str) -> Response:
    def run(svc: BatchService, _form: dict[str, str]) -> str:
        svc.reactivate_task(job_id, task_id)
        return f"{PREFIX}/jobs/{_q(job_id)}/tasks/{_q(task_id)}"

    return await action(request, run)
