"""Job schedule models: creating and changing a schedule, and the schedule as returned.

A job schedule creates jobs from its ``jobSpecification`` as its ``schedule`` says (see
:mod:`prefect_batch.core.recurrence`); the specification reuses the job's own pieces (manager,
preparation and release tasks, constraints, pool).

This module only describes bodies; it does not run schedules.
"""

from __future__ import annotations

from pydantic import Field

from prefect_batch.core.states import JobScheduleState, OnAllTasksComplete, OnTaskFailure
from prefect_batch.models.base import (
    BatchId,
    DisplayName,
    NonNegativeDuration,
    OpaqueObject,
    RequestModel,
    ResponseModel,
    UtcDateTime,
)
from prefect_batch.models.common import BatchMetadataItem, EnvironmentSetting
from prefect_batch.models.job import (
    BatchJobConstraints,
    BatchJobManagerTask,
    BatchJobPreparationTask,
    BatchJobReleaseTask,
    BatchJobStatistics,
    BatchPoolInfo,
    MaxParallelTasks,
    Priority,
)

__all__ = [
    "BatchJobSchedule",
    "BatchJobScheduleConfiguration",
    "BatchJobScheduleCreateOptions",
    "BatchJobScheduleExecutionInfo",
    "BatchJobScheduleStatistics",
    "BatchJobScheduleUpdateOptions",
    "BatchJobSpecification",
    "RecentBatchJob",
]


class BatchJobScheduleConfiguration(RequestModel):
    """When a schedule creates jobs (UTC; no daylight saving)."""

    do_not_run_until: UtcDateTime | None = Field(
        default=None,
        alias="doNotRunUntil",
        description="No job before this time; from the schedule's creation when omitted.",
    )
    do_not_run_after: UtcDateTime | None = Field(
        default=None,
        alias="doNotRunAfter",
        description="No job after this time; the schedule then completes once no job is active.",
    )
    start_window: NonNegativeDuration | None = Field(
        default=None,
        alias="startWindow",
        description="How long a due job may wait to be created before that run is lost "
        "(at least 1 s here; Azure: 1 minute); until the next run when omitted.",
    )
    recurrence_interval: NonNegativeDuration | None = Field(
        default=None,
        alias="recurrenceInterval",
        description="Time between the runs (at least 1 s here; Azure: 1 minute); "
        "one job only when omitted.",
    )


class BatchJobSpecification(RequestModel):
    """The job each run of a schedule creates (a job's create body without its id)."""

    priority: Priority | None = Field(
        default=None, description="-1000 (lowest) to 1000 (highest); 0 when omitted."
    )
    allow_task_preemption: bool | None = Field(
        default=None,
        alias="allowTaskPreemption",
        description="Whether higher-priority jobs may preempt the job's tasks.",
    )
    max_parallel_tasks: MaxParallelTasks | None = Field(
        default=None,
        alias="maxParallelTasks",
        description="Tasks running at once: -1 (no limit) or >0.",
    )
    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="The jobs' display name; up to 1024 chars."
    )
    uses_task_dependencies: bool | None = Field(
        default=None,
        alias="usesTaskDependencies",
        description="Whether tasks may depend on others.",
    )
    all_tasks_complete_mode: OnAllTasksComplete | None = Field(
        default=None,
        alias="onAllTasksComplete",
        description="What happens when all tasks of a job are complete (noaction).",
    )
    task_failure_mode: OnTaskFailure | None = Field(
        default=None,
        alias="onTaskFailure",
        description="What happens when a task fails (noaction).",
    )
    network_configuration: OpaqueObject | None = Field(
        default=None, alias="networkConfiguration", description="Network settings; opaque."
    )
    constraints: BatchJobConstraints | None = Field(
        default=None, description="Run time and retry limits of each job."
    )
    job_manager_task: BatchJobManagerTask | None = Field(
        default=None,
        alias="jobManagerTask",
        description="A task started with each job (how a scheduled job gets its tasks).",
    )
    job_preparation_task: BatchJobPreparationTask | None = Field(
        default=None,
        alias="jobPreparationTask",
        description="Runs on a node before a job's tasks.",
    )
    job_release_task: BatchJobReleaseTask | None = Field(
        default=None, alias="jobReleaseTask", description="Runs on the nodes when a job ends."
    )
    common_environment_settings: list[EnvironmentSetting] | None = Field(
        default=None,
        alias="commonEnvironmentSettings",
        description="Environment variables for every task of the jobs.",
    )
    pool_info: BatchPoolInfo = Field(alias="poolInfo", description="Where the tasks run.")
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs given to each job."
    )


