"""Task operations: add one, add a collection, get, list, update, terminate, reactivate, delete.

Adding is the hot path of a large job: a collection is validated task by task (a bad task gets
its own error, the good ones are added, as Azure's addtaskcollection does) and written with one
multi-row INSERT per chunk. A task with unfinished dependencies is stored but not queued; it is
queued when its last parent completes.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, or_, select, update

from prefect_batch.core.commandline import split_command_line, validate_environment
from prefect_batch.core.completion import validate_exit_conditions
from prefect_batch.core.dependencies import integer_task_id, validate_depends_on
from prefect_batch.core.ids import validate_id
from prefect_batch.core.staging import validate_output_files, validate_resource_files
from prefect_batch.core.states import JobState, TaskState
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    BatchServiceError,
)
from prefect_batch.models import (
    BatchCreateTaskCollectionResult,
    BatchSubtask,
    BatchTask,
    BatchTaskConstraints,
    BatchTaskCreateOptions,
    BatchTaskCreateResult,
)
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.common import (
    DEFAULT_RETENTION_SECONDS,
    chunked,
    iso,
    refuse_unsupported,
    seconds,
)
from prefect_batch.service.rows.nodes import queue_dir_deletion
from prefect_batch.service.rows.sealing import seal_settings
from prefect_batch.service.rows.statewrites import task_edge
from prefect_batch.service.rows.views import subtask_view, task_view
from prefect_batch.store.schema import deps, nodes, pools, queue, subtasks, tasks

__all__ = ["MAX_TASKS_PER_COLLECTION", "TaskOperations"]

MAX_TASKS_PER_COLLECTION = 100
"""Azure's limit for one addtaskcollection request (the Python client chunks for you)."""

MAX_INSTANCES = 100
"""Most nodes one multi-instance task may ask for: Azure's size limit of a pool with inter-node
communication."""

_UNSUPPORTED_TASK_PROPERTIES = (
    "applicationPackageReferences",
    "containerSettings",
)
ACTIVE = TaskState.ACTIVE.value
COMPLETED = TaskState.COMPLETED.value
IN_FLIGHT = lifecycle.IN_FLIGHT
_ENDED = task_edge((TaskState.ACTIVE,), TaskState.COMPLETED)
_REACTIVATED = task_edge((TaskState.COMPLETED,), TaskState.ACTIVE)


class _Rejected(Exception):
    def __init__(self, error: BatchServiceError) -> None:
        self.error = error


