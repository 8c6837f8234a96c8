"""The Prefect worker type ``batch``: each flow run of a work pool becomes a batch task.

``prefect work-pool create my-pool --type batch`` then ``prefect worker start --pool my-pool``:
the worker submits every flow run of the pool as a batch task (mode ``task``: a task of one
long-lived job per work pool and priority, task id = the flow-run id, so a resubmission finds the
task there and adds nothing) or as the job manager task of a job of its own (mode
``jobmanager``: its own batch tasks run beside it and end with it). The task's command runs
``prefect flow-run execute <id>``, Prefect's supervisor, which observes cancellation and, on
SIGTERM (a terminate, a node removed with ``requeue``), relinquishes the run to the service's
requeue instead of marking it crashed. Before it, the command reads the flow run: one that is
already final (it completed just before its node was removed, or was cancelled) is not run
again when the service requeues its task.

``PREFECT_API_KEY`` and ``PREFECT_API_AUTH_STRING`` never reach ``environmentSettings`` in
clear: they travel as sealed ``PREFECT_BATCH_SECRET_*`` settings (``service/rows/sealing.py``), and
only the node's process sees them. ``run()`` returns once the task is added; one
:class:`~prefect_batch.prefect.observer.BatchTaskObserver` per worker reports tasks that ended
without the flow run reaching a final state as Crashed.

A worker also adopts the runs its predecessor submitted (:meth:`BatchWorker.adopt_flow_runs`,
called by the observer once the worker has synced with the API and every ``ADOPT_EVERY`` looks
after): the flow runs of its work pool (of its work queues, if it was started with some) that
are Pending, Running or Cancelling and whose ``infrastructure_pid`` names a batch task of this
kind (``<account>/<job>/<flow-run-id>``). Each one's job configuration is rebuilt the way
Prefect's ``BaseWorker._cancel_run`` rebuilds it (``resolve_for_flow_run`` over a copy of the
work pool), and the run is watched through that configuration's batch client, in its mode. A run
is left alone (debug log) when its account is not that client's, or when its task is not in
that client's service (another machine's embedded service: every embedded account is named
``local``); a killed or restarted worker's runs thus still end Crashed or Cancelled. Without
it, a queued run's task of an embedded service would not even be dispatched until the next
submission starts the engine. One pass pages through at most ``ADOPT_MAX_RUNS`` runs.
"""

from __future__ import annotations

import copy
import re
import shlex
import threading
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import Field, PrivateAttr

from prefect_batch.exceptions import BatchConflictError, BatchNotFoundError
from prefect_batch.prefect.blocks import BatchAccount, BatchPool
from prefect_batch.prefect.observer import BatchTaskObserver, Watched

if TYPE_CHECKING:
    from uuid import UUID

    from prefect.client.schemas.objects import Flow as APIFlow
    from prefect.client.schemas.objects import FlowRun, WorkPool
    from prefect.client.schemas.responses import DeploymentResponse

    from prefect_batch.client import BatchClient

__all__ = ["BatchJobConfiguration", "BatchVariables", "BatchWorker", "BatchWorkerResult"]

SECRET_VARIABLES = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")
"""Delivered sealed (``PREFECT_BATCH_SECRET_<NAME>``), never as plain environment settings."""
SECRET_PREFIX = "PREFECT_BATCH_SECRET_"
_NOT_ID = re.compile(r"[^A-Za-z0-9_-]+")

ADOPT_STATES = (StateType.PENDING, StateType.RUNNING, StateType.CANCELLING)
"""States of the flow runs a worker adopts: those whose batch task may still end unobserved."""
ADOPT_PAGE = 200
"""Flow runs read per request of an adoption pass."""
ADOPT_MAX_RUNS = 1000
"""Flow runs one adoption pass looks at, at most (the next pass goes on from there)."""


def split_infrastructure_pid(infrastructure_pid: str | None) -> tuple[str, str, str] | None:
    """``(account, job_id, task_id)`` of a batch worker's ``infrastructure_pid``, else None."""
    parts = (infrastructure_pid or "").split("/")
    if len(parts) != 3 or not all(parts) or any(_NOT_ID.search(p) for p in parts[1:]):
        return None
    account, job_id, task_id = parts
    return account, job_id, task_id


