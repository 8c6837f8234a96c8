"""The Python client: Azure-SDK-like ``verb_noun`` methods on pools, jobs, tasks, nodes, files.

With no server URL the client runs the *embedded* service: state in SQLite under
``PREFECT_BATCH_HOME`` (default ``~/.prefect-batch``), local nodes, and — unless ``engine=False``
— an engine thread in this process that runs the pools' nodes and tasks. State lives in the
database, so another process (the CLI, a flow) sees and changes the same pools and jobs.

Methods accept our pydantic models (``BatchPoolCreateOptions``...), Azure wire dictionaries
(camelCase) or snake_case dictionaries, and return models.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.models import (
    AutoScaleRun,
    BatchCertificate,
    BatchCreateTaskCollectionResult,
    BatchJob,
    BatchJobSchedule,
    BatchNode,
    BatchNodeFile,
    BatchNodeRemoteLoginSettings,
    BatchNodeSource,
    BatchPool,
    BatchPoolNodeCounts,
    BatchSubtask,
    BatchSupportedImage,
    BatchTask,
    BatchTaskCountsResult,
)
from prefect_batch.providers.storage import ObjectStorage
from prefect_batch.service import BatchService
from prefect_batch.service.engine import Engine
from prefect_batch.settings import BatchSettings, get_settings
from prefect_batch.store import Store

if TYPE_CHECKING:
    from prefect_batch.remote import RemoteBatchService

__all__ = ["BatchClient", "build_engine"]

ProgressCallback = Callable[[BatchTaskCountsResult], None]


def build_engine(
    store: Store,
    settings: BatchSettings,
    account_urls: dict[str, str],
    *,
    server: bool = False,
    storage: ObjectStorage | None = None,
) -> Engine:
    """The engine of an embedded client or of a server (not started): node sources, node root,
    the storage that file URLs are signed for, and what a job manager task needs to reach the
    store.

    (Shared by ``BatchClient.start_engine`` and ``prefect-batch server start``.)
    """
    from sqlalchemy.engine import make_url

    from prefect_batch.providers.kinds import LOCAL_NODE_AGENT_SKU
    from prefect_batch.providers.local import LocalNodeSource
    from prefect_batch.service.engine.confinement import agent_confinement_args, tasks_confined

    protect = [settings.home, settings.effective_node_root]
    if store.is_sqlite and make_url(store.url).database:
        protect.append(Path(str(make_url(store.url).database)).parent)
    agent_args = agent_confinement_args(
        confine=tasks_confined(settings.confine_tasks, server=server),
        protect=protect,
        task_paths=settings.task_paths,
    )
    return Engine(
        store,
        {LOCAL_NODE_AGENT_SKU: LocalNodeSource(agent_args=agent_args)},
        settings.effective_node_root,
        account_urls=account_urls,
        tick_seconds=settings.engine_tick_seconds,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_interval_seconds,
        autoscale_sample_seconds=settings.autoscale_sample_interval_seconds,
        job_manager_env={
            # A job manager reaches this store with the client, without an engine.
            "PREFECT_BATCH_DATABASE_URL": store.url,
            "PREFECT_BATCH_HOME": str(settings.home),
            "PREFECT_BATCH_ENGINE": "false",
        },
        # Behind a server a job manager gets the server's URL and a key for its job only.
        scoped_job_credentials=server,
        node_unreachable_grace_seconds=settings.node_unreachable_grace_seconds,
        storage=storage or storage_from_settings(settings),
        storage_bucket_access=settings.storage_bucket_access,
        transfer_timeout_seconds=settings.transfer_timeout_seconds,
        local_node_limit=settings.local_node_limit,
        agent_starts_per_second=settings.agent_starts_per_second,
    )


def storage_from_settings(settings: BatchSettings) -> ObjectStorage:
    """The object storage the settings name: a prefect-aws block, or endpoint and region."""
    if settings.storage_block:
        from prefect.blocks.core import Block

        return ObjectStorage.from_block(
            Block.load(settings.storage_block),
            url_expiry_seconds=settings.storage_url_expiry_seconds,
        )
    return ObjectStorage.from_settings(settings)


class BatchClient:
    """A client of the batch service.

    Args:
        account_name: The account to act as (embedded default: ``local``).
        url: A prefect-batch server (default ``PREFECT_BATCH_SERVICE_URL``): with one, every
            call is a request to that server, signed with ``account_key``, and the server runs
            the engine; without one, the embedded service.
        account_key: The account's key (base64) for a server (default
            ``PREFECT_BATCH_ACCOUNT_KEY``).
        home: State directory of the embedded service (default ``PREFECT_BATCH_HOME``).
        database_url: Store URL (default SQLite under ``home``).
        engine: Run an engine in this process (embedded mode) so pools get nodes and tasks run;
            default ``PREFECT_BATCH_ENGINE`` (true).
        settings: Settings to use instead of reading the environment.
        storage: The S3 storage that resource and output file URLs are signed for (embedded
            mode); default from settings (``PREFECT_BATCH_STORAGE_*``). See
            :meth:`ObjectStorage.from_block` for prefect-aws blocks.

    Use as a context manager, or call :meth:`close`, to stop the engine cleanly.
    """

    def __init__(
        self,
        account_name: str | None = None,
        *,
        url: str | None = None,
        account_key: str | None = None,
        home: str | Path | None = None,
        database_url: str | None = None,
        engine: bool | None = None,
        settings: BatchSettings | None = None,
        storage: ObjectStorage | None = None,
    ) -> None:
        settings = settings or get_settings()
        if home is not None:
            settings = settings.model_copy(update={"home": Path(home)})
        if database_url is not None:
            settings = settings.model_copy(update={"database_url": database_url})
        self.settings = settings
        self.account_name = account_name or settings.account_name
        self._engine: Engine | None = None
        self._storage = storage
        url = url or settings.service_url
        if url:
            # Remote mode: the same methods over HTTP to a server, which runs the
            # engine; no store and no engine in this process.
            from prefect_batch.remote import RemoteBatchService

            key = account_key or (
                settings.account_key.get_secret_value() if settings.account_key else None
            )
            if not key:
                raise PrefectBatchError(
                    f"a server URL ({url}) needs the account's key: account_key= or "
                    "PREFECT_BATCH_ACCOUNT_KEY"
                )
            self.store: Store | None = None
            self.service: BatchService | RemoteBatchService = RemoteBatchService(
                url, self.account_name, key
            )
            return
        self.store = Store(settings.effective_database_url)
        self.service = BatchService(self.store, self.account_name, wake=self._wake)
        if settings.engine if engine is None else engine:
            self.start_engine()

    # -- engine ----------------------------------------------------------------------------

    def start_engine(self) -> None:
        """Run pools' nodes and tasks from this process (embedded mode; a server runs its own)."""
        if self._engine is None and self.store is not None:
            self._engine = build_engine(
                self.store,
                self.settings,
                {self.account_name: self.service.base_url},
                storage=self.storage,
            ).start()

    @property
    def storage(self) -> ObjectStorage:
        """The S3 storage this client's engine signs file URLs for (given, or from settings)."""
        if self._storage is None:
            self._storage = storage_from_settings(self.settings)
        return self._storage

    def _wake(self, *, pools: bool = False) -> None:
        if self._engine is not None:
            self._engine.wake(pools=pools)

    def close(self, *, kill_tasks: bool = False) -> None:
        """Stop this process's engine; agents finish (or with ``kill_tasks`` kill) their tasks."""
        if self._engine is not None:
            self._engine.stop(kill_tasks=kill_tasks)
            self._engine = None
        if self.store is not None:
            self.store.dispose()
        else:
            self.service.close()  # type: ignore[union-attr]

    def __enter__(self) -> BatchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- pools -----------------------------------------------------------------------------

    def create_pool(self, pool: Any) -> None:
        """Create a pool (``BatchPoolCreateOptions`` or its dict)."""
        self.service.create_pool(pool)

    def get_pool(self, pool_id: str) -> BatchPool:
        """One pool."""
        return self.service.get_pool(pool_id)

    def pool_exists(self, pool_id: str) -> bool:
        """Whether a pool exists."""
        return self.service.pool_exists(pool_id)

    def list_pools(self) -> list[BatchPool]:
        """All pools of the account."""
        return self.service.list_pools()

    def update_pool(self, pool_id: str, pool: Any) -> None:
        """PATCH a pool (start task, metadata)."""
        self.service.update_pool(pool_id, pool)

    def replace_pool_properties(self, pool_id: str, pool: Any) -> None:
        """Replace a pool's start task and metadata (``BatchPoolReplaceOptions`` or its dict)."""
        self.service.replace_pool_properties(pool_id, pool)

    def resize_pool(self, pool_id: str, resize_options: Any) -> None:
        """Change a pool's node count (``BatchPoolResizeOptions`` or its dict)."""
        self.service.resize_pool(pool_id, resize_options)

    def stop_pool_resize(self, pool_id: str) -> None:
        """Stop a resize; the pool keeps its current nodes."""
        self.service.stop_pool_resize(pool_id)

    def enable_pool_auto_scale(self, pool_id: str, options: Any) -> None:
        """Size a pool by a formula, or change it (``BatchPoolEnableAutoScaleOptions``:
        ``autoScaleFormula``, ``autoScaleEvaluationInterval``); it is evaluated at once."""
        self.service.enable_pool_auto_scale(pool_id, options)

    def disable_pool_auto_scale(self, pool_id: str) -> None:
        """Stop sizing a pool by formula; it keeps its current size."""
        self.service.disable_pool_auto_scale(pool_id)

    def evaluate_pool_auto_scale(self, pool_id: str, options: Any) -> AutoScaleRun:
        """Evaluate a formula on an autoscale pool without applying it
        (``BatchPoolEvaluateAutoScaleOptions``, its dict, or the formula text)."""
        if isinstance(options, str):
            options = {"autoScaleFormula": options}
        return self.service.evaluate_pool_auto_scale(pool_id, options)

    def delete_pool(self, pool_id: str) -> None:
        """Delete a pool and its nodes."""
        self.service.delete_pool(pool_id)

    def list_supported_images(self) -> list[BatchSupportedImage]:
        """The node sources a pool can use."""
        return self.service.list_supported_images()

    def list_pool_node_counts(self) -> list[BatchPoolNodeCounts]:
        """Nodes per state of every pool (Azure's ``nodecounts``)."""
        return self.service.list_pool_node_counts()

    def get_account_quotas(self) -> dict[str, int]:
        """This account's node quotas (``dedicatedNodeQuota``, ``lowPriorityNodeQuota``) and
        the nodes it holds (``dedicatedNodes``)."""
        return self.service.get_account_quotas()

    def set_account_quota(
        self, *, dedicated_nodes: int | None = None, low_priority_nodes: int | None = None
    ) -> dict[str, int]:
        """Set this account's node quotas (embedded mode only: behind a server the operator
        sets them with ``prefect-batch account set-quota``, an account never raises its own)."""
        if self.store is None:
            raise PrefectBatchError(
                "a server's quotas are set by its operator: `prefect-batch account set-quota`"
            )
        from prefect_batch.service.ops.quotas import set_quota

        set_quota(
            self.store,
            self.account_name,
            dedicated_nodes=dedicated_nodes,
            low_priority_nodes=low_priority_nodes,
        )
        self._wake(pools=True)
        return self.get_account_quotas()

    # -- node sources (a prefect-batch extension) ------------------------------------------

    def create_node_source(self, group: Any) -> None:
        """Register an SSH host group; pools may then name ``batch.node.ssh.<name>``.

        ``group``: a ``prefect_batch.providers.hostgroup.SSHHostGroup``, a dict of its fields,
        or an ``SSHHostGroup`` block. Its key is a file path (``private_key_path``) or a
        Prefect Secret block name (``private_key_secret_name``); key text is refused.
        """
        self.service.create_node_source(group)

    def update_node_source(self, name: str, group: Any) -> None:
        """Replace a registered SSH host group (hosts in use may not be dropped)."""
        self.service.update_node_source(name, group)

    def get_node_source(self, name: str) -> BatchNodeSource:
        """One registered SSH host group, with the hosts its nodes use."""
        return self.service.get_node_source(name)

    def list_node_sources(self) -> list[BatchNodeSource]:
        """The registered SSH host groups."""
        return self.service.list_node_sources()

    def delete_node_source(self, name: str) -> None:
        """Forget a registered SSH host group (refused while a pool names it)."""
        self.service.delete_node_source(name)

    # -- certificates (deprecated by Azure) -------------------------------------------------

    def create_certificate(self, certificate: Any) -> None:
        """Add a certificate: ``{"thumbprint", "thumbprintAlgorithm": "sha1", "data": base64,
        "certificateFormat": "pfx"|"cer", "password"}`` (PFX with its password, CER in DER or
        PEM); the thumbprint is checked."""
        self.service.create_certificate(certificate)

    def list_certificates(self) -> list[BatchCertificate]:
        """The account's certificates (public parts only)."""
        return self.service.list_certificates()

    def get_certificate(
        self, thumbprint: str, thumbprint_algorithm: str = "sha1"
    ) -> BatchCertificate:
        """One certificate (its public part)."""
        return self.service.get_certificate(thumbprint_algorithm, thumbprint)

    def delete_certificate(self, thumbprint: str, thumbprint_algorithm: str = "sha1") -> None:
        """Delete a certificate; while pools or nodes use it, it goes to ``deletefailed``."""
        self.service.delete_certificate(thumbprint_algorithm, thumbprint)

    def cancel_certificate_deletion(
        self, thumbprint: str, thumbprint_algorithm: str = "sha1"
    ) -> None:
        """Return a certificate whose deletion failed to ``active``."""
        self.service.cancel_certificate_deletion(thumbprint_algorithm, thumbprint)

    def list_nodes(self, pool_id: str) -> list[BatchNode]:
        """The nodes of a pool."""
        return self.service.list_nodes(pool_id)

    def get_node(self, pool_id: str, node_id: str) -> BatchNode:
        """One node."""
        return self.service.get_node(pool_id, node_id)

    def get_node_metrics(self, pool_id: str, node_id: str) -> dict[str, Any]:
        """A node's liveness (``lastHeartbeat``) and its latest readings from the agent:
        ``cpuPercent`` (0-100), ``memoryBytes``, ``diskBytes``, disk and network counters."""
        return self.service.get_node_metrics(pool_id, node_id)

    def get_node_remote_login_settings(
        self, pool_id: str, node_id: str
    ) -> BatchNodeRemoteLoginSettings:
        """Where to log in to a node over SSH (``remoteLoginIPAddress``, ``remoteLoginPort``);
        refused (``OperationNotValidOnNode``) for local nodes, which are on this machine."""
        return self.service.get_node_remote_login_settings(pool_id, node_id)

    def create_node_user(self, pool_id: str, node_id: str, user: Any) -> None:
        """Add a login user (``name``, ``sshPublicKey``, ``password``, ``expiryTime``,
        ``isAdmin``) to an SSH or EC2 node whose agent runs as root."""
        self.service.create_node_user(pool_id, node_id, user)

    def replace_node_user(self, pool_id: str, node_id: str, user_name: str, options: Any) -> None:
        """Replace a node user's password, key and expiry (what is left out is reset)."""
        self.service.replace_node_user(pool_id, node_id, user_name, options)

    def delete_node_user(self, pool_id: str, node_id: str, user_name: str) -> None:
        """Remove a login user (its home and processes too) from a node."""
        self.service.delete_node_user(pool_id, node_id, user_name)

    def reboot_node(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Reboot a node (``requeue`` | ``terminate`` | ``taskcompletion`` | ``retaineddata``)."""
        self.service.reboot_node(pool_id, node_id, options)

    def reimage_node(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Reimage a node: its batch directories are wiped and its start task runs again."""
        self.service.reimage_node(pool_id, node_id, options)

    def remove_nodes(self, pool_id: str, options: Any) -> None:
        """Remove nodes (``nodeList``, ``nodeDeallocationOption``) from a pool."""
        self.service.remove_nodes(pool_id, options)

    def disable_node_scheduling(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Stop scheduling tasks on a node (``requeue`` | ``terminate`` | ``taskcompletion``)."""
        self.service.disable_node_scheduling(pool_id, node_id, options)

    def enable_node_scheduling(self, pool_id: str, node_id: str) -> None:
        """Schedule tasks on a node again."""
        self.service.enable_node_scheduling(pool_id, node_id)

    # -- jobs ------------------------------------------------------------------------------

    def create_job(self, job: Any) -> None:
        """Create a job (``BatchJobCreateOptions`` or its dict)."""
        self.service.create_job(job)

    def get_job(self, job_id: str) -> BatchJob:
        """One job."""
        return self.service.get_job(job_id)

    def list_jobs(self) -> list[BatchJob]:
        """All jobs of the account."""
        return self.service.list_jobs()

    def update_job(self, job_id: str, job: Any) -> None:
        """PATCH a job (priority, constraints, onAllTasksComplete, ...)."""
        self.service.update_job(job_id, job)

    def replace_job(self, job_id: str, job: Any) -> None:
        """PUT a job: omitted updatable properties return to defaults."""
        self.service.replace_job(job_id, job)

    def disable_job(self, job_id: str, disable_options: Any = "requeue") -> None:
        """Disable a job: ``requeue``, ``terminate`` or ``wait`` for running tasks."""
        self.service.disable_job(job_id, disable_options)

    def enable_job(self, job_id: str) -> None:
        """Enable a disabled job."""
        self.service.enable_job(job_id)

    def terminate_job(self, job_id: str, options: Any = None) -> None:
        """Terminate a job (optionally with a ``terminateReason``)."""
        self.service.terminate_job(job_id, options)

    def delete_job(self, job_id: str) -> None:
        """Delete a job with its tasks and their files."""
        self.service.delete_job(job_id)

    def list_job_preparation_and_release_task_status(self, job_id: str) -> list[Any]:
        """Job preparation and release task status on each node that ran them."""
        return self.service.list_job_preparation_and_release_task_status(job_id)

    def get_job_task_counts(self, job_id: str) -> BatchTaskCountsResult:
        """Task and slot counts of a job by state."""
        return self.service.get_job_task_counts(job_id)

    # -- job schedules ---------------------------------------------------------------------

    def create_job_schedule(self, job_schedule: Any) -> None:
        """Create a job schedule (``BatchJobScheduleCreateOptions`` or its dict).

        Its jobs, ``<scheduleId>:job-<n>``, are created by an engine (this process's, a
        server's, or any other on the same store) as its runs fall due.
        """
        self.service.create_job_schedule(job_schedule)

    def get_job_schedule(self, job_schedule_id: str) -> BatchJobSchedule:
        """One job schedule."""
        return self.service.get_job_schedule(job_schedule_id)

    def job_schedule_exists(self, job_schedule_id: str) -> bool:
        """Whether a job schedule exists."""
        return self.service.job_schedule_exists(job_schedule_id)

    def list_job_schedules(self) -> list[BatchJobSchedule]:
        """All job schedules of the account."""
        return self.service.list_job_schedules()

    def update_job_schedule(self, job_schedule_id: str, job_schedule: Any) -> None:
        """PATCH a job schedule (schedule, jobSpecification, metadata); later jobs use it."""
        self.service.update_job_schedule(job_schedule_id, job_schedule)

    def replace_job_schedule(self, job_schedule_id: str, job_schedule: Any) -> None:
        """PUT a job schedule: omitted properties return to defaults."""
        self.service.replace_job_schedule(job_schedule_id, job_schedule)

    def disable_job_schedule(self, job_schedule_id: str) -> None:
        """Stop a schedule creating jobs (a running job goes on)."""
        self.service.disable_job_schedule(job_schedule_id)

    def enable_job_schedule(self, job_schedule_id: str) -> None:
        """Let a disabled schedule create jobs again."""
        self.service.enable_job_schedule(job_schedule_id)

    def terminate_job_schedule(self, job_schedule_id: str) -> None:
        """End a schedule: no more jobs, and its active job is terminated."""
        self.service.terminate_job_schedule(job_schedule_id)

    def delete_job_schedule(self, job_schedule_id: str) -> None:
        """Delete a schedule and its jobs."""
        self.service.delete_job_schedule(job_schedule_id)

    def list_jobs_from_schedule(self, job_schedule_id: str) -> list[BatchJob]:
        """The jobs a schedule created (that still exist), oldest first."""
        return self.service.list_jobs_from_schedule(job_schedule_id)

    # -- tasks -----------------------------------------------------------------------------

    def create_task(self, job_id: str, task: Any) -> None:
        """Add one task."""
        self.service.create_task(job_id, task)

    def create_task_collection(
        self, job_id: str, task_collection: Any
    ) -> BatchCreateTaskCollectionResult:
        """Add up to 100 tasks; returns a result per task (Azure's addtaskcollection)."""
        if hasattr(task_collection, "task_values"):
            task_collection = task_collection.task_values
        return self.service.create_task_collection(job_id, task_collection)

    def create_tasks(
        self, job_id: str, task_collection: Sequence[Any]
    ) -> BatchCreateTaskCollectionResult:
        """Add any number of tasks; returns a result per task."""
        return self.service.create_tasks(job_id, task_collection)

    def get_task(self, job_id: str, task_id: str) -> BatchTask:
        """One task."""
        return self.service.get_task(job_id, task_id)

    def list_subtasks(self, job_id: str, task_id: str) -> list[BatchSubtask]:
        """The subtasks of a multi-instance task: node, state, exit code of each."""
        return self.service.list_subtasks(job_id, task_id)

    def list_task_attempts(self, job_id: str, task_id: str) -> list[dict[str, Any]]:
        """Which node each attempt of a task ran on (requeues and retries included)."""
        return self.service.list_task_attempts(job_id, task_id)

    def list_tasks(self, job_id: str, *, state: str | None = None) -> list[BatchTask]:
        """Tasks of a job, optionally in one state."""
        return self.service.list_tasks(job_id, state=state)

    def replace_task(self, job_id: str, task_id: str, task: Any) -> None:
        """Update a task's constraints."""
        self.service.update_task(job_id, task_id, task)

    update_task = replace_task

    def terminate_task(self, job_id: str, task_id: str) -> None:
        """End a task."""
        self.service.terminate_task(job_id, task_id)

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        """Queue a failed task again."""
        self.service.reactivate_task(job_id, task_id)

    def delete_task(self, job_id: str, task_id: str) -> None:
        """Delete a task and its files."""
        self.service.delete_task(job_id, task_id)

    # -- files -----------------------------------------------------------------------------

    def list_task_files(
        self, job_id: str, task_id: str, *, recursive: bool = False
    ) -> list[BatchNodeFile]:
        """Files of a task on its node."""
        return self.service.list_task_files(job_id, task_id, recursive=recursive)

    def get_task_file(
        self,
        job_id: str,
        task_id: str,
        file_path: str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """Content of a task file (``stdout.txt``, ``stderr.txt``, ``wd/...``)."""
        return self.service.get_task_file(job_id, task_id, file_path, offset=offset, length=length)

    download_task_file = get_task_file

    def get_task_file_properties(self, job_id: str, task_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a task file."""
        return self.service.get_task_file_properties(job_id, task_id, file_path)

    def delete_task_file(
        self, job_id: str, task_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a task file or directory."""
        self.service.delete_task_file(job_id, task_id, file_path, recursive=recursive)

    def list_node_files(
        self, pool_id: str, node_id: str, *, recursive: bool = False, path: str = ""
    ) -> list[BatchNodeFile]:
        """Files under a node's root directory."""
        return self.service.list_node_files(pool_id, node_id, recursive=recursive, path=path)

    def get_node_file(
        self,
        pool_id: str,
        node_id: str,
        file_path: str,
        *,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """Content of a node file."""
        return self.service.get_node_file(pool_id, node_id, file_path, offset=offset, length=length)

    download_node_file = get_node_file

    def get_node_file_properties(self, pool_id: str, node_id: str, file_path: str) -> BatchNodeFile:
        """Size, times and mode of a node file."""
        return self.service.get_node_file_properties(pool_id, node_id, file_path)

    def delete_node_file(
        self, pool_id: str, node_id: str, file_path: str, *, recursive: bool = False
    ) -> None:
        """Delete a node file or directory."""
        self.service.delete_node_file(pool_id, node_id, file_path, recursive=recursive)

    # -- waiting ---------------------------------------------------------------------------

    def wait_for_job(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll_seconds: float = 0.2,
        progress: ProgressCallback | None = None,
    ) -> BatchTaskCountsResult:
        """Block until every task of the job is completed (or the job is), then return counts.

        Raises:
            TimeoutError: ``timeout`` seconds passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            counts = self.get_job_task_counts(job_id)
            if progress is not None:
                progress(counts)
            c = counts.task_counts
            if c.active == 0 and c.running == 0:
                return counts
            if self.get_job(job_id).state == "completed" and c.running == 0:
                return counts
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
            time.sleep(poll_seconds)
