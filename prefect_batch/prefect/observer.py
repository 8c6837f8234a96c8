"""The batch worker's one poller: flow runs whose batch task ended without a final state.

A batch task that ends while its flow run is still Pending or Running was killed from outside
Prefect's supervisor — SIGKILL of its process group (exit 137), a program not found, the wall
clock exceeded, a node removed with ``terminate`` — so nobody else will say so. The observer
polls each watched task (one loop per worker, every ``interval`` seconds, not a thread per run)
and, once the task is completed and the flow run still not final on two looks in a row (the
supervisor's last state write may be in flight), writes the task's exit code, failure info and
the tail of its stdout/stderr to the flow run's logs and proposes Crashed. A requeued task is
active again, so a node lost with ``requeue`` is the service's business, never a Crashed here.
A flow run cancelled while its task is still queued (no supervisor runs yet to see it) gets its
task terminated and is marked Cancelled.

While a task waits for a node (``active``: not yet dispatched) and its flow run is still Pending,
the observer proposes ``InfrastructurePending`` once, with a message naming the pool it waits on,
so the UI tells a queued run from a submitted one. It never proposes it for a run past Pending (a
requeued task of a Running run is active too), and the server refuses Running -> Pending anyway
should the task start between the look and the proposal.

The watch list starts with more than this worker's own submissions: on its first look once the
worker has synced with the API, and every ``adopt_every`` looks after it, the observer calls
the worker's ``adopt`` hook (:meth:`~prefect_batch.prefect.worker.BatchWorker.adopt_flow_runs`),
which adds the non-final flow runs of the work pool that a predecessor submitted (a worker
killed or restarted while their tasks were queued or running). Two workers may therefore watch
one run, and both proposals are safe to race:

- Crashed goes through Prefect's orchestration (``BaseWorker._propose_crashed_state``, never
  forced): the server aborts a Crashed proposal for a run that is already final ("Run is already
  in terminal state"), which that method swallows, and rejects it for a Cancelling run (only
  Cancelled may follow Cancelling), so the second proposal changes nothing.
- Cancelled is proposed unforced too (Prefect's ``_mark_flow_run_as_cancelled`` forces, which
  would overwrite any state), with a ``transition_id`` derived from the Cancelling state's id:
  the server rejects a second proposal carrying the transition id of the run's current state,
  so two workers that saw the same Cancelling state write one Cancelled state between them.
  From Cancelling, an unforced proposal can only reach Cancelled, so the worst a race with the
  node's supervisor (which cancels a running run itself) can leave is a second Cancelled.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from prefect.client.schemas import OrchestrationResult, SetStateStatus
from prefect.exceptions import Abort
from prefect.states import Cancelled, InfrastructurePending, to_state_create
from prefect.utilities.engine import propose_state

from prefect_batch.exceptions import BatchConflictError, BatchNotFoundError, PrefectBatchError

if TYPE_CHECKING:
    from uuid import UUID

    from prefect_batch.client import BatchClient

__all__ = ["BatchTaskObserver", "Watched"]

log = logging.getLogger(__name__)

WAITING_STATE_NAME = "InfrastructurePending"
"""The Pending state's name while the flow run's batch task waits for a node."""

TAIL_BYTES = 4000
"""How much of stdout.txt and stderr.txt a Crashed flow run gets in its logs."""

ADOPT_EVERY = 15
"""Looks between two adoption passes (30 s at the default interval)."""

_CANCELLED_NAMESPACE = uuid.UUID("7d0c7f4e-1b4a-4c1e-9a55-3f0e2b6c8d21")
"""Namespace of the Cancelled proposals' transition ids (one per Cancelling state)."""


@dataclass
class Watched:
    """One submitted flow run: where its batch task is."""

    client: BatchClient
    account: str
    job_id: str
    task_id: str
    mode: str = "task"
    pool_id: str = ""
    ended_looks: int = 0
    waiting_proposed: bool = False

    @property
    def infrastructure_pid(self) -> str:
        return f"{self.account}/{self.job_id}/{self.task_id}"


def _state(task: Any) -> str:
    return str(getattr(task.state, "value", task.state))


