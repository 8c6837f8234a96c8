"""Rows -> Azure wire dictionaries (what ``GET`` returns for pools, nodes, jobs and tasks).

The stored ``spec`` is the wire form the user sent; read-only properties (state, times,
counters, execution info) come from columns. No business rules here.
"""

from __future__ import annotations

from typing import Any

from prefect_batch.service.rows.common import etag, iso, iso_duration

__all__ = [
    "job_schedule_view",
    "job_view",
    "node_view",
    "pool_view",
    "scheduled_job_id",
    "subtask_view",
    "task_view",
]


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def pool_view(row: Any, base_url: str, current_nodes: tuple[int, int]) -> dict[str, Any]:
    """The wire ``BatchPool`` of a pool row."""
    spec = dict(row.spec)
    out = dict(spec)
    out.update(
        {
            "id": row.id,
            "url": f"{base_url}/pools/{row.id}",
            "eTag": etag(row.pk, row.version),
            "lastModified": iso(row.last_modified),
            "creationTime": iso(row.creation_time),
            "state": row.state,
            "stateTransitionTime": iso(row.state_transition_time),
            "allocationState": row.allocation_state,
            "allocationStateTransitionTime": iso(row.allocation_state_transition_time),
            "vmSize": row.vm_size,
            "resizeTimeout": iso_duration(row.resize_timeout_seconds),
            "currentDedicatedNodes": current_nodes[0],
            "currentLowPriorityNodes": current_nodes[1],
            "targetDedicatedNodes": row.target_dedicated,
            "targetLowPriorityNodes": row.target_low_priority,
            "enableAutoScale": bool(spec.get("enableAutoScale", False)),
            "taskSlotsPerNode": row.task_slots_per_node,
            "taskSchedulingPolicy": {"nodeFillType": row.fill_type},
            "resizeErrors": row.resize_errors or None,
        }
    )
    # The formula, its interval and its latest evaluation are shown only while it sizes the pool.
    if spec.get("enableAutoScale"):
        out["autoScaleRun"] = row.auto_scale_run
    else:
        for key in ("autoScaleFormula", "autoScaleEvaluationInterval", "autoScaleRun"):
            out.pop(key, None)
    return _clean(out)


def node_view(row: Any, pool_id: str, base_url: str) -> dict[str, Any]:
    """The wire ``BatchNode`` of a node row."""
    info = row.agent_info or {}
    return _clean(
        {
            "id": row.node_id,
            "url": f"{base_url}/pools/{pool_id}/nodes/{row.node_id}",
            "state": row.state,
            "schedulingState": row.scheduling_state,
            "stateTransitionTime": iso(row.state_transition_time),
            "lastBootTime": iso(row.last_boot_time),
            "allocationTime": iso(row.allocation_time),
            "ipAddress": row.ip_address,
            "affinityId": f"{pool_id}/{row.node_id}",
            "vmSize": row.vm_size,
            "totalTasksRun": row.total_tasks_run,
            "runningTasksCount": row.running_tasks,
            "runningTaskSlotsCount": row.running_slots,
            "totalTasksSucceeded": row.total_tasks_succeeded,
            "isDedicated": row.dedicated is not False,
            "errors": row.errors or None,
            "nodeAgentInfo": (
                {"version": info.get("agent_version"), "lastUpdateTime": iso(row.last_heartbeat)}
                if info
                else None
            ),
            "startTaskInfo": (
                {k: v for k, v in row.start_task_info.items() if k != "bootId"}
                if row.start_task_info
                else None
            ),
        }
    )


def job_view(row: Any, base_url: str) -> dict[str, Any]:
    """The wire ``BatchJob`` of a job row."""
    out = dict(row.spec)
    constraints = dict(out.get("constraints") or {})
    out.update(
        {
            "id": row.id,
            "url": f"{base_url}/jobs/{row.id}",
            "eTag": etag(row.pk, row.version),
            "lastModified": iso(row.last_modified),
            "creationTime": iso(row.creation_time),
            "state": row.state,
            "stateTransitionTime": iso(row.state_transition_time),
            "previousState": row.previous_state,
            "previousStateTransitionTime": iso(row.previous_state_transition_time),
            "priority": row.priority,
            "maxParallelTasks": row.max_parallel_tasks,
            "usesTaskDependencies": bool(row.uses_task_dependencies),
            "onAllTasksComplete": row.on_all_tasks_complete,
            "onTaskFailure": row.on_task_failure,
            # A job on an auto pool shows its specification; executionInfo has the pool's id.
            "poolInfo": (
                out.get("poolInfo")
                if (out.get("poolInfo") or {}).get("autoPoolSpecification") or not row.pool_id
                else {"poolId": row.pool_id}
            ),
            "constraints": constraints or None,
            "executionInfo": _clean(
                {
                    "startTime": iso(row.start_time),
                    "endTime": iso(row.end_time),
                    "poolId": row.pool_id,
                    "schedulingError": row.scheduling_error,
                    "terminateReason": row.terminate_reason,
                }
            ),
        }
    )
    return _clean(out)