RUN_ONCE = """\
import sys
from prefect.client.orchestration import get_client
with get_client(sync_client=True) as client:
    state = client.read_flow_run(sys.argv[1]).state
if state is not None and state.is_final():
    print(f"flow run {sys.argv[1]} is already {state.name}: not run again")
    raise SystemExit(0)
sys.argv = ["prefect", "flow-run", "execute", sys.argv[1]]
from prefect.cli import app
app()
"""
"""The task's program (``python -c``): Prefect's supervisor, unless the run is already final."""


class BatchJobConfiguration(BaseJobConfiguration):
    """How one flow run becomes a batch task (built from the work pool's base job template)."""

    account: BatchAccount | None = Field(default=None)
    pool_id: str | None = Field(default=None)
    pool: BatchPool | None = Field(default=None)
    mode: Literal["task", "jobmanager"] = Field(default="task")
    job_id: str | None = Field(default=None)
    priority: int = Field(default=0, ge=-1000, le=1000)
    required_slots: int = Field(default=1, ge=1)
    max_wall_clock_seconds: int | None = Field(default=None, gt=0)
    resource_files: list[dict[str, Any]] = Field(default_factory=list)
    output_files: list[dict[str, Any]] = Field(default_factory=list)
    python: str = Field(default="python3")
    api_url: str | None = Field(default=None)
    terminate_grace_seconds: float = Field(default=30, ge=0, le=600)
    _work_pool_name: str = PrivateAttr(default="default")

    def prepare_for_flow_run(
        self,
        flow_run: FlowRun,
        deployment: DeploymentResponse | None = None,
        flow: APIFlow | None = None,
        work_pool: WorkPool | None = None,
        worker_name: str | None = None,
        worker_id: UUID | None = None,
    ) -> None:
        configured = self.command
        super().prepare_for_flow_run(
            flow_run, deployment, flow, work_pool, worker_name, worker_id=worker_id
        )
        if not configured:
            self.command = " ".join(
                [shlex.quote(self.python), "-c", shlex.quote(RUN_ONCE), str(flow_run.id)]
            )
        if self.api_url:
            self.env["PREFECT_API_URL"] = self.api_url
        # On SIGTERM (a terminate, a node removed with requeue) the supervisor leaves the run
        # to the service's requeue instead of proposing Crashed.
        self.env.setdefault("PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR", "relinquish")
        self.env.pop("PREFECT__FLOW_RUN_ID", None)
        self.env["PREFECT__FLOW_RUN_ID"] = str(flow_run.id)
        self._work_pool_name = work_pool.name if work_pool is not None else "default"

    def resolved_job_id(self, flow_run_id: str, pool_id: str) -> str:
        """The job id: the template with ``{work_pool}``, ``{pool_id}``, ``{priority}`` and
        ``{flow_run_id}`` filled in, made a valid id (letters, digits, ``-``, ``_``; 64)."""
        template = self.job_id or (
            "prefect-{flow_run_id}"
            if self.mode == "jobmanager"
            else "prefect-{work_pool}-{pool_id}-p{priority}"
        )
        pool = _NOT_ID.sub("-", self._work_pool_name).strip("-") or "pool"
        job_id = template.format(
            work_pool=pool, pool_id=pool_id, priority=self.priority, flow_run_id=flow_run_id
        )
        return _NOT_ID.sub("-", job_id)[:64]

    def task_environment(self) -> list[dict[str, str]]:
        """The task's ``environmentSettings``: secrets sealed, the grace period as an option."""
        out = []
        for name, value in sorted(self.env.items()):
            if value is None:
                continue
            out.append(
                {
                    "name": (SECRET_PREFIX + name) if name in SECRET_VARIABLES else name,
                    "value": value,
                }
            )
        out.append(
            {
                "name": "PREFECT_BATCH_TERMINATE_GRACE_SECONDS",
                "value": f"{self.terminate_grace_seconds:g}",
            }
        )
        return out


