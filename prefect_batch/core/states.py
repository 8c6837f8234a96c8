"""States of pools, nodes, jobs, job schedules and tasks, and the legal edges between them.

Each resource has a ``str`` enum with Azure Batch's wire values, and one table of legal edges.
:func:`transition` is the single guard every state change goes through: it raises
:class:`~prefect_batch.exceptions.IllegalTransitionError` on an edge the table does not list.
State is kept apart from outcome: a task that failed is ``completed`` with ``result=failure``.

This module is pure: no I/O, no clock. Callers pass ``now``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import TypeVar

from prefect_batch.exceptions import IllegalTransitionError

__all__ = [
    "AllocationState",
    "CertificateState",
    "DependencyAction",
    "DisableJobOption",
    "ErrorCategory",
    "JobAction",
    "JobScheduleState",
    "JobState",
    "NodeDeallocationOption",
    "NodeFillType",
    "NodeState",
    "OnAllTasksComplete",
    "OnTaskFailure",
    "PoolLifetimeOption",
    "PoolState",
    "SchedulingState",
    "StartTaskState",
    "StateChange",
    "TaskAddStatus",
    "TaskExecutionResult",
    "TaskState",
    "ALLOCATION_TRANSITIONS",
    "CERTIFICATE_TRANSITIONS",
    "JOB_SCHEDULE_TRANSITIONS",
    "JOB_TRANSITIONS",
    "NODE_TRANSITIONS",
    "POOL_TRANSITIONS",
    "TASK_TRANSITIONS",
    "transition",
]


class TaskState(str, Enum):
    """Where a task is in its life."""

    ACTIVE = "active"
    """Queued: waiting for a free slot, its dependencies, or its job to be enabled."""
    PREPARING = "preparing"
    """Assigned to a node; the node is setting up its directories and files."""
    RUNNING = "running"
    """The command line runs on a node."""
    COMPLETED = "completed"
    """Ended for good (see ``executionInfo.result`` for success or failure)."""


class JobState(str, Enum):
    """Where a job is in its life."""

    ACTIVE = "active"
    """Its tasks are scheduled."""
    DISABLING = "disabling"
    """A disable request is being carried out (running tasks requeued, ended or awaited)."""
    DISABLED = "disabled"
    """No task of the job is scheduled until it is enabled."""
    ENABLING = "enabling"
    """An enable request is being carried out."""
    TERMINATING = "terminating"
    """Ending: running tasks are being stopped and release tasks run."""
    COMPLETED = "completed"
    """Ended; no task of it will run again."""
    DELETING = "deleting"
    """Being deleted together with its tasks and their files."""


class JobScheduleState(str, Enum):
    """Where a job schedule is in its life."""

    ACTIVE = "active"
    """Jobs are created as the schedule says."""
    COMPLETED = "completed"
    """Ended (its last run is over, ``doNotRunAfter`` passed, or it was terminated)."""
    DISABLED = "disabled"
    """No new job is created until it is enabled; a job already running goes on."""
    TERMINATING = "terminating"
    """Terminated: its active job is being stopped; then ``completed``."""
    DELETING = "deleting"
    """Being deleted together with its jobs; it goes when the last of them is gone."""


class PoolState(str, Enum):
    """Whether a pool is usable."""

    ACTIVE = "active"
    """The pool can run tasks."""
    DELETING = "deleting"
    """The pool is being deleted; its nodes leave."""


class CertificateState(str, Enum):
    """Whether an account's certificate may be used (certificates are deprecated by Azure)."""

    ACTIVE = "active"
    """Pools may reference it."""
    DELETING = "deleting"
    """A delete was asked for and is being carried out."""
    DELETE_FAILED = "deletefailed"
    """A delete failed: pools reference it or nodes have it installed."""


class AllocationState(str, Enum):
    """Whether a pool is changing size."""

    STEADY = "steady"
    """Not resizing: the node count is where it was asked to be (or a resize ended)."""
    RESIZING = "resizing"
    """Nodes are being added or removed."""
    STOPPING = "stopping"
    """A resize is being stopped."""


