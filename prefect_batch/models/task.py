"""Task models: what a client sends to add or update a task, and what the service returns.

Covers the task itself, its constraints, exit conditions, dependencies, execution and node
information, and the bulk-add request and result.

This module does not schedule or run tasks, and does not check that dependencies exist: those
are the service's job. It only validates shapes and ranges.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from prefect_batch.core.states import (
    DependencyAction,
    ErrorCategory,
    JobAction,
    TaskAddStatus,
    TaskExecutionResult,
    TaskState,
)
from prefect_batch.models.base import (
    BatchId,
    DisplayName,
    Duration,
    Int64String,
    NonEmptyStr,
    NonNegativeDuration,
    OpaqueObject,
    RequestModel,
    ResponseModel,
    UtcDateTime,
)
from prefect_batch.models.common import (
    BatchApplicationPackageReference,
    BatchError,
    BatchTaskContainerSettings,
    EnvironmentSetting,
    NameValuePair,
    OutputFile,
    ResourceFile,
    UserIdentity,
)

__all__ = [
    "BatchAffinityInfo",
    "BatchCreateTaskCollectionResult",
    "BatchNodeInfo",
    "BatchSubtask",
    "BatchTask",
    "BatchTaskConstraints",
    "BatchTaskCreateOptions",
    "BatchTaskCreateResult",
    "BatchTaskDependencies",
    "BatchTaskExecutionInfo",
    "BatchTaskFailureInfo",
    "BatchTaskGroup",
    "BatchTaskIdRange",
    "BatchTaskStatistics",
    "BatchTaskUpdateOptions",
    "ExitCodeMapping",
    "ExitCodeRangeMapping",
    "ExitConditions",
    "ExitOptions",
    "MultiInstanceSettings",
]

TASK_COLLECTION_MAX = 100
"""Most tasks one add-collection request may carry."""


class BatchTaskConstraints(RequestModel):
    """Limits on a task's run time, retention and retries."""

    max_wall_clock_time: NonNegativeDuration | None = Field(
        default=None,
        alias="maxWallClockTime",
        description="Longest the task may run, from its start; unlimited when omitted.",
    )
    retention_time: NonNegativeDuration | None = Field(
        default=None,
        alias="retentionTime",
        description="How long the task's directory is kept after it completes (default 7 days).",
    )
    max_task_retry_count: int | None = Field(
        default=None,
        alias="maxTaskRetryCount",
        ge=-1,
        description="Retries after a non-zero exit: 0 none, -1 without limit.",
    )


class ExitOptions(RequestModel):
    """What the service does when a task exits in a given way."""

    job_action: JobAction | None = Field(
        default=None,
        alias="jobAction",
        description="Action on the task's job (needs the job's onTaskFailure set to act).",
    )
    dependency_action: DependencyAction | None = Field(
        default=None,
        alias="dependencyAction",
        description="Whether tasks depending on this one may run (satisfy) or never (block).",
    )


class ExitCodeMapping(RequestModel):
    """The exit options for one exit code."""

    code: int = Field(description="A process exit code.")
    exit_options: ExitOptions = Field(
        alias="exitOptions", description="What to do when the task exits with this code."
    )


class ExitCodeRangeMapping(RequestModel):
    """The exit options for an inclusive range of exit codes."""

    start: int = Field(description="The first exit code in the range.")
    end: int = Field(description="The last exit code in the range.")
    exit_options: ExitOptions = Field(
        alias="exitOptions", description="What to do when the exit code is in the range."
    )

    @model_validator(mode="after")
    def _ordered(self) -> ExitCodeRangeMapping:
        if self.start > self.end:
            raise ValueError("start must not be greater than end")
        return self


class ExitConditions(RequestModel):
    """How the service responds when a task completes."""

    exit_codes: list[ExitCodeMapping] | None = Field(
        default=None, alias="exitCodes", description="Exit options per individual exit code."
    )
    exit_code_ranges: list[ExitCodeRangeMapping] | None = Field(
        default=None, alias="exitCodeRanges", description="Exit options per range of exit codes."
    )
    pre_processing_error: ExitOptions | None = Field(
        default=None,
        alias="preProcessingError",
        description="What to do if the task could not start (e.g. a resource file failed).",
    )
    file_upload_error: ExitOptions | None = Field(
        default=None,
        alias="fileUploadError",
        description="What to do if an output file upload failed; exit code options win.",
    )
    default: ExitOptions | None = Field(
        default=None, description="What to do for an exit not covered by the other properties."
    )


