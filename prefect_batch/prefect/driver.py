"""The job driver flow: pool + job + tasks in, results out, every task visible in Prefect.

:func:`run_batch_job` ensures the pool (a :class:`~prefect_batch.blocks.BatchPool` block, its
name, or its fields), creates the job, adds the tasks (command lines, task dicts, or a generator
of them, streamed in chunks), follows them (see :mod:`prefect_batch.prefect.follower` for what
Prefect shows), and returns a :class:`~prefect_batch.prefect.results.BatchJobResult`. The flow
fails with :class:`~prefect_batch.prefect.results.BatchJobFailedError` when a task failed or
never ran (``fail_on_task_failure``). A retried run resumes the same job (same id) and adds
nothing twice.

:func:`drive_job` is the same without the flow around it, for flows of your own (the scenario
flows use it) — it must run inside a flow run for the task runs to appear.

The flow's ``tasks`` parameter is neither validated item by item nor sent to the Prefect API
(a generator would be consumed, and 100,000 command lines are not a parameter anyone wants to
read): :class:`BatchJobFlow` records a short description of it instead.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from prefect import Flow
from prefect.context import FlowRunContext

from prefect_batch.models import BatchJobCreateOptions, duration_to_iso
from prefect_batch.prefect.blocks import BatchAccount, BatchPool
from prefect_batch.prefect.clients import load_pool, open_client
from prefect_batch.prefect.follower import FollowOptions, flow_logger
from prefect_batch.prefect.job import BatchJobHandle, TaskSpec, job_spec
from prefect_batch.prefect.results import BatchJobFailedError, BatchJobResult

if TYPE_CHECKING:
    from prefect_batch.client import BatchClient

__all__ = ["BatchJobFlow", "FlowRunInfo", "drive_job", "flow_run_info", "run_batch_job"]

ADD_CHUNK = 1000
"""Tasks added per request when streaming a generator."""
_OPAQUE_DESCRIBED = 20


class FlowRunInfo:
    """What a flow needs to know about the run it is in (defaults outside a run)."""

    def __init__(self) -> None:
        ctx = FlowRunContext.get()
        run = ctx.flow_run if ctx is not None else None
        self.run_count: int = (run.run_count if run is not None else 1) or 1
        self.flow_run_id: uuid.UUID = run.id if run is not None else uuid.uuid4()
        self.flow_run_name: str = run.name if run is not None else "local"
        self.flow_name: str = ctx.flow.name if ctx is not None and ctx.flow is not None else "flow"
        self.retries: int = (ctx.flow.retries or 0) if ctx is not None and ctx.flow else 0

    @property
    def will_retry(self) -> bool:
        """Whether Prefect runs the flow again if this attempt fails."""
        return self.run_count <= self.retries

    def job_id(self, template: str | None = None) -> str:
        """A job id from a template with ``{flow_name}``, ``{flow_run_id}`` (12 hex digits),
        ``{flow_run_name}``; the same for every attempt of a flow run."""
        raw = (template or "{flow_name}-{flow_run_id}").format(
            flow_name=self.flow_name,
            flow_run_id=self.flow_run_id.hex[:12],
            flow_run_name=self.flow_run_name,
        )
        return re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")[:64] or "job"


def flow_run_info() -> FlowRunInfo:
    """The current flow run's attempt, ids and retries."""
    return FlowRunInfo()


def _describe_opaque(value: Any) -> Any:
    """What the Prefect API records for a ``tasks`` parameter."""
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        if len(value) <= _OPAQUE_DESCRIBED and all(isinstance(v, str) for v in value):
            return list(value)
        return f"<{len(value)} tasks>"
    return f"<{type(value).__name__}>"


