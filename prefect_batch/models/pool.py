"""Pool models: creating, changing, resizing and autoscaling pools, and the pool as returned.

Also the start task every node of a pool runs, the node images a pool may use, and per-pool
node counts.

This module does not evaluate autoscale formulas or launch nodes; sub-objects prefect-batch does
not act on (networking, mounts, identities, upgrade policies, user accounts) are accepted as
opaque JSON objects so Azure requests stay valid, and returned as given.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefect_batch.core.states import (
    AllocationState,
    NodeDeallocationOption,
    NodeFillType,
    PoolLifetimeOption,
    PoolState,
    StartTaskState,
    TaskExecutionResult,
)
from prefect_batch.models.base import (
    BatchId,
    DisplayName,
    Duration,
    NonEmptyStr,
    NonNegativeDuration,
    OpaqueObject,
    RequestModel,
    ResponseModel,
    UtcDateTime,
)
from prefect_batch.models.certificate import BatchCertificateReference
from prefect_batch.models.common import (
    BatchApplicationPackageReference,
    BatchMetadataItem,
    BatchTaskContainerSettings,
    EnvironmentSetting,
    NameValuePair,
    ResourceFile,
    UserIdentity,
)
from prefect_batch.models.task import BatchTaskFailureInfo

__all__ = [
    "AutoScaleRun",
    "AutoScaleRunError",
    "BatchAutoPoolSpecification",
    "BatchNodeCounts",
    "BatchNodeRemoveOptions",
    "BatchPool",
    "BatchPoolCreateOptions",
    "BatchPoolEnableAutoScaleOptions",
    "BatchPoolEvaluateAutoScaleOptions",
    "BatchPoolNodeCounts",
    "BatchPoolReplaceOptions",
    "BatchPoolResizeOptions",
    "BatchPoolSpecification",
    "BatchPoolUpdateOptions",
    "BatchStartTask",
    "BatchStartTaskInfo",
    "BatchSupportedImage",
    "BatchTaskSchedulingPolicy",
    "BatchVmImageReference",
    "ResizeError",
    "VirtualMachineConfiguration",
]

TASK_SLOTS_PER_NODE_MAX = 256
"""Most task slots Azure allows per node."""
AUTO_POOL_ID_PREFIX_MAX = 20
"""Longest ``autoPoolIdPrefix`` Azure accepts."""
REMOVE_NODES_MAX = 100
"""Most nodes one remove-nodes request may name."""


class BatchStartTask(RequestModel):
    """A task every node runs when it joins the pool or restarts."""

    command_line: NonEmptyStr = Field(
        alias="commandLine", description="The command line; not run in a shell."
    )
    container_settings: BatchTaskContainerSettings | None = Field(
        default=None, alias="containerSettings", description="The container the start task runs in."
    )
    resource_files: list[ResourceFile] | None = Field(
        default=None, alias="resourceFiles", description="Files downloaded before the command runs."
    )
    environment_settings: list[EnvironmentSetting] | None = Field(
        default=None, alias="environmentSettings", description="Environment variables for the task."
    )
    user_identity: UserIdentity | None = Field(
        default=None, alias="userIdentity", description="Who the start task runs as."
    )
    max_task_retry_count: int | None = Field(
        default=None,
        alias="maxTaskRetryCount",
        ge=-1,
        description="Retries after a non-zero exit: 0 none, -1 without limit.",
    )
    wait_for_success: bool | None = Field(
        default=None,
        alias="waitForSuccess",
        description="Schedule no task on the node until the start task succeeded (true).",
    )


class BatchStartTaskInfo(ResponseModel):
    """How a node's start task went."""

    state: StartTaskState | None = Field(default=None, description="Whether it runs or completed.")
    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="When the latest run started."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When the start task completed."
    )
    exit_code: int | None = Field(
        default=None, alias="exitCode", description="The process exit code."
    )
    container_info: OpaqueObject | None = Field(
        default=None, alias="containerInfo", description="The container it ran in, if any."
    )
    failure_info: BatchTaskFailureInfo | None = Field(
        default=None, alias="failureInfo", description="Why it failed, if it did."
    )
    retry_count: int | None = Field(
        default=None, alias="retryCount", description="Times it was retried after a failure."
    )
    last_retry_time: UtcDateTime | None = Field(
        default=None, alias="lastRetryTime", description="When the latest retry started."
    )
    result: TaskExecutionResult | None = Field(default=None, description="Success or failure.")


