"""What the web page shows, gathered from one account's ``BatchService``.

Each function reads through the service's operations (``list_pools``, ``list_nodes``,
``get_job_task_counts``, ``list_tasks_page``, ``list_pool_samples``, the file reads), so a page
sees exactly what the account's SharedKey requests would, and turns the Azure wire JSON into the
few plain values a template or the page's polling script needs: a pool's heatmap tiles, a job's
progress, a page of task rows (failed tasks first), the tail of a task's output, a chart's
polylines.

Nothing here renders HTML (``templates/``) or decides who may see what (the service, bound to
the signed-in account, does).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from prefect_batch.exceptions import BatchServiceError
from prefect_batch.service import BatchService

__all__ = [
    "NODE_COLOURS",
    "TAIL_BYTES",
    "TASK_FILTERS",
    "chart",
    "duration",
    "heatmap",
    "job_progress",
    "pool_summary",
    "task_page",
    "task_row",
    "tail",
]

NODE_COLOURS: dict[str, str] = {
    "idle": "#4caf50",
    "running": "#1e88e5",
    "starting": "#ffd54f",
    "creating": "#ffe082",
    "waitingforstarttask": "#ffb300",
    "starttaskfailed": "#e53935",
    "rebooting": "#ba68c8",
    "reimaging": "#8e24aa",
    "offline": "#757575",
    "unusable": "#b71c1c",
    "preempted": "#ff7043",
    "leavingpool": "#90a4ae",
    "unknown": "#cfd8dc",
}
"""A node state -> its tile colour (Batch Explorer's scheme: green idle, blue running, red bad)."""

TASK_FILTERS = ("all", "active", "preparing", "running", "completed", "failed", "succeeded")
"""The job page's task filters; ``all`` lists failed tasks first."""

TAIL_BYTES = 8192
"""How much of the end of ``stdout.txt``/``stderr.txt`` a task page shows."""

PAGE_SIZE = 100
"""Tasks per page of a job's task list."""


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def duration(start: str | None, end: str | None, now: datetime | None = None) -> str:
    """``1h02m03s`` / ``4.2s`` between two wire times (to now when still running)."""
    begin = _time(start)
    if begin is None:
        return ""
    finish = _time(end) or now or datetime.now(timezone.utc)
    seconds = max((finish - begin).total_seconds(), 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def heatmap(nodes: list[dict[str, Any]], slots_per_node: int) -> list[dict[str, Any]]:
    """One tile per node: id, state, colour, running tasks and slots in use."""
    return [
        {
            "id": n["id"],
            "state": n.get("state") or "unknown",
            "colour": NODE_COLOURS.get(n.get("state") or "unknown", NODE_COLOURS["unknown"]),
            "running": n.get("runningTasksCount") or 0,
            "slots": n.get("runningTaskSlotsCount") or 0,
            "slotsPerNode": slots_per_node,
        }
        for n in nodes
    ]


def pool_summary(svc: BatchService, pool: dict[str, Any]) -> dict[str, Any]:
    """A pool for the pools page: its wire JSON, its tiles and the count of nodes per state."""
    nodes = [n.to_wire() for n in svc.list_nodes(pool["id"])]
    tiles = heatmap(nodes, pool.get("taskSlotsPerNode") or 1)
    states: dict[str, int] = {}
    for tile in tiles:
        states[tile["state"]] = states.get(tile["state"], 0) + 1
    return {
        "pool": pool,
        "tiles": tiles,
        "states": states,
        "running": sum(t["running"] for t in tiles),
        "slotsUsed": sum(t["slots"] for t in tiles),
        "slotsTotal": len(tiles) * (pool.get("taskSlotsPerNode") or 1),
    }


def job_progress(svc: BatchService, job_id: str) -> dict[str, Any]:
    """A job's task counts and the percentages of its progress bar."""
    counts = svc.get_job_task_counts(job_id).task_counts.model_dump()
    total = counts["active"] + counts["running"] + counts["completed"]
    parts = {
        name: (100.0 * counts[name] / total if total else 0.0)
        for name in ("succeeded", "failed", "running", "active")
    }
    return {"counts": counts, "total": total, "percent": parts}


def task_row(task: dict[str, Any]) -> dict[str, Any]:
    """The columns of a task in a job's task list."""
    info = task.get("executionInfo") or {}
    node = task.get("nodeInfo") or {}
    failure = info.get("failureInfo") or {}
    return {
        "id": task["id"],
        "state": task.get("state"),
        "result": info.get("result"),
        "exitCode": info.get("exitCode"),
        "node": node.get("nodeId"),
        "pool": node.get("poolId"),
        "retries": info.get("retryCount") or 0,
        "requeues": info.get("requeueCount") or 0,
        "duration": duration(info.get("startTime"), info.get("endTime")),
        "failure": failure.get("code"),
    }


def _page(
    svc: BatchService,
    job_id: str,
    states: list[str] | None,
    failed: bool | None,
    after: int | None,
    limit: int,
) -> tuple[list[dict[str, Any]], int | None]:
    tasks, marker = svc.list_tasks_page(
        job_id, states=states, after=after, limit=limit, failed=failed
    )
    return [task_row(t.to_wire()) for t in tasks], marker


def task_page(
    svc: BatchService, job_id: str, which: str, cursor: str | None, limit: int = PAGE_SIZE
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of a job's tasks for filter ``which`` and the next page's cursor.

    ``all`` pages through the failed tasks first (cursor ``f<marker>``), then the others
    (``o<marker>``); each read is one page of the database, so a job of 100,000 tasks costs no
    more per page than a job of 100.
    """
    phase, after = "f", None
    if cursor and cursor[0] in "fo":
        phase = cursor[0]
        after = int(cursor[1:]) if cursor[1:].isdigit() else None
    if which == "failed":
        rows, marker = _page(svc, job_id, None, True, after, limit)
        return rows, (f"f{marker}" if marker is not None else None)
    if which == "succeeded":
        rows, marker = _page(svc, job_id, ["completed"], False, after, limit)
        return rows, (f"o{marker}" if marker is not None else None)
    if which != "all":
        rows, marker = _page(svc, job_id, [which], None, after, limit)
        return rows, (f"o{marker}" if marker is not None else None)
    rows: list[dict[str, Any]] = []
    if phase == "f":
        rows, marker = _page(svc, job_id, None, True, after, limit)
        if marker is not None:
            return rows, f"f{marker}"
        after = None
    more, marker = _page(svc, job_id, None, False, after, limit - len(rows))
    rows += more
    return rows, (f"o{marker}" if marker is not None else None)


def tail(svc: BatchService, job_id: str, task_id: str, name: str) -> str:
    """The last :data:`TAIL_BYTES` of a task's ``name`` (empty when it has none yet)."""
    try:
        props = svc.get_task_file_properties(job_id, task_id, name)
        size = (props.properties.content_length if props.properties else None) or 0
        data = svc.get_task_file(job_id, task_id, name, offset=max(size - TAIL_BYTES, 0))
    except BatchServiceError:
        return ""  # not written yet, node gone or files cleaned up: nothing to show
    return data.decode("utf-8", errors="replace")


CHART_LINES = (
    ("$CurrentDedicatedNodes", "nodes", "#607d8b"),
    ("$UsableNodeCount", "usable nodes (idle or running)", "#4caf50"),
    ("$RunningTasks", "running tasks", "#1e88e5"),
    ("$ActiveTasks", "queued tasks", "#ffb300"),
)
"""The chart's series: metric, label, colour."""


def chart(
    samples: list[dict[str, Any]], now: float, hours: float, width: int = 720, height: int = 180
) -> dict[str, Any]:
    """Polylines (SVG ``points``) of the chart of a pool's samples over the last ``hours``.

    The time axis starts at the oldest sample in that window (at least a minute back), so a
    pool sampled for ten minutes fills the chart rather than its last pixels.
    """
    start = now - hours * 3600
    if samples:
        start = max(start, min(s["time"] for s in samples))
    start = min(start, now - 60)
    top = max(
        [1.0] + [float(s[m]) for s in samples for m, _, _ in CHART_LINES if s.get(m) is not None]
    )
    lines = []
    for metric, label, colour in CHART_LINES:
        points = [
            f"{(s['time'] - start) / (now - start) * width:.1f},"
            f"{height - float(s[metric]) / top * height:.1f}"
            for s in samples
            if s.get(metric) is not None
        ]
        last = next((s[metric] for s in reversed(samples) if s.get(metric) is not None), None)
        lines.append({"label": label, "colour": colour, "points": " ".join(points), "last": last})
    return {
        "width": width,
        "height": height,
        "top": int(top) if top == int(top) else round(top, 1),
        "lines": lines,
        "count": len(samples),
        "span": _span(now - start),
    }


def _span(seconds: float) -> str:
    if seconds >= 5400:
        return f"{seconds / 3600:.0f} h"
    if seconds >= 90:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"