class NodeState(str, Enum):
    """What a compute node is doing, with Azure's wire values."""

    IDLE = "idle"
    """Running no task and able to take one."""
    REBOOTING = "rebooting"
    """Restarting its agent; running tasks were dealt with per the reboot option."""
    REIMAGING = "reimaging"
    """Its batch directories are being wiped and the agent restarted."""
    RUNNING = "running"
    """Running one or more tasks (other than the start task)."""
    UNUSABLE = "unusable"
    """Cannot run tasks because of errors (agent lost, cannot be started, ...)."""
    CREATING = "creating"
    """Obtained from its node source, not yet joining the pool."""
    STARTING = "starting"
    """The agent is starting on the node."""
    WAITING_FOR_START_TASK = "waitingforstarttask"
    """The start task runs and the pool waits for it to succeed."""
    START_TASK_FAILED = "starttaskfailed"
    """The start task failed after all retries; the node takes no task."""
    UNKNOWN = "unknown"
    """The service has no contact with the node (no engine attached to it)."""
    LEAVING_POOL = "leavingpool"
    """Leaving the pool (removal or shrink)."""
    OFFLINE = "offline"
    """Running no task with scheduling disabled."""
    PREEMPTED = "preempted"
    """A spot node that was reclaimed."""
    UPGRADING_OS = "upgradingos"
    """Upgrading its operating system (never used by local or SSH nodes)."""
    DEALLOCATED = "deallocated"
    """Stopped and deallocated."""
    DEALLOCATING = "deallocating"
    """Being deallocated."""


class SchedulingState(str, Enum):
    """Whether new tasks may be scheduled on a node."""

    ENABLED = "enabled"
    """Tasks can be scheduled on the node."""
    DISABLED = "disabled"
    """No new task is scheduled on the node."""


class StartTaskState(str, Enum):
    """State of a node's start task."""

    RUNNING = "running"
    """The start task runs."""
    COMPLETED = "completed"
    """The start task ended (see its result)."""


class TaskExecutionResult(str, Enum):
    """Outcome of a completed task."""

    SUCCESS = "success"
    """Ran and exited 0 (or an exit code mapped to success)."""
    FAILURE = "failure"
    """Failed: non-zero exit after retries, or an error before or after the command ran."""


class ErrorCategory(str, Enum):
    """Who is to blame for a failure."""

    USER_ERROR = "usererror"
    """The user's task or request."""
    SERVER_ERROR = "servererror"
    """The service or the node."""


class NodeFillType(str, Enum):
    """How tasks are spread over a pool's nodes."""

    SPREAD = "spread"
    """Even out the load: the node with the most free slots first."""
    PACK = "pack"
    """Fill each node to its slots before using the next."""


class PoolLifetimeOption(str, Enum):
    """How long an auto pool lives, and which jobs share it."""

    JOB = "job"
    """One pool per job: deleted when the job completes or is deleted."""
    JOB_SCHEDULE = "jobschedule"
    """One pool for all the jobs of a schedule: deleted when the schedule completes or goes."""


class OnAllTasksComplete(str, Enum):
    """What a job does when all its tasks are complete."""

    NO_ACTION = "noaction"
    """Stay active; the user terminates it."""
    TERMINATE_JOB = "terminatejob"
    """Terminate the job (reason ``AllTasksComplete``)."""


class OnTaskFailure(str, Enum):
    """What a job does when one of its tasks fails."""

    NO_ACTION = "noaction"
    """Nothing."""
    PERFORM_EXIT_OPTIONS_JOB_ACTION = "performexitoptionsjobaction"
    """Carry out the task's ``exitConditions`` job action."""


class JobAction(str, Enum):
    """A job action taken when a task completes."""

    NONE = "none"
    """Nothing."""
    DISABLE = "disable"
    """Disable the job (its running tasks are requeued)."""
    TERMINATE = "terminate"
    """Terminate the job (reason ``TaskFailed``)."""


class DependencyAction(str, Enum):
    """Whether a completed task releases the tasks that depend on it."""

    SATISFY = "satisfy"
    """Dependent tasks may run."""
    BLOCK = "block"
    """Dependent tasks never run."""


class DisableJobOption(str, Enum):
    """What happens to a job's running tasks when it is disabled."""

    REQUEUE = "requeue"
    """Stop them and queue them again (requeueCount + 1)."""
    TERMINATE = "terminate"
    """Stop them; they complete as failed."""
    WAIT = "wait"
    """Let them finish."""


