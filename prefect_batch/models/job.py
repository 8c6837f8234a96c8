"""Job models: creating, changing, disabling and terminating jobs, and the job as returned.

Also the job's special tasks (manager, preparation, release), its constraints and execution
information, task counts, and per-node preparation/release status.

This module does not schedule jobs or run their tasks; job states and the actions taken when
tasks complete come from :mod:`prefect_batch.core.states`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from prefect_batch.core.states import (
    DisableJobOption,
    ErrorCategory,
    JobState,
    OnAllTasksComplete,
    OnTaskFailure,
    TaskExecutionResult,
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
    BatchMetadataItem,
    BatchTaskContainerSettings,
    EnvironmentSetting,
    NameValuePair,
    OutputFile,
    ResourceFile,
    UserIdentity,
)
from prefect_batch.models.pool import BatchAutoPoolSpecification
from prefect_batch.models.task import BatchTaskConstraints, BatchTaskFailureInfo

__all__ = [
    "BatchJob",
    "BatchJobConstraints",
    "BatchJobCreateOptions",
    "BatchJobDisableOptions",
    "BatchJobExecutionInfo",
    "BatchJobManagerTask",
    "BatchJobPreparationAndReleaseTaskStatus",
    "BatchJobPreparationTask",
    "BatchJobPreparationTaskExecutionInfo",
    "BatchJobReleaseTask",
    "BatchJobReleaseTaskExecutionInfo",
    "BatchJobSchedulingError",
    "BatchJobStatistics",
    "BatchJobTerminateOptions",
    "BatchJobUpdateOptions",
    "BatchPoolInfo",
    "BatchTaskCounts",
    "BatchTaskCountsResult",
    "BatchTaskSlotCounts",
]

PRIORITY_MIN = -1000
PRIORITY_MAX = 1000


def _max_parallel_tasks(value: int) -> int:
    if value == 0 or value < -1:
        raise ValueError("must be -1 (no limit) or greater than 0")
    return value


MaxParallelTasks = Annotated[int, AfterValidator(_max_parallel_tasks)]
"""Most tasks of a job running at once: -1 for no limit, else at least 1."""
Priority = Annotated[int, Field(ge=PRIORITY_MIN, le=PRIORITY_MAX)]
"""A job priority, -1000 (lowest) to 1000 (highest)."""
PrepReleaseState = Literal["running", "completed"]


class BatchJobConstraints(RequestModel):
    """Limits on a job's run time and its tasks' retries."""

    max_wall_clock_time: NonNegativeDuration | None = Field(
        default=None,
        alias="maxWallClockTime",
        description="Longest the job may run, from its creation; unlimited when omitted.",
    )
    max_task_retry_count: int | None = Field(
        default=None,
        alias="maxTaskRetryCount",
        ge=-1,
        description="Default retries of each task: 0 none, -1 without limit.",
    )


class BatchPoolInfo(RequestModel):
    """The pool a job's tasks run on: an existing pool, or one made for the job."""

    pool_id: NonEmptyStr | None = Field(
        default=None, alias="poolId", description="The id of an existing pool."
    )
    auto_pool_specification: BatchAutoPoolSpecification | None = Field(
        default=None,
        alias="autoPoolSpecification",
        description="A pool the service creates for the job (or the schedule's jobs).",
    )

    @model_validator(mode="after")
    def _one_source(self) -> BatchPoolInfo:
        if (self.pool_id is None) == (self.auto_pool_specification is None):
            raise ValueError("give exactly one of poolId and autoPoolSpecification")
        return self


class BatchJobManagerTask(RequestModel):
    """A task started when the job is created, to add and watch the job's other tasks."""

    id: BatchId = Field(description="Unique within the job; 1-64 chars.")
    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="A display name; up to 1024 characters."
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
    constraints: BatchTaskConstraints | None = Field(
        default=None, description="Run time, retention and retry limits."
    )
    required_slots: int | None = Field(
        default=None,
        alias="requiredSlots",
        ge=1,
        description="Scheduling slots the task needs (1).",
    )
    kill_job_on_completion: bool | None = Field(
        default=None,
        alias="killJobOnCompletion",
        description="Terminate the job when this task completes (true).",
    )
    user_identity: UserIdentity | None = Field(
        default=None, alias="userIdentity", description="Who the task runs as."
    )
    run_exclusive: bool | None = Field(
        default=None,
        alias="runExclusive",
        description="Use the whole node: no other task runs beside it (true).",
    )
    application_package_references: list[BatchApplicationPackageReference] | None = Field(
        default=None,
        alias="applicationPackageReferences",
        description="Application packages deployed before the command runs.",
    )
    allow_low_priority_node: bool | None = Field(
        default=None, alias="allowLowPriorityNode", description="May run on a spot node (true)."
    )