def _tail(client: BatchClient, job_id: str, task_id: str, name: str) -> str:
    try:
        props = client.get_task_file_properties(job_id, task_id, name)
        size = (props.properties.content_length if props.properties else None) or 0
        offset = max(0, size - TAIL_BYTES)
        data = client.get_task_file(job_id, task_id, name, offset=offset)
    except PrefectBatchError:
        return ""
    text = data.decode("utf-8", "replace")
    return ("..." + text) if offset else text


def crash_report(w: Watched, task: Any) -> tuple[str, str]:
    """(Crashed message, log text) for a batch task that ended under a non-final flow run."""
    info = task.execution_info
    code = info.exit_code if info is not None else None
    failure = info.failure_info if info is not None else None
    why = f"exit code {code}" if code is not None else "no exit code"
    if failure is not None:
        why += f"; {failure.code}: {failure.message}"
    message = f"batch task {w.infrastructure_pid} ended ({why}) before the flow run finished"
    parts = [message]
    for name in ("stdout.txt", "stderr.txt"):
        text = _tail(w.client, w.job_id, w.task_id, name)
        if text.strip():
            parts.append(f"--- {name} (tail) ---\n{text.rstrip()}")
    return message, "\n".join(parts)


class BatchTaskObserver:
    """Polls the batch tasks of one worker's flow runs; proposes Crashed when one died.

    Args:
        worker: The worker (its Prefect client, flow-run logger and state proposals).
        interval: Seconds between looks.
        adopt: Called on the first look and every ``adopt_every`` looks after a pass that ran;
            it adds runs to the watch list, and returns None when it could not run yet (the
            worker has not synced with the API), so the next look calls it again.
        adopt_every: Looks between two adoption passes.
    """

    def __init__(
        self,
        worker: Any,
        interval: float = 2.0,
        *,
        adopt: Callable[[], Awaitable[list[UUID] | None]] | None = None,
        adopt_every: int = ADOPT_EVERY,
    ) -> None:
        self.worker = worker
        self.interval = interval
        self.adopt = adopt
        self.adopt_every = max(1, adopt_every)
        self._watched: dict[UUID, Watched] = {}
        self._stopped = anyio.Event()
        self._looks = 0
        self._next_adoption = 0

    def watch(self, flow_run_id: UUID, watched: Watched) -> None:
        self._watched[flow_run_id] = watched

    def watching(self) -> list[UUID]:
        return list(self._watched)

    def is_watching(self, flow_run_id: UUID) -> bool:
        return flow_run_id in self._watched

    def stop(self) -> None:
        self._stopped.set()

    async def run(self) -> None:
        """The loop (started by the worker in its task group); ends when the worker stops."""
        while not self._stopped.is_set():
            await self._adopt_if_due()
            with anyio.move_on_after(self.interval):
                await self._stopped.wait()
            if self._stopped.is_set():
                return
            self._looks += 1
            try:
                await self.check_once()
            except Exception:  # one bad look must not end the worker's observing
                log.exception("batch task observer: a poll failed")

    async def _adopt_if_due(self) -> None:
        if self.adopt is None or self._looks < self._next_adoption:
            return
        try:
            if await self.adopt() is None:
                return  # not synced yet: called again at the next look
        except Exception:  # a failed pass is tried again at the next pass, not every look
            log.exception("batch task observer: adopting flow runs failed")
        self._next_adoption = self._looks + self.adopt_every

    async def check_once(self) -> None:
        for flow_run_id, w in list(self._watched.items()):
            try:
                task = await anyio.to_thread.run_sync(w.client.get_task, w.job_id, w.task_id)
            except BatchNotFoundError:
                task = None
            if task is not None and _state(task) == "active":
                flow_run = await self.worker.client.read_flow_run(flow_run_id)
                if not await self._cancel_if_cancelling(flow_run, w):
                    await self._propose_waiting(flow_run, w)
                continue
            if task is not None and _state(task) != "completed":
                w.ended_looks = 0
                continue
            flow_run = await self.worker.client.read_flow_run(flow_run_id)
            state = flow_run.state
            if state is None or state.is_final() or state.is_scheduled() or state.is_paused():
                self._watched.pop(flow_run_id, None)
                continue
            w.ended_looks += 1
            if w.ended_looks < 2:
                continue
            self._watched.pop(flow_run_id, None)
            if state.is_cancelling():
                # The task ended while the run was being cancelled (its supervisor killed
                # before it wrote Cancelled): Crashed cannot follow Cancelling, Cancelled can.
                await self._propose_cancelled(
                    flow_run, f"batch task {w.infrastructure_pid} ended while cancelling"
                )
                continue
            if task is None:
                message = f"batch task {w.infrastructure_pid} was deleted"
                text = message
            else:
                message, text = await anyio.to_thread.run_sync(crash_report, w, task)
            self.worker.get_flow_run_logger(flow_run).error(text)
            await self.worker._propose_crashed_state(flow_run, message)

    async def _propose_waiting(self, flow_run: Any, w: Watched) -> None:
        """A Pending run whose task waits for a node: ``InfrastructurePending``, once."""
        state = flow_run.state
        if w.waiting_proposed or state is None or not state.is_pending():
            return
        w.waiting_proposed = True
        if state.name == WAITING_STATE_NAME:
            return
        message = f"batch task {w.infrastructure_pid} is queued: waiting for a node"
        if w.pool_id:
            message += f" of pool {w.pool_id}"
        try:
            await propose_state(
                self.worker.client, InfrastructurePending(message=message), flow_run_id=flow_run.id
            )
        except Abort:  # the run moved on (Running, Cancelling) between the look and now
            return
        self.worker.get_flow_run_logger(flow_run).info(message)

    async def _propose_cancelled(self, flow_run: Any, message: str) -> bool:
        """Propose Cancelled for a Cancelling run, safe to race with another worker.

        Unforced, with a transition id that is a function of the Cancelling state seen: the
        server's ``PreventDuplicateTransitions`` rejects a proposal carrying the transition id
        of the run's current state, so a second worker proposing it after the first changes
        nothing. (``PrefectClient.set_flow_run_state`` stamps a random transition id on every
        proposal, so the request is posted here with this one.) Returns whether this proposal
        was accepted.
        """
        client = self.worker.client
        transition_id = uuid.uuid5(_CANCELLED_NAMESPACE, f"{flow_run.id}/{flow_run.state.id}")
        state = to_state_create(Cancelled(message=message))
        state.state_details.flow_run_id = flow_run.id
        state.state_details.transition_id = transition_id
        try:
            response = await client.request(
                "POST",
                "/flow_runs/{id}/set_state",
                path_params={"id": flow_run.id},
                json={
                    "state": state.model_dump(mode="json", serialize_as_any=True),
                    "force": False,
                },
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 404:  # the run was deleted
                return False
            raise
        result = OrchestrationResult.model_validate(response.json())
        return result.status == SetStateStatus.ACCEPT

    async def _cancel_if_cancelling(self, flow_run: Any, w: Watched) -> bool:
        """A run cancelled while its task is still queued: nobody runs it, so end it here.

        (Prefect's own worker-side cancellation of pending runs is off unless
        PREFECT_WORKER_ENABLE_CANCELLATION is set; a queued batch task can wait for hours.)
        Returns whether it was.
        """
        flow_run_id = flow_run.id
        if flow_run.state is None or not flow_run.state.is_cancelling():
            return False
        try:
            if w.mode == "jobmanager":
                await anyio.to_thread.run_sync(w.client.terminate_job, w.job_id)
            else:
                await anyio.to_thread.run_sync(w.client.terminate_task, w.job_id, w.task_id)
        except (BatchNotFoundError, BatchConflictError):
            pass  # gone, or already ended (another worker watching the run terminated it)
        self._watched.pop(flow_run_id, None)
        if await self._propose_cancelled(
            flow_run, f"cancelled while queued as batch task {w.infrastructure_pid}"
        ):
            self.worker.get_flow_run_logger(flow_run).info(
                "terminated queued batch task %s", w.infrastructure_pid
            )
        return True