class BatchTaskSchedulingPolicy(RequestModel):
    """How tasks are spread over a pool's nodes."""

    job_default_order: Literal["none", "creationtime"] | None = Field(
        default=None,
        alias="jobDefaultOrder",
        description="Order among jobs of equal priority: none, or by creation time.",
    )
    node_fill_type: NodeFillType = Field(
        alias="nodeFillType", description="Spread tasks over nodes, or pack each node first."
    )


class BatchVmImageReference(RequestModel):
    """The image nodes run; prefect-batch records it and leaves images to its providers."""

    publisher: str | None = Field(default=None, description="The publisher of the image.")
    offer: str | None = Field(default=None, description="The offer type of the image.")
    sku: str | None = Field(default=None, description="The SKU of the image.")
    version: str | None = Field(default=None, description="The version of the image ('latest').")
    virtual_machine_image_id: str | None = Field(
        default=None, alias="virtualMachineImageId", description="The ARM id of a gallery image."
    )
    exact_version: str | None = Field(
        default=None, alias="exactVersion", description="The version actually used (read-only)."
    )
    shared_gallery_image_id: str | None = Field(
        default=None, alias="sharedGalleryImageId", description="A shared gallery image id."
    )
    community_gallery_image_id: str | None = Field(
        default=None, alias="communityGalleryImageId", description="A community gallery image id."
    )


class VirtualMachineConfiguration(RequestModel):
    """The image and agent of a pool's nodes; the other parts are stored, not acted on."""

    image_reference: BatchVmImageReference = Field(
        alias="imageReference", description="The image the nodes run."
    )
    node_agent_sku_id: NonEmptyStr = Field(
        alias="nodeAgentSKUId", description="The node agent SKU, e.g. 'batch.node.ubuntu 22.04'."
    )
    windows_configuration: OpaqueObject | None = Field(
        default=None, alias="windowsConfiguration", description="Windows settings; opaque."
    )
    data_disks: list[OpaqueObject] | None = Field(
        default=None, alias="dataDisks", description="Attached data disks; opaque."
    )
    license_type: str | None = Field(
        default=None, alias="licenseType", description="The on-premises license type (Windows)."
    )
    container_configuration: OpaqueObject | None = Field(
        default=None, alias="containerConfiguration", description="Container support; opaque."
    )
    disk_encryption_configuration: OpaqueObject | None = Field(
        default=None, alias="diskEncryptionConfiguration", description="Disk encryption; opaque."
    )
    node_placement_configuration: OpaqueObject | None = Field(
        default=None, alias="nodePlacementConfiguration", description="Node placement; opaque."
    )
    extensions: list[OpaqueObject] | None = Field(
        default=None, description="VM extensions; opaque."
    )
    os_disk: OpaqueObject | None = Field(
        default=None, alias="osDisk", description="OS disk; opaque."
    )
    security_profile: OpaqueObject | None = Field(
        default=None, alias="securityProfile", description="Security profile; opaque."
    )
    service_artifact_reference: OpaqueObject | None = Field(
        default=None, alias="serviceArtifactReference", description="Service artifact; opaque."
    )


