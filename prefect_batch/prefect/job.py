"""A job as a flow drives it: create or resume, add tasks idempotently, wait, finish.

:class:`BatchJobHandle` is what a job manager function receives and what the driver flow uses.
Adding is idempotent: a task whose id already exists is left alone (a retried flow re-adds the
same ids and duplicates nothing; a failed one is reactivated when asked), and tasks given
without an id get ``task-<n>`` from their position in the order added, so a rerun of the same
code gives the same ids. Waiting goes through a :class:`~prefect_batch.prefect.follower.
JobFollower`, which reports the tasks to Prefect while the flow waits.

This module does not decide when a job fails a flow (the flows do).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from prefect_batch.exceptions import BatchConflictError, PrefectBatchError
from prefect_batch.models import BatchJobCreateOptions, BatchTaskCreateOptions
from prefect_batch.prefect.follower import FollowOptions, JobFollower
from prefect_batch.prefect.results import BatchJobResult, BatchTaskResult

if TYPE_CHECKING:
    from prefect_batch.client import BatchClient

__all__ = ["BatchJobHandle", "BatchTaskAddError", "TaskSpec", "job_spec"]

TaskSpec = str | Mapping[str, Any] | BatchTaskCreateOptions
"""A task to add: a command line, a task dict (Azure wire or snake_case), or the model."""

_ENDED = ("completed", "terminating", "deleting")
_ERRORS_NAMED = 5
_TERMINATE_WAIT_SECONDS = 60.0


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


class BatchTaskAddError(PrefectBatchError, ValueError):
    """Some tasks were refused when added (bad spec, duplicate id in the request...).

    Attributes:
        errors: ``(task id, code, message)`` per refused task.
    """

    def __init__(self, job_id: str, errors: list[tuple[str, str, str]]) -> None:
        self.errors = errors
        named = "; ".join(f"{tid}: {code} ({msg})" for tid, code, msg in errors[:_ERRORS_NAMED])
        more = f"; and {len(errors) - _ERRORS_NAMED} more" if len(errors) > _ERRORS_NAMED else ""
        super().__init__(f"job {job_id}: {len(errors)} task(s) refused: {named}{more}")


def job_spec(
    job: Mapping[str, Any] | BatchJobCreateOptions | None, job_id: str | None, pool_id: str | None
) -> dict[str, Any]:
    """A create-job body (wire names) from a user's job spec, an id and a pool.

    Raises:
        ValueError: No pool named, neither by ``pool_id`` nor in the spec's ``poolInfo``.
    """
    if isinstance(job, BatchJobCreateOptions):
        spec = job.to_wire()
    else:
        raw = dict(job or {})
        if job_id:
            raw["id"] = job_id
        if not raw.get("id"):
            raise ValueError("no job id: give job_id, or a job spec with an id")
        if "poolInfo" not in raw and "pool_info" not in raw:
            if pool_id is None:
                raise ValueError("no pool: give a pool, or a job spec with poolInfo.poolId")
            raw["poolInfo"] = {"poolId": pool_id}
        spec = BatchJobCreateOptions.model_validate(raw).to_wire()
    if job_id:
        spec["id"] = job_id
    return spec


class BatchJobHandle:
    """A batch job driven from a flow.

    Attributes:
        client: The client the job is reached through.
        job_id: The job.
        pool_id: Its pool.
        attempt: The Prefect run count of the flow (1 on the first attempt).
        resumed: The job existed already (a retried flow) and was resumed, not created.
        follower: Reports the job to Prefect.
    """

    def __init__(
        self,
        client: BatchClient,
        job_id: str,
        *,
        pool_id: str | None,
        follower: JobFollower,
        attempt: int = 1,
        resumed: bool = False,
    ) -> None:
        self.client = client
        self.job_id = job_id
        self.pool_id = pool_id
        self.follower = follower
        self.attempt = attempt
        self.resumed = resumed
        self._next_index = 0
        self._added: dict[str, None] = {}  # task ids this handle added or found, in order

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        client: BatchClient,
        spec: dict[str, Any],
        *,
        resume: bool,
        options: FollowOptions | None = None,
        attempt: int = 1,
    ) -> BatchJobHandle:
        """Create the job from ``spec`` (wire names), or resume it if it exists and ``resume``.

        Raises:
            BatchConflictError: The job exists and ``resume`` is false (``JobExists``).
            PrefectBatchError: The job exists but has ended, or runs on another pool.
        """
        job_id = spec["id"]
        pool_id = (spec.get("poolInfo") or {}).get("poolId")
        resumed = False
        try:
            client.create_job(spec)
        except BatchConflictError as exc:
            if exc.code != "JobExists" or not resume:
                raise
            job = client.get_job(job_id)
            state = str(_value(job.state))
            if state in _ENDED:
                reason = job.execution_info.termination_reason if job.execution_info else None
                raise PrefectBatchError(
                    f"job {job_id} cannot be resumed: it is {state}"
                    + (f" ({reason})" if reason else "")
                ) from exc
            have = job.pool_info.pool_id if job.pool_info is not None else None
            if pool_id and have and have.casefold() != pool_id.casefold():
                raise PrefectBatchError(
                    f"job {job_id} cannot be resumed on pool {pool_id}: it runs on {have}"
                ) from exc
            pool_id = have or pool_id
            resumed = True
        follower = JobFollower(client, job_id, pool_id=pool_id, options=options)
        handle = cls(
            client, job_id, pool_id=pool_id, follower=follower, attempt=attempt, resumed=resumed
        )
        if resumed:
            counts = client.get_job_task_counts(job_id).task_counts
            follower.task_count = counts.active + counts.running + counts.completed
            # An earlier attempt reported these; reactivated ones are forgotten again.
            follower.mark_reported(t.id for t in client.list_tasks(job_id, state="completed"))
        return handle

    def begin_attempt(self, attempt: int) -> None:
        """A new attempt of the same flow run: ids given by position start over."""
        self.attempt = attempt
        self._next_index = 0

    # -- adding --------------------------------------------------------------------------------

    def _spec(self, item: TaskSpec) -> dict[str, Any]:
        index = self._next_index
        self._next_index += 1
        if isinstance(item, str):
            return {"id": f"task-{index}", "commandLine": item}
        if isinstance(item, BatchTaskCreateOptions):
            return item.to_wire()
        if isinstance(item, Mapping):
            spec = dict(item)
            spec.setdefault("id", f"task-{index}")
            return spec
        raise TypeError(f"a task is a command line, a dict or a BatchTaskCreateOptions: {item!r}")

    def add_task(self, task: TaskSpec, *, rerun_failed: bool = True) -> str:
        """Add one task (idempotent); returns its id."""
        return self.add_tasks([task], rerun_failed=rerun_failed)[0]

    def add_tasks(self, tasks: Iterable[TaskSpec], *, rerun_failed: bool = True) -> list[str]:
        """Add tasks; those whose id exists already are kept as they are.

        Args:
            tasks: Command lines (id ``task-<n>`` by position), task dicts or models.
            rerun_failed: Reactivate an existing task that completed with failure (a retried
                flow gives its failed tasks another run; succeeded ones are never rerun).

        Returns:
            The ids, in the order given.

        Raises:
            BatchTaskAddError: Some tasks were refused (other than for existing already).
        """
        specs = [self._spec(t) for t in tasks]
        if not specs:
            return []
        outcome = self.client.create_tasks(self.job_id, specs)
        ids: list[str] = []
        existing: list[str] = []
        errors: list[tuple[str, str, str]] = []
        for r in outcome.result_values or []:
            if _value(r.status) == "success":
                ids.append(r.task_id)
                self.follower.task_count += 1
            elif r.error is not None and r.error.code == "TaskExists":
                existing.append(r.task_id)
                ids.append(r.task_id)
            else:
                message = r.error.message.value if r.error and r.error.message else ""
                errors.append((r.task_id, r.error.code if r.error else "?", message or ""))
        if errors:
            raise BatchTaskAddError(self.job_id, errors)
        if existing and rerun_failed:
            self._reactivate_failed(existing)
        for task_id in ids:
            self._added[task_id] = None
        return ids

    def _reactivate_failed(self, task_ids: list[str]) -> None:
        wanted = {t.casefold() for t in task_ids}
        for t in self.client.list_tasks(self.job_id, state="completed"):
            info = t.execution_info
            if t.id.casefold() in wanted and info is not None and _value(info.result) == "failure":
                self.client.reactivate_task(self.job_id, t.id)
                self.follower.forget(t.id)

    @property
    def task_ids(self) -> list[str]:
        """Ids added (or found existing) through this handle, in order."""
        return list(self._added)

    # -- waiting -------------------------------------------------------------------------------

    def wait(
        self, task_ids: Iterable[str] | None = None, *, timeout: float | None = None
    ) -> list[BatchTaskResult]:
        """Wait until the given tasks (default: every task of the job) completed; results.

        Returns early (with what there is) if the job ends first; the flow's task runs and
        progress artifact are kept up to date meanwhile.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        wanted = None if task_ids is None else {t.casefold() for t in task_ids}

        def reached(counts: Any, job_state: str) -> bool:
            if job_state == "completed" and counts.running == 0:
                return True
            if wanted is None:
                return self.follower.done(counts, job_state)
            snapshot = self.follower.last_tasks
            if snapshot is None:
                snapshot = self.client.list_tasks(self.job_id)
            return all(
                _value(t.state) == "completed" for t in snapshot if t.id.casefold() in wanted
            )

        self.follower.follow(until=reached, timeout=timeout)
        return self.results(task_ids)

    def results(self, task_ids: Iterable[str] | None = None) -> list[BatchTaskResult]:
        """The current results of the given tasks (default: all), in creation order."""
        wanted = None if task_ids is None else {t.casefold() for t in task_ids}
        return [
            BatchTaskResult.from_task(t)
            for t in self.client.list_tasks(self.job_id)
            if wanted is None or t.id.casefold() in wanted
        ]

    def result(self, task_id: str) -> BatchTaskResult:
        """The current result of one task."""
        return BatchTaskResult.from_task(self.client.get_task(self.job_id, task_id))

    def read_file(self, task_id: str, file_path: str = "stdout.txt") -> str:
        """A task file as text (``stdout.txt``, ``stderr.txt``, ``wd/...``)."""
        return self.client.get_task_file(self.job_id, task_id, file_path).decode("utf-8", "replace")

    # -- ending --------------------------------------------------------------------------------

    def terminate(self, reason: str) -> None:
        """Terminate the job (its running tasks are stopped) and wait until it completed."""
        try:
            self.client.terminate_job(self.job_id, {"terminateReason": reason})
        except BatchConflictError as exc:
            if exc.code not in ("JobCompleted", "JobBeingTerminated"):
                raise
        deadline = time.monotonic() + _TERMINATE_WAIT_SECONDS
        while _value(self.client.get_job(self.job_id).state) != "completed":
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)

    def finalize(self) -> BatchJobResult:
        """Report the end to Prefect and return the job's result (see ``JobFollower.finalize``)."""
        return self.follower.finalize()

    def close(self, *, abandon: bool = True) -> None:
        """Stop reporting; open task runs end as Cancelled when ``abandon``."""
        self.follower.close(abandon=abandon)