class BatchJobPreparationTask(RequestModel):
    """A task run on each node before the first of the job's tasks runs there."""

    id: BatchId | None = Field(
        default=None, description="1-64 chars ('jobpreparation' when omitted)."
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
    environment_settings: list[EnvironmentSetting] | None = Field(
        default=None, alias="environmentSettings", description="Environment variables for the task."
    )
    constraints: BatchTaskConstraints | None = Field(
        default=None, description="Run time, retention and retry limits."
    )
    wait_for_success: bool | None = Field(
        default=None,
        alias="waitForSuccess",
        description="Run no job task on the node until this one succeeded (true).",
    )
    user_identity: UserIdentity | None = Field(
        default=None, alias="userIdentity", description="Who the task runs as."
    )
    rerun_on_node_reboot_after_success: bool | None = Field(
        default=None,
        alias="rerunOnNodeRebootAfterSuccess",
        description="Run again after the node reboots, even if it succeeded (true).",
    )


class BatchJobReleaseTask(RequestModel):
    """A task run on each node that ran the job's tasks, when the job ends."""

    id: BatchId | None = Field(default=None, description="1-64 chars ('jobrelease' when omitted).")
    command_line: NonEmptyStr = Field(
        alias="commandLine", description="The command line; not run in a shell."
    )
    container_settings: BatchTaskContainerSettings | None = Field(
        default=None, alias="containerSettings", description="The container the task runs in."
    )
    resource_files: list[ResourceFile] | None = Field(
        default=None, alias="resourceFiles", description="Files downloaded before the command runs."
    )
    environment_settings: list[EnvironmentSetting] | None = Field(
        default=None, alias="environmentSettings", description="Environment variables for the task."
    )
    max_wall_clock_time: NonNegativeDuration | None = Field(
        default=None, alias="maxWallClockTime", description="Longest the task may run (15 minutes)."
    )
    retention_time: NonNegativeDuration | None = Field(
        default=None, alias="retentionTime", description="How long its directory is kept (7 days)."
    )
    user_identity: UserIdentity | None = Field(
        default=None, alias="userIdentity", description="Who the task runs as."
    )


class BatchJobCreateOptions(RequestModel):
    """The body of an add-job request."""

    id: BatchId = Field(description="Unique (case-insensitively) in the account; 1-64 chars.")
    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="A display name; up to 1024 characters."
    )
    uses_task_dependencies: bool | None = Field(
        default=None,
        alias="usesTaskDependencies",
        description="Whether tasks may depend on others.",
    )
    priority: Priority | None = Field(
        default=None, description="-1000 (lowest) to 1000 (highest); 0 when omitted."
    )
    allow_task_preemption: bool | None = Field(
        default=None,
        alias="allowTaskPreemption",
        description="Whether higher-priority jobs may preempt this job's tasks.",
    )
    max_parallel_tasks: MaxParallelTasks | None = Field(
        default=None,
        alias="maxParallelTasks",
        description="Tasks running at once: -1 (no limit) or >0.",
    )
    constraints: BatchJobConstraints | None = Field(
        default=None, description="Run time and retry limits of the job."
    )
    job_manager_task: BatchJobManagerTask | None = Field(
        default=None, alias="jobManagerTask", description="A task started with the job."
    )
    job_preparation_task: BatchJobPreparationTask | None = Field(
        default=None,
        alias="jobPreparationTask",
        description="Runs on a node before the job's tasks.",
    )
    job_release_task: BatchJobReleaseTask | None = Field(
        default=None, alias="jobReleaseTask", description="Runs on the nodes when the job ends."
    )
    common_environment_settings: list[EnvironmentSetting] | None = Field(
        default=None,
        alias="commonEnvironmentSettings",
        description="Environment variables for every task of the job.",
    )
    pool_info: BatchPoolInfo = Field(alias="poolInfo", description="Where the tasks run.")
    all_tasks_complete_mode: OnAllTasksComplete | None = Field(
        default=None,
        alias="onAllTasksComplete",
        description="What happens when all tasks are complete (noaction).",
    )
    task_failure_mode: OnTaskFailure | None = Field(
        default=None,
        alias="onTaskFailure",
        description="What happens when a task fails (noaction).",
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs for the user's own use."
    )


