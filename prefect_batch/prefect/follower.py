"""Following a batch job from a Prefect flow: task runs, progress, failures, events.

:class:`JobFollower` polls the service from the flow's thread and reports what it sees:

* **Up to a threshold** of tasks in the job (default 200), each batch task appears as a Prefect
  task run named by its id. The run starts when the follower first sees the task running and
  ends when the task completes: ``Completed``, ``Failed``, ``TimedOut`` (its wall clock ran
  out), ``Cancelled`` (terminated, or never run because the job ended) — with the exit code,
  node, retry and requeue counts and the tail of ``stdout.txt``/``stderr.txt`` in its logs. A
  task whose node was lost or removed while it ran is requeued by the service: that run ends
  ``Crashed`` and the next run-through is a new task run of the same name.
* **Above it**, the flow reports a progress artifact and, for failed tasks only, task runs.

Both ways: a progress artifact (updated at most every ``progress_seconds``), a table artifact of
failed and unfinished tasks at the end, ``prefect-batch.task.failed`` events (up to a cap), node
``unusable``/``starttaskfailed`` events for the job's pool, and ``prefect-batch.job.completed``.

Why this shape: a Prefect task run costs a Prefect server ~25-36 ms of CPU, and the engine
dispatches ~1,500 tasks/s. The engine never waits on Prefect: the follower only reads the store
(one counts query per poll; a task listing per poll only in the detailed mode, and on new
failures above it), and each task run lives in a thread of its own pool that blocks on a
condition until the follower says how the batch task ended.

This module does not create jobs or add tasks (see :mod:`prefect_batch.prefect.job`).
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import logging
import re
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError
from prefect.states import Cancelled, Crashed, Failed
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_batch.exceptions import BatchNotFoundError, PrefectBatchError
from prefect_batch.models import BatchTask
from prefect_batch.prefect import events
from prefect_batch.prefect.results import BatchJobResult, BatchTaskResult

if TYPE_CHECKING:
    from prefect_batch.client import BatchClient

__all__ = ["FollowOptions", "JobFollower", "TaskRunMirror", "artifact_key", "flow_logger"]

_IN_FLIGHT = ("preparing", "running")
_BAD_NODE_STATES = ("unusable", "starttaskfailed")
_MIRROR_WAIT_SECONDS = 1.0
_DRAIN_SECONDS = 60.0
_TABLE_ROWS_MAX = 1000


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def flow_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("prefect_batch.flows")


def artifact_key(job_id: str, suffix: str) -> str:
    """An artifact key for a job: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{job_id}-{suffix}".lower()).strip("-")


class FollowOptions:
    """How a job is followed.

    Args:
        task_run_threshold: Most tasks in a job for which every task gets a task run.
        log_tail_bytes: Bytes of stdout/stderr put in a task run's logs.
        poll_seconds: Interval between two looks at the job.
        progress_seconds: Least interval between two progress artifact updates.
        max_task_runs_open: Threads (so task runs in the Running state) at most; later ones
            start when one ends.
        max_failure_events: ``task.failed`` events per job at most.
    """

    def __init__(
        self,
        *,
        task_run_threshold: int = 200,
        log_tail_bytes: int = 2048,
        poll_seconds: float = 0.2,
        progress_seconds: float = 2.0,
        max_task_runs_open: int = 64,
        max_failure_events: int = 100,
    ) -> None:
        if task_run_threshold < 0 or log_tail_bytes < 0 or poll_seconds <= 0:
            raise ValueError("thresholds must be >= 0 and poll_seconds > 0")
        self.task_run_threshold = task_run_threshold
        self.log_tail_bytes = log_tail_bytes
        self.poll_seconds = poll_seconds
        self.progress_seconds = progress_seconds
        self.max_task_runs_open = max(1, max_task_runs_open)
        self.max_failure_events = max_failure_events