class BatchPoolSpecification(RequestModel):
    """A pool's properties without its id: the ``pool`` of an auto pool specification."""

    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="A display name; up to 1024 characters."
    )
    vm_size: NonEmptyStr = Field(
        alias="vmSize", description="The size of the nodes, as the pool's provider names it."
    )
    virtual_machine_configuration: VirtualMachineConfiguration | None = Field(
        default=None, alias="virtualMachineConfiguration", description="The image of the nodes."
    )
    resize_timeout: NonNegativeDuration | None = Field(
        default=None, alias="resizeTimeout", description="How long a resize may take (15 minutes)."
    )
    target_dedicated_nodes: int | None = Field(
        default=None, alias="targetDedicatedNodes", ge=0, description="Dedicated nodes wanted."
    )
    target_low_priority_nodes: int | None = Field(
        default=None, alias="targetLowPriorityNodes", ge=0, description="Spot nodes wanted."
    )
    enable_auto_scale: bool | None = Field(
        default=None, alias="enableAutoScale", description="Size the pool by a formula (false)."
    )
    auto_scale_formula: str | None = Field(
        default=None, alias="autoScaleFormula", description="The formula, when autoscale is on."
    )
    auto_scale_evaluation_interval: NonNegativeDuration | None = Field(
        default=None,
        alias="autoScaleEvaluationInterval",
        description="How often the formula runs (15 minutes).",
    )
    enable_inter_node_communication: bool | None = Field(
        default=None,
        alias="enableInterNodeCommunication",
        description="Whether nodes talk to each other directly (false).",
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )
    start_task: BatchStartTask | None = Field(
        default=None, alias="startTask", description="The task each node runs when it joins."
    )
    application_package_references: list[BatchApplicationPackageReference] | None = Field(
        default=None, alias="applicationPackageReferences", description="Packages on every node."
    )
    certificate_references: list[BatchCertificateReference] | None = Field(
        default=None,
        alias="certificateReferences",
        description="Certificates installed on every node before its start task (Azure: "
        "deprecated); a change reaches nodes that join, reboot or are reimaged.",
    )
    task_slots_per_node: int | None = Field(
        default=None,
        alias="taskSlotsPerNode",
        ge=1,
        le=TASK_SLOTS_PER_NODE_MAX,
        description="Tasks one node runs at once (1); at most 256.",
    )
    task_scheduling_policy: BatchTaskSchedulingPolicy | None = Field(
        default=None,
        alias="taskSchedulingPolicy",
        description="How tasks spread over nodes (spread).",
    )
    user_accounts: list[OpaqueObject] | None = Field(
        default=None, alias="userAccounts", description="User accounts on each node; opaque."
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs for the user's own use."
    )
    mount_configuration: list[OpaqueObject] | None = Field(
        default=None, alias="mountConfiguration", description="File systems to mount; opaque."
    )
    upgrade_policy: OpaqueObject | None = Field(
        default=None, alias="upgradePolicy", description="OS upgrade policy; opaque."
    )


class BatchPoolCreateOptions(BatchPoolSpecification):
    """The body of a create-pool request: a pool specification and the pool's id."""

    id: BatchId = Field(description="Unique (case-insensitively) in the account; 1-64 chars.")


class BatchAutoPoolSpecification(RequestModel):
    """A pool the service creates for a job (or for all the jobs of a schedule)."""

    auto_pool_id_prefix: str | None = Field(
        default=None,
        alias="autoPoolIdPrefix",
        max_length=AUTO_POOL_ID_PREFIX_MAX,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="Put before the generated id (``<prefix>_<guid>``); up to 20 characters.",
    )
    pool_lifetime_option: PoolLifetimeOption = Field(
        alias="poolLifetimeOption",
        description="``job``: a pool per job, gone when it completes; ``jobschedule``: one pool "
        "for all the schedule's jobs, gone when the schedule completes.",
    )
    keep_alive: bool | None = Field(
        default=None,
        alias="keepAlive",
        description="Keep the pool when its lifetime ends (false); the user deletes it then.",
    )
    pool: BatchPoolSpecification = Field(description="The pool to create.")