class TaskOperations(ServiceBase):
    """Task operations of one account."""

    # -- adding ----------------------------------------------------------------------------

    def create_task(self, job_id: str, task: BatchTaskCreateOptions | dict[str, Any]) -> None:
        """Add one task to a job."""
        result = self._add(job_id, [task])[0]
        if result.error is not None:
            err = result.error
            values = {d.key: d.value for d in (err.error_values or []) if d.key}
            conflicts = {
                "TaskExists",
                "TaskIdSameAsJobPreparationTask",
                "TaskIdSameAsJobReleaseTask",
            }
            cls = BatchConflictError if err.code in conflicts else BatchInvalidRequestError
            raise cls(
                err.code or "InvalidPropertyValue",
                (err.message.value or "") if err.message else "",
                values,
            )

    def create_task_collection(
        self, job_id: str, task_collection: Sequence[BatchTaskCreateOptions | dict[str, Any]]
    ) -> BatchCreateTaskCollectionResult:
        """Add up to 100 tasks at once (Azure's addtaskcollection), with a result per task."""
        items = list(task_collection)
        if len(items) > MAX_TASKS_PER_COLLECTION:
            raise BatchInvalidRequestError(
                "RequestBodyTooLarge",
                f"A task collection holds at most {MAX_TASKS_PER_COLLECTION} tasks",
                {"MaxTasks": MAX_TASKS_PER_COLLECTION},
                status_code=413,
            )
        return BatchCreateTaskCollectionResult(result_values=self._add(job_id, items))

    def create_tasks(
        self, job_id: str, task_collection: Sequence[BatchTaskCreateOptions | dict[str, Any]]
    ) -> BatchCreateTaskCollectionResult:
        """Add any number of tasks (chunked internally), with a result per task."""
        results: list[BatchTaskCreateResult] = []
        for chunk in chunked(list(task_collection), 5000):
            results.extend(self._add(job_id, chunk))
        return BatchCreateTaskCollectionResult(result_values=results)

    def _add(self, job_id: str, items: Sequence[Any]) -> list[BatchTaskCreateResult]:
        # Everything that needs no row is checked before the write transaction opens, so a
        # large or malformed request never holds the store's write lock while it is parsed.
        checked: list[dict[str, Any] | _Rejected] = []
        for item in items:
            try:
                checked.append(self._check_task(item))
            except _Rejected as rej:
                checked.append(rej)
        now = self.clock()
        with self.store.begin() as conn:
            job = self._job_row(conn, job_id)
            gang_pool = self._gang_pool_error(conn, job, checked)
            if job.state == JobState.COMPLETED.value:
                raise BatchConflictError(
                    "JobCompleted", f"The job is completed: {job.id}", {"JobId": job.id}
                )
            if job.state in (JobState.TERMINATING.value, JobState.DELETING.value):
                raise BatchConflictError(
                    "JobBeingTerminated" if job.state == "terminating" else "JobBeingDeleted",
                    f"The job is {job.state}: {job.id}",
                    {"JobId": job.id},
                )
            results: list[BatchTaskCreateResult | None] = [None] * len(items)
            staged: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
            seen: set[str] = set()
            for i, item in enumerate(items):
                try:
                    spec = self._check_task_in_job(checked[i], job)
                    if gang_pool is not None and spec.get("multiInstanceSettings"):
                        raise _Rejected(gang_pool)
                except _Rejected as rej:
                    results[i] = _error_result(_task_id_of(item), rej.error)
                    continue
                if spec.get("environmentSettings"):
                    spec["environmentSettings"] = seal_settings(conn, spec["environmentSettings"])
                key = spec["id"].casefold()
                if key in seen:
                    results[i] = _error_result(spec["id"], _task_exists(spec["id"]))
                    continue
                seen.add(key)
                staged.append((i, spec, self._row_values(spec, job, now)))
            if staged:
                existing = {
                    r[0]
                    for part in chunked([s[1]["id"].casefold() for s in staged], 500)
                    for r in conn.execute(
                        select(tasks.c.id_key).where(
                            tasks.c.job_pk == job.pk, tasks.c.id_key.in_(part)
                        )
                    ).all()
                }
                fresh = []
                for i, spec, row in staged:
                    if spec["id"].casefold() in existing:
                        results[i] = _error_result(spec["id"], _task_exists(spec["id"]))
                    else:
                        fresh.append((i, spec, row))
                staged = self._resolve_dependencies(conn, job, fresh, results)
            if staged:
                self._insert(conn, job, staged, now)
                for i, spec, _row in staged:
                    results[i] = BatchTaskCreateResult(
                        status="success",
                        task_id=spec["id"],
                        location=f"{self.base_url}/jobs/{job.id}/tasks/{spec['id']}",
                    )
        self.wake()
        return [r for r in results if r is not None]

    def _check_task(self, item: Any) -> dict[str, Any]:
        """The task's wire spec, with every check that needs no database row."""
        try:
            opts = self.parse(BatchTaskCreateOptions, item)
            validate_id(opts.id, "id")
            spec = opts.to_wire()
            refuse_unsupported(spec, _UNSUPPORTED_TASK_PROPERTIES)
            split_command_line(opts.command_line)
            validate_resource_files(spec.get("resourceFiles"), "resourceFiles")
            validate_output_files(spec.get("outputFiles"), "outputFiles")
            _check_multi_instance(spec)
            env = spec.get("environmentSettings") or []
            validate_environment([(e["name"], e.get("value")) for e in env])
        except BatchServiceError as exc:
            raise _Rejected(exc) from exc
        return spec

    @staticmethod
    def _gang_pool_error(
        conn: Any, job: Any, checked: Sequence[dict[str, Any] | _Rejected]
    ) -> BatchServiceError | None:
        """Why the job's pool cannot run multi-instance tasks, when some task is one.

        Azure accepts such a task and never schedules it; here it is refused, naming the pool
        property it lacks. A pool that does not exist (yet) is not checked.
        """
        if not any(isinstance(c, dict) and c.get("multiInstanceSettings") for c in checked):
            return None
        if job.pool_key is None:
            return None
        account, _, pool_key = job.pool_key.partition("/")
        pool = conn.execute(
            select(pools.c.id, pools.c.spec, pools.c.task_slots_per_node).where(
                pools.c.account == account, pools.c.id_key == pool_key
            )
        ).first()
        if pool is None:
            return None
        if not (pool.spec or {}).get("enableInterNodeCommunication"):
            return BatchInvalidRequestError(
                "InvalidPropertyValue",
                f"multiInstanceSettings needs a pool with enableInterNodeCommunication; "
                f"pool {pool.id} does not have it",
                {"PropertyName": "multiInstanceSettings", "PoolId": pool.id},
            )
        if pool.task_slots_per_node != 1:
            return BatchInvalidRequestError(
                "InvalidPropertyValue",
                f"multiInstanceSettings needs a pool with taskSlotsPerNode 1; pool {pool.id} "
                f"has {pool.task_slots_per_node}",
                {"PropertyName": "multiInstanceSettings", "PoolId": pool.id},
            )
        return None

    @staticmethod
    def _check_task_in_job(checked: dict[str, Any] | _Rejected, job: Any) -> dict[str, Any]:
        """The checks of a task that depend on its job (cheap: no parsing happens here)."""
        if isinstance(checked, _Rejected):
            raise checked
        spec = checked
        try:
            for name, default, code in (
                ("jobPreparationTask", "jobpreparation", "TaskIdSameAsJobPreparationTask"),
                ("jobReleaseTask", "jobrelease", "TaskIdSameAsJobReleaseTask"),
            ):
                sub = (job.spec or {}).get(name)
                if sub and (sub.get("id") or default).casefold() == spec["id"].casefold():
                    raise BatchConflictError(
                        code,
                        f"The task id is the job's {name} id: {spec['id']}",
                        {"TaskId": spec["id"]},
                    )
            validate_exit_conditions(spec.get("exitConditions"), job.on_task_failure)
            validate_depends_on(
                spec.get("dependsOn"),
                job_uses_task_dependencies=bool(job.uses_task_dependencies),
                task_id=spec["id"],
            )
        except BatchServiceError as exc:
            raise _Rejected(exc) from exc
        return spec

    @staticmethod
    def _row_values(spec: dict[str, Any], job: Any, now: float) -> dict[str, Any]:
        constraints = spec.get("constraints") or {}
        retention = seconds(constraints.get("retentionTime"))
        retries = constraints.get("maxTaskRetryCount")
        return {
            "job_pk": job.pk,
            "id": spec["id"],
            "id_key": spec["id"].casefold(),
            "int_id": integer_task_id(spec["id"]),
            "state": ACTIVE,
            "state_transition_time": now,
            "creation_time": now,
            "last_modified": now,
            "version": 1,
            "spec": spec,
            "required_slots": spec.get("requiredSlots") or 1,
            "max_retries": retries if retries is not None else job.max_task_retry_count,
            "wall_clock_seconds": seconds(constraints.get("maxWallClockTime")),
            "retention_seconds": retention if retention is not None else DEFAULT_RETENTION_SECONDS,
            "pending_parents": 0,
            "blocked": False,
            "attempt": 0,
            "retry_count": 0,
            "requeue_count": 0,
        }

    def _resolve_dependencies(
        self,
        conn: Any,
        job: Any,
        staged: list[tuple[int, dict[str, Any], dict[str, Any]]],
        results: list[BatchTaskCreateResult | None],
    ) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
        """Check that every parent exists (in the job or this batch); drop tasks that fail.

        A parent in the batch counts only if it is itself added: dropping a task can leave a
        task of the batch that depends on it without its parent, so this repeats until nothing
        more is dropped. A parent refused in the same batch does not count as present: a child
        naming it, by id or by range, gets its own ``InvalidPropertyValue`` result
        (``dependsOn``) and is never added without its parent.
        """
        while True:
            kept = self._drop_missing_parents(conn, job, staged, results)
            if len(kept) == len(staged):
                return kept
            staged = kept

    def _drop_missing_parents(
        self,
        conn: Any,
        job: Any,
        staged: list[tuple[int, dict[str, Any], dict[str, Any]]],
        results: list[BatchTaskCreateResult | None],
    ) -> list[tuple[int, dict[str, Any], dict[str, Any]]]:
        """One pass of :meth:`_resolve_dependencies` over ``staged``."""
        batch_ids = {s[1]["id"].casefold() for s in staged}
        batch_ints = {s[2]["int_id"] for s in staged if s[2]["int_id"] is not None}
        kept = []
        for i, spec, row in staged:
            dep = spec.get("dependsOn")
            if not dep:
                kept.append((i, spec, row))
                continue
            missing = []
            for pid in dep.get("taskIds") or []:
                key = pid.casefold()
                if key in batch_ids:
                    continue
                if (
                    conn.execute(
                        select(tasks.c.pk).where(tasks.c.job_pk == job.pk, tasks.c.id_key == key)
                    ).first()
                    is None
                ):
                    missing.append(pid)
            for rng in dep.get("taskIdRanges") or []:
                lo, hi = rng["start"], rng["end"]
                if any(lo <= n <= hi for n in batch_ints):
                    continue
                if (
                    conn.execute(
                        select(tasks.c.pk).where(
                            tasks.c.job_pk == job.pk, tasks.c.int_id.between(lo, hi)
                        )
                    ).first()
                    is None
                ):
                    missing.append(f"{lo}-{hi}")
            if missing:
                results[i] = _error_result(
                    spec["id"],
                    BatchInvalidRequestError(
                        "InvalidPropertyValue",
                        "dependsOn names tasks that do not exist in the job: " + ", ".join(missing),
                        {"PropertyName": "dependsOn", "PropertyValue": ",".join(missing)},
                    ),
                )
                continue
            kept.append((i, spec, row))
        return kept

    def _insert(
        self,
        conn: Any,
        job: Any,
        staged: list[tuple[int, dict[str, Any], dict[str, Any]]],
        now: float,
    ) -> None:
        rows = [s[2] for s in staged]
        pks: list[int] = []
        for part in chunked(rows, 1000):
            res = conn.execute(
                insert(tasks).returning(tasks.c.pk, sort_by_parameter_order=True), part
            )
            pks.extend(r[0] for r in res.all())
        by_key = {s[1]["id"].casefold(): pk for s, pk in zip(staged, pks, strict=True)}
        by_int: dict[int, list[int]] = {}
        for s, pk in zip(staged, pks, strict=True):
            if s[2]["int_id"] is not None:
                by_int.setdefault(s[2]["int_id"], []).append(pk)
        dep_rows: list[dict[str, int]] = []
        pending: dict[int, int] = {}
        blocked: set[int] = set()
        for (_i, spec, _row), pk in zip(staged, pks, strict=True):
            dep = spec.get("dependsOn")
            if not dep:
                continue
            parents: dict[int, tuple[str, str | None]] = {}
            for pid in dep.get("taskIds") or []:
                key = pid.casefold()
                if key in by_key:
                    parents[by_key[key]] = (ACTIVE, None)
                else:
                    r = conn.execute(
                        select(tasks.c.pk, tasks.c.state, tasks.c.dependency_action).where(
                            tasks.c.job_pk == job.pk, tasks.c.id_key == key
                        )
                    ).one()
                    parents[r.pk] = (r.state, r.dependency_action)
            for rng in dep.get("taskIdRanges") or []:
                lo, hi = rng["start"], rng["end"]
                for n, ppks in by_int.items():
                    if lo <= n <= hi:
                        for ppk in ppks:
                            parents[ppk] = (ACTIVE, None)
                for r in conn.execute(
                    select(tasks.c.pk, tasks.c.state, tasks.c.dependency_action).where(
                        tasks.c.job_pk == job.pk,
                        tasks.c.int_id.between(lo, hi),
                        tasks.c.pk.not_in(pks),
                    )
                ).all():
                    parents[r.pk] = (r.state, r.dependency_action)
            parents.pop(pk, None)
            n_pending = 0
            for ppk, (state, action) in parents.items():
                if state == COMPLETED:
                    if action != "block":
                        continue  # satisfied already
                    # Blocked, but recorded as a pending parent like any other (a dependency
                    # row), so that reactivating that parent and its success unblock this task.
                    blocked.add(pk)
                n_pending += 1
                dep_rows.append({"child_pk": pk, "parent_pk": ppk})
            if n_pending:
                pending[pk] = n_pending
        if dep_rows:
            conn.execute(insert(deps), dep_rows)
        if pending:
            conn.execute(
                update(tasks)
                .where(tasks.c.pk == bindparam("b_pk"))
                .values(pending_parents=bindparam("b_n")),
                [{"b_pk": k, "b_n": v} for k, v in pending.items()],
            )
        if blocked:
            conn.execute(update(tasks).where(tasks.c.pk.in_(list(blocked))).values(blocked=True))
        ready = [
            (pk, s[2]["required_slots"])
            for s, pk in zip(staged, pks, strict=True)
            if pk not in pending and pk not in blocked
        ]
        if job.state == JobState.ACTIVE.value:
            lifecycle.enqueue_tasks(conn, job._mapping, ready)
        delta = lifecycle.JobDelta()
        for s in staged:
            delta.move(None, "active", s[2]["required_slots"])
        lifecycle.write_job_deltas(conn, {job.pk: delta}, now)

    # -- reading ---------------------------------------------------------------------------

    def _task_row(self, conn: Any, job: Any, task_id: str) -> Any:
        row = conn.execute(
            select(tasks).where(tasks.c.job_pk == job.pk, tasks.c.id_key == task_id.casefold())
        ).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "TaskNotFound",
                f"The specified task does not exist: {task_id}",
                {"JobId": job.id, "TaskId": task_id},
            )
        if "task" in self.preconditions:  # conditional request (see ServiceBase.__init__)
            self.preconditions["task"](row)
        return row

    def _node_of(self, conn: Any, row: Any) -> tuple[str, str, str] | None:
        node_pk = row.node_pk if row.node_pk is not None else row.files_node_pk
        r = None
        if node_pk is not None:
            r = conn.execute(
                select(pools.c.id, nodes.c.node_id, nodes.c.root_dir)
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(nodes.c.pk == node_pk)
            ).one_or_none()
        if r is None:
            return _last_node(row)
        return (r[0], r[1], r[2])

    def get_task(self, job_id: str, task_id: str) -> BatchTask:
        """One task, with its execution and node information."""
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            row = self._task_row(conn, job, task_id)
            return BatchTask.model_validate(
                task_view(row, job.id, self.base_url, self._node_of(conn, row))
            )

    def list_tasks(self, job_id: str, *, state: str | None = None) -> list[BatchTask]:
        """The tasks of a job in creation order, optionally only those in ``state``."""
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            q = select(tasks).where(tasks.c.job_pk == job.pk)
            if state is not None:
                q = q.where(tasks.c.state == state)
            return self._task_models(conn, job, conn.execute(q.order_by(tasks.c.pk)).all())

    def _task_models(self, conn: Any, job: Any, rows: Sequence[Any]) -> list[BatchTask]:
        """Task rows -> models, naming each task's node with one read of just those nodes."""
        wanted = {r.node_pk if r.node_pk is not None else r.files_node_pk for r in rows}
        wanted.discard(None)
        node_names = {
            r.pk: (r.pool_id, r.node_id, r.root_dir)
            for part in chunked(sorted(wanted), 500)
            for r in conn.execute(
                select(nodes.c.pk, pools.c.id.label("pool_id"), nodes.c.node_id, nodes.c.root_dir)
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(nodes.c.pk.in_(part))
            ).all()
        }
        return [
            BatchTask.model_validate(
                task_view(
                    r,
                    job.id,
                    self.base_url,
                    node_names.get(r.node_pk if r.node_pk is not None else r.files_node_pk)
                    or _last_node(r),
                )
            )
            for r in rows
        ]

    def list_tasks_page(
        self,
        job_id: str,
        *,
        states: Collection[str] | None = None,
        after: int | None = None,
        limit: int = 1000,
        failed: bool | None = None,
    ) -> tuple[list[BatchTask], int | None]:
        """One page of a job's tasks in creation order, for the REST API's paged lists.

        ``after`` is the marker returned with the previous page (``None`` for the first);
        returns the page and the next page's marker (``None`` after the last page). The
        database reads one page, so walking a job of 100,000 tasks costs one pass, not one per
        page.
        """
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            q = select(tasks).where(tasks.c.job_pk == job.pk)
            if states is not None:
                q = q.where(tasks.c.state.in_(list(states)))
            if after is not None:
                q = q.where(tasks.c.pk > after)
            if failed is not None:
                # Spelled out both ways: NOT over a NULL result would drop the row.
                failure = and_(tasks.c.state == COMPLETED, tasks.c.result == "failure")
                other = or_(
                    tasks.c.state != COMPLETED,
                    tasks.c.result.is_(None),
                    tasks.c.result != "failure",
                )
                q = q.where(failure if failed else other)
            rows = conn.execute(q.order_by(tasks.c.pk).limit(limit + 1)).all()
            more = len(rows) > limit
            rows = rows[:limit]
            page = self._task_models(conn, job, rows)
            return page, (rows[-1].pk if more and rows else None)

    def list_subtasks(self, job_id: str, task_id: str) -> list[BatchSubtask]:
        """The subtasks of a multi-instance task's current attempt (``subtasksinfo``).

        The primary is the task itself (its ``nodeInfo`` and ``executionInfo``); the items are
        the other instances, ids 1 to ``numberOfInstances`` - 1. An ordinary task, or one that
        has not been dispatched yet, has none.
        """
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            row = self._task_row(conn, job, task_id)
            rows = conn.execute(
                select(subtasks)
                .where(subtasks.c.task_pk == row.pk, subtasks.c.idx > 0)
                .order_by(subtasks.c.idx)
            ).all()
        return [
            BatchSubtask.model_validate(subtask_view(r, job.id, row.id, self.base_url))
            for r in rows
        ]

    def list_task_attempts(self, job_id: str, task_id: str) -> list[dict[str, Any]]:
        """The node each attempt of a task was sent to, oldest first (an extension of Azure).

        Each item: ``attempt`` (1, 2, ...), ``poolId``, ``nodeId``, ``dispatchTime`` (ISO).
        """
        with self.store.read() as conn:
            job = self._job_row(conn, job_id)
            row = self._task_row(conn, job, task_id)
        return [
            {**item, "dispatchTime": iso(item.get("dispatchTime"))}
            for item in (row.node_history or [])
        ]

    # -- changing --------------------------------------------------------------------------

    def update_task(self, job_id: str, task_id: str, constraints: dict[str, Any] | Any) -> None:
        """Change a task's constraints (maxWallClockTime, retentionTime, maxTaskRetryCount)."""
        if hasattr(constraints, "to_wire"):
            constraints = constraints.to_wire()
        if "constraints" in constraints:
            constraints = constraints["constraints"] or {}
        c = self.parse(BatchTaskConstraints, constraints).to_wire()
        now = self.clock()
        with self.store.begin() as conn:
            job = self._job_row(conn, job_id)
            row = self._task_row(conn, job, task_id)
            if row.state == COMPLETED:
                raise BatchConflictError(
                    "TaskCompleted", f"The task is completed: {row.id}", {"TaskId": row.id}
                )
            spec = dict(row.spec)
            spec["constraints"] = c
            # Replace, as Azure's task update (PUT) does: a constraint not given returns to its
            # default, in the stored spec and in the columns the engine enforces alike.
            retries = c.get("maxTaskRetryCount")
            retention = seconds(c.get("retentionTime"))
            values: dict[str, Any] = {
                "spec": spec,
                "last_modified": now,
                "version": tasks.c.version + 1,
                "wall_clock_seconds": seconds(c.get("maxWallClockTime")),
                "retention_seconds": (
                    retention if retention is not None else DEFAULT_RETENTION_SECONDS
                ),
                "max_retries": retries if retries is not None else job.max_task_retry_count,
            }
            conn.execute(update(tasks).where(tasks.c.pk == row.pk).values(**values))

    def terminate_task(self, job_id: str, task_id: str) -> None:
        """End a task: a queued one completes at once, a running one is killed."""
        now = self.clock()
        with self.store.begin() as conn:
            job = self._job_row(conn, job_id)
            row = self._task_row(conn, job, task_id)
            if row.state == COMPLETED:
                return
            if row.state in IN_FLIGHT:
                conn.execute(
                    update(tasks).where(tasks.c.pk == row.pk).values(kill_reason="terminate")
                )
            else:
                conn.execute(delete(queue).where(queue.c.task_pk == row.pk))
                _ENDED.move(
                    conn,
                    row,
                    now,
                    end_time=now,
                    result="failure",
                    failure_info={
                        "category": "usererror",
                        "code": "TaskEnded",
                        "message": "Task Was Ended by User Request",
                    },
                    dependency_action="block",
                )
                delta = lifecycle.JobDelta()
                delta.move("active", "failed", row.required_slots)
                lifecycle.write_job_deltas(conn, {job.pk: delta}, now)
                conn.execute(
                    update(tasks)
                    .where(
                        tasks.c.pk.in_(select(deps.c.child_pk).where(deps.c.parent_pk == row.pk))
                    )
                    .values(blocked=True)
                )
                lifecycle.finish_job_if_done(conn, job.pk, now)
        self.wake()

    def reactivate_task(self, job_id: str, task_id: str) -> None:
        """Queue a failed task again, with its retry count reset."""
        now = self.clock()
        with self.store.begin() as conn:
            job = self._job_row(conn, job_id)
            if job.state not in (JobState.ACTIVE.value, JobState.DISABLED.value):
                raise BatchConflictError(
                    "JobCompleted"
                    if job.state == "completed"
                    else "OperationInvalidForCurrentState",
                    f"The job is {job.state}: {job.id}",
                    {"JobId": job.id},
                )
            row = self._task_row(conn, job, task_id)
            if row.state != COMPLETED:
                raise BatchConflictError(
                    "TaskNotCompleted", f"The task is not completed: {row.id}", {"TaskId": row.id}
                )
            if row.result == "success":
                raise BatchConflictError(
                    "TaskSucceeded", f"The task succeeded: {row.id}", {"TaskId": row.id}
                )
            _REACTIVATED.write(
                conn,
                tasks.c.pk == row.pk,
                expected=1,
                previous_state=COMPLETED,
                previous_state_transition_time=row.state_transition_time,
                state_transition_time=now,
                last_modified=now,
                version=tasks.c.version + 1,
                retry_count=0,
                exit_code=None,
                result=None,
                failure_info=None,
                end_time=None,
                dependency_action=None,
            )
            delta = lifecycle.JobDelta()
            delta.move("failed", "active", row.required_slots)
            lifecycle.write_job_deltas(conn, {job.pk: delta}, now)
            if job.state == JobState.ACTIVE.value and row.pending_parents == 0 and not row.blocked:
                lifecycle.enqueue_tasks(conn, job._mapping, [(row.pk, row.required_slots)])
            # Its dependents were blocked by its failure; now that it may run again they wait
            # for it instead (it still counts in their pending_parents), unless another parent
            # blocks them, and run once it succeeds.
            _unblock_children_of(conn, row.pk)
        self.wake()

    def delete_task(self, job_id: str, task_id: str) -> None:
        """Delete a task and its files; a running one is killed first."""
        now = self.clock()
        with self.store.begin() as conn:
            job = self._job_row(conn, job_id)
            row = self._task_row(conn, job, task_id)
            if row.state in IN_FLIGHT:
                conn.execute(
                    update(tasks).where(tasks.c.pk == row.pk).values(kill_reason="job_delete")
                )
                queue_dir_deletion(conn, row.node_pk, f"{job.id}/{row.id}", now)
            else:
                # Either way the engine is woken below, so a kill goes out at once.
                conn.execute(delete(queue).where(queue.c.task_pk == row.pk))
                conn.execute(delete(tasks).where(tasks.c.pk == row.pk))
                delta = lifecycle.JobDelta()
                bucket = (
                    "active"
                    if row.state == ACTIVE
                    else ("succeeded" if row.result == "success" else "failed")
                )
                delta.move(bucket, None, row.required_slots)
                lifecycle.write_job_deltas(conn, {job.pk: delta}, now)
                if row.files_node_pk is not None:
                    queue_dir_deletion(conn, row.files_node_pk, f"{job.id}/{row.id}", now)
                lifecycle.finish_job_if_done(conn, job.pk, now)
        self.wake()