class TaskRunMirror:
    """One Prefect task run standing for one run-through of a batch task.

    The follower feeds it snapshots; the task run's thread waits on it until :meth:`finish`.
    A run-through ends when the task completes (``completed``), is requeued (``requeued``), never
    ran before the job ended (``not-run``), cannot run because a parent failed (``blocked``), or
    the flow stops following it (``abandoned``).
    """

    def __init__(self, task_id: str, epoch: int, snapshot: BatchTask) -> None:
        self.task_id = task_id
        self.epoch = epoch
        self.first = snapshot
        self._snapshot = snapshot
        self._outcome: str | None = None
        self._detail = ""
        self._notes: list[str] = []
        self._cond = threading.Condition()

    def update(self, snapshot: BatchTask) -> None:
        """A newer snapshot while the task runs; notes a retry."""
        with self._cond:
            before = _retries(self._snapshot)
            after = _retries(snapshot)
            if after > before:
                self._notes.append(
                    f"run {after} failed; the batch service retries it (retryCount={after})"
                )
            self._snapshot = snapshot
            self._cond.notify_all()

    def finish(self, outcome: str, snapshot: BatchTask | None = None, detail: str = "") -> None:
        """End the run-through; the task run's thread reports and returns."""
        with self._cond:
            if self._outcome is not None:
                return
            if snapshot is not None:
                if _retries(snapshot) > _retries(self._snapshot):
                    self._notes.append(
                        f"retried {_retries(snapshot) - _retries(self._snapshot)} more time(s) "
                        "before completing"
                    )
                self._snapshot = snapshot
            self._outcome = outcome
            self._detail = detail
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` was called."""
        return self._outcome is not None

    def wait(self, timeout: float) -> tuple[str | None, BatchTask, list[str], str]:
        """Wait up to ``timeout`` for the end; returns (outcome, snapshot, new notes, detail)."""
        with self._cond:
            if self._outcome is None and not self._notes:
                self._cond.wait(timeout)
            notes, self._notes = self._notes, []
            return self._outcome, self._snapshot, notes, self._detail


def _retries(t: BatchTask) -> int:
    return (t.execution_info.retry_count or 0) if t.execution_info is not None else 0


def _requeues(t: BatchTask) -> int:
    return (t.execution_info.requeue_count or 0) if t.execution_info is not None else 0


class _Reporter:
    """What a task run's thread needs to write its logs (kept out of Prefect's parameters)."""

    def __init__(self, client: BatchClient, job_id: str, tail_bytes: int) -> None:
        self.client = client
        self.job_id = job_id
        self.tail_bytes = tail_bytes

    def tail(self, task_id: str, name: str) -> str | None:
        """The last ``tail_bytes`` of a task file, or None when it cannot be read."""
        if self.tail_bytes <= 0:
            return None
        try:
            props = self.client.get_task_file_properties(self.job_id, task_id, name)
            size = (props.properties.content_length if props.properties else None) or 0
            offset = max(0, size - self.tail_bytes)
            data = self.client.get_task_file(self.job_id, task_id, name, offset=offset)
        except PrefectBatchError:
            return None
        text = data.decode("utf-8", "replace")
        return ("..." + text) if offset else text


@task(
    name="batch-task",
    task_run_name="{task_id}",
    cache_policy=NO_CACHE,
    persist_result=False,
)
def batch_task_run(task_id: str, mirror: TaskRunMirror, reporter: _Reporter) -> Any:
    """The Prefect task run of one run-through of a batch task: waits for it, then reports."""
    logger = get_run_logger()
    first = mirror.first
    node = first.node_info.node_id if first.node_info is not None else None
    if _value(first.state) in _IN_FLIGHT:
        logger.info("batch task %s runs on node %s", task_id, node)
    if mirror.epoch:
        logger.info("run-through after %d requeue(s)", mirror.epoch)
    while True:
        outcome, snapshot, notes, detail = mirror.wait(_MIRROR_WAIT_SECONDS)
        for note in notes:
            logger.warning(note)
        if outcome is not None:
            break
    return _report(logger, task_id, outcome, snapshot, detail, reporter)


def _report(
    logger: Any, task_id: str, outcome: str, snapshot: BatchTask, detail: str, reporter: _Reporter
) -> Any:
    result = BatchTaskResult.from_task(snapshot)
    if outcome == "requeued":
        message = (
            f"batch task {task_id}: its node {result.node_id or '?'} was lost or removed while it "
            f"ran; the service requeued it (requeueCount={result.requeue_count}) and it runs "
            "again as a new task run"
        )
        logger.warning(message)
        return Crashed(message=message)
    if outcome in ("not-run", "blocked", "abandoned"):
        logger.warning("batch task %s: %s", task_id, detail)
        return Cancelled(message=f"batch task {task_id}: {detail}")
    timing = ""
    if result.start_time and result.end_time:
        seconds = (result.end_time - result.start_time).total_seconds()
        timing = f" in {seconds:.3f} s"
    summary = (
        f"batch task {task_id} {result.result or 'ended'}{timing} on node {result.node_id} "
        f"(pool {result.pool_id}): exit code {result.exit_code}, retries {result.retry_count}, "
        f"requeues {result.requeue_count}"
    )
    if result.failure_code:
        summary += f"; {result.failure_category}/{result.failure_code}: {result.failure_message}"
    (logger.info if result.succeeded else logger.error)(summary)
    for name in ("stdout.txt", "stderr.txt"):
        text = reporter.tail(task_id, name)
        if text:
            logger.info("%s (last %d bytes):\n%s", name, reporter.tail_bytes, text.rstrip("\n"))
    state = result.prefect_state
    if state == "Completed":
        return result
    # No ``data``: Prefect logs a failed state's repr, and the flow returns every result anyway.
    message = result.describe()
    if state == "TimedOut":
        return Failed(name="TimedOut", message=message)
    if state == "Cancelled":
        return Cancelled(message=message)
    if state == "Crashed":
        return Crashed(message=message)
    return Failed(message=message)


class _Seen:
    __slots__ = ("mirror", "epoch", "final")

    def __init__(self) -> None:
        self.mirror: TaskRunMirror | None = None
        self.epoch = -1  # last run-through given a task run
        self.final = False


class JobFollower:
    """Reports one job to Prefect while a flow waits for it; see the module docstring.

    Call :meth:`poll` (or :meth:`follow`) from the flow's thread, :meth:`close` at the end.

    Args:
        client: The client to read the job with.
        job_id: The job.
        pool_id: Its pool (for node events).
        options: Thresholds and intervals.
    """

    def __init__(
        self,
        client: BatchClient,
        job_id: str,
        *,
        pool_id: str | None,
        options: FollowOptions | None = None,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.pool_id = pool_id
        self.options = options or FollowOptions()
        self.task_count = 0  # tasks known to be in the job
        self._seen: dict[str, _Seen] = {}
        self._failure_events = 0
        self._runner: ThreadPoolTaskRunner | None = None
        self._futures: list[Any] = []
        self._reporter = _Reporter(client, job_id, self.options.log_tail_bytes)
        self._progress_id: Any = None
        self._progress_at = 0.0
        self._progress_last: float | None = None
        self._node_states: dict[str, str] = {}
        self._nodes_at = 0.0
        self._failed_count = 0
        self._failures_at = 0.0
        self._open_at = 0.0
        self.last_tasks: list[BatchTask] | None = None
        self._blocked_since: float | None = None
        self._closed = False
        # Task runs and artifacts belong to a flow run; outside one the job is only followed
        # (and Prefect's ephemeral server is not started for nothing).
        self.reporting = FlowRunContext.get() is not None

    # -- modes ---------------------------------------------------------------------------------

    @property
    def detailed(self) -> bool:
        """Every task gets a task run (the job has at most ``task_run_threshold`` tasks)."""
        return self.task_count <= self.options.task_run_threshold

    def _ensure_runner(self) -> ThreadPoolTaskRunner:
        if self._runner is None:
            self._runner = ThreadPoolTaskRunner(max_workers=self.options.max_task_runs_open)
            self._runner.__enter__()
        return self._runner

    def _submit(self, mirror: TaskRunMirror) -> None:
        if not self.reporting:
            return
        future = self._ensure_runner().submit(
            batch_task_run,
            {"task_id": mirror.task_id, "mirror": mirror, "reporter": self._reporter},
        )
        self._futures.append(future)

    # -- one look ------------------------------------------------------------------------------

    def poll(self) -> Any:
        """Look at the job once, report what changed; returns the job's task counts."""
        counts = self.client.get_job_task_counts(self.job_id).task_counts
        self.task_count = max(self.task_count, counts.active + counts.running + counts.completed)
        if self.detailed:
            self.last_tasks = self.client.list_tasks(self.job_id)
            for t in self.last_tasks:
                self._observe(t)
        else:
            self.last_tasks = None
            self._refresh_open()
            if counts.failed > self._failed_count and time.monotonic() - self._failures_at >= 2.0:
                # New failures: one listing of the completed tasks, at most every 2 s.
                self._failures_at = time.monotonic()
                self._failed_count = counts.failed
                for t in self.client.list_tasks(self.job_id, state="completed"):
                    if _value(t.execution_info.result if t.execution_info else None) == "failure":
                        self._observe(t)
        self._failed_count = min(self._failed_count, counts.failed)  # reactivated tasks
        self._progress(counts)
        self._watch_nodes()
        return counts

    def _observe(self, t: BatchTask) -> None:
        seen = self._seen.get(t.id)
        if seen is None:
            seen = self._seen[t.id] = _Seen()
        if seen.final:
            return
        epoch = _requeues(t)
        state = _value(t.state)
        if seen.mirror is not None and epoch > seen.mirror.epoch:
            seen.mirror.finish("requeued", t)
            seen.mirror = None
        if state in _IN_FLIGHT:
            if seen.mirror is None and epoch > seen.epoch:
                self._open(seen, t, epoch)
            elif seen.mirror is not None:
                seen.mirror.update(t)
        elif state == "completed":
            if seen.mirror is None:
                self._open(seen, t, epoch)
            assert seen.mirror is not None
            seen.mirror.finish("completed", t)
            seen.mirror = None
            seen.final = True
            result = BatchTaskResult.from_task(t)
            if result.failed:
                self._on_failure(result)
        elif seen.mirror is not None:  # back to active: a retry (same run-through)
            seen.mirror.update(t)

    def _refresh_open(self) -> None:
        """Above the threshold, runs opened before the job grew past it are still followed."""
        now = time.monotonic()
        if now - self._open_at < 1.0:
            return
        self._open_at = now
        for task_id, seen in list(self._seen.items()):
            if seen.mirror is not None:
                try:
                    self._observe(self.client.get_task(self.job_id, task_id))
                except BatchNotFoundError:
                    seen.mirror.finish("abandoned", None, "the task was deleted")
                    seen.mirror = None

    def mark_reported(self, task_ids: Iterable[str]) -> None:
        """Tasks an earlier attempt reported already: no task run for them again."""
        for task_id in task_ids:
            self._seen.setdefault(task_id, _Seen()).final = True

    def forget(self, task_id: str) -> None:
        """A completed task was reactivated: its next run-through gets a new task run."""
        seen = self._seen.pop(task_id, None)
        if seen is not None and seen.mirror is not None:
            seen.mirror.finish("abandoned", None, "the task was reactivated")

    def _open(self, seen: _Seen, t: BatchTask, epoch: int) -> None:
        seen.mirror = TaskRunMirror(t.id, epoch, t)
        seen.epoch = epoch
        self._submit(seen.mirror)

    def _on_failure(self, result: BatchTaskResult) -> None:
        if self._failure_events < self.options.max_failure_events:
            events.task_failed(self.job_id, self.pool_id, result)
            self._failure_events += 1
            if self._failure_events == self.options.max_failure_events:
                flow_logger().warning(
                    "job %s: %d task.failed events emitted; no more for this job",
                    self.job_id,
                    self._failure_events,
                )

    # -- progress and nodes --------------------------------------------------------------------

    def _progress(self, counts: Any, *, force: bool = False) -> None:
        if not self.reporting:
            return
        now = time.monotonic()
        if not force and now - self._progress_at < self.options.progress_seconds:
            return
        total = counts.active + counts.running + counts.completed
        percent = 100.0 * counts.completed / total if total else 0.0
        if not force and percent == self._progress_last:
            return
        description = (
            f"job {self.job_id}: {counts.completed} of {total} tasks completed "
            f"({counts.succeeded} succeeded, {counts.failed} failed), {counts.running} running"
        )
        try:
            if self._progress_id is None:
                self._progress_id = create_progress_artifact(
                    percent, key=artifact_key(self.job_id, "progress"), description=description
                )
            else:
                update_progress_artifact(self._progress_id, percent, description=description)
        except MissingContextError:
            return
        self._progress_at = now
        self._progress_last = percent

    def _watch_nodes(self) -> None:
        now = time.monotonic()
        if self.pool_id is None or now - self._nodes_at < 2.0:
            return
        self._nodes_at = now
        try:
            found = self.client.list_nodes(self.pool_id)
        except BatchNotFoundError:
            return
        for node in found:
            state = str(_value(node.state))
            before = self._node_states.get(node.id)
            self._node_states[node.id] = state
            if state in _BAD_NODE_STATES and before != state:
                errors = [e.message for e in node.errors or [] if e.message]
                flow_logger().warning(
                    "pool %s: node %s is %s%s",
                    self.pool_id,
                    node.id,
                    state,
                    f" ({'; '.join(errors)})" if errors else "",
                )
                events.node_state_changed(self.pool_id, node.id, state, {"errors": errors})

    # -- following to the end ------------------------------------------------------------------

    def done(self, counts: Any, job_state: str) -> bool:
        """Nothing will change any more: no task active or running, or the job has ended."""
        if counts.active == 0 and counts.running == 0:
            return True
        if job_state == "completed" and counts.running == 0:
            return True
        return self._all_blocked(counts)

    def _all_blocked(self, counts: Any) -> bool:
        """Every active task waits on a failed parent (Azure leaves them active for ever)."""
        if counts.running or not counts.failed or not counts.active:
            self._blocked_since = None
            return False
        active = self.client.list_tasks(self.job_id, state="active")
        if not active or any(t.depends_on is None for t in active):
            self._blocked_since = None
            return False
        failed = {
            t.id
            for t in self.client.list_tasks(self.job_id, state="completed")
            if t.execution_info is not None and _value(t.execution_info.result) == "failure"
        }
        blocked = _blocked_ids(active, failed)
        if len(blocked) < len(active):
            self._blocked_since = None
            return False
        now = time.monotonic()
        if self._blocked_since is None:
            self._blocked_since = now
            return False
        return now - self._blocked_since >= 1.0  # seen twice, a second apart

    def follow(
        self,
        *,
        until: Any = None,
        timeout: float | None = None,
    ) -> Any:
        """Poll until ``until(counts, job_state)`` (default :meth:`done`) holds; return counts.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        check = until or self.done
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.poll()
            job_state = str(_value(self.client.get_job(self.job_id).state))
            if check(counts, job_state):
                return counts
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} did not get there within {timeout} s")
            time.sleep(self.options.poll_seconds)

    def finalize(self) -> BatchJobResult:
        """Report the end: remaining task runs, the failed-tasks table, the job event.

        Tasks that never completed end as ``Cancelled`` task runs (detailed mode) and appear in
        the table. Returns the job's result.
        """
        counts = self.client.get_job_task_counts(self.job_id).task_counts
        # The last progress update is a request to the Prefect API: made while the tasks are
        # listed (a thread of its own, in this flow run's context).
        context = contextvars.copy_context()
        last_progress = threading.Thread(
            target=context.run, args=(self._final_progress, counts), daemon=True
        )
        last_progress.start()
        job = self.client.get_job(self.job_id)
        job_state = str(_value(job.state))
        reason = job.execution_info.termination_reason if job.execution_info else None
        snapshot = self.client.list_tasks(self.job_id)
        failed_ids = {
            t.id
            for t in snapshot
            if t.execution_info is not None and _value(t.execution_info.result) == "failure"
        }
        active = [t for t in snapshot if _value(t.state) != "completed"]
        blocked = _blocked_ids(active, failed_ids) if failed_ids else set()
        results: list[BatchTaskResult] = []
        for t in snapshot:
            result = BatchTaskResult.from_task(t)
            results.append(result)
            if result.state == "completed":
                open_run = t.id in self._seen and self._seen[t.id].mirror is not None
                if self.detailed or result.failed or open_run:
                    self._observe(t)
                continue
            if t.id in blocked:
                detail = "never ran: a task it depends on failed"
                outcome = "blocked"
            elif job_state == "completed":
                detail = f"never ran: the job ended ({reason or 'terminated'}) first"
                outcome = "not-run"
            else:
                detail = f"the flow stopped following it while it was {result.state}"
                outcome = "abandoned"
            seen = self._seen.setdefault(t.id, _Seen())
            if seen.mirror is None and self.detailed:
                self._open(seen, t, _requeues(t))
            if seen.mirror is not None:
                seen.mirror.finish(outcome, t, detail)
                seen.mirror = None
            seen.final = True
        self._drain()
        result = BatchJobResult(
            job_id=self.job_id,
            pool_id=self.pool_id,
            state=job_state,
            terminate_reason=reason,
            tasks=results,
        )
        last_progress.join(timeout=_DRAIN_SECONDS)
        self._table(result)
        events.job_completed(
            self.job_id,
            self.pool_id,
            {
                "state": job_state,
                "terminateReason": reason,
                "tasks": len(results),
                "succeeded": result.succeeded_count,
                "failed": len(result.failed_tasks),
                "unfinished": len(result.unfinished_tasks),
            },
        )
        return result

    def _final_progress(self, counts: Any) -> None:
        try:
            self._progress(counts, force=True)
        except Exception:  # a progress bar is never worth failing the flow for
            flow_logger().debug("could not update the progress artifact", exc_info=True)

    def _table(self, result: BatchJobResult) -> None:
        if not self.reporting:
            return
        rows = [t.table_row() for t in result.failed_tasks + result.unfinished_tasks]
        if not rows:
            return
        more = len(rows) - _TABLE_ROWS_MAX
        try:
            create_table_artifact(
                rows[:_TABLE_ROWS_MAX],
                key=artifact_key(self.job_id, "failed-tasks"),
                description=(
                    f"job {self.job_id}: {len(result.failed_tasks)} failed, "
                    f"{len(result.unfinished_tasks)} never completed"
                    + (f" ({more} more not shown)" if more > 0 else "")
                ),
            )
        except MissingContextError:
            pass

    def _drain(self, timeout: float = _DRAIN_SECONDS) -> None:
        """Wait for the task runs to report (each has been told how its task ended)."""
        futures = [f.wrapped_future for f in self._futures]
        concurrent.futures.wait(futures, timeout=timeout)
        self._futures = [f for f in self._futures if not f.wrapped_future.done()]

    def close(self, *, abandon: bool = True) -> None:
        """End open task runs (``abandon``: as Cancelled) and stop the task run threads."""
        if self._closed:
            return
        self._closed = True
        if abandon:
            for seen in self._seen.values():
                if seen.mirror is not None:
                    seen.mirror.finish("abandoned", None, "the flow stopped following it")
                    seen.mirror = None
        if self._runner is not None:
            self._drain()
            self._runner.__exit__(None, None, None)
            self._runner = None


def _int_id(task_id: str) -> int | None:
    return int(task_id) if task_id.isdigit() else None


def _blocked_ids(active: list[BatchTask], failed: set[str]) -> set[str]:
    """Active tasks that can never run: they depend, directly or not, on a failed task."""
    bad = set(failed)
    blocked: set[str] = set()
    changed = True
    while changed:
        changed = False
        bad_ints = {i for i in (_int_id(x) for x in bad) if i is not None}
        for t in active:
            if t.id in blocked or t.depends_on is None:
                continue
            parents = set(t.depends_on.task_ids or [])
            hit = bool(parents & bad) or any(
                r.start <= i <= r.end for r in t.depends_on.task_id_ranges or [] for i in bad_ints
            )
            if hit:
                blocked.add(t.id)
                bad.add(t.id)
                changed = True
    return blocked