class BatchPoolUpdateOptions(RequestModel):
    """The body of a patch-pool request: only the fields given change."""

    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="A display name; up to 1024 characters."
    )
    vm_size: NonEmptyStr | None = Field(default=None, alias="vmSize", description="The node size.")
    enable_inter_node_communication: bool | None = Field(
        default=None,
        alias="enableInterNodeCommunication",
        description="Direct node-to-node traffic.",
    )
    start_task: BatchStartTask | None = Field(
        default=None,
        alias="startTask",
        description="The new start task; for nodes that join later.",
    )
    application_package_references: list[BatchApplicationPackageReference] | None = Field(
        default=None, alias="applicationPackageReferences", description="Packages on every node."
    )
    certificate_references: list[BatchCertificateReference] | None = Field(
        default=None,
        alias="certificateReferences",
        description="Certificates installed on every node before its start task (Azure: "
        "deprecated); a change reaches nodes that join, reboot or are reimaged.",
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Replaces the pool's metadata."
    )
    virtual_machine_configuration: VirtualMachineConfiguration | None = Field(
        default=None, alias="virtualMachineConfiguration", description="The image of the nodes."
    )
    task_slots_per_node: int | None = Field(
        default=None,
        alias="taskSlotsPerNode",
        ge=1,
        le=TASK_SLOTS_PER_NODE_MAX,
        description="Tasks one node runs at once; at most 256.",
    )
    task_scheduling_policy: BatchTaskSchedulingPolicy | None = Field(
        default=None, alias="taskSchedulingPolicy", description="How tasks spread over nodes."
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )
    user_accounts: list[OpaqueObject] | None = Field(
        default=None, alias="userAccounts", description="User accounts on each node; opaque."
    )
    mount_configuration: list[OpaqueObject] | None = Field(
        default=None, alias="mountConfiguration", description="File systems to mount; opaque."
    )
    upgrade_policy: OpaqueObject | None = Field(
        default=None, alias="upgradePolicy", description="OS upgrade policy; opaque."
    )


class BatchPoolReplaceOptions(RequestModel):
    """The body of an update-pool-properties request: the listed properties are replaced."""

    start_task: BatchStartTask | None = Field(
        default=None, alias="startTask", description="The new start task; removed when omitted."
    )
    application_package_references: list[BatchApplicationPackageReference] = Field(
        alias="applicationPackageReferences",
        description="Replaces the pool's packages; an empty list removes them all.",
    )
    certificate_references: list[BatchCertificateReference] | None = Field(
        default=None,
        alias="certificateReferences",
        description="Replaces the pool's certificates (required before api-version 2025-06-01, "
        "unchanged when omitted here); an empty list removes them all.",
    )
    metadata: list[BatchMetadataItem] = Field(
        description="Replaces the pool's metadata; an empty list removes it all."
    )


class BatchPoolResizeOptions(RequestModel):
    """The body of a resize-pool request."""

    target_dedicated_nodes: int | None = Field(
        default=None, alias="targetDedicatedNodes", ge=0, description="Dedicated nodes wanted."
    )
    target_low_priority_nodes: int | None = Field(
        default=None, alias="targetLowPriorityNodes", ge=0, description="Spot nodes wanted."
    )
    resize_timeout: NonNegativeDuration | None = Field(
        default=None,
        alias="resizeTimeout",
        description="How long the resize may take (15 minutes).",
    )
    node_deallocation_option: NodeDeallocationOption | None = Field(
        default=None,
        alias="nodeDeallocationOption",
        description="What happens to running tasks on leaving nodes (requeue).",
    )


class BatchNodeRemoveOptions(RequestModel):
    """The body of a remove-nodes request."""

    node_ids: list[NonEmptyStr] = Field(
        alias="nodeList",
        min_length=1,
        max_length=REMOVE_NODES_MAX,
        description="Ids of the nodes to remove; 1 to 100.",
    )
    resize_timeout: NonNegativeDuration | None = Field(
        default=None,
        alias="resizeTimeout",
        description="How long the removal may take (15 minutes).",
    )
    node_deallocation_option: NodeDeallocationOption | None = Field(
        default=None,
        alias="nodeDeallocationOption",
        description="What happens to running tasks on the nodes (requeue).",
    )


class BatchPoolEnableAutoScaleOptions(RequestModel):
    """The body of an enable-autoscale request."""

    auto_scale_formula: str | None = Field(
        default=None,
        alias="autoScaleFormula",
        description="The formula; the pool's current when omitted.",
    )
    auto_scale_evaluation_interval: NonNegativeDuration | None = Field(
        default=None,
        alias="autoScaleEvaluationInterval",
        description="How often the formula runs; the pool's current when omitted.",
    )


class BatchPoolEvaluateAutoScaleOptions(RequestModel):
    """The body of an evaluate-autoscale request (a dry run)."""

    auto_scale_formula: NonEmptyStr = Field(
        alias="autoScaleFormula", description="The formula to evaluate."
    )