class BatchJobScheduleCreateOptions(RequestModel):
    """The body of an add-job-schedule request."""

    id: BatchId = Field(description="Unique (case-insensitively) in the account; 1-64 chars.")
    display_name: DisplayName | None = Field(
        default=None, alias="displayName", description="A display name; up to 1024 characters."
    )
    schedule: BatchJobScheduleConfiguration = Field(
        description="When jobs are created ({} for one job, now)."
    )
    job_specification: BatchJobSpecification = Field(
        alias="jobSpecification", description="The job each run creates."
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs for the user's own use."
    )


class BatchJobScheduleUpdateOptions(RequestModel):
    """The body of a patch- or put-job-schedule request; changes apply to later jobs only.

    A patch changes the properties given; a put replaces them all (``schedule`` omitted: one
    run, now; ``metadata`` omitted: none) and needs ``jobSpecification``.
    """

    schedule: BatchJobScheduleConfiguration | None = Field(
        default=None, description="When jobs are created."
    )
    job_specification: BatchJobSpecification | None = Field(
        default=None, alias="jobSpecification", description="The job each later run creates."
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Replaces the schedule's metadata."
    )


class RecentBatchJob(ResponseModel):
    """The most recent job a schedule created."""

    id: str | None = Field(default=None, description="The id of the job.")
    url: str | None = Field(default=None, description="The URL of the job.")


class BatchJobScheduleExecutionInfo(ResponseModel):
    """The jobs a schedule has run and will run."""

    next_run_time: UtcDateTime | None = Field(
        default=None,
        alias="nextRunTime",
        description="When the next job is due (while the schedule is active or disabled).",
    )
    recent_job: RecentBatchJob | None = Field(
        default=None, alias="recentJob", description="The most recent job of the schedule."
    )
    end_time: UtcDateTime | None = Field(
        default=None, alias="endTime", description="When the schedule completed."
    )


class BatchJobScheduleStatistics(BatchJobStatistics):
    """Resource usage of all the jobs of a schedule."""


class BatchJobSchedule(ResponseModel):
    """A job schedule as the service returns it."""

    id: str = Field(description="The id of the schedule.")
    display_name: str | None = Field(
        default=None, alias="displayName", description="A display name."
    )
    url: str | None = Field(default=None, description="The URL of the schedule.")
    etag: str | None = Field(
        default=None, alias="eTag", description="Changes whenever the schedule's own data does."
    )
    last_modified: UtcDateTime | None = Field(
        default=None,
        alias="lastModified",
        description="When the schedule last changed (not counting the jobs it created).",
    )
    creation_time: UtcDateTime | None = Field(
        default=None, alias="creationTime", description="When the schedule was created."
    )
    state: JobScheduleState | None = Field(
        default=None, description="The current state of the schedule."
    )
    state_transition_time: UtcDateTime | None = Field(
        default=None,
        alias="stateTransitionTime",
        description="When the schedule entered its state.",
    )
    previous_state: JobScheduleState | None = Field(
        default=None, alias="previousState", description="The state before the current one."
    )
    previous_state_transition_time: UtcDateTime | None = Field(
        default=None, alias="previousStateTransitionTime", description="When it entered that state."
    )
    schedule: BatchJobScheduleConfiguration | None = Field(
        default=None, description="When jobs are created."
    )
    job_specification: BatchJobSpecification | None = Field(
        default=None, alias="jobSpecification", description="The job each run creates."
    )
    execution_info: BatchJobScheduleExecutionInfo | None = Field(
        default=None,
        alias="executionInfo",
        description="The next run, the most recent job, the end time.",
    )
    metadata: list[BatchMetadataItem] | None = Field(
        default=None, description="Name-value pairs for the user's own use."
    )
    job_schedule_statistics: BatchJobScheduleStatistics | None = Field(
        default=None, alias="stats", description="Resource usage of the schedule's jobs."
    )