def _unblock_children_of(conn: Any, parent_pk: int) -> None:
    """Recompute ``blocked`` of the dependents of a task that is active again.

    A dependent stays blocked only while some *other* parent has completed with ``block``.
    """
    children = [
        r[0]
        for r in conn.execute(select(deps.c.child_pk).where(deps.c.parent_pk == parent_pk)).all()
    ]
    if not children:
        return
    still_blocked = {
        r[0]
        for r in conn.execute(
            select(deps.c.child_pk)
            .join(tasks, tasks.c.pk == deps.c.parent_pk)
            .where(
                deps.c.child_pk.in_(children),
                tasks.c.state == COMPLETED,
                tasks.c.dependency_action == "block",
            )
        ).all()
    }
    free = [c for c in children if c not in still_blocked]
    if free:
        conn.execute(update(tasks).where(tasks.c.pk.in_(free)).values(blocked=False))


def _task_id_of(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("id", ""))
    return str(getattr(item, "id", ""))


def _task_exists(task_id: str) -> BatchConflictError:
    return BatchConflictError(
        "TaskExists", f"The specified task already exists: {task_id}", {"TaskId": task_id}
    )


def _check_multi_instance(spec: dict[str, Any]) -> None:
    """The checks of ``multiInstanceSettings`` that need no row."""
    multi = spec.get("multiInstanceSettings")
    if not multi:
        return
    count = multi.get("numberOfInstances") or 1
    if count > MAX_INSTANCES:
        raise BatchInvalidRequestError(
            "InvalidPropertyValue",
            f"multiInstanceSettings.numberOfInstances is at most {MAX_INSTANCES}, not {count}",
            {"PropertyName": "multiInstanceSettings.numberOfInstances", "PropertyValue": count},
        )
    if (spec.get("requiredSlots") or 1) != 1:
        raise BatchInvalidRequestError(
            "InvalidPropertyValue",
            "requiredSlots must be 1 for a multi-instance task",
            {"PropertyName": "requiredSlots", "PropertyValue": spec["requiredSlots"]},
        )
    split_command_line(multi["coordinationCommandLine"])
    validate_resource_files(
        multi.get("commonResourceFiles"), "multiInstanceSettings.commonResourceFiles"
    )


def _error_result(task_id: str, err: BatchServiceError) -> BatchTaskCreateResult:
    return BatchTaskCreateResult.model_validate(
        {
            "status": "clienterror",
            "taskId": task_id,
            "error": err.to_body(),
        }
    )


def _last_node(row: Any) -> tuple[str, str, str] | None:
    """Where the task last ran, from its attempt history (its node may be gone)."""
    history = row.node_history or []
    if not history:
        return None
    last = history[-1]
    return (last["poolId"], last["nodeId"], "")