class AutoScaleRunError(ResponseModel):
    """Why an autoscale evaluation failed."""

    code: str | None = Field(default=None, description="An identifier for the error.")
    message: str | None = Field(default=None, description="A message for a user interface.")
    error_values: list[NameValuePair] | None = Field(
        default=None, alias="values", description="More detail, e.g. the line and column."
    )


class AutoScaleRun(ResponseModel):
    """The result of one evaluation of an autoscale formula."""

    timestamp: UtcDateTime | None = Field(
        default=None, description="When the formula was evaluated."
    )
    results: str | None = Field(
        default=None, description="The final variable values, as 'name=value' joined by ';'."
    )
    error: AutoScaleRunError | None = Field(default=None, description="Why the evaluation failed.")


class ResizeError(ResponseModel):
    """An error met while resizing a pool."""

    code: str | None = Field(default=None, description="An identifier for the error.")
    message: str | None = Field(default=None, description="A message for a user interface.")
    error_values: list[NameValuePair] | None = Field(
        default=None, alias="values", description="More detail."
    )


class BatchPool(ResponseModel):
    """A pool as the service returns it."""

    id: str = Field(description="The id of the pool.")
    display_name: str | None = Field(
        default=None, alias="displayName", description="A display name."
    )
    url: str | None = Field(default=None, description="The URL of the pool.")
    etag: str | None = Field(
        default=None, alias="eTag", description="Changes whenever the pool does."
    )
    last_modified: UtcDateTime | None = Field(
        default=None, alias="lastModified", description="When the pool last changed."
    )
    creation_time: UtcDateTime | None = Field(
        default=None, alias="creationTime", description="When the pool was created."
    )
    state: PoolState | None = Field(default=None, description="Active or deleting.")
    state_transition_time: UtcDateTime | None = Field(
        default=None, alias="stateTransitionTime", description="When the pool entered its state."
    )
    allocation_state: AllocationState | None = Field(
        default=None, alias="allocationState", description="Steady, resizing or stopping."
    )
    allocation_state_transition_time: UtcDateTime | None = Field(
        default=None,
        alias="allocationStateTransitionTime",
        description="When the pool entered its allocation state.",
    )
    vm_size: str | None = Field(default=None, alias="vmSize", description="The size of the nodes.")
    virtual_machine_configuration: VirtualMachineConfiguration | None = Field(
        default=None, alias="virtualMachineConfiguration", description="The image of the nodes."
    )
    resize_timeout: Duration | None = Field(
        default=None, alias="resizeTimeout", description="How long a resize may take."
    )
    resize_errors: list[ResizeError] | None = Field(
        default=None, alias="resizeErrors", description="Errors of the latest resize."
    )
    current_dedicated_nodes: int | None = Field(
        default=None, alias="currentDedicatedNodes", description="Dedicated nodes in the pool now."
    )
    current_low_priority_nodes: int | None = Field(
        default=None, alias="currentLowPriorityNodes", description="Spot nodes in the pool now."
    )
    target_dedicated_nodes: int | None = Field(
        default=None, alias="targetDedicatedNodes", description="Dedicated nodes wanted."
    )
    target_low_priority_nodes: int | None = Field(
        default=None, alias="targetLowPriorityNodes", description="Spot nodes wanted."
    )
    enable_auto_scale: bool | None = Field(
        default=None, alias="enableAutoScale", description="Whether a formula sizes the pool."
    )
    auto_scale_formula: str | None = Field(
        default=None, alias="autoScaleFormula", description="The autoscale formula."
    )
    auto_scale_evaluation_interval: Duration | None = Field(
        default=None, alias="autoScaleEvaluationInterval", description="How often the formula runs."
    )
    auto_scale_run: AutoScaleRun | None = Field(
        default=None, alias="autoScaleRun", description="The latest evaluation of the formula."
    )
    enable_inter_node_communication: bool | None = Field(
        default=None,
        alias="enableInterNodeCommunication",
        description="Direct node-to-node traffic.",
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )
    start_task: BatchStartTask | None = Field(
        default=None, alias="startTask", description="The task each node runs when it joins."
    )
    application_package_references: list[BatchApplicationPackageReference] | None = Field(
        default=None, alias="applicationPackageReferences", description="Packages on every node."
    )
    certificate_references: list[BatchCertificateReference] | None = Field(
        default=None,
        alias="certificateReferences",
        description="Certificates installed on every node before its start task (Azure: "
        "deprecated); a change reaches nodes that join, reboot or are reimaged.",
    )
    task_slots_per_node: int | None = Field(
        default=None, alias="taskSlotsPerNode", description="Tasks one node runs at once."
    )
    task_scheduling_policy: BatchTaskSchedulingPolicy | None = Field(
        default=None, alias="taskSchedulingPolicy", description="How tasks spread over nodes."
    )
    user_accounts: list[OpaqueObject] | None = Field(
        default=None, alias="userAccounts", description="User accounts on each node; opaque."
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs for the user's own use."
    )
    pool_statistics: OpaqueObject | None = Field(
        default=None, alias="stats", description="Usage statistics; opaque."
    )
    mount_configuration: list[OpaqueObject] | None = Field(
        default=None, alias="mountConfiguration", description="File systems to mount; opaque."
    )
    identity: OpaqueObject | None = Field(default=None, description="Managed identities; opaque.")
    upgrade_policy: OpaqueObject | None = Field(
        default=None, alias="upgradePolicy", description="OS upgrade policy; opaque."
    )