class NodeDeallocationOption(str, Enum):
    """What happens to running tasks when a node leaves, reboots or is reimaged."""

    REQUEUE = "requeue"
    """Stop them now and queue them again (requeueCount + 1)."""
    TERMINATE = "terminate"
    """Stop them now; they complete as failed."""
    TASK_COMPLETION = "taskcompletion"
    """Schedule nothing new and wait for them to finish."""
    RETAINED_DATA = "retaineddata"
    """Wait for them and for their retention time to pass."""


class TaskAddStatus(str, Enum):
    """Per-task outcome of a bulk add."""

    SUCCESS = "success"
    """The task was added."""
    CLIENT_ERROR = "clienterror"
    """The task was rejected for a problem in the request."""
    SERVER_ERROR = "servererror"
    """The task was not added because of a service problem; retry it."""


E = TypeVar("E", bound=Enum)

# Legal edges per resource; every edge has its reason.
TASK_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    # ACTIVE -> PREPARING: the scheduler gave it a slot.
    # ACTIVE -> COMPLETED: terminated while queued, or its job ended.
    TaskState.ACTIVE: frozenset({TaskState.PREPARING, TaskState.COMPLETED}),
    # PREPARING -> RUNNING: the process started.
    # PREPARING -> ACTIVE: node lost or requeued before start (requeueCount + 1).
    # PREPARING -> COMPLETED: the process could not be started, or it ended before we saw it start.
    TaskState.PREPARING: frozenset({TaskState.RUNNING, TaskState.ACTIVE, TaskState.COMPLETED}),
    # RUNNING -> COMPLETED: it exited, timed out or was terminated.
    # RUNNING -> ACTIVE: retried after a failure, or requeued (node lost, job disabled).
    TaskState.RUNNING: frozenset({TaskState.COMPLETED, TaskState.ACTIVE}),
    # COMPLETED -> ACTIVE: reactivated by the user (retry count reset).
    TaskState.COMPLETED: frozenset({TaskState.ACTIVE}),
}

JOB_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # ACTIVE -> DISABLING: disable requested.  ACTIVE -> TERMINATING: terminate, all tasks done,
    # wall clock, a task's job action.  ACTIVE -> DELETING: delete.  ACTIVE -> COMPLETED: ended
    # with nothing left to stop.  ACTIVE -> DISABLED: disabled with nothing running.
    JobState.ACTIVE: frozenset(
        {
            JobState.DISABLING,
            JobState.DISABLED,
            JobState.TERMINATING,
            JobState.COMPLETED,
            JobState.DELETING,
        }
    ),
    # DISABLING -> DISABLED: running tasks were dealt with.
    # DISABLING -> ACTIVE: enable requested while its running tasks were still being dealt with.
    JobState.DISABLING: frozenset(
        {
            JobState.ACTIVE,
            JobState.DISABLED,
            JobState.TERMINATING,
            JobState.COMPLETED,
            JobState.DELETING,
        }
    ),
    # DISABLED -> ENABLING/ACTIVE: enable requested.
    JobState.DISABLED: frozenset(
        {
            JobState.ENABLING,
            JobState.ACTIVE,
            JobState.TERMINATING,
            JobState.COMPLETED,
            JobState.DELETING,
        }
    ),
    JobState.ENABLING: frozenset(
        {JobState.ACTIVE, JobState.TERMINATING, JobState.COMPLETED, JobState.DELETING}
    ),
    # TERMINATING -> COMPLETED: running tasks were stopped.
    JobState.TERMINATING: frozenset({JobState.COMPLETED, JobState.DELETING}),
    # COMPLETED -> DELETING: delete.
    JobState.COMPLETED: frozenset({JobState.DELETING}),
    JobState.DELETING: frozenset(),
}

POOL_TRANSITIONS: Mapping[PoolState, frozenset[PoolState]] = {
    # ACTIVE -> DELETING: delete requested (or its auto pool's job or schedule ended); the row
    #   goes once its nodes have left.
    PoolState.ACTIVE: frozenset({PoolState.DELETING}),
    PoolState.DELETING: frozenset(),
}

CERTIFICATE_TRANSITIONS: Mapping[CertificateState, frozenset[CertificateState]] = {
    # ACTIVE -> DELETING: delete requested.
    CertificateState.ACTIVE: frozenset({CertificateState.DELETING}),
    # DELETING -> DELETEFAILED: a pool references it or a node has it installed (the row goes
    #   instead when nothing uses it).
    CertificateState.DELETING: frozenset({CertificateState.DELETE_FAILED}),
    # DELETEFAILED -> ACTIVE: cancel deletion.  DELETEFAILED -> DELETING: delete asked again.
    CertificateState.DELETE_FAILED: frozenset({CertificateState.ACTIVE, CertificateState.DELETING}),
}

