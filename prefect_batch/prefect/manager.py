"""Job managers as parent flows: ``@batch_job_manager`` turns a function into one.

Azure Batch's job manager task is a program that creates a job's tasks, watches them and ends
the job when it exits (``killJobOnCompletion``). Here it is a Prefect flow:

.. code-block:: python

    @batch_job_manager(pool="render-pool", max_wall_clock=3600, retries=2)
    def render(job: BatchJobHandle, frames: int = 100) -> int:
        job.add_tasks([f"render {i}" for i in range(frames)])
        first = job.wait()                                     # results of every task so far
        job.add_task({"id": "stitch", "commandLine": "stitch"})  # from earlier results
        job.wait(["stitch"])
        return sum(r.succeeded for r in first)

* The flow has Prefect ``retries`` and ``timeout_seconds`` = ``max_wall_clock`` (which is also the
  job's ``maxWallClockTime``, so the service ends the job's tasks at the same deadline).
* The first attempt creates the job; a retry of the same flow run resumes it (the job id comes
  from the flow run: ``<flow name>-<flow run id>`` unless ``job_id`` says otherwise). Tasks are
  added by id, idempotently: a retried manager re-adds the same ids and nothing that completed
  runs twice; failed ones are reactivated and get another run. Task runs still open when an
  attempt fails carry on into the next attempt.
* When the function returns, the manager waits for the job's remaining tasks
  (``wait_for_tasks``) and terminates the job (``kill_job_on_completion``, reason ``JMComplete``;
  ``JMFailed`` when the last attempt fails). The flow fails if a task failed or never ran
  (``fail_on_task_failure``) — before terminating the job when a retry remains, so the retry
  can rerun the failed tasks.

This module does not schedule managers: deploy them like any flow (see ``flows/prefect.yaml``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any, TypeVar
from uuid import UUID

from prefect import Flow

from prefect_batch.models import duration_to_iso
from prefect_batch.prefect.blocks import BatchAccount, BatchPool
from prefect_batch.prefect.clients import load_pool, open_client
from prefect_batch.prefect.driver import flow_run_info
from prefect_batch.prefect.follower import FollowOptions, flow_logger
from prefect_batch.prefect.job import BatchJobHandle, job_spec
from prefect_batch.prefect.results import BatchJobFailedError, BatchJobResult

__all__ = ["batch_job_manager"]

R = TypeVar("R")


class _Carried:
    """A job handle carried from a failed attempt to the next attempt of the same flow run."""

    def __init__(self, handle: BatchJobHandle, owned: bool) -> None:
        self.handle = handle
        self.owned = owned


# Prefect retries a flow run in the same process, so the next attempt finds its job here.
_carried: dict[tuple[UUID, str], _Carried] = {}


def _seconds(value: float | timedelta | None) -> float | None:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _end_failed(handle: BatchJobHandle, terminate: bool) -> None:
    """The last attempt failed: end the job (as killJobOnCompletion) and report; never raises."""
    try:
        if terminate:
            handle.terminate("JMFailed")
        handle.finalize()
    except Exception:  # the manager's own exception is the one to see
        flow_logger().exception("job %s: could not end the job after the failure", handle.job_id)


def batch_job_manager(
    fn: Callable[..., R] | None = None,
    *,
    pool: BatchPool | str | Mapping[str, Any] | None = None,
    job_id: str | None = None,
    job: Mapping[str, Any] | None = None,
    account: BatchAccount | str | None = None,
    max_wall_clock: float | timedelta | None = None,
    retries: int = 0,
    retry_delay_seconds: float = 0,
    wait_for_tasks: bool = True,
    kill_job_on_completion: bool = True,
    fail_on_task_failure: bool = True,
    task_run_threshold: int = 200,
    log_tail_bytes: int = 2048,
    poll_seconds: float = 0.2,
    name: str | None = None,
    **flow_options: Any,
) -> Any:
    """Make ``fn(job, *args, **kwargs)`` the job manager of a batch job, as a Prefect flow.

    ``fn`` receives a :class:`~prefect_batch.prefect.job.BatchJobHandle` first; its other
    parameters are the flow's parameters. See the module docstring for the life of the job.

    Args:
        pool: The pool block, its name, or its fields (ensured first); or None when ``job``
            names the pool in ``poolInfo``.
        job_id: The job id, a template with ``{flow_name}``, ``{flow_run_id}``,
            ``{flow_run_name}``; default ``{flow_name}-{flow_run_id}`` (a job per flow run).
        job: More of the job (Azure job JSON): priority, constraints, usesTaskDependencies...
        account: A ``BatchAccount`` block or its name; default the pool's, else embedded.
        max_wall_clock: Seconds (or a timedelta): the flow's ``timeout_seconds`` and the job's
            ``maxWallClockTime``.
        retries: Prefect retries of the flow; each resumes the job.
        retry_delay_seconds: Pause before a retry.
        wait_for_tasks: After ``fn`` returns, wait for the job's remaining tasks.
        kill_job_on_completion: Terminate the job when the manager ends.
        fail_on_task_failure: Fail the flow when a task failed or never ran.
        task_run_threshold, log_tail_bytes, poll_seconds: How the job is reported (see
            :class:`~prefect_batch.prefect.follower.FollowOptions`).
        name: The flow's name; the function's by default.
        **flow_options: Other ``Flow`` options (``log_prints``, ``description``...).
    """
    if fn is None:
        return functools.partial(
            batch_job_manager,
            pool=pool,
            job_id=job_id,
            job=job,
            account=account,
            max_wall_clock=max_wall_clock,
            retries=retries,
            retry_delay_seconds=retry_delay_seconds,
            wait_for_tasks=wait_for_tasks,
            kill_job_on_completion=kill_job_on_completion,
            fail_on_task_failure=fail_on_task_failure,
            task_run_threshold=task_run_threshold,
            log_tail_bytes=log_tail_bytes,
            poll_seconds=poll_seconds,
            name=name,
            **flow_options,
        )
    wall = _seconds(max_wall_clock)
    options = FollowOptions(
        task_run_threshold=task_run_threshold,
        log_tail_bytes=log_tail_bytes,
        poll_seconds=poll_seconds,
    )

    def open_job(info: Any) -> tuple[BatchJobHandle, bool]:
        pool_block = load_pool(pool)
        client, owned = open_client(account or (pool_block.account if pool_block else None))
        try:
            pool_id = pool_block.ensure(client).id if pool_block is not None else None
            spec = job_spec(job, info.job_id(job_id), pool_id)
            if wall is not None:
                constraints = dict(spec.get("constraints") or {})
                constraints["maxWallClockTime"] = duration_to_iso(timedelta(seconds=wall))
                spec["constraints"] = constraints
            # The manager ends the job, not its tasks: more may be added after any wait.
            spec["onAllTasksComplete"] = "noaction"
            handle = BatchJobHandle.open(
                client, spec, resume=info.run_count > 1, options=options, attempt=info.run_count
            )
        except BaseException:
            if owned:
                client.close()
            raise
        return handle, owned

    @functools.wraps(fn)
    def manager(*args: Any, **kwargs: Any) -> R:
        info = flow_run_info()
        key = (info.flow_run_id, info.job_id(job_id))
        carried = _carried.pop(key, None)
        if carried is not None:
            handle, owned = carried.handle, carried.owned
            handle.begin_attempt(info.run_count)
        else:
            handle, owned = open_job(info)
        logger = flow_logger()
        logger.info(
            "job manager attempt %d: %s job %s on pool %s",
            info.run_count,
            "resumed" if handle.resumed or carried else "created",
            handle.job_id,
            handle.pool_id,
        )
        carry = False
        try:
            try:
                value = fn(handle, *args, **kwargs)
                if wait_for_tasks:
                    handle.wait()
                if fail_on_task_failure and info.will_retry:
                    current = BatchJobResult(
                        job_id=handle.job_id, state="active", tasks=handle.results()
                    )
                    if current.failed_tasks or (wait_for_tasks and current.unfinished_tasks):
                        raise BatchJobFailedError(current)  # retried before the job ends
            except Exception:
                if info.will_retry:
                    carry = True
                    _carried[key] = _Carried(handle, owned)
                    raise
                _end_failed(handle, kill_job_on_completion)
                raise
            if kill_job_on_completion:
                handle.terminate("JMComplete")
            result = handle.finalize()
        finally:
            if not carry:
                handle.close()
                if owned:
                    handle.client.close()
        if fail_on_task_failure:
            result.raise_for_failures()
        return value

    # The flow's parameters are fn's, without the handle it receives first.
    signature = inspect.signature(fn)
    manager.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values())[1:]
    )
    annotations = dict(getattr(fn, "__annotations__", {}))
    first = next(iter(signature.parameters), None)
    annotations.pop(first, None)
    manager.__annotations__ = annotations
    return Flow(
        manager,
        name=name,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        timeout_seconds=wall,
        **flow_options,
    )
