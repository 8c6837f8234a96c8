"""What the Prefect flows return: one record per batch task, one per job, and the error raised
when a job failed.

A :class:`BatchTaskResult` is a flat, JSON-friendly digest of a :class:`~prefect_batch.BatchTask`
(state, outcome, exit code, node, retry and requeue counts, failure) plus the Prefect state name
it was reported with. A :class:`BatchJobResult` holds a job's final state and every task's
result; :meth:`BatchJobResult.raise_for_failures` turns a failed job into
:class:`BatchJobFailedError` with a message that names the failed tasks.

This module imports no Prefect: it only describes outcomes.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.models import BatchTask

__all__ = [
    "BatchJobFailedError",
    "BatchJobResult",
    "BatchTaskResult",
    "SUCCESSFUL_TERMINATE_REASONS",
    "prefect_state_name",
]

SUCCESSFUL_TERMINATE_REASONS = frozenset({"AllTasksComplete", "JMComplete", "UserTerminate"})
"""Job terminate reasons that do not by themselves make a job failed."""

WALL_CLOCK_EXIT_CODE = 0xC000013A
"""Exit code of a task ended by the service (wall clock, terminate), as Azure reports it."""

_MESSAGE_TASKS = 5
"""Failed tasks named in an error message; the rest are counted."""


def _value(x: Any) -> Any:
    return getattr(x, "value", x)


def prefect_state_name(task: BatchTask) -> str:
    """The Prefect state a batch task is reported with.

    * ``Completed``: completed with result success.
    * ``Failed``: completed with result failure by the task's own doing (non-zero exit, program
      not found, a resource file missing...).
    * ``TimedOut``: ended by the service at its ``maxWallClockTime``.
    * ``Cancelled``: ended by a user (terminate task or job) while it ran, or never run because
      the job ended first.
    * ``Crashed``: a failure the service or node is to blame for (category ``servererror``).
    * ``Running`` / ``Pending``: not completed yet.
    """
    state = _value(task.state)
    if state in ("running", "preparing"):
        return "Running"
    if state != "completed":
        return "Pending"
    info = task.execution_info
    if info is None or _value(info.result) == "success":
        return "Completed"
    failure = info.failure_info
    category = _value(failure.category) if failure is not None else None
    code = failure.code if failure is not None else None
    if code == "TaskEnded":
        return "TimedOut" if category == "servererror" else "Cancelled"
    if category == "servererror":
        return "Crashed"
    return "Failed"


class BatchTaskResult(BaseModel):
    """The outcome of one batch task, as the flows return it."""

    model_config = ConfigDict(frozen=True)

    task_id: str = Field(description="The id of the task in its job.")
    state: str = Field(description="The task's batch state: active, preparing, running, completed.")
    result: str | None = Field(
        default=None, description="success or failure once completed; None before."
    )
    prefect_state: str = Field(
        description="The Prefect state it was reported with (Completed, Failed, Crashed, ...)."
    )
    exit_code: int | None = Field(default=None, description="The exit code of its last run.")
    node_id: str | None = Field(default=None, description="The node its last run was on.")
    pool_id: str | None = Field(default=None, description="The pool of that node.")
    retry_count: int = Field(default=0, description="Retries after a failed run.")
    requeue_count: int = Field(
        default=0, description="Times the service requeued it (node lost, removed, job disabled)."
    )
    start_time: datetime | None = Field(default=None, description="When its last run started.")
    end_time: datetime | None = Field(default=None, description="When it completed.")
    failure_category: str | None = Field(
        default=None, description="usererror or servererror, when it failed."
    )
    failure_code: str | None = Field(
        default=None, description="Why it failed (FailureExitCode, TaskEnded, ...)."
    )
    failure_message: str | None = Field(default=None, description="The failure's message.")

    @property
    def succeeded(self) -> bool:
        """Completed with result success."""
        return self.state == "completed" and self.result == "success"

    @property
    def failed(self) -> bool:
        """Completed with result failure."""
        return self.state == "completed" and self.result == "failure"

    @classmethod
    def from_task(cls, task: BatchTask) -> BatchTaskResult:
        """The digest of a task as the service returned it."""
        info = task.execution_info
        failure = info.failure_info if info is not None else None
        node = task.node_info
        return cls(
            task_id=task.id,
            state=str(_value(task.state) or "active"),
            result=_value(info.result) if info is not None else None,
            prefect_state=prefect_state_name(task),
            exit_code=info.exit_code if info is not None else None,
            node_id=node.node_id if node is not None else None,
            pool_id=node.pool_id if node is not None else None,
            retry_count=(info.retry_count or 0) if info is not None else 0,
            requeue_count=(info.requeue_count or 0) if info is not None else 0,
            start_time=info.start_time if info is not None else None,
            end_time=info.end_time if info is not None else None,
            failure_category=_value(failure.category) if failure is not None else None,
            failure_code=failure.code if failure is not None else None,
            failure_message=failure.message if failure is not None else None,
        )

    def describe(self) -> str:
        """One line for logs and error messages."""
        if self.state != "completed":
            return f"{self.task_id}: {self.state} (never completed)"
        where = f" on {self.node_id}" if self.node_id else ""
        text = f"{self.task_id}: {self.result}, exit code {self.exit_code}{where}"
        if self.failure_code:
            text += f" ({self.failure_category}/{self.failure_code}"
            text += f": {self.failure_message})" if self.failure_message else ")"
        if self.retry_count or self.requeue_count:
            text += f", retries {self.retry_count}, requeues {self.requeue_count}"
        return text

    def table_row(self) -> dict[str, Any]:
        """A row of the failed-tasks table artifact."""
        return {
            "task": self.task_id,
            "state": self.prefect_state,
            "exit code": self.exit_code,
            "node": self.node_id,
            "retries": self.retry_count,
            "requeues": self.requeue_count,
            "failure": self.failure_code,
            "message": (self.failure_message or "")[:200],
        }


class BatchJobResult:
    """The outcome of a batch job driven by a flow.

    A plain object, not a pydantic model: Prefect walks every pydantic model, list and dict a
    flow returns, looking for futures to resolve, and for 5,000 task results that walk alone
    costs half a second. :meth:`to_dict` gives the JSON-friendly form.

    Attributes:
        job_id: The id of the job.
        pool_id: The pool it ran on.
        state: The job's state when the flow stopped following it.
        terminate_reason: Why the job ended (AllTasksComplete, MaxWallClockTimeExpiry...).
        tasks: Every task's result, in creation order.
    """

    __slots__ = ("job_id", "pool_id", "state", "terminate_reason", "tasks")

    def __init__(
        self,
        *,
        job_id: str,
        state: str,
        pool_id: str | None = None,
        terminate_reason: str | None = None,
        tasks: Iterable[BatchTaskResult] = (),
    ) -> None:
        self.job_id = job_id
        self.pool_id = pool_id
        self.state = state
        self.terminate_reason = terminate_reason
        self.tasks: list[BatchTaskResult] = list(tasks)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BatchJobResult):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"BatchJobResult(job_id={self.job_id!r}, state={self.state!r}, "
            f"terminate_reason={self.terminate_reason!r}, tasks={len(self.tasks)}, "
            f"succeeded={self.succeeded_count}, failed={len(self.failed_tasks)})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            setattr(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the job's fields and ``tasks`` as a list of dicts."""
        return {
            "job_id": self.job_id,
            "pool_id": self.pool_id,
            "state": self.state,
            "terminate_reason": self.terminate_reason,
            "tasks": [t.model_dump(mode="json") for t in self.tasks],
        }

    @property
    def succeeded_count(self) -> int:
        """Tasks completed with success."""
        return sum(1 for t in self.tasks if t.succeeded)

    @property
    def failed_tasks(self) -> list[BatchTaskResult]:
        """Tasks completed with failure."""
        return [t for t in self.tasks if t.failed]

    @property
    def unfinished_tasks(self) -> list[BatchTaskResult]:
        """Tasks that never completed (the job ended first, or they are blocked)."""
        return [t for t in self.tasks if t.state != "completed"]

    @property
    def succeeded(self) -> bool:
        """Every task succeeded and the job did not end for a failure reason."""
        return (
            not self.failed_tasks
            and not self.unfinished_tasks
            and (
                self.terminate_reason is None
                or self.terminate_reason in SUCCESSFUL_TERMINATE_REASONS
            )
        )

    def task(self, task_id: str) -> BatchTaskResult:
        """The result of one task.

        Raises:
            KeyError: No such task in this job.
        """
        for t in self.tasks:
            if t.task_id == task_id:
                return t
        raise KeyError(task_id)

    def failure_message(self) -> str:
        """Why the job failed, naming the first failed tasks; empty when it succeeded."""
        if self.succeeded:
            return ""
        parts: list[str] = []
        failed = self.failed_tasks
        if failed:
            parts.append(f"{len(failed)} of {len(self.tasks)} tasks failed")
        unfinished = self.unfinished_tasks
        if unfinished:
            parts.append(f"{len(unfinished)} never completed")
        if self.terminate_reason and self.terminate_reason not in SUCCESSFUL_TERMINATE_REASONS:
            parts.append(f"the job ended with {self.terminate_reason}")
        lines = [f"batch job {self.job_id!r}: " + "; ".join(parts or ["failed"])]
        named = (failed + unfinished)[:_MESSAGE_TASKS]
        lines += [f"  {t.describe()}" for t in named]
        rest = len(failed) + len(unfinished) - len(named)
        if rest > 0:
            lines.append(f"  ... and {rest} more (see the failed-tasks artifact)")
        return "\n".join(lines)

    def raise_for_failures(self) -> BatchJobResult:
        """Return self if the job succeeded.

        Raises:
            BatchJobFailedError: Naming the failed tasks.
        """
        if not self.succeeded:
            raise BatchJobFailedError(self)
        return self


class BatchJobFailedError(PrefectBatchError):
    """A batch job driven by a flow had failed or unfinished tasks, or ended for a failure.

    Attributes:
        result: The job's :class:`BatchJobResult`.
    """

    def __init__(self, result: BatchJobResult) -> None:
        self.result = result
        super().__init__(result.failure_message())