ALLOCATION_TRANSITIONS: Mapping[AllocationState, frozenset[AllocationState]] = {
    # STEADY -> RESIZING: a resize, nodes removed, or an autoscale evaluation with new targets.
    AllocationState.STEADY: frozenset({AllocationState.RESIZING}),
    # RESIZING -> STEADY: the target was reached, the resize timed out, not every node could be
    #   placed (resizeErrors), or the resize was stopped (the pool keeps the nodes it has).
    # RESIZING -> STOPPING: a stop that waits for nodes still leaving.
    AllocationState.RESIZING: frozenset({AllocationState.STEADY, AllocationState.STOPPING}),
    # STOPPING -> STEADY: the stop finished.
    AllocationState.STOPPING: frozenset({AllocationState.STEADY}),
}

JOB_SCHEDULE_TRANSITIONS: Mapping[JobScheduleState, frozenset[JobScheduleState]] = {
    # ACTIVE -> DISABLED: disable requested.
    # ACTIVE -> TERMINATING: terminate requested while its job still has tasks to stop.
    # ACTIVE -> COMPLETED: no run is left (doNotRunAfter passed, or the one job of a
    #   non-recurring schedule was created) and no job of it is active; or terminated with
    #   nothing left to stop.
    # ACTIVE -> DELETING: delete requested while its jobs still have tasks to stop.
    JobScheduleState.ACTIVE: frozenset(
        {
            JobScheduleState.DISABLED,
            JobScheduleState.TERMINATING,
            JobScheduleState.COMPLETED,
            JobScheduleState.DELETING,
        }
    ),
    # DISABLED -> ACTIVE: enable requested.  DISABLED -> TERMINATING/COMPLETED: terminate
    # (with or without a job still to stop).  DISABLED -> DELETING: delete.
    JobScheduleState.DISABLED: frozenset(
        {
            JobScheduleState.ACTIVE,
            JobScheduleState.TERMINATING,
            JobScheduleState.COMPLETED,
            JobScheduleState.DELETING,
        }
    ),
    # TERMINATING -> COMPLETED: its jobs completed.  TERMINATING -> DELETING: delete.
    JobScheduleState.TERMINATING: frozenset(
        {JobScheduleState.COMPLETED, JobScheduleState.DELETING}
    ),
    # COMPLETED -> DELETING: delete while its jobs still have tasks to stop.
    JobScheduleState.COMPLETED: frozenset({JobScheduleState.DELETING}),
    # DELETING: the row goes when its last job is gone; nothing follows.
    JobScheduleState.DELETING: frozenset(),
}

_ANY_NODE = frozenset(NodeState)
_PREEMPTIBLE = frozenset(
    {
        NodeState.CREATING,
        NodeState.STARTING,
        NodeState.WAITING_FOR_START_TASK,
        NodeState.IDLE,
        NodeState.RUNNING,
        NodeState.OFFLINE,
        NodeState.START_TASK_FAILED,
        NodeState.UNUSABLE,
        NodeState.UNKNOWN,
        NodeState.REBOOTING,
        NodeState.REIMAGING,
    }
)
"""States a node may be preempted from: any while its machine is held."""

