"""Readers of what the Prefect server recorded, with bounded waits.

The Prefect server records task runs from events, asynchronously (and ingests only ~35-40 task
runs per second per core), so each reader polls until the expected count is there or its bound
passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from uuid import UUID


def wait_for(
    probe: Callable[[], Any], *, timeout: float = 60.0, interval: float = 0.25, what: str = ""
) -> Any:
    """Call ``probe`` until it returns something truthy; raise TimeoutError with the last value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what or 'condition'} not reached in {timeout} s; last: {last!r}")


def task_runs_of(client: Any, flow_run_id: UUID) -> list[Any]:
    """Every task run of a flow run (paged)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    found: list[Any] = []
    while True:
        page = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
            offset=len(found),
        )
        found.extend(page)
        if len(page) < 200:
            return found


def final_task_runs(client: Any, flow_run_id: UUID, count: int, timeout: float = 90.0) -> list[Any]:
    """Wait until the flow run has ``count`` task runs, all in a final state; return them."""

    def probe() -> list[Any] | None:
        runs = task_runs_of(client, flow_run_id)
        if len(runs) >= count and all(r.state is not None and r.state.is_final() for r in runs):
            return runs
        return None

    return wait_for(probe, timeout=timeout, what=f"{count} final task runs")


def logs_of(client: Any, task_run_id: UUID, min_count: int = 1) -> list[str]:
    """The log messages of a task run (waits for at least ``min_count``)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId

    def probe() -> list[str] | None:
        logs = client.read_logs(
            LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])), limit=200, offset=0
        )
        return [entry.message for entry in logs] if len(logs) >= min_count else None

    return wait_for(probe, timeout=30, what=f"logs of task run {task_run_id}")


def events_named(client: Any, name: str, resource_id: str, min_count: int = 1) -> list[Any]:
    """Events of ``name`` about ``resource_id`` recorded by the server (waits for them)."""
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    def probe() -> list[Any] | None:
        page = client.read_events(
            filter=EventFilter(
                event=EventNameFilter(name=[name]),
                resource=EventResourceFilter(id=[resource_id]),
            ),
            limit=50,
        )
        return page.events if len(page.events) >= min_count else None

    return wait_for(probe, timeout=30, what=f"event {name} of {resource_id}")
