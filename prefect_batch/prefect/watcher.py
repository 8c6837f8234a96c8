"""Prefect events for everything the store sees happen, whoever drives the pools and jobs.

Flows emit events about the pools and jobs they follow. A batch server (or ``prefect-batch
engine run``) started with ``--prefect-events`` also runs an :class:`EventWatcher`: a thread that
reads the store every few seconds and emits, through :mod:`prefect_batch.prefect.events`,

* ``prefect-batch.node.unusable`` / ``prefect-batch.node.starttaskfailed`` for nodes that entered
  those states,
* ``prefect-batch.task.failed`` for tasks that completed with failure,
* ``prefect-batch.job.completed`` for jobs that completed,
* ``prefect-batch.pool.resized`` for pools whose resize finished (``allocationState`` steady),

so Automations can react to jobs nobody follows (node and job events name the account in their
payload). The watcher reads a window of state-transition times that ends a couple of seconds in
the past (a transaction stamps its times a little before it commits) and moves the window on
after each poll; every change is seen once. It starts at the present: nothing that happened
before it started is emitted. Tasks are read only for the jobs whose failed-task counter grew,
through the (job, state) index, at most 500 per job per poll.

It needs a Prefect API (``PREFECT_API_URL``); without one it emits nothing. It changes nothing
in the store.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import and_, func, or_, select

from prefect_batch.prefect import events
from prefect_batch.store import Store
from prefect_batch.store.schema import jobs, nodes, pools, tasks

__all__ = ["EventWatcher"]

log = logging.getLogger(__name__)

LAG_SECONDS = 2.0
"""The window ends this long before now: a transaction commits a little after its timestamps."""
MAX_TASK_EVENTS = 500
"""Most task events per job per poll (a mass failure is summed up by the job's own event)."""

_NODE_EVENT_STATES = ("unusable", "starttaskfailed")


class EventWatcher:
    """Polls a store and emits Prefect events (see the module docstring).

    Args:
        store: The batch store (every account in it).
        interval_seconds: Time between polls.
        clock: Wall-clock seconds (the store's timestamps are UNIX seconds).
        emit: Where events go; :mod:`prefect_batch.prefect.events` by default. Tests pass a
            recorder.
    """

    def __init__(
        self,
        store: Store,
        *,
        interval_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        emit: Any = events,
    ) -> None:
        self.store = store
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.emit = emit
        self._since = clock() - LAG_SECONDS
        with store.read() as conn:
            self._failed = dict(conn.execute(select(jobs.c.pk, jobs.c.n_failed)).all())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread ----------------------------------------------------------------------------

    def start(self) -> EventWatcher:
        """Poll on a daemon thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="prefect-events", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop polling (after one last poll)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - a failed poll is retried at the next one
                log.exception("could not read the store for Prefect events")
        try:
            self.poll()
        except Exception:  # noqa: BLE001
            log.debug("last poll failed", exc_info=True)

    # -- one poll ---------------------------------------------------------------------------

    def poll(self) -> int:
        """Emit the events of one window; returns how many were emitted."""
        since, until = self._since, self.clock() - LAG_SECONDS
        if until <= since:
            return 0
        emitted = 0
        with self.store.read() as conn:
            emitted += self._nodes(conn, since, until)
            emitted += self._pools(conn, since, until)
            emitted += self._tasks(conn, since, until)
            emitted += self._jobs(conn, since, until)
        self._since = until  # windows never overlap: each change is read once
        return emitted

    def _nodes(self, conn: Any, since: float, until: float) -> int:
        rows = conn.execute(
            select(
                nodes.c.pk,
                nodes.c.node_id,
                nodes.c.state,
                nodes.c.state_transition_time,
                nodes.c.errors,
                nodes.c.start_task_info,
                pools.c.id.label("pool_id"),
                pools.c.account,
            )
            .join(pools, pools.c.pk == nodes.c.pool_pk)
            .where(
                nodes.c.state.in_(_NODE_EVENT_STATES),
                nodes.c.state_transition_time > since,
                nodes.c.state_transition_time <= until,
            )
        ).all()
        for r in rows:
            detail: dict[str, Any] = {"account": r.account, "errors": r.errors or []}
            failure = (r.start_task_info or {}).get("failureInfo")
            if failure:
                detail["startTaskFailureInfo"] = failure
            self.emit.node_state_changed(r.pool_id, r.node_id, r.state, detail)
        return len(rows)

    def _pools(self, conn: Any, since: float, until: float) -> int:
        current = (
            select(func.count())
            .select_from(nodes)
            .where(nodes.c.pool_pk == pools.c.pk, nodes.c.leaving.is_(False))
            .scalar_subquery()
        )
        rows = conn.execute(
            select(
                pools.c.pk,
                pools.c.id,
                pools.c.target_dedicated,
                pools.c.allocation_state_transition_time,
                pools.c.resize_errors,
                current.label("current"),
            ).where(
                pools.c.allocation_state == "steady",
                pools.c.allocation_state_transition_time > since,
                pools.c.allocation_state_transition_time <= until,
            )
        ).all()
        for r in rows:
            self.emit.pool_resized(r.id, r.current, r.target_dedicated)
        return len(rows)

    def _tasks(self, conn: Any, since: float, until: float) -> int:
        grown = [
            r
            for r in conn.execute(
                select(jobs.c.pk, jobs.c.id, jobs.c.pool_id, jobs.c.n_failed).where(
                    or_(jobs.c.state != "completed", jobs.c.state_transition_time > since)
                )
            ).all()
            if r.n_failed > self._failed.get(r.pk, 0)
        ]
        count = 0
        for job in grown:
            rows = conn.execute(
                select(tasks)
                .where(
                    and_(
                        tasks.c.job_pk == job.pk,
                        tasks.c.state == "completed",
                        tasks.c.result == "failure",
                        tasks.c.state_transition_time > since,
                        tasks.c.state_transition_time <= until,
                    )
                )
                .order_by(tasks.c.state_transition_time)
                .limit(MAX_TASK_EVENTS)
            ).all()
            for r in rows:
                self.emit.task_failed(job.id, job.pool_id, _task_result(r))
            count += len(rows)
            # The counter counts as seen once the window has passed all of its failures (one
            # may still be inside the lag and is read at the next poll).
            latest = conn.execute(
                select(func.max(tasks.c.state_transition_time)).where(
                    tasks.c.job_pk == job.pk,
                    tasks.c.state == "completed",
                    tasks.c.result == "failure",
                )
            ).scalar()
            if latest is None or latest <= until:
                self._failed[job.pk] = job.n_failed
        return count

    def _jobs(self, conn: Any, since: float, until: float) -> int:
        rows = conn.execute(
            select(jobs).where(
                jobs.c.state == "completed",
                jobs.c.state_transition_time > since,
                jobs.c.state_transition_time <= until,
            )
        ).all()
        for r in rows:
            self.emit.job_completed(
                r.id,
                r.pool_id,
                {
                    "account": r.account,
                    "state": r.state,
                    "terminateReason": r.terminate_reason,
                    "tasks": r.n_active + r.n_running + r.n_succeeded + r.n_failed,
                    "succeeded": r.n_succeeded,
                    "failed": r.n_failed,
                    "unfinished": r.n_active + r.n_running,
                },
            )
            self._failed.pop(r.pk, None)
        return len(rows)


def _task_result(row: Any) -> Any:
    from prefect_batch.prefect.results import BatchTaskResult

    failure = row.failure_info or {}
    last = (row.node_history or [{}])[-1]  # the node of the last attempt
    return BatchTaskResult(
        task_id=row.id,
        state=row.state,
        result=row.result,
        prefect_state="Failed",
        exit_code=row.exit_code,
        node_id=last.get("nodeId"),
        pool_id=last.get("poolId"),
        retry_count=row.retry_count,
        requeue_count=row.requeue_count,
        failure_category=failure.get("category"),
        failure_code=failure.get("code"),
        failure_message=failure.get("message"),
    )
