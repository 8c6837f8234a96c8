"""Job operations: create, get, list, update (PATCH), replace (PUT), disable, enable, terminate,
delete, and task counts.

A job's priority orders its queued tasks against other jobs on the same pool; changing it
re-sorts the queued ones. Stopping running tasks is recorded as ``kill_reason`` on the task rows
and carried out by the engine that owns their nodes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, select, update

from prefect_batch.core.commandline import split_command_line, validate_environment
from prefect_batch.core.ids import validate_id, validate_job_id
from prefect_batch.core.staging import validate_output_files, validate_resource_files
from prefect_batch.core.states import JobState
from prefect_batch.exceptions import BatchConflictError, BatchInvalidRequestError, invalid_property
from prefect_batch.models import (
    BatchJob,
    BatchJobCreateOptions,
    BatchJobDisableOptions,
    BatchJobPreparationAndReleaseTaskStatus,
    BatchJobTerminateOptions,
    BatchJobUpdateOptions,
    BatchTaskCountsResult,
)
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.ops.pools import PoolOperations
from prefect_batch.service.ops.tasks import TaskOperations
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.autopools import (
    JOB,
    auto_pool_of,
    check_auto_pool,
    create_auto_pool,
    end_pool,
    ends_with,
)
from prefect_batch.service.rows.common import refuse_unsupported, seconds
from prefect_batch.service.rows.nodes import queue_dir_deletion
from prefect_batch.service.rows.sealing import seal_settings
from prefect_batch.service.rows.statewrites import job_edge
from prefect_batch.service.rows.views import job_view
from prefect_batch.store.schema import job_nodes, job_schedules, jobs, pools, queue, tasks

__all__ = ["JobOperations", "check_job_spec", "delete_job_rows"]

IN_FLIGHT = lifecycle.IN_FLIGHT
_DELETING = job_edge(
    (
        JobState.ACTIVE,
        JobState.DISABLING,
        JobState.DISABLED,
        JobState.ENABLING,
        JobState.TERMINATING,
        JobState.COMPLETED,
    ),
    JobState.DELETING,
)
_ENABLED = job_edge((JobState.DISABLED, JobState.DISABLING), JobState.ACTIVE)
_UNSUPPORTED_SUB_PROPERTIES = (
    "containerSettings",
    "applicationPackageReferences",
)


def delete_job_rows(conn: Any, row: Any, now: float) -> bool:
    """Delete a job and its tasks; queue the deletion of their directories on the nodes.

    Returns:
        Whether the job row is gone. While tasks of it still run it stays ``deleting``: their
        rows (and then the job's) go when their ends are reported.
    """
    conn.execute(delete(queue).where(queue.c.job_pk == row.pk))
    in_flight = conn.execute(
        select(tasks.c.pk).where(tasks.c.job_pk == row.pk, tasks.c.state.in_(IN_FLIGHT))
    ).all()
    conn.execute(
        update(tasks)
        .where(tasks.c.job_pk == row.pk, tasks.c.state.in_(IN_FLIGHT))
        .values(kill_reason="job_delete")
    )
    file_nodes = conn.execute(
        select(tasks.c.files_node_pk, tasks.c.node_pk).where(tasks.c.job_pk == row.pk).distinct()
    ).all()
    node_pks = {p for r in file_nodes for p in r if p is not None}
    for node_pk in node_pks:
        queue_dir_deletion(conn, node_pk, row.id, now)
    if in_flight:
        _DELETING.write(
            conn,
            jobs.c.pk == row.pk,
            expected=1,
            previous_state=row.state,
            state_transition_time=now,
            version=jobs.c.version + 1,
        )
        # Rows of tasks still running go when their ends are reported; the rest now.
        conn.execute(delete(tasks).where(tasks.c.job_pk == row.pk, tasks.c.state.not_in(IN_FLIGHT)))
        return False
    conn.execute(delete(tasks).where(tasks.c.job_pk == row.pk))
    conn.execute(delete(jobs).where(jobs.c.pk == row.pk))
    if ends_with(row.spec, JOB):
        end_pool(conn, row.account, row.pool_id, now)
    return True


def refuse_preemption(spec: dict[str, Any]) -> None:
    """Refuse ``allowTaskPreemption: true``: no task here is ever preempted by another."""
    if spec.get("allowTaskPreemption"):
        raise BatchInvalidRequestError(
            "UnsupportedProperty",
            "allowTaskPreemption true is not supported: a running task is never preempted by a "
            "higher-priority one here",
            {"PropertyName": "allowTaskPreemption"},
        )


def check_job_spec(spec: dict[str, Any], *, on_schedule: bool = False) -> None:
    """Check a job's wire body beyond its model: its special tasks, and its pool.

    Args:
        spec: The job's (or a schedule's job specification's) wire body.
        on_schedule: Whether it is a schedule's ``jobSpecification`` (which may share one auto
            pool between its jobs).

    Raises:
        BatchInvalidRequestError: Naming the offending property (relative to the job).
    """
    _validate_job_tasks(spec)
    refuse_preemption(spec)
    check_auto_pool(spec, on_schedule=on_schedule)
    pool_info = spec.get("poolInfo") or {}
    if not pool_info.get("poolId") and not auto_pool_of(spec):
        raise BatchInvalidRequestError(
            "MissingRequiredProperty",
            "A required property was not specified in the request body: poolInfo.poolId",
            {"PropertyName": "poolInfo.poolId"},
        )


class JobOperations(ServiceBase):
    """Job operations of one account."""

    def create_job(self, job: BatchJobCreateOptions | dict[str, Any]) -> None:
        """Create a job. Its tasks are added afterwards (``create_task(s)``)."""
        opts = self.parse(BatchJobCreateOptions, job)
        validate_job_id(opts.id)
        spec = opts.to_wire()
        check_job_spec(spec)
        now = self.clock()
        with self.store.begin() as conn:
            exists = conn.execute(
                select(jobs.c.pk).where(
                    jobs.c.account == self.account, jobs.c.id_key == opts.id.casefold()
                )
            ).first()
            if exists:
                raise BatchConflictError(
                    "JobExists", f"The specified job already exists: {opts.id}", {"JobId": opts.id}
                )
            # A job and a job schedule never share an id (Azure).
            if conn.execute(
                select(job_schedules.c.pk).where(
                    job_schedules.c.account == self.account,
                    job_schedules.c.id_key == opts.id.casefold(),
                )
            ).first():
                raise BatchConflictError(
                    "JobScheduleWithSameIdExists",
                    f"A job schedule with the same id exists: {opts.id}",
                    {"JobId": opts.id},
                )
            if spec.get("commonEnvironmentSettings"):
                spec["commonEnvironmentSettings"] = seal_settings(
                    conn, spec["commonEnvironmentSettings"]
                )
            if (spec.get("jobManagerTask") or {}).get("environmentSettings"):
                jm = spec["jobManagerTask"]
                jm["environmentSettings"] = seal_settings(conn, jm["environmentSettings"])
            self._insert_job(conn, opts.id, spec, now)
        self.wake(pools=True)  # an auto pool may have been created

    def _insert_job(
        self,
        conn: Any,
        job_id: str,
        spec: dict[str, Any],
        now: float,
        *,
        pool_id: str | None = None,
        scheduling_error: dict[str, Any] | None = None,
    ) -> None:
        """Add a checked job (``check_job_spec``) as ``active``, with its job manager queued.

        A job with an auto pool of lifetime ``job`` gets its pool now; a schedule's job that
        shares the schedule's pool is given its ``pool_id`` (or the ``scheduling_error`` that
        kept it from being created). A job whose pool could not be created is ``completed``
        with that error, and runs nothing.
        """
        constraints = spec.get("constraints") or {}
        wall = seconds(constraints.get("maxWallClockTime"))
        auto = auto_pool_of(spec)
        if auto is None:
            pool_id = spec["poolInfo"]["poolId"]
        elif pool_id is None and scheduling_error is None:
            ops = PoolOperations(self.store, self.account, clock=self.clock)
            pool_id, scheduling_error = create_auto_pool(conn, ops, auto, now)
        failed = scheduling_error is not None
        conn.execute(
            insert(jobs).values(
                account=self.account,
                id=job_id,
                id_key=job_id.casefold(),
                state=(JobState.COMPLETED if failed else JobState.ACTIVE).value,
                previous_state=JobState.ACTIVE.value if failed else None,
                previous_state_transition_time=now if failed else None,
                end_time=now if failed else None,
                scheduling_error=scheduling_error,
                state_transition_time=now,
                creation_time=now,
                last_modified=now,
                version=1,
                priority=spec.get("priority", 0),
                pool_id=pool_id,
                pool_key=lifecycle.pool_key(self.account, pool_id),
                max_parallel_tasks=spec.get("maxParallelTasks", -1),
                max_task_retry_count=constraints.get("maxTaskRetryCount", 0),
                deadline=(now + wall) if wall is not None else None,
                on_all_tasks_complete=spec.get("onAllTasksComplete", "noaction"),
                on_task_failure=spec.get("onTaskFailure", "noaction"),
                uses_task_dependencies=bool(spec.get("usesTaskDependencies", False)),
                start_time=now,
                spec=spec,
            )
        )
        if spec.get("jobManagerTask") and not failed:
            self._add_job_manager(conn, job_id, spec, now)

    def _add_job_manager(self, conn: Any, job_id: str, spec: dict[str, Any], now: float) -> None:
        """The job manager is the job's first task: queued at once, before the others."""
        jm = dict(spec["jobManagerTask"])
        job = self._job_row(conn, job_id)
        if jm.get("runExclusive", True):
            # The node alone: as many slots as the pool's nodes have (if the pool exists).
            slots = conn.execute(
                select(pools.c.task_slots_per_node).where(
                    pools.c.account == self.account, pools.c.id_key == job.pool_id.casefold()
                )
            ).scalar()
            jm["requiredSlots"] = max(slots or 1, jm.get("requiredSlots") or 1)
        row = TaskOperations._row_values(jm, job, now)
        row["kind"] = "jobmanager"
        pk = conn.execute(insert(tasks).returning(tasks.c.pk), [row]).scalar_one()
        lifecycle.enqueue_tasks(conn, job._mapping, [(pk, row["required_slots"])])
        delta = lifecycle.JobDelta()
        delta.move(None, "active", row["required_slots"])
        lifecycle.write_job_deltas(conn, {job.pk: delta}, now)

    def list_job_preparation_and_release_task_status(
        self, job_id: str
    ) -> list[BatchJobPreparationAndReleaseTaskStatus]:
        """Per node that ran it: the job preparation and release tasks' execution info."""
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            if not (job.spec or {}).get("jobPreparationTask"):
                raise BatchConflictError(
                    "JobPreparationTaskNotSpecified",
                    f"The job has no job preparation task: {job.id}",
                    {"JobId": job.id},
                )
            rows = conn.execute(
                select(job_nodes).where(job_nodes.c.job_pk == job.pk).order_by(job_nodes.c.node_pk)
            ).all()
        out = []
        for r in rows:
            item: dict[str, Any] = {
                "poolId": r.pool_id,
                "nodeId": r.node_id,
                "nodeUrl": f"{self.base_url}/pools/{r.pool_id}/nodes/{r.node_id}",
            }
            if r.prep_info:
                item["jobPreparationTaskExecutionInfo"] = _exec_info(r.prep_info, self.base_url, r)
            if r.release_info:
                item["jobReleaseTaskExecutionInfo"] = _exec_info(r.release_info, self.base_url, r)
            out.append(BatchJobPreparationAndReleaseTaskStatus.model_validate(item))
        return out

    def get_job(self, job_id: str) -> BatchJob:
        """One job."""
        with self.store.read() as conn:
            return BatchJob.model_validate(job_view(self._job_row(conn, job_id), self.base_url))

    def list_jobs(self) -> list[BatchJob]:
        """Every job of the account, in creation order."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(jobs).where(jobs.c.account == self.account).order_by(jobs.c.pk)
            ).all()
            return [BatchJob.model_validate(job_view(r, self.base_url)) for r in rows]

    def update_job(self, job_id: str, job: BatchJobUpdateOptions | dict[str, Any]) -> None:
        """PATCH a job: properties given replace, omitted ones stay."""
        opts = self.parse(BatchJobUpdateOptions, job)
        refuse_preemption(opts.to_wire())
        self._apply_job_update(job_id, opts.to_wire(), replace=False)

    def replace_job(self, job_id: str, job: BatchJobUpdateOptions | dict[str, Any]) -> None:
        """PUT a job: updatable properties not given return to their defaults."""
        opts = self.parse(BatchJobUpdateOptions, job)
        patch = opts.to_wire()
        refuse_preemption(patch)
        patch.setdefault("priority", 0)
        patch.setdefault("maxParallelTasks", -1)
        patch.setdefault("constraints", {})
        patch.setdefault("metadata", [])
        patch.setdefault("onAllTasksComplete", "noaction")
        self._apply_job_update(job_id, patch, replace=True)

    def _apply_job_update(self, job_id: str, patch: dict[str, Any], *, replace: bool) -> None:
        now = self.clock()
        with self.store.begin() as conn:
            row = self._job_row(conn, job_id)
            if row.state in (
                JobState.COMPLETED.value,
                JobState.TERMINATING.value,
                JobState.DELETING.value,
            ):
                raise BatchConflictError(
                    "JobCompleted"
                    if row.state == JobState.COMPLETED.value
                    else "JobBeingTerminated",
                    f"The job is {row.state}: {row.id}",
                    {"JobId": row.id},
                )
            spec = dict(row.spec)
            values: dict[str, Any] = {
                "last_modified": now,
                "version": jobs.c.version + 1,
            }
            if "priority" in patch:
                values["priority"] = patch["priority"]
                conn.execute(
                    update(queue)
                    .where(queue.c.job_pk == row.pk)
                    .values(neg_priority=-int(patch["priority"]))
                )
            if "maxParallelTasks" in patch:
                values["max_parallel_tasks"] = patch["maxParallelTasks"]
            if "constraints" in patch:
                c = patch["constraints"] or {}
                wall = seconds(c.get("maxWallClockTime"))
                values["deadline"] = (row.creation_time + wall) if wall is not None else None
                values["max_task_retry_count"] = c.get("maxTaskRetryCount", 0)
            if "onAllTasksComplete" in patch:
                new = patch["onAllTasksComplete"]
                if row.on_all_tasks_complete == "terminatejob" and new == "noaction":
                    raise invalid_property(
                        "onAllTasksComplete", new, "cannot change from terminatejob to noaction"
                    )
                values["on_all_tasks_complete"] = new
            if "poolInfo" in patch:
                values.update(_pool_change(row, patch["poolInfo"] or {}, self.account))
            for key, value in patch.items():
                spec[key] = value
            if replace and "metadata" in patch and not patch["metadata"]:
                spec.pop("metadata", None)
            values["spec"] = spec
            conn.execute(update(jobs).where(jobs.c.pk == row.pk).values(**values))
            lifecycle.finish_job_if_done(conn, row.pk, now)
        self.wake()

    def disable_job(self, job_id: str, options: BatchJobDisableOptions | dict | str) -> None:
        """Disable a job: no new task starts; running ones are requeued, ended or awaited."""
        if isinstance(options, str):
            options = {"disableTasks": options}
        opts = self.parse(BatchJobDisableOptions, options)
        option = str(getattr(opts.disable_tasks, "value", opts.disable_tasks))
        now = self.clock()
        with self.store.begin() as conn:
            row = self._job_row(conn, job_id)
            if row.state != JobState.ACTIVE.value:
                raise BatchConflictError(
                    "OperationInvalidForCurrentState" if row.state != "disabled" else "JobDisabled",
                    f"The job cannot be disabled while it is {row.state}: {row.id}",
                    {"JobId": row.id, "JobState": row.state},
                )
            lifecycle.disable_job_rows(conn, row, option, now)
        self.wake()

    def enable_job(self, job_id: str) -> None:
        """Enable a disabled job: its queued tasks are scheduled again."""
        now = self.clock()
        with self.store.begin() as conn:
            row = self._job_row(conn, job_id)
            if row.state not in (JobState.DISABLED.value, JobState.DISABLING.value):
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    f"The job cannot be enabled while it is {row.state}: {row.id}",
                    {"JobId": row.id, "JobState": row.state},
                )
            _ENABLED.move(
                conn,
                row,
                now,
                disable_option=None,
            )
            fresh = conn.execute(select(jobs).where(jobs.c.pk == row.pk)).one()
            lifecycle.enqueue_job_tasks(conn, dict(fresh._mapping))
        self.wake()

    def terminate_job(
        self, job_id: str, options: BatchJobTerminateOptions | dict | str | None = None
    ) -> None:
        """Terminate a job: running tasks are ended, queued tasks never run."""
        if isinstance(options, str):
            options = {"terminateReason": options}
        opts = self.parse(BatchJobTerminateOptions, options or {})
        reason = opts.termination_reason or "UserTerminate"
        now = self.clock()
        with self.store.begin() as conn:
            row = self._job_row(conn, job_id)
            if row.state in (JobState.COMPLETED.value,):
                raise BatchConflictError(
                    "JobCompleted", f"The job is already completed: {row.id}", {"JobId": row.id}
                )
            if row.state in (JobState.TERMINATING.value, JobState.DELETING.value):
                raise BatchConflictError(
                    "JobBeingTerminated" if row.state == "terminating" else "JobBeingDeleted",
                    f"The job is {row.state}: {row.id}",
                    {"JobId": row.id},
                )
            lifecycle.terminate_job(conn, row, reason, now)
        self.wake(pools=True)  # an auto pool may have ended with the job

    def delete_job(self, job_id: str) -> None:
        """Delete a job, its tasks and (on the nodes) their files."""
        now = self.clock()
        with self.store.begin() as conn:
            row = self._job_row(conn, job_id)
            if row.state == JobState.DELETING.value:
                raise BatchConflictError(
                    "JobBeingDeleted", f"The job is being deleted: {row.id}", {"JobId": row.id}
                )
            delete_job_rows(conn, row, now)
        self.wake(pools=True)  # an auto pool may have ended with the job

    def get_job_task_counts(self, job_id: str) -> BatchTaskCountsResult:
        """Counts of the job's tasks (and their slots) by state, kept exact per transaction."""
        with self.store.read() as conn:
            r = self._job_row(conn, job_id)
        return BatchTaskCountsResult.model_validate(
            {
                "taskCounts": {
                    "active": r.n_active,
                    "running": r.n_running,
                    "completed": r.n_succeeded + r.n_failed,
                    "succeeded": r.n_succeeded,
                    "failed": r.n_failed,
                },
                "taskSlotCounts": {
                    "active": r.s_active,
                    "running": r.s_running,
                    "completed": r.s_succeeded + r.s_failed,
                    "succeeded": r.s_succeeded,
                    "failed": r.s_failed,
                },
            }
        )