class BatchJobFlow(Flow):  # type: ignore[type-arg]
    """A Prefect flow whose ``tasks`` parameter is passed through as given.

    Prefect validates every parameter with pydantic and sends it, JSON-encoded, to the API;
    for a task list that is wasted work (and for a generator, its end). Here ``tasks`` skips
    both; the API records ``"<5000 tasks>"`` or ``"<generator>"``.
    """

    opaque_parameters: tuple[str, ...] = ("tasks",)

    def _split(self, parameters: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        opaque = {k: parameters[k] for k in self.opaque_parameters if k in parameters}
        rest = {k: v for k, v in parameters.items() if k not in opaque}
        return opaque, rest

    def validate_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        opaque, rest = self._split(parameters)
        validated = super().validate_parameters(rest)
        validated.update(opaque)
        return validated

    def serialize_parameters(self, parameters: dict[str, Any]) -> dict[str, Any]:
        opaque, rest = self._split(parameters)
        out = super().serialize_parameters(rest)
        out.update({k: _describe_opaque(v) for k, v in opaque.items()})
        return out

    def with_options(self, **kwargs: Any) -> BatchJobFlow:
        new = super().with_options(**kwargs)
        new.__class__ = type(self)  # Flow.with_options builds a plain Flow; keep ours
        return new  # type: ignore[return-value]


def _chunks(items: Iterable[TaskSpec], size: int) -> Iterator[list[TaskSpec]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _add_all(handle: BatchJobHandle, tasks: Iterable[TaskSpec] | None, threshold: int) -> int:
    """Add every task; a generator is streamed, the job followed between chunks."""
    if tasks is None:
        return 0
    if isinstance(tasks, (str, bytes, Mapping)):
        raise TypeError("tasks is a list (or iterable) of command lines or task dicts")
    added = 0
    if isinstance(tasks, Sequence):
        added += len(handle.add_tasks(tasks))
        return added
    # The first chunk holds more than the threshold, so the reporting mode is settled by it.
    for chunk in _chunks(tasks, max(ADD_CHUNK, threshold + 1)):
        added += len(handle.add_tasks(chunk))
        handle.follower.poll()
    return added


def drive_job(
    client: BatchClient,
    tasks: Iterable[TaskSpec] | None,
    *,
    pool_id: str | None,
    job: Mapping[str, Any] | BatchJobCreateOptions | None = None,
    job_id: str | None = None,
    max_wall_clock_seconds: float | None = None,
    options: FollowOptions | None = None,
    fail_on_task_failure: bool = True,
    resume: bool = False,
) -> BatchJobResult:
    """Create (or resume) a job, add its tasks, follow them to the end; see the module docs.

    On the last attempt of the flow run the job ends by itself when its last task completes
    (``onAllTasksComplete: terminatejob``, set once every task is in) unless the job spec says
    ``noaction``. On an attempt that Prefect will retry, a failed job is left active so that
    the retry resumes it: it re-adds the same ids (nothing that succeeded runs again) and its
    failed tasks are reactivated.

    Raises:
        BatchJobFailedError: A task failed or never ran, and ``fail_on_task_failure``.
    """
    info = flow_run_info()
    options = options or FollowOptions()
    if job_id is None and not _has_id(job):
        job_id = info.job_id()
    spec = job_spec(job, job_id, pool_id)
    if max_wall_clock_seconds is not None:
        constraints = dict(spec.get("constraints") or {})
        constraints["maxWallClockTime"] = duration_to_iso(timedelta(seconds=max_wall_clock_seconds))
        spec["constraints"] = constraints
    terminate_when_done = spec.get("onAllTasksComplete", "terminatejob") == "terminatejob"
    retry_pending = fail_on_task_failure and info.will_retry
    spec["onAllTasksComplete"] = "noaction"  # until every task is in: see docstring
    logger = flow_logger()
    handle = BatchJobHandle.open(
        client, spec, resume=resume or info.run_count > 1, options=options, attempt=info.run_count
    )
    logger.info(
        "%s job %s on pool %s",
        "resumed" if handle.resumed else "created",
        handle.job_id,
        handle.pool_id,
    )
    try:
        added = _add_all(handle, tasks, options.task_run_threshold)
        logger.info("job %s: %d tasks added", handle.job_id, added)
        if terminate_when_done and not retry_pending:
            if handle.follower.task_count:
                client.update_job(handle.job_id, {"onAllTasksComplete": "terminatejob"})
            else:
                handle.terminate("AllTasksComplete")
        handle.follower.follow()
        if terminate_when_done and retry_pending:
            current = BatchJobResult(job_id=handle.job_id, state="active", tasks=handle.results())
            if not current.succeeded:
                raise BatchJobFailedError(current)  # the job stays active for the retry
            handle.terminate("AllTasksComplete")
        result = handle.finalize()
    finally:
        handle.close()
    logger.info(
        "job %s %s: %d tasks, %d succeeded, %d failed, %d never completed",
        result.job_id,
        result.terminate_reason or result.state,
        len(result.tasks),
        result.succeeded_count,
        len(result.failed_tasks),
        len(result.unfinished_tasks),
    )
    if fail_on_task_failure:
        result.raise_for_failures()
    return result


def _has_id(job: Mapping[str, Any] | BatchJobCreateOptions | None) -> bool:
    if isinstance(job, BatchJobCreateOptions):
        return True
    return bool(job and job.get("id"))


def _run_batch_job(
    tasks: Iterable[str | dict[str, Any]] | None = None,
    pool: BatchPool | str | None = None,
    job: dict[str, Any] | None = None,
    job_id: str | None = None,
    account: BatchAccount | str | None = None,
    max_wall_clock_seconds: float | None = None,
    task_run_threshold: int = 200,
    fail_on_task_failure: bool = True,
    resume: bool = False,
    log_tail_bytes: int = 2048,
    poll_seconds: float = 0.2,
) -> BatchJobResult:
    """Run a batch job on a pool and return every task's result.

    Args:
        tasks: Command lines (ids ``task-0``, ``task-1``...), task dicts (Azure wire names or
            snake_case, with or without ``id``), or a generator of them.
        pool: A ``BatchPool`` block, its name, or its fields; ensured (created or updated)
            first. Empty: the pool the job spec names in ``poolInfo``.
        job: More of the job (Azure job JSON): priority, constraints, usesTaskDependencies...
        job_id: The job id; default ``<flow name>-<flow run id>`` (the same on a retry).
        account: A ``BatchAccount`` block or its name; default the pool's account, else the
            embedded service.
        max_wall_clock_seconds: The job's ``maxWallClockTime``.
        task_run_threshold: Jobs with more tasks get a progress artifact and task runs for
            failed tasks only.
        fail_on_task_failure: Fail the flow when a task failed or never ran.
        resume: Resume the job if it exists (always on a retry).
        log_tail_bytes: How much of stdout/stderr each task run logs.
        poll_seconds: How often the job is looked at.
    """
    pool_block = load_pool(pool)
    client, owned = open_client(account or (pool_block.account if pool_block else None))
    try:
        pool_id = pool_block.ensure(client).id if pool_block is not None else None
        return drive_job(
            client,
            tasks,
            pool_id=pool_id,
            job=job,
            job_id=job_id,
            max_wall_clock_seconds=max_wall_clock_seconds,
            options=FollowOptions(
                task_run_threshold=task_run_threshold,
                log_tail_bytes=log_tail_bytes,
                poll_seconds=poll_seconds,
            ),
            fail_on_task_failure=fail_on_task_failure,
            resume=resume,
        )
    finally:
        if owned:
            client.close()


run_batch_job: BatchJobFlow = BatchJobFlow(_run_batch_job, name="run-batch-job")
"""The job driver flow (see :func:`_run_batch_job` for its parameters)."""