class BatchVariables(BaseVariables):
    """The work pool's form: what a deployment's ``job_variables`` may override."""

    account: BatchAccount | None = Field(
        default=None,
        description="The batch account block; empty: the embedded service of the worker's "
        "PREFECT_BATCH_HOME, whose local nodes the worker itself runs.",
    )
    pool_id: str | None = Field(
        default=None, description="The batch pool the flow runs go to (it must exist)."
    )
    pool: BatchPool | None = Field(
        default=None, description="A BatchPool block, ensured on first use (instead of pool_id)."
    )
    mode: Literal["task", "jobmanager"] = Field(
        default="task",
        description="task: a task of one job per work pool and priority; jobmanager: the job "
        "manager task of a job of its own.",
    )
    job_id: str | None = Field(
        default=None,
        description="Job id template ({work_pool}, {pool_id}, {priority}, {flow_run_id}); "
        "default prefect-{work_pool}-{pool_id}-p{priority} (task mode) or "
        "prefect-{flow_run_id} (jobmanager mode).",
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="The job's priority.")
    required_slots: int = Field(default=1, ge=1, description="Task slots the flow run needs.")
    max_wall_clock_seconds: int | None = Field(
        default=None, gt=0, description="Longest the flow run may run on its node."
    )
    resource_files: list[dict[str, Any]] = Field(
        default_factory=list, description="Azure Batch resourceFiles downloaded before it runs."
    )
    output_files: list[dict[str, Any]] = Field(
        default_factory=list, description="Azure Batch outputFiles uploaded after it runs."
    )
    python: str = Field(
        default="python3",
        description="The Python on the node that has Prefect (e.g. a start task's venv).",
    )
    api_url: str | None = Field(
        default=None,
        description="PREFECT_API_URL as the node reaches it (SSH/EC2 nodes); the worker's own "
        "when empty.",
    )
    terminate_grace_seconds: float = Field(
        default=30, ge=0, le=600, description="SIGTERM to SIGKILL when the task is terminated."
    )


class BatchWorkerResult(BaseWorkerResult):
    """The submission's result: the task was added (its end is the observer's business)."""