class BatchSupportedImage(ResponseModel):
    """A node image a pool may use, with its node agent SKU."""

    node_agent_sku_id: str | None = Field(
        default=None, alias="nodeAgentSKUId", description="The node agent SKU the image works with."
    )
    image_reference: BatchVmImageReference | None = Field(
        default=None, alias="imageReference", description="The image."
    )
    os_type: Literal["linux", "windows"] | None = Field(
        default=None, alias="osType", description="The operating system of the image."
    )
    capabilities: list[str] | None = Field(default=None, description="What the image supports.")
    batch_support_end_of_life: UtcDateTime | None = Field(
        default=None, alias="batchSupportEndOfLife", description="When support for the image ends."
    )
    verification_type: Literal["verified", "unverified"] | None = Field(
        default=None, alias="verificationType", description="Whether the image was verified."
    )


class BatchNodeCounts(ResponseModel):
    """Nodes of one kind (dedicated or spot) per state."""

    creating: int = Field(default=0, description="Nodes in the creating state.")
    idle: int = Field(default=0, description="Nodes in the idle state.")
    offline: int = Field(default=0, description="Nodes in the offline state.")
    preempted: int = Field(default=0, description="Nodes in the preempted state.")
    rebooting: int = Field(default=0, description="Nodes in the rebooting state.")
    reimaging: int = Field(default=0, description="Nodes in the reimaging state.")
    running: int = Field(default=0, description="Nodes in the running state.")
    starting: int = Field(default=0, description="Nodes in the starting state.")
    start_task_failed: int = Field(
        default=0, alias="startTaskFailed", description="Nodes in the startTaskFailed state."
    )
    leaving_pool: int = Field(
        default=0, alias="leavingPool", description="Nodes in the leavingPool state."
    )
    unknown: int = Field(default=0, description="Nodes in the unknown state.")
    unusable: int = Field(default=0, description="Nodes in the unusable state.")
    waiting_for_start_task: int = Field(
        default=0,
        alias="waitingForStartTask",
        description="Nodes in the waitingForStartTask state.",
    )
    deallocated: int = Field(default=0, description="Nodes in the deallocated state.")
    deallocating: int = Field(default=0, description="Nodes in the deallocating state.")
    total: int = Field(default=0, description="All nodes.")
    upgrading_os: int = Field(
        default=0, alias="upgradingOS", description="Nodes in the upgradingOS state."
    )


class BatchPoolNodeCounts(ResponseModel):
    """Node counts of one pool."""

    pool_id: str = Field(alias="poolId", description="The id of the pool.")
    dedicated: BatchNodeCounts | None = Field(
        default=None, description="Dedicated nodes per state."
    )
    low_priority: BatchNodeCounts | None = Field(
        default=None, alias="lowPriority", description="Spot nodes per state."
    )