class BatchJobUpdateOptions(RequestModel):
    """The body of a patch-job request: only the fields given change."""

    priority: Priority | None = Field(default=None, description="-1000 (lowest) to 1000 (highest).")
    allow_task_preemption: bool | None = Field(
        default=None, alias="allowTaskPreemption", description="Whether tasks may be preempted."
    )
    max_parallel_tasks: MaxParallelTasks | None = Field(
        default=None,
        alias="maxParallelTasks",
        description="Tasks running at once: -1 (no limit) or >0.",
    )
    constraints: BatchJobConstraints | None = Field(
        default=None, description="Run time and retries."
    )
    pool_info: BatchPoolInfo | None = Field(
        default=None, alias="poolInfo", description="Where the tasks run (only while disabled)."
    )
    all_tasks_complete_mode: OnAllTasksComplete | None = Field(
        default=None,
        alias="onAllTasksComplete",
        description="What happens when all tasks complete.",
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Replaces the job's metadata."
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )


class BatchJobDisableOptions(RequestModel):
    """The body of a disable-job request."""

    disable_tasks: DisableJobOption = Field(
        alias="disableTasks", description="What happens to the job's running tasks."
    )


class BatchJobTerminateOptions(RequestModel):
    """The body of a terminate-job request."""

    # The SDK names this ``termination_reason``; the wire name is ``terminateReason``.
    termination_reason: str | None = Field(
        default=None, alias="terminateReason", description="Why ('UserTerminate' when omitted)."
    )


class BatchJobSchedulingError(ResponseModel):
    """Why the service could not schedule a job."""

    category: ErrorCategory | None = Field(
        default=None, description="Whether the user or the service."
    )
    code: str | None = Field(default=None, description="An identifier for the error.")
    message: str | None = Field(default=None, description="A message for a user interface.")
    details: list[NameValuePair] | None = Field(default=None, description="More detail.")


class BatchJobExecutionInfo(ResponseModel):
    """How a job's run went."""

    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="When the job was created."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When the job completed."
    )
    pool_id: str | None = Field(
        default=None, alias="poolId", description="The pool the job runs on."
    )
    scheduling_error: BatchJobSchedulingError | None = Field(
        default=None, alias="schedulingError", description="Why the job could not be scheduled."
    )
    termination_reason: str | None = Field(
        default=None,
        alias="terminateReason",
        description="Why the job ended: JMComplete, MaxWallClockTimeExpiry, TaskFailed, "
        "AllTasksComplete, UserTerminate, or a user's reason.",
    )


class BatchJobStatistics(ResponseModel):
    """Resource usage of a job's tasks."""

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
        default=None, alias="wallClockTime", description="Elapsed time of the job's tasks."
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
    succeeded_tasks_count: Int64String | None = Field(
        default=None, alias="numSucceededTasks", description="Tasks that succeeded."
    )
    failed_tasks_count: Int64String | None = Field(
        default=None, alias="numFailedTasks", description="Tasks that failed."
    )
    task_retries_count: Int64String | None = Field(
        default=None, alias="numTaskRetries", description="Retries of the job's tasks."
    )
    wait_time: Duration | None = Field(
        default=None, alias="waitTime", description="Total time tasks waited to start."
    )


class BatchJob(ResponseModel):
    """A job as the service returns it."""

    id: str = Field(description="The id of the job.")
    display_name: str | None = Field(
        default=None, alias="displayName", description="A display name."
    )
    uses_task_dependencies: bool | None = Field(
        default=None,
        alias="usesTaskDependencies",
        description="Whether tasks may depend on others.",
    )
    url: str | None = Field(default=None, description="The URL of the job.")
    etag: str | None = Field(
        default=None, alias="eTag", description="Changes whenever the job does."
    )
    last_modified: UtcDateTime | None = Field(
        default=None, alias="lastModified", description="When the job last changed."
    )
    creation_time: UtcDateTime | None = Field(
        default=None, alias="creationTime", description="When the job was created."
    )
    state: JobState | None = Field(default=None, description="The current state of the job.")
    state_transition_time: UtcDateTime | None = Field(
        default=None, alias="stateTransitionTime", description="When the job entered its state."
    )
    previous_state: JobState | None = Field(
        default=None, alias="previousState", description="The state before the current one."
    )
    previous_state_transition_time: UtcDateTime | None = Field(
        default=None, alias="previousStateTransitionTime", description="When it entered that state."
    )
    priority: int | None = Field(default=None, description="-1000 (lowest) to 1000 (highest).")
    allow_task_preemption: bool | None = Field(
        default=None, alias="allowTaskPreemption", description="Whether tasks may be preempted."
    )
    max_parallel_tasks: int | None = Field(
        default=None,
        alias="maxParallelTasks",
        description="Tasks running at once; -1 for no limit.",
    )
    constraints: BatchJobConstraints | None = Field(
        default=None, description="Run time and retries."
    )
    job_manager_task: BatchJobManagerTask | None = Field(
        default=None, alias="jobManagerTask", description="The task started with the job."
    )
    job_preparation_task: BatchJobPreparationTask | None = Field(
        default=None,
        alias="jobPreparationTask",
        description="Runs on a node before the job's tasks.",
    )
    job_release_task: BatchJobReleaseTask | None = Field(
        default=None, alias="jobReleaseTask", description="Runs on the nodes when the job ends."
    )
    common_environment_settings: list[EnvironmentSetting] | None = Field(
        default=None, alias="commonEnvironmentSettings", description="Environment for every task."
    )
    pool_info: BatchPoolInfo | None = Field(
        default=None, alias="poolInfo", description="Where the tasks run."
    )
    all_tasks_complete_mode: OnAllTasksComplete | None = Field(
        default=None,
        alias="onAllTasksComplete",
        description="What happens when all tasks complete.",
    )
    task_failure_mode: OnTaskFailure | None = Field(
        default=None, alias="onTaskFailure", description="What happens when a task fails."
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs for the user's own use."
    )
    execution_info: BatchJobExecutionInfo | None = Field(
        default=None, alias="executionInfo", description="How the job's run went."
    )
    job_statistics: BatchJobStatistics | None = Field(
        default=None, alias="stats", description="Resource usage of the job's tasks."
    )