def _pool_change(row: Any, pool_info: dict[str, Any], account: str) -> dict[str, Any]:
    """The job row's new pool columns for a PATCH/PUT ``poolInfo`` (Azure's rules).

    The pool changes only while the job is disabled. A job on an auto pool keeps it: of its
    ``autoPoolSpecification`` only ``keepAlive`` may change (lifetime ``job``); a job never
    moves onto an auto pool, nor off one (that would orphan or clear its pool).

    Raises:
        BatchConflictError: The job is not disabled.
        BatchInvalidRequestError: The change is one Azure does not allow, the property named.
    """
    current, new = auto_pool_of(row.spec), pool_info.get("autoPoolSpecification")
    if current is None and new is None:
        if pool_info.get("poolId") == row.pool_id:
            return {}
        _require_disabled(row)
        return {
            "pool_id": pool_info.get("poolId"),
            "pool_key": lifecycle.pool_key(account, pool_info.get("poolId")),
        }
    if current is None or new is None:
        name = "poolInfo.poolId" if new is None else "poolInfo.autoPoolSpecification"
        raise invalid_property(
            name,
            pool_info.get("poolId") if new is None else "autoPoolSpecification",
            "a job on an auto pool keeps it, and a job on a named pool cannot move onto an auto "
            "pool; of an auto pool only keepAlive can be changed",
        )
    unchanged = {k: v for k, v in current.items() if k != "keepAlive"}
    if {k: v for k, v in new.items() if k != "keepAlive"} != unchanged:
        raise invalid_property(
            "poolInfo.autoPoolSpecification",
            "autoPoolSpecification",
            "only keepAlive of a job's auto pool can be changed",
        )
    if bool(new.get("keepAlive", False)) != bool(current.get("keepAlive", False)):
        if current.get("poolLifetimeOption") != "job":
            raise invalid_property(
                "poolInfo.autoPoolSpecification.keepAlive",
                new.get("keepAlive"),
                "keepAlive can be changed only for an auto pool of lifetime job",
            )
        _require_disabled(row)
    return {}