def task_view(
    row: Any, job_id: str, base_url: str, node: tuple[str, str, str] | None = None
) -> dict[str, Any]:
    """The wire ``BatchTask`` of a task row.

    ``node`` is ``(pool_id, node_id, task_root_directory)`` of the node that ran (or runs) it.
    """
    out = dict(row.spec)
    constraints = dict(out.get("constraints") or {})
    constraints["maxTaskRetryCount"] = row.max_retries
    constraints["retentionTime"] = iso_duration(row.retention_seconds)
    if row.wall_clock_seconds is not None:
        constraints["maxWallClockTime"] = iso_duration(row.wall_clock_seconds)
    execution: dict[str, Any] | None = None
    if (
        row.start_time is not None
        or row.end_time is not None
        or row.retry_count
        or (row.requeue_count)
    ):
        execution = _clean(
            {
                "startTime": iso(row.start_time),
                "endTime": iso(row.end_time),
                "exitCode": row.exit_code,
                "failureInfo": row.failure_info,
                "retryCount": row.retry_count,
                "lastRetryTime": iso(row.last_retry_time),
                "requeueCount": row.requeue_count,
                "lastRequeueTime": iso(row.last_requeue_time),
                "result": row.result,
            }
        )
    node_info = None
    if node is not None:
        pool_id, node_id, root = node
        node_info = {
            "affinityId": f"{pool_id}/{node_id}",
            "nodeUrl": f"{base_url}/pools/{pool_id}/nodes/{node_id}",
            "poolId": pool_id,
            "nodeId": node_id,
            "taskRootDirectory": f"{job_id}/{row.id}",
            "taskRootDirectoryUrl": f"{base_url}/pools/{pool_id}/nodes/{node_id}/files/"
            f"{job_id}/{row.id}",
        }
    out.update(
        {
            "id": row.id,
            "url": f"{base_url}/jobs/{job_id}/tasks/{row.id}",
            "eTag": etag(row.pk, row.version),
            "lastModified": iso(row.last_modified),
            "creationTime": iso(row.creation_time),
            "state": row.state,
            "stateTransitionTime": iso(row.state_transition_time),
            "previousState": row.previous_state,
            "previousStateTransitionTime": iso(row.previous_state_transition_time),
            "requiredSlots": row.required_slots,
            "constraints": constraints,
            "executionInfo": execution,
            "nodeInfo": node_info,
        }
    )
    return _clean(out)


def subtask_view(row: Any, job_id: str, task_id: str, base_url: str) -> dict[str, Any]:
    """The wire form of a ``subtasks`` row (an item of ``subtasksinfo``)."""
    node = f"{base_url}/pools/{row.pool_id}/nodes/{row.node_id}"
    return _clean(
        {
            "id": row.idx,
            "nodeInfo": {
                "affinityId": f"{row.pool_id}/{row.node_id}",
                "nodeUrl": node,
                "poolId": row.pool_id,
                "nodeId": row.node_id,
                "taskRootDirectory": f"{job_id}/{task_id}",
                "taskRootDirectoryUrl": f"{node}/files/{job_id}/{task_id}",
            },
            "startTime": iso(row.start_time),
            "endTime": iso(row.end_time),
            "exitCode": row.exit_code,
            "failureInfo": row.failure_info,
            "state": row.state,
            "stateTransitionTime": iso(row.state_transition_time),
            "previousState": row.previous_state,
            "previousStateTransitionTime": iso(row.previous_state_transition_time),
            "result": row.result,
        }
    )


def scheduled_job_id(schedule_id: str, n: int) -> str:
    """The id of a schedule's ``n``-th job: ``<scheduleId>:job-<n>`` (Azure's form)."""
    return f"{schedule_id}:job-{n}"


def job_schedule_view(row: Any, base_url: str) -> dict[str, Any]:
    """The wire ``BatchJobSchedule`` of a job schedule row."""
    out = dict(row.spec)
    recent = scheduled_job_id(row.id, row.job_count) if row.job_count else None
    waiting = row.state in ("active", "disabled")
    out.update(
        {
            "id": row.id,
            "url": f"{base_url}/jobschedules/{row.id}",
            "eTag": etag(row.pk, row.version),
            "lastModified": iso(row.last_modified),
            "creationTime": iso(row.creation_time),
            "state": row.state,
            "stateTransitionTime": iso(row.state_transition_time),
            "previousState": row.previous_state,
            "previousStateTransitionTime": iso(row.previous_state_transition_time),
            "executionInfo": _clean(
                {
                    "nextRunTime": iso(row.next_run_time) if waiting else None,
                    "recentJob": (
                        {"id": recent, "url": f"{base_url}/jobs/{recent}"} if recent else None
                    ),
                    "endTime": iso(row.end_time),
                }
            ),
        }
    )
    return _clean(out)