class BatchTaskIdRange(RequestModel):
    """An inclusive range of integer task ids a task depends on."""

    start: int = Field(description="The first task id in the range.")
    end: int = Field(description="The last task id in the range.")

    @model_validator(mode="after")
    def _ordered(self) -> BatchTaskIdRange:
        if self.start > self.end:
            raise ValueError("start must not be greater than end")
        return self


class BatchTaskDependencies(RequestModel):
    """The tasks a task waits for; needs the job's ``usesTaskDependencies``."""

    task_ids: list[str] | None = Field(
        default=None,
        alias="taskIds",
        description="Ids of tasks that must complete successfully first.",
    )
    task_id_ranges: list[BatchTaskIdRange] | None = Field(
        default=None, alias="taskIdRanges", description="Ranges of integer task ids to wait for."
    )


class BatchAffinityInfo(RequestModel):
    """A hint to run a task on a given node."""

    affinity_id: NonEmptyStr = Field(
        alias="affinityId", description="The affinityId of a node (or of a previous task's node)."
    )


class MultiInstanceSettings(RequestModel):
    """Settings of a multi-instance (MPI) task: how many nodes, and what runs on each first."""

    number_of_instances: int | None = Field(
        default=None,
        alias="numberOfInstances",
        ge=1,
        description="The number of nodes the task needs.",
    )
    coordination_command_line: NonEmptyStr = Field(
        alias="coordinationCommandLine",
        description="Run on every node before the primary task's command line.",
    )
    common_resource_files: list[ResourceFile] | None = Field(
        default=None,
        alias="commonResourceFiles",
        description="Files downloaded to every node before the coordination command line.",
    )


class BatchTaskCreateOptions(RequestModel):
    """The body of an add-task request."""

    id: BatchId = Field(description="Unique (case-insensitively) within the job; 1-64 chars.")
    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="A display name; up to 1024 characters."
    )
    exit_conditions: ExitConditions | None = Field(
        default=None,
        alias="exitConditions",
        description="How the service responds when the task ends.",
    )
    command_line: NonEmptyStr = Field(
        alias="commandLine", description="The command line; not run in a shell."
    )
    container_settings: BatchTaskContainerSettings | None = Field(
        default=None, alias="containerSettings", description="The container the task runs in."
    )
    resource_files: list[ResourceFile] | None = Field(
        default=None, alias="resourceFiles", description="Files downloaded before the command runs."
    )
    output_files: list[OutputFile] | None = Field(
        default=None, alias="outputFiles", description="Files uploaded after the command runs."
    )
    environment_settings: list[EnvironmentSetting] | None = Field(
        default=None, alias="environmentSettings", description="Environment variables for the task."
    )
    affinity_info: BatchAffinityInfo | None = Field(
        default=None, alias="affinityInfo", description="A hint of which node to run on."
    )
    constraints: BatchTaskConstraints | None = Field(
        default=None, description="Run time, retention and retry limits; the job's when omitted."
    )
    required_slots: int | None = Field(
        default=None,
        alias="requiredSlots",
        ge=1,
        description="Scheduling slots the task needs (1).",
    )
    user_identity: UserIdentity | None = Field(
        default=None, alias="userIdentity", description="Who the task runs as."
    )
    multi_instance_settings: MultiInstanceSettings | None = Field(
        default=None,
        alias="multiInstanceSettings",
        description="Makes the task a multi-instance task.",
    )
    depends_on: BatchTaskDependencies | None = Field(
        default=None, alias="dependsOn", description="Tasks that must complete successfully first."
    )
    application_package_references: list[BatchApplicationPackageReference] | None = Field(
        default=None,
        alias="applicationPackageReferences",
        description="Application packages deployed before the command runs.",
    )


class BatchTaskUpdateOptions(RequestModel):
    """The body of an update-task request: only the constraints may change.

    The SDK sends a whole ``BatchTask`` to ``replace_task``; the service reads only its
    ``constraints``, which is all this model keeps.
    """

    constraints: BatchTaskConstraints | None = Field(
        default=None, description="The new constraints; the job's defaults when omitted."
    )


class BatchTaskFailureInfo(ResponseModel):
    """Why a task (or start, preparation or release task) failed."""

    category: ErrorCategory | None = Field(
        default=None, description="Whether the user or the service."
    )
    code: str | None = Field(default=None, description="An identifier for the failure.")
    message: str | None = Field(default=None, description="A message for a user interface.")
    details: list[NameValuePair] | None = Field(default=None, description="More detail.")


