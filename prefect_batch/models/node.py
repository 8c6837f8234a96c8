"""Compute node models: the node as returned, and the bodies of node operations.

Reboot, reimage and disable-scheduling requests, the node's errors, its agent, and the tasks it
ran recently.

This module does not talk to nodes or decide their state; node states come from
:mod:`prefect_batch.core.states`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefect_batch.core.states import (
    NodeDeallocationOption,
    NodeState,
    SchedulingState,
    TaskState,
)
from prefect_batch.models.base import (
    OpaqueObject,
    RequestModel,
    ResponseModel,
    UtcDateTime,
)
from prefect_batch.models.common import NameValuePair
from prefect_batch.models.pool import BatchStartTask, BatchStartTaskInfo
from prefect_batch.models.task import BatchTaskExecutionInfo

__all__ = [
    "BatchNode",
    "BatchNodeAgentInfo",
    "BatchNodeDisableSchedulingOptions",
    "BatchNodeError",
    "BatchNodeRebootOptions",
    "BatchNodeReimageOptions",
    "BatchNodeRemoteLoginSettings",
    "BatchNodeUserCreateOptions",
    "BatchNodeUserReplaceOptions",
    "BatchTaskInfo",
]


class BatchNodeRebootOptions(RequestModel):
    """The body of a reboot-node request."""

    # The SDK names this attribute ``node_reboot_kind``; the wire name is ``nodeRebootOption``.
    node_reboot_kind: NodeDeallocationOption | None = Field(
        default=None,
        alias="nodeRebootOption",
        description="What happens to running tasks (requeue).",
    )


class BatchNodeReimageOptions(RequestModel):
    """The body of a reimage-node request."""

    node_reimage_option: NodeDeallocationOption | None = Field(
        default=None,
        alias="nodeReimageOption",
        description="What happens to running tasks (requeue).",
    )


class BatchNodeUserReplaceOptions(RequestModel):
    """The body of a replace-node-user request: what it names replaces the user's, what it
    leaves out is reset (no password, no key, an expiry one day from now)."""

    password: str | None = Field(
        default=None, max_length=256, description="The account's password (one line)."
    )
    expiry_time: UtcDateTime | None = Field(
        default=None,
        alias="expiryTime",
        description="When the account is removed from the node (default: one day from now).",
    )
    ssh_public_key: str | None = Field(
        default=None,
        alias="sshPublicKey",
        max_length=16384,
        description="An OpenSSH public key (``ssh-ed25519 AAAA...``) for SSH login.",
    )


class BatchNodeUserCreateOptions(BatchNodeUserReplaceOptions):
    """The body of a create-node-user request (``POST .../nodes/{nodeId}/users``)."""

    name: str = Field(description="The account's user name (``^[a-z_][a-z0-9_-]{0,30}$``).")
    is_admin: bool | None = Field(
        default=None,
        alias="isAdmin",
        description="Whether the account may use sudo on the node (default false).",
    )


class BatchNodeRemoteLoginSettings(ResponseModel):
    """Where to log in to a node over SSH."""

    remote_login_ip_address: str = Field(
        alias="remoteLoginIPAddress", description="The address of the node's SSH server."
    )
    remote_login_port: int = Field(
        alias="remoteLoginPort", description="The port of the node's SSH server."
    )
    ipv6_remote_login_ip_address: str | None = Field(
        default=None,
        alias="ipv6RemoteLoginIPAddress",
        description="The node's IPv6 login address (none here: nodes are reached over IPv4).",
    )
    ipv6_remote_login_port: int | None = Field(
        default=None,
        alias="ipv6RemoteLoginPort",
        description="The port of the node's IPv6 login address (none here).",
    )


class BatchNodeDisableSchedulingOptions(RequestModel):
    """The body of a disable-scheduling request."""

    # No ``retaineddata`` here: Azure offers only three options for this operation.
    node_disable_scheduling_option: Literal["requeue", "terminate", "taskcompletion"] | None = (
        Field(
            default=None,
            alias="nodeDisableSchedulingOption",
            description="What happens to running tasks (requeue).",
        )
    )


class BatchNodeError(ResponseModel):
    """An error a node met (agent lost, start task failed, ...)."""

    code: str | None = Field(default=None, description="An identifier for the error.")
    message: str | None = Field(default=None, description="A message for a user interface.")
    error_details: list[NameValuePair] | None = Field(
        default=None, alias="errorDetails", description="More detail."
    )


class BatchNodeAgentInfo(ResponseModel):
    """The Batch agent running on a node."""

    version: str | None = Field(default=None, description="The version of the agent.")
    last_update_time: UtcDateTime | None = Field(
        default=None, alias="lastUpdateTime", description="When the agent was last updated."
    )


class BatchTaskInfo(ResponseModel):
    """A task a node ran recently."""

    task_url: str | None = Field(default=None, alias="taskUrl", description="The URL of the task.")
    job_id: str | None = Field(default=None, alias="jobId", description="The id of the task's job.")
    task_id: str | None = Field(default=None, alias="taskId", description="The id of the task.")
    subtask_id: int | None = Field(
        default=None, alias="subtaskId", description="The subtask, for multi-instance tasks."
    )
    task_state: TaskState | None = Field(
        default=None, alias="taskState", description="The state of the task."
    )
    execution_info: BatchTaskExecutionInfo | None = Field(
        default=None, alias="executionInfo", description="How the task's runs went."
    )


class BatchNode(ResponseModel):
    """A compute node as the service returns it."""

    id: str = Field(description="The id of the node.")
    url: str | None = Field(default=None, description="The URL of the node.")
    state: NodeState | None = Field(default=None, description="What the node is doing.")
    scheduling_state: SchedulingState | None = Field(
        default=None, alias="schedulingState", description="Whether new tasks may be scheduled."
    )
    state_transition_time: UtcDateTime | None = Field(
        default=None, alias="stateTransitionTime", description="When the node entered its state."
    )
    last_boot_time: UtcDateTime | None = Field(
        default=None, alias="lastBootTime", description="When the node (its agent) last started."
    )
    allocation_time: UtcDateTime | None = Field(
        default=None, alias="allocationTime", description="When the node joined the pool."
    )
    ip_address: str | None = Field(
        default=None, alias="ipAddress", description="The address other nodes reach it at."
    )
    ipv6_address: str | None = Field(
        default=None, alias="ipv6Address", description="The IPv6 address, if any."
    )
    affinity_id: str | None = Field(
        default=None, alias="affinityId", description="Pass in affinityInfo to prefer this node."
    )
    vm_size: str | None = Field(default=None, alias="vmSize", description="The size of the node.")
    total_tasks_run: int | None = Field(
        default=None, alias="totalTasksRun", description="Tasks completed on the node."
    )
    running_tasks_count: int | None = Field(
        default=None, alias="runningTasksCount", description="Tasks running on the node now."
    )
    running_task_slots_count: int | None = Field(
        default=None, alias="runningTaskSlotsCount", description="Slots used by running tasks."
    )
    total_tasks_succeeded: int | None = Field(
        default=None, alias="totalTasksSucceeded", description="Tasks that succeeded on the node."
    )
    recent_tasks: list[BatchTaskInfo] | None = Field(
        default=None, alias="recentTasks", description="Tasks that ran on the node recently."
    )
    start_task: BatchStartTask | None = Field(
        default=None, alias="startTask", description="The start task of the node."
    )
    start_task_info: BatchStartTaskInfo | None = Field(
        default=None, alias="startTaskInfo", description="How the start task went."
    )
    errors: list[BatchNodeError] | None = Field(
        default=None, description="Errors the node has, e.g. why it is unusable."
    )
    is_dedicated: bool | None = Field(
        default=None, alias="isDedicated", description="Dedicated (true) or spot (false)."
    )
    endpoint_configuration: OpaqueObject | None = Field(
        default=None, alias="endpointConfiguration", description="Inbound endpoints; opaque."
    )
    node_agent_info: BatchNodeAgentInfo | None = Field(
        default=None, alias="nodeAgentInfo", description="The Batch agent on the node."
    )
    virtual_machine_info: OpaqueObject | None = Field(
        default=None, alias="virtualMachineInfo", description="The node's VM; opaque."
    )