def _require_disabled(row: Any) -> None:
    if row.state != JobState.DISABLED.value:
        raise BatchConflictError(
            "OperationInvalidForCurrentState",
            "poolInfo can be changed only while the job is disabled",
            {"JobId": row.id, "PropertyName": "poolInfo"},
        )


def _exec_info(info: dict[str, Any], base_url: str, row: Any) -> dict[str, Any]:
    out = {k: v for k, v in info.items() if k != "bootId" and v is not None}
    if "taskRootDirectory" in out:
        out["taskRootDirectoryUrl"] = (
            f"{base_url}/pools/{row.pool_id}/nodes/{row.node_id}/files/{out['taskRootDirectory']}"
        )
    return out


def _validate_job_tasks(spec: dict[str, Any]) -> None:
    """Job manager, preparation and release tasks: what this service can run."""
    for name in ("jobManagerTask", "jobPreparationTask", "jobReleaseTask"):
        sub = spec.get(name)
        if not sub:
            continue
        refuse_unsupported(sub, _UNSUPPORTED_SUB_PROPERTIES, prefix=f"{name}.")
        split_command_line(sub["commandLine"], f"{name}.commandLine")
        validate_resource_files(sub.get("resourceFiles"), f"{name}.resourceFiles")
        validate_output_files(sub.get("outputFiles"), f"{name}.outputFiles")
        env = sub.get("environmentSettings") or []
        validate_environment(
            [(e["name"], e.get("value")) for e in env], f"{name}.environmentSettings"
        )
    if spec.get("jobReleaseTask") and not spec.get("jobPreparationTask"):
        raise BatchInvalidRequestError(
            "InvalidPropertyValue",
            "A job release task needs a job preparation task",
            {"PropertyName": "jobReleaseTask"},
        )
    if spec.get("jobManagerTask"):
        validate_id(spec["jobManagerTask"]["id"], "jobManagerTask.id")
    ids = [
        (spec.get(name) or {}).get("id") or default
        for name, default in (
            ("jobPreparationTask", "jobpreparation"),
            ("jobReleaseTask", "jobrelease"),
        )
        if spec.get(name)
    ]
    if spec.get("jobManagerTask"):
        ids.append(spec["jobManagerTask"]["id"])
    if len({i.casefold() for i in ids}) != len(ids):
        raise invalid_property(
            "jobManagerTask.id", ids, "job manager, preparation and release tasks need distinct ids"
        )