class BatchTaskExecutionInfo(ResponseModel):
    """How a task's runs went."""

    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="When the latest run started."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When the task completed."
    )
    exit_code: int | None = Field(
        default=None, alias="exitCode", description="The exit code of the command line's process."
    )
    container_info: OpaqueObject | None = Field(
        default=None, alias="containerInfo", description="The container the task ran in, if any."
    )
    failure_info: BatchTaskFailureInfo | None = Field(
        default=None, alias="failureInfo", description="Why the task failed, if it did."
    )
    retry_count: int | None = Field(
        default=None, alias="retryCount", description="Times the task was retried after a failure."
    )
    last_retry_time: UtcDateTime | None = Field(
        default=None, alias="lastRetryTime", description="When the latest retry started."
    )
    requeue_count: int | None = Field(
        default=None,
        alias="requeueCount",
        description="Times the task was requeued by the service (not counted as retries).",
    )
    last_requeue_time: UtcDateTime | None = Field(
        default=None, alias="lastRequeueTime", description="When the task was last requeued."
    )
    result: TaskExecutionResult | None = Field(
        default=None, description="Success or failure; set once the task completed."
    )


class BatchNodeInfo(ResponseModel):
    """The node a task ran on."""

    affinity_id: str | None = Field(
        default=None, alias="affinityId", description="The node's affinity."
    )
    node_url: str | None = Field(default=None, alias="nodeUrl", description="The URL of the node.")
    pool_id: str | None = Field(
        default=None, alias="poolId", description="The id of the node's pool."
    )
    node_id: str | None = Field(default=None, alias="nodeId", description="The id of the node.")
    task_root_directory: str | None = Field(
        default=None,
        alias="taskRootDirectory",
        description="The task's root directory on the node.",
    )
    task_root_directory_url: str | None = Field(
        default=None, alias="taskRootDirectoryUrl", description="The URL of that directory."
    )


class BatchTaskStatistics(ResponseModel):
    """Resource usage of a task."""

    url: str | None = Field(default=None, description="The URL of the statistics.")
    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="Start of the period covered."
    )
    last_update_time: UtcDateTime | None = Field(
        default=None, alias="lastUpdateTime", description="End of the period covered."
    )
    user_cpu_time: Duration | None = Field(
        default=None, alias="userCPUTime", description="CPU time in user mode."
    )
    kernel_cpu_time: Duration | None = Field(
        default=None, alias="kernelCPUTime", description="CPU time in kernel mode."
    )
    wall_clock_time: Duration | None = Field(
        default=None, alias="wallClockTime", description="Elapsed time of the task's runs."
    )
    read_iops: Int64String | None = Field(
        default=None,
        alias="readIOps",
        description="Disk read operations (a JSON string on the wire).",
    )
    write_iops: Int64String | None = Field(
        default=None,
        alias="writeIOps",
        description="Disk write operations (a JSON string on the wire).",
    )
    read_io_gib: float | None = Field(
        default=None, alias="readIOGiB", description="GiB read from disk."
    )
    write_io_gib: float | None = Field(
        default=None, alias="writeIOGiB", description="GiB written to disk."
    )
    wait_time: Duration | None = Field(
        default=None, alias="waitTime", description="Time between creation and start of the task."
    )