_NODE_EDGES: Mapping[NodeState, frozenset[NodeState]] = {
    # X -> UNKNOWN: the engine that ran the node stopped.
    NodeState.CREATING: frozenset(
        {NodeState.STARTING, NodeState.UNUSABLE, NodeState.LEAVING_POOL, NodeState.UNKNOWN}
    ),
    # STARTING -> WAITING_FOR_START_TASK / IDLE: agent up; start task runs or there is none.
    # STARTING -> START_TASK_FAILED: an agent reconnects to a node whose start task had failed.
    NodeState.STARTING: frozenset(
        {
            NodeState.WAITING_FOR_START_TASK,
            NodeState.START_TASK_FAILED,
            NodeState.IDLE,
            NodeState.RUNNING,
            NodeState.OFFLINE,
            NodeState.UNUSABLE,
            NodeState.UNKNOWN,
            NodeState.LEAVING_POOL,
        }
    ),
    NodeState.WAITING_FOR_START_TASK: frozenset(
        {
            NodeState.IDLE,
            NodeState.OFFLINE,
            NodeState.START_TASK_FAILED,
            NodeState.UNUSABLE,
            NodeState.UNKNOWN,
            NodeState.REBOOTING,
            NodeState.REIMAGING,
            NodeState.LEAVING_POOL,
        }
    ),
    NodeState.IDLE: frozenset(
        {
            NodeState.RUNNING,
            NodeState.OFFLINE,
            NodeState.UNUSABLE,
            NodeState.UNKNOWN,
            NodeState.REBOOTING,
            NodeState.REIMAGING,
            NodeState.LEAVING_POOL,
            NodeState.WAITING_FOR_START_TASK,
        }
    ),
    NodeState.RUNNING: frozenset(
        {
            NodeState.IDLE,
            NodeState.OFFLINE,
            NodeState.UNUSABLE,
            NodeState.UNKNOWN,
            NodeState.REBOOTING,
            NodeState.REIMAGING,
            NodeState.LEAVING_POOL,
        }
    ),
    NodeState.OFFLINE: frozenset(
        {
            NodeState.IDLE,
            NodeState.RUNNING,
            NodeState.UNUSABLE,
            NodeState.UNKNOWN,
            NodeState.REBOOTING,
            NodeState.REIMAGING,
            NodeState.LEAVING_POOL,
        }
    ),
    NodeState.START_TASK_FAILED: frozenset(
        {NodeState.REBOOTING, NodeState.REIMAGING, NodeState.LEAVING_POOL, NodeState.UNKNOWN}
    ),
    # A lost node comes back through STARTING (its agent is started again) or leaves.
    NodeState.UNUSABLE: frozenset(
        {NodeState.STARTING, NodeState.REBOOTING, NodeState.REIMAGING, NodeState.LEAVING_POOL}
    ),
    NodeState.UNKNOWN: frozenset(
        {NodeState.STARTING, NodeState.UNUSABLE, NodeState.LEAVING_POOL, NodeState.REBOOTING}
    ),
    NodeState.REBOOTING: frozenset(
        {NodeState.STARTING, NodeState.UNUSABLE, NodeState.LEAVING_POOL, NodeState.UNKNOWN}
    ),
    NodeState.REIMAGING: frozenset(
        {NodeState.STARTING, NodeState.UNUSABLE, NodeState.LEAVING_POOL, NodeState.UNKNOWN}
    ),
    NodeState.LEAVING_POOL: frozenset(),
    NodeState.PREEMPTED: frozenset({NodeState.STARTING, NodeState.LEAVING_POOL}),
    NodeState.UPGRADING_OS: frozenset({NodeState.STARTING, NodeState.UNUSABLE}),
    NodeState.DEALLOCATED: frozenset({NodeState.STARTING, NodeState.LEAVING_POOL}),
    NodeState.DEALLOCATING: frozenset({NodeState.DEALLOCATED, NodeState.UNUSABLE}),
}
# X -> PREEMPTED: the node's provider reclaimed its machine (a spot reclaim).
NODE_TRANSITIONS: Mapping[NodeState, frozenset[NodeState]] = {
    state: edges | {NodeState.PREEMPTED} if state in _PREEMPTIBLE else edges
    for state, edges in _NODE_EDGES.items()
}
assert set(NODE_TRANSITIONS) == set(_ANY_NODE)


@dataclass(frozen=True)
class StateChange:
    """The result of a legal transition: the stamps a resource records."""

    state: str
    state_transition_time: datetime
    previous_state: str
    previous_state_transition_time: datetime | None


def transition(
    table: Mapping[E, frozenset[E]],
    current: E,
    target: E,
    *,
    now: datetime,
    current_since: datetime | None = None,
) -> StateChange:
    """Check ``current -> target`` against ``table`` and return the stamps to record.

    Raises:
        IllegalTransitionError: The table has no such edge.
    """
    if target not in table.get(current, frozenset()):
        raise IllegalTransitionError(
            f"illegal transition {type(current).__name__}: {current.value} -> {target.value}"
        )
    return StateChange(
        state=target.value,
        state_transition_time=now,
        previous_state=current.value,
        previous_state_transition_time=current_since,
    )