class BatchTaskCounts(ResponseModel):
    """Tasks of a job per state."""

    active: int = Field(default=0, description="Tasks in the active state.")
    running: int = Field(default=0, description="Tasks in the running or preparing state.")
    completed: int = Field(default=0, description="Tasks in the completed state.")
    succeeded: int = Field(default=0, description="Completed tasks whose result is success.")
    failed: int = Field(default=0, description="Completed tasks whose result is failure.")


class BatchTaskSlotCounts(ResponseModel):
    """Scheduling slots required by a job's tasks, per state."""

    active: int = Field(default=0, description="Slots of active tasks.")
    running: int = Field(default=0, description="Slots of running tasks.")
    completed: int = Field(default=0, description="Slots of completed tasks.")
    succeeded: int = Field(default=0, description="Slots of succeeded tasks.")
    failed: int = Field(default=0, description="Slots of failed tasks.")


class BatchTaskCountsResult(ResponseModel):
    """The response to a get-task-counts request."""

    task_counts: BatchTaskCounts = Field(
        default_factory=BatchTaskCounts, alias="taskCounts", description="Tasks per state."
    )
    task_slot_counts: BatchTaskSlotCounts = Field(
        default_factory=BatchTaskSlotCounts,
        alias="taskSlotCounts",
        description="Slots per state.",
    )


class BatchJobPreparationTaskExecutionInfo(ResponseModel):
    """How a job preparation task went on one node."""

    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="When the latest run started."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When the task completed."
    )
    state: PrepReleaseState | None = Field(default=None, description="Running or completed.")
    task_root_directory: str | None = Field(
        default=None,
        alias="taskRootDirectory",
        description="The task's root directory on the node.",
    )
    task_root_directory_url: str | None = Field(
        default=None, alias="taskRootDirectoryUrl", description="The URL of that directory."
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


class BatchJobReleaseTaskExecutionInfo(ResponseModel):
    """How a job release task went on one node."""

    start_time: UtcDateTime | None = Field(
        default=None, alias="startTime", description="When the task started."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When the task completed."
    )
    state: PrepReleaseState | None = Field(default=None, description="Running or completed.")
    task_root_directory: str | None = Field(
        default=None,
        alias="taskRootDirectory",
        description="The task's root directory on the node.",
    )
    task_root_directory_url: str | None = Field(
        default=None, alias="taskRootDirectoryUrl", description="The URL of that directory."
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
    result: TaskExecutionResult | None = Field(default=None, description="Success or failure.")


class BatchJobPreparationAndReleaseTaskStatus(ResponseModel):
    """A job's preparation and release tasks on one node."""

    pool_id: str | None = Field(
        default=None, alias="poolId", description="The id of the node's pool."
    )
    node_id: str | None = Field(default=None, alias="nodeId", description="The id of the node.")
    node_url: str | None = Field(default=None, alias="nodeUrl", description="The URL of the node.")
    job_preparation_task_execution_info: BatchJobPreparationTaskExecutionInfo | None = Field(
        default=None,
        alias="jobPreparationTaskExecutionInfo",
        description="How the preparation task went on the node.",
    )
    job_release_task_execution_info: BatchJobReleaseTaskExecutionInfo | None = Field(
        default=None,
        alias="jobReleaseTaskExecutionInfo",
        description="How the release task went on the node.",
    )