class BatchTask(ResponseModel):
    """A task as the service returns it."""

    id: str = Field(description="The id of the task, unique within its job.")
    display_name: str | None = Field(
        default=None, alias="displayName", description="A display name."
    )
    url: str | None = Field(default=None, description="The URL of the task.")
    etag: str | None = Field(
        default=None, alias="eTag", description="Changes whenever the task does."
    )
    last_modified: UtcDateTime | None = Field(
        default=None, alias="lastModified", description="When the task last changed."
    )
    creation_time: UtcDateTime | None = Field(
        default=None, alias="creationTime", description="When the task was created."
    )
    exit_conditions: ExitConditions | None = Field(
        default=None,
        alias="exitConditions",
        description="How the service responds when the task ends.",
    )
    state: TaskState | None = Field(default=None, description="The current state of the task.")
    state_transition_time: UtcDateTime | None = Field(
        default=None, alias="stateTransitionTime", description="When the task entered its state."
    )
    previous_state: TaskState | None = Field(
        default=None, alias="previousState", description="The state before the current one."
    )
    previous_state_transition_time: UtcDateTime | None = Field(
        default=None, alias="previousStateTransitionTime", description="When it entered that state."
    )
    command_line: str | None = Field(
        default=None, alias="commandLine", description="The command line."
    )
    container_settings: BatchTaskContainerSettings | None = Field(
        default=None, alias="containerSettings", description="The container the task runs in."
    )
    resource_files: list[ResourceFile] | None = Field(
        default=None, alias="resourceFiles", description="Files downloaded before the command runs."
    )
    output_files: list[OutputFile] | None = Field(
        default=None, alias="outputFiles", description="Files uploaded after the command runs."
    )
    environment_settings: list[EnvironmentSetting] | None = Field(
        default=None, alias="environmentSettings", description="Environment variables for the task."
    )
    affinity_info: BatchAffinityInfo | None = Field(
        default=None, alias="affinityInfo", description="A hint of which node to run on."
    )
    constraints: BatchTaskConstraints | None = Field(
        default=None, description="Run time, retention and retry limits."
    )
    required_slots: int | None = Field(
        default=None, alias="requiredSlots", description="Scheduling slots the task needs."
    )
    user_identity: UserIdentity | None = Field(
        default=None, alias="userIdentity", description="Who the task runs as."
    )
    execution_info: BatchTaskExecutionInfo | None = Field(
        default=None, alias="executionInfo", description="How the task's runs went."
    )
    node_info: BatchNodeInfo | None = Field(
        default=None, alias="nodeInfo", description="The node the task ran on."
    )
    multi_instance_settings: MultiInstanceSettings | None = Field(
        default=None, alias="multiInstanceSettings", description="Multi-instance settings, if any."
    )
    task_statistics: BatchTaskStatistics | None = Field(
        default=None, alias="stats", description="Resource usage of the task."
    )
    depends_on: BatchTaskDependencies | None = Field(
        default=None, alias="dependsOn", description="Tasks that must complete successfully first."
    )
    application_package_references: list[BatchApplicationPackageReference] | None = Field(
        default=None,
        alias="applicationPackageReferences",
        description="Application packages deployed before the command runs.",
    )


class BatchSubtask(ResponseModel):
    """One subtask of a multi-instance task (an item of ``subtasksinfo``)."""

    id: int | None = Field(default=None, description="The subtask's index: 1 to instances - 1.")
    node_info: BatchNodeInfo | None = Field(
        default=None, alias="nodeInfo", description="The node the subtask ran on."
    )
    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="When its coordination command started."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When it completed."
    )
    exit_code: int | None = Field(
        default=None, alias="exitCode", description="The coordination command's exit code."
    )
    container_info: OpaqueObject | None = Field(
        default=None,
        alias="containerInfo",
        description="The container it ran in (tasks here run in none).",
    )
    failure_info: BatchTaskFailureInfo | None = Field(
        default=None, alias="failureInfo", description="Why it failed, if it could not run."
    )
    state: str | None = Field(default=None, description="preparing, running or completed.")
    state_transition_time: UtcDateTime | None = Field(
        default=None, alias="stateTransitionTime", description="When it entered its state."
    )
    previous_state: str | None = Field(
        default=None, alias="previousState", description="The state before the current one."
    )
    previous_state_transition_time: UtcDateTime | None = Field(
        default=None,
        alias="previousStateTransitionTime",
        description="When it entered that state.",
    )
    result: TaskExecutionResult | None = Field(
        default=None, description="success or failure, once completed."
    )


class BatchTaskGroup(RequestModel):
    """The body of an add-task-collection request."""

    task_values: list[BatchTaskCreateOptions] = Field(
        alias="value",
        max_length=TASK_COLLECTION_MAX,
        description="The tasks to add; at most 100.",
    )


class BatchTaskCreateResult(ResponseModel):
    """The outcome of adding one task of a collection."""

    status: TaskAddStatus = Field(description="Whether the task was added.")
    task_id: str = Field(alias="taskId", description="The id of the task.")
    etag: str | None = Field(default=None, alias="eTag", description="The task's ETag, if added.")
    last_modified: UtcDateTime | None = Field(
        default=None, alias="lastModified", description="When the task last changed, if added."
    )
    location: str | None = Field(default=None, description="The URL of the task, if added.")
    error: BatchError | None = Field(default=None, description="Why the task was not added.")


class BatchCreateTaskCollectionResult(ResponseModel):
    """The response to an add-task-collection request."""

    result_values: list[BatchTaskCreateResult] | None = Field(
        default=None, alias="value", description="One result per task in the request."
    )