class BatchWorker(BaseWorker[BatchJobConfiguration, BatchVariables, BatchWorkerResult]):
    """Runs each flow run of a work pool as a batch task on a prefect-batch pool."""

    type = "batch"
    job_configuration = BatchJobConfiguration
    job_configuration_variables = BatchVariables
    _description = (
        "Execute flow runs as tasks on a prefect-batch pool (local processes, SSH hosts, EC2)."
    )
    _display_name = "Batch"
    _documentation_url = "https://learn.microsoft.com/azure/batch/jobs-and-tasks"
    _logo_url = BatchAccount._logo_url

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._batch_clients: dict[tuple[Any, ...], BatchClient] = {}
        self._ensured: set[tuple[Any, ...]] = set()
        self._lock = threading.Lock()
        self.observer = BatchTaskObserver(self, adopt=self.adopt_flow_runs)
        self._not_adopted: set[UUID] = set()
        self._adopt_offset = 0

    async def __aenter__(self) -> BatchWorker:
        await super().__aenter__()
        assert self._runs_task_group is not None
        self._runs_task_group.start_soon(self.observer.run)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.observer.stop()
        try:
            await super().__aexit__(*exc_info)
        finally:
            for client in self._batch_clients.values():
                await anyio.to_thread.run_sync(client.close)
            self._batch_clients.clear()

    # -- batch side (sync; called in threads) --------------------------------------------------

    def batch_client(self, account: BatchAccount | None) -> BatchClient:
        """One client per account for the worker's life (embedded: it runs the local nodes)."""
        account = account or BatchAccount()
        key = (account.service_url, account.account_name, account.home)
        with self._lock:
            client = self._batch_clients.get(key)
            if client is None:
                client = self._batch_clients[key] = account.get_client(engine=True)
            return client

    def _pool_id(self, client: BatchClient, configuration: BatchJobConfiguration) -> str:
        if configuration.pool is not None:
            key = (id(client), configuration.pool.pool_id)
            if key not in self._ensured:
                configuration.pool.ensure(client)
                self._ensured.add(key)
            return configuration.pool.pool_id
        if not configuration.pool_id:
            raise ValueError("the batch work pool names no pool: set pool_id or pool")
        return configuration.pool_id

    def _ensure_job(self, client: BatchClient, job_id: str, pool_id: str, priority: int) -> None:
        key = (id(client), job_id)
        if key in self._ensured:
            return
        try:
            client.create_job(
                {
                    "id": job_id,
                    "poolInfo": {"poolId": pool_id},
                    "priority": priority,
                    "displayName": "Prefect flow runs",
                }
            )
        except BatchConflictError as exc:
            if exc.code != "JobExists":
                raise
            job = client.get_job(job_id)
            if (
                job.pool_info is None
                or (job.pool_info.pool_id or "").casefold() != pool_id.casefold()
            ):
                raise ValueError(
                    f"job {job_id!r} runs on pool "
                    f"{job.pool_info.pool_id if job.pool_info else None!r}, not {pool_id!r}: "
                    "give job_id a template with {pool_id}"
                ) from exc
        self._ensured.add(key)

    def submit_task(self, flow_run: FlowRun, configuration: BatchJobConfiguration) -> Watched:
        """Add the flow run's task (idempotent: an existing task or job is the submission)."""
        client = self.batch_client(configuration.account)
        pool_id = self._pool_id(client, configuration)
        run_id = str(flow_run.id)
        job_id = configuration.resolved_job_id(run_id, pool_id)
        task: dict[str, Any] = {
            "id": run_id,
            "displayName": f"flow run {flow_run.name}"[:1024],
            "commandLine": configuration.command,
            "environmentSettings": configuration.task_environment(),
            "requiredSlots": configuration.required_slots,
            "constraints": {"maxTaskRetryCount": 0},
        }
        if configuration.max_wall_clock_seconds:
            task["constraints"]["maxWallClockTime"] = f"PT{configuration.max_wall_clock_seconds}S"
        if configuration.resource_files:
            task["resourceFiles"] = configuration.resource_files
        if configuration.output_files:
            task["outputFiles"] = configuration.output_files
        if configuration.mode == "jobmanager":
            task.update(killJobOnCompletion=True, runExclusive=False)
            try:
                client.create_job(
                    {
                        "id": job_id,
                        "poolInfo": {"poolId": pool_id},
                        "priority": configuration.priority,
                        "jobManagerTask": task,
                    }
                )
            except BatchConflictError as exc:
                if exc.code != "JobExists":
                    raise
                # A resubmission finds its own job; any other job of that id is not this run's.
                manager = client.get_job(job_id).job_manager_task
                if manager is None or manager.id.casefold() != run_id.casefold():
                    raise ValueError(
                        f"job {job_id!r} exists and is not this flow run's: in jobmanager mode "
                        "each flow run needs a job of its own (a job_id template with "
                        "{flow_run_id})"
                    ) from exc
        else:
            self._ensure_job(client, job_id, pool_id, configuration.priority)
            try:
                client.create_task(job_id, task)
            except BatchConflictError as exc:
                if exc.code != "TaskExists":
                    raise
        return Watched(
            client, client.account_name, job_id, run_id, configuration.mode, pool_id=pool_id
        )

    # -- Prefect side --------------------------------------------------------------------------

    async def run(
        self,
        flow_run: FlowRun,
        configuration: BatchJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> BatchWorkerResult:
        watched = await anyio.to_thread.run_sync(self.submit_task, flow_run, configuration)
        self.observer.watch(flow_run.id, watched)
        identifier = watched.infrastructure_pid
        self.get_flow_run_logger(flow_run).info("submitted as batch task %s", identifier)
        if task_status is not None:
            task_status.started(identifier)
        return BatchWorkerResult(status_code=0, identifier=identifier)

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: BatchJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Terminate the flow run's batch task (its job in ``jobmanager`` mode)."""
        parsed = split_infrastructure_pid(infrastructure_pid)
        if parsed is None:
            raise InfrastructureNotFound(f"not a batch task: {infrastructure_pid!r}")
        account, job_id, task_id = parsed
        client = await anyio.to_thread.run_sync(self.batch_client, configuration.account)
        if client.account_name != account:
            raise InfrastructureNotAvailable(
                f"batch task {infrastructure_pid} is in account {account!r}, this worker's "
                f"configuration uses {client.account_name!r}"
            )

        def terminate() -> None:
            try:
                task = client.get_task(job_id, task_id)
            except BatchNotFoundError as exc:
                raise InfrastructureNotFound(f"no batch task {infrastructure_pid}") from exc
            if str(getattr(task.state, "value", task.state)) == "completed":
                raise InfrastructureNotFound(f"batch task {infrastructure_pid} already ended")
            if configuration.mode == "jobmanager":
                client.terminate_job(job_id)
            else:
                client.terminate_task(job_id, task_id)

        await anyio.to_thread.run_sync(terminate)

    # -- adoption ------------------------------------------------------------------------------

    async def adopt_flow_runs(self) -> list[UUID] | None:
        """Watch the unfinished flow runs of this work pool that an earlier worker submitted.

        Returns the ids adopted by this pass, or None when the worker has not synced with the
        API yet (no work pool to read the runs or rebuild their configuration from). Runs
        already watched, and runs found not adoptable by an earlier pass, are passed over.
        """
        if self._work_pool is None:
            return None
        flow_run_filter = FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(ADOPT_STATES)))
        )
        # By the run's queue (its work_queue_id), as the worker's own polling selects runs:
        # the run's work_queue_name column can be empty.
        queue_filter = (
            WorkQueueFilter(name=WorkQueueFilterName(any_=sorted(self._work_queues)))
            if self._work_queues
            else None
        )
        pool_filter = WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name]))
        adopted: list[UUID] = []
        seen: set[UUID] = set()
        # A pass starts where the previous one stopped, so a backlog above ADOPT_MAX_RUNS is
        # covered over several passes (runs that end meanwhile shift the offsets: a run missed
        # that way is seen in the next round).
        start = offset = self._adopt_offset
        at_end = False
        while offset - start < ADOPT_MAX_RUNS:
            limit = min(ADOPT_PAGE, ADOPT_MAX_RUNS - (offset - start))
            page = await self.client.read_flow_runs(
                flow_run_filter=flow_run_filter,
                work_pool_filter=pool_filter,
                work_queue_filter=queue_filter,
                sort=FlowRunSort.ID_DESC,
                limit=limit,
                offset=offset,
            )
            for flow_run in page:
                seen.add(flow_run.id)
                if self.observer.is_watching(flow_run.id) or flow_run.id in self._not_adopted:
                    continue
                if not flow_run.infrastructure_pid:
                    continue  # not submitted yet (or being submitted): a later pass sees it
                watched = await self._watched_for(flow_run)
                if watched is None:
                    self._not_adopted.add(flow_run.id)
                    continue
                self.observer.watch(flow_run.id, watched)
                adopted.append(flow_run.id)
                self.get_flow_run_logger(flow_run).info(
                    "worker %s adopted batch task %s", self.name, watched.infrastructure_pid
                )
            offset += len(page)
            if len(page) < limit:
                at_end = True
                break
        self._adopt_offset = 0 if at_end else offset
        if at_end and start == 0:
            # Forget the runs that left those states: the set stays as small as the backlog.
            self._not_adopted &= seen
        return adopted

    async def _watched_for(self, flow_run: FlowRun) -> Watched | None:
        """Where a run's batch task is, through its rebuilt configuration; None: not ours."""
        parsed = split_infrastructure_pid(flow_run.infrastructure_pid)
        if parsed is None or parsed[2].casefold() != str(flow_run.id).casefold():
            return None  # not a batch task of this kind
        account, job_id, task_id = parsed
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run,
                client=self.client,
                work_pool=copy.deepcopy(self.work_pool),
                worker_name=self.name,
                worker_id=self.backend_id,
            )
        except Exception as exc:  # a deleted deployment or block: nothing to reach it with
            self._logger.warning(
                "flow run %s (batch task %s) not adopted: its configuration cannot be rebuilt: %s",
                flow_run.id,
                flow_run.infrastructure_pid,
                exc,
            )
            return None
        client = await anyio.to_thread.run_sync(self.batch_client, configuration.account)
        if client.account_name != account:
            self._logger.debug(
                "flow run %s not adopted: batch task %s is in account %r, its configuration "
                "uses %r",
                flow_run.id,
                flow_run.infrastructure_pid,
                account,
                client.account_name,
            )
            return None
        try:
            await anyio.to_thread.run_sync(client.get_task, job_id, task_id)
        except BatchNotFoundError:
            self._logger.debug(
                "flow run %s not adopted: no batch task %s in this worker's service",
                flow_run.id,
                flow_run.infrastructure_pid,
            )
            return None
        pool_id = configuration.pool.pool_id if configuration.pool else configuration.pool_id
        return Watched(client, account, job_id, task_id, configuration.mode, pool_id=pool_id or "")
