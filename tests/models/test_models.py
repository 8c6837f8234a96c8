"""Wire-format tests of prefect_batch.models against the official azure-batch SDK.

Names and aliases are checked against the SDK's source (read with ``ast``, so what is compared is
exactly the ``rest_field(name=...)`` the SDK generator wrote); bodies are exchanged with the SDK's
own models in both directions. No network.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field, ValidationError

import prefect_batch.models as models
from prefect_batch.core.states import (
    JobState,
    NodeState,
    OnAllTasksComplete,
    TaskExecutionResult,
    TaskState,
)
from prefect_batch.models import (
    BatchJob,
    BatchJobCreateOptions,
    BatchModel,
    BatchPool,
    BatchPoolCreateOptions,
    BatchTask,
    BatchTaskCreateOptions,
    RequestModel,
    ResponseModel,
)

sdk_models = pytest.importorskip("azure.batch.models")

# Our classes the SDK does not have, and the SDK class whose fields they borrow.
SDK_STAND_INS = {"BatchTaskUpdateOptions": "BatchTask"}
EXTENSION_MODELS = {"BatchNodeSource"}
"""Our own resources (registered SSH host groups): no SDK class to match."""
LEGACY_MODELS = {
    "BatchCertificate",
    "BatchCertificateCreateOptions",
    "BatchCertificateReference",
    "DeleteCertificateError",
}
"""Azure's certificates, gone from api-version 2025-06-01 and SDK 15.x (their names are those
of api-version 2024-07-01.20.0): no SDK class to match."""
LEGACY_FIELDS = {"certificate_references"}
"""Pool fields of that older api-version (``certificateReferences``), absent from SDK 15.x."""


@cache
def sdk_fields() -> dict[str, dict[str, str]]:
    """Map SDK class name -> {python attribute: wire name}, read from the SDK's source."""
    spec = importlib.util.find_spec("azure.batch.models._models")
    assert spec is not None and spec.origin is not None
    tree = ast.parse(Path(spec.origin).read_text())
    classes: dict[str, dict[str, str]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields: dict[str, str] = {}
        for stmt in node.body:
            if not (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(stmt.value, ast.Call)
                and isinstance(stmt.value.func, ast.Name)
                and stmt.value.func.id == "rest_field"
            ):
                continue
            wire = stmt.target.id  # rest_field without name= uses the attribute name
            for keyword in stmt.value.keywords:
                if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                    wire = keyword.value.value
            fields[stmt.target.id] = wire
        classes[node.name] = fields
    return classes


def wire_mismatches(cls: type[BaseModel], sdk_name: str, *, complete: bool) -> list[str]:
    """Differences between ``cls`` and the SDK class ``sdk_name``; empty when they agree."""
    sdk = sdk_fields().get(sdk_name)
    if sdk is None:
        return [f"SDK has no class {sdk_name}"]
    problems = []
    for name, info in cls.model_fields.items():
        wire = info.alias or name
        if name in LEGACY_FIELDS and name not in sdk:
            continue
        if name not in sdk:
            problems.append(f"{cls.__name__}.{name}: no such SDK attribute")
        elif sdk[name] != wire:
            problems.append(f"{cls.__name__}.{name}: alias {wire!r}, SDK wire name {sdk[name]!r}")
    if complete:
        for name in sdk.keys() - cls.model_fields.keys():
            problems.append(f"{cls.__name__}: SDK attribute {name} ({sdk[name]!r}) missing")
    return problems


def public_models() -> list[type[BatchModel]]:
    return [
        obj
        for name in models.__all__
        if isinstance(obj := getattr(models, name), type)
        and issubclass(obj, BatchModel)
        and obj not in (BatchModel, RequestModel, ResponseModel)
        and name not in EXTENSION_MODELS | LEGACY_MODELS
    ]


def test_extension_models_are_not_sdk_classes() -> None:
    assert EXTENSION_MODELS.isdisjoint(sdk_fields())
    assert EXTENSION_MODELS <= set(models.__all__)


@pytest.mark.parametrize("cls", public_models(), ids=lambda c: c.__name__)
def test_class_and_wire_names_match_sdk(cls: type[BatchModel]) -> None:
    sdk_name = SDK_STAND_INS.get(cls.__name__, cls.__name__)
    assert wire_mismatches(cls, sdk_name, complete=cls.__name__ not in SDK_STAND_INS) == []


def test_name_check_catches_mistakes() -> None:
    class BatchTaskConstraints(RequestModel):
        max_wall_clock_time: timedelta | None = Field(default=None, alias="maxWallclockTime")
        retries: int | None = Field(default=None, alias="maxTaskRetryCount")

    problems = wire_mismatches(BatchTaskConstraints, "BatchTaskConstraints", complete=True)
    assert any("'maxWallclockTime'" in p for p in problems)
    assert any("retries: no such SDK attribute" in p for p in problems)
    assert any("retention_time" in p and "missing" in p for p in problems)
    assert any("max_task_retry_count" in p and "missing" in p for p in problems)
    assert wire_mismatches(BatchTaskConstraints, "NoSuchClass", complete=True)


def test_all_lists_every_public_model() -> None:
    assert len(models.__all__) == len(set(models.__all__))
    for name in models.__all__:
        assert hasattr(models, name), name


@pytest.mark.parametrize("cls", public_models(), ids=lambda c: c.__name__)
def test_every_field_is_described(cls: type[BatchModel]) -> None:
    assert cls.__doc__
    assert [n for n, f in cls.model_fields.items() if not f.description] == []


def test_request_models_forbid_unknown_fields_and_responses_ignore_them() -> None:
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs"):
        BatchTaskCreateOptions.model_validate({"id": "t", "commandLine": "x", "colour": "red"})
    task = BatchTask.model_validate({"id": "t", "someNewField": 1})
    assert task.to_wire() == {"id": "t"}


# --- round trips ------------------------------------------------------------------------------

RESOURCE_FILE = {"httpUrl": "https://example.com/a.txt", "filePath": "in/a.txt", "fileMode": "0644"}
OUTPUT_FILE = {
    "filePattern": "out/**/*.txt",
    "destination": {
        "container": {
            "path": "results",
            "containerUrl": "https://acct.blob.core.windows.net/c?sas",
            "uploadHeaders": [{"name": "x-ms-meta-a", "value": "1"}],
        }
    },
    "uploadOptions": {"uploadCondition": "taskcompletion"},
}
ENV = [{"name": "A", "value": "1"}, {"name": "EMPTY"}]
IDENTITY = {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
CONTAINER = {
    "imageName": "python:3.12",
    "containerRunOptions": "--rm",
    "workingDirectory": "taskWorkingDirectory",
}
EXIT_OPTIONS = {"jobAction": "terminate", "dependencyAction": "block"}
FAILURE = {
    "category": "usererror",
    "code": "FailureExitCode",
    "message": "The task exited with an exit code representing a failure",
    "details": [{"name": "Message", "value": "exit 3"}],
}

TASK_WIRE: dict[str, Any] = {
    "id": "task-1",
    "displayName": "Task one",
    "url": "https://acct.region.batch.azure.com/jobs/job-1/tasks/task-1",
    "eTag": "0x8D1",
    "lastModified": "2025-06-01T10:00:03Z",
    "creationTime": "2025-06-01T10:00:00Z",
    "exitConditions": {
        "exitCodes": [{"code": 3, "exitOptions": EXIT_OPTIONS}],
        "exitCodeRanges": [{"start": 10, "end": 20, "exitOptions": {"jobAction": "disable"}}],
        "preProcessingError": {"jobAction": "none"},
        "fileUploadError": {"dependencyAction": "satisfy"},
        "default": {"jobAction": "none", "dependencyAction": "satisfy"},
    },
    "state": "completed",
    "stateTransitionTime": "2025-06-01T10:00:03Z",
    "previousState": "running",
    "previousStateTransitionTime": "2025-06-01T10:00:01Z",
    "commandLine": "/bin/sh -c 'exit 3'",
    "containerSettings": CONTAINER,
    "resourceFiles": [RESOURCE_FILE],
    "outputFiles": [OUTPUT_FILE],
    "environmentSettings": ENV,
    "affinityInfo": {"affinityId": "node-1"},
    "constraints": {"maxWallClockTime": "PT1H30M", "retentionTime": "P7D", "maxTaskRetryCount": 2},
    "requiredSlots": 2,
    "userIdentity": IDENTITY,
    "executionInfo": {
        "startTime": "2025-06-01T10:00:01Z",
        "endTime": "2025-06-01T10:00:03Z",
        "exitCode": 3,
        "containerInfo": {"containerId": "abc", "state": "exited"},
        "failureInfo": FAILURE,
        "retryCount": 2,
        "lastRetryTime": "2025-06-01T10:00:02Z",
        "requeueCount": 1,
        "lastRequeueTime": "2025-06-01T10:00:01.500000Z",
        "result": "failure",
    },
    "nodeInfo": {
        "affinityId": "node-1",
        "nodeUrl": "https://acct/pools/p/nodes/node-1",
        "poolId": "pool-1",
        "nodeId": "node-1",
        "taskRootDirectory": "workitems/job-1/job-1/task-1",
        "taskRootDirectoryUrl": "https://acct/pools/p/nodes/node-1/files/workitems/job-1",
    },
    "multiInstanceSettings": {
        "numberOfInstances": 2,
        "coordinationCommandLine": "hostname",
        "commonResourceFiles": [RESOURCE_FILE],
    },
    "stats": {
        "url": "https://acct/jobs/job-1/tasks/task-1",
        "startTime": "2025-06-01T10:00:01Z",
        "lastUpdateTime": "2025-06-01T10:00:03Z",
        "userCPUTime": "PT1.5S",
        "kernelCPUTime": "PT0.25S",
        "wallClockTime": "PT2S",
        "readIOps": "12",
        "writeIOps": "3",
        "readIOGiB": 0.5,
        "writeIOGiB": 0.25,
        "waitTime": "PT1S",
    },
    "dependsOn": {"taskIds": ["a", "b"], "taskIdRanges": [{"start": 1, "end": 5}]},
    "applicationPackageReferences": [{"applicationId": "app", "version": "1.0"}],
}

JOB_WIRE: dict[str, Any] = {
    "id": "job-1",
    "displayName": "Job one",
    "usesTaskDependencies": True,
    "url": "https://acct/jobs/job-1",
    "eTag": "0x8D2",
    "lastModified": "2025-06-01T10:05:00Z",
    "creationTime": "2025-06-01T09:00:00Z",
    "state": "completed",
    "stateTransitionTime": "2025-06-01T10:05:00Z",
    "previousState": "terminating",
    "previousStateTransitionTime": "2025-06-01T10:04:59Z",
    "priority": -5,
    "allowTaskPreemption": False,
    "maxParallelTasks": -1,
    "constraints": {"maxWallClockTime": "P10675199DT2H48M5.477581S", "maxTaskRetryCount": -1},
    "jobManagerTask": {
        "id": "manager",
        "displayName": "Manager",
        "commandLine": "python manage.py",
        "containerSettings": CONTAINER,
        "resourceFiles": [RESOURCE_FILE],
        "outputFiles": [OUTPUT_FILE],
        "environmentSettings": ENV,
        "constraints": {"maxTaskRetryCount": 0},
        "requiredSlots": 1,
        "killJobOnCompletion": True,
        "userIdentity": {"username": "batchuser"},
        "runExclusive": False,
        "applicationPackageReferences": [{"applicationId": "app"}],
        "allowLowPriorityNode": True,
    },
    "jobPreparationTask": {
        "id": "prep",
        "commandLine": "setup.sh",
        "containerSettings": CONTAINER,
        "resourceFiles": [RESOURCE_FILE],
        "environmentSettings": ENV,
        "constraints": {"retentionTime": "PT1H"},
        "waitForSuccess": True,
        "userIdentity": IDENTITY,
        "rerunOnNodeRebootAfterSuccess": False,
    },
    "jobReleaseTask": {
        "id": "release",
        "commandLine": "cleanup.sh",
        "containerSettings": CONTAINER,
        "resourceFiles": [RESOURCE_FILE],
        "environmentSettings": ENV,
        "maxWallClockTime": "PT15M",
        "retentionTime": "P7D",
        "userIdentity": IDENTITY,
    },
    "commonEnvironmentSettings": ENV,
    "poolInfo": {"poolId": "pool-1"},
    "onAllTasksComplete": "terminatejob",
    "onTaskFailure": "performexitoptionsjobaction",
    "networkConfiguration": {"subnetId": "/subscriptions/x/subnets/y"},
    "metadata": [{"name": "owner", "value": "me"}],
    "executionInfo": {
        "startTime": "2025-06-01T09:00:00Z",
        "endTime": "2025-06-01T10:05:00Z",
        "poolId": "pool-1",
        "schedulingError": {"category": "servererror", "code": "X", "message": "m"},
        "terminateReason": "AllTasksComplete",
    },
    "stats": {
        "url": "https://acct/jobs/job-1",
        "startTime": "2025-06-01T09:00:00Z",
        "lastUpdateTime": "2025-06-01T10:05:00Z",
        "userCPUTime": "PT10S",
        "kernelCPUTime": "PT1S",
        "wallClockTime": "PT1H5M",
        "readIOps": "100",
        "writeIOps": "50",
        "readIOGiB": 1.0,
        "writeIOGiB": 2.0,
        "numSucceededTasks": "9",
        "numFailedTasks": "1",
        "numTaskRetries": "2",
        "waitTime": "PT30S",
    },
}

SCHEDULE_WIRE: dict[str, Any] = {
    "id": "nightly",
    "displayName": "Nightly",
    "url": "https://acct/jobschedules/nightly",
    "eTag": "0x8D4",
    "lastModified": "2025-06-01T08:00:00Z",
    "creationTime": "2025-06-01T07:00:00Z",
    "state": "completed",
    "stateTransitionTime": "2025-06-02T07:00:00Z",
    "previousState": "active",
    "previousStateTransitionTime": "2025-06-01T07:00:00Z",
    "schedule": {
        "doNotRunUntil": "2025-06-01T08:00:00Z",
        "doNotRunAfter": "2025-06-02T08:00:00Z",
        "startWindow": "PT10M",
        "recurrenceInterval": "PT1H",
    },
    "jobSpecification": {
        "priority": 10,
        "allowTaskPreemption": False,
        "maxParallelTasks": 4,
        "displayName": "Nightly job",
        "usesTaskDependencies": True,
        "onAllTasksComplete": "terminatejob",
        "onTaskFailure": "performexitoptionsjobaction",
        "networkConfiguration": {"subnetId": "s"},
        "constraints": {"maxWallClockTime": "PT2H", "maxTaskRetryCount": 1},
        "jobManagerTask": JOB_WIRE["jobManagerTask"],
        "jobPreparationTask": JOB_WIRE["jobPreparationTask"],
        "jobReleaseTask": JOB_WIRE["jobReleaseTask"],
        "commonEnvironmentSettings": ENV,
        "poolInfo": {"poolId": "pool-1"},
        "metadata": [{"name": "kind", "value": "scheduled"}],
    },
    "executionInfo": {
        "nextRunTime": "2025-06-01T10:00:00Z",
        "recentJob": {"id": "nightly:job-2", "url": "https://acct/jobs/nightly:job-2"},
        "endTime": "2025-06-02T07:00:00Z",
    },
    "metadata": [{"name": "owner", "value": "me"}],
    "stats": JOB_WIRE["stats"],
}

POOL_WIRE: dict[str, Any] = {
    "id": "pool-1",
    "displayName": "Pool one",
    "url": "https://acct/pools/pool-1",
    "eTag": "0x8D3",
    "lastModified": "2025-06-01T08:00:00Z",
    "creationTime": "2025-06-01T07:00:00Z",
    "state": "active",
    "stateTransitionTime": "2025-06-01T07:00:00Z",
    "allocationState": "steady",
    "allocationStateTransitionTime": "2025-06-01T07:10:00Z",
    "vmSize": "local-4cpu",
    "virtualMachineConfiguration": {
        "imageReference": {"publisher": "canonical", "offer": "ubuntu", "sku": "22_04-lts"},
        "nodeAgentSKUId": "batch.node.ubuntu 22.04",
        "containerConfiguration": {"type": "dockerCompatible"},
    },
    "resizeTimeout": "PT15M",
    "resizeErrors": [
        {"code": "AllocationFailed", "message": "no capacity", "values": [{"name": "n"}]}
    ],
    "currentDedicatedNodes": 2,
    "currentLowPriorityNodes": 0,
    "targetDedicatedNodes": 2,
    "targetLowPriorityNodes": 0,
    "enableAutoScale": True,
    "autoScaleFormula": "$TargetDedicatedNodes = 2;",
    "autoScaleEvaluationInterval": "PT5M",
    "autoScaleRun": {
        "timestamp": "2025-06-01T07:05:00Z",
        "results": "$TargetDedicatedNodes=2;$NodeDeallocationOption=requeue",
        "error": {"code": "E", "message": "m", "values": [{"name": "line", "value": "1"}]},
    },
    "enableInterNodeCommunication": False,
    "networkConfiguration": {"subnetId": "s"},
    "startTask": {
        "commandLine": "/bin/sh -c 'echo hi'",
        "containerSettings": CONTAINER,
        "resourceFiles": [RESOURCE_FILE],
        "environmentSettings": ENV,
        "userIdentity": IDENTITY,
        "maxTaskRetryCount": 1,
        "waitForSuccess": True,
    },
    "applicationPackageReferences": [{"applicationId": "app"}],
    "certificateReferences": [
        {
            "thumbprint": "0123456789abcdef0123456789abcdef01234567",
            "thumbprintAlgorithm": "sha1",
            "storeLocation": "currentuser",
            "storeName": "My",
            "visibility": ["starttask", "task"],
        }
    ],
    "taskSlotsPerNode": 4,
    "taskSchedulingPolicy": {"jobDefaultOrder": "creationtime", "nodeFillType": "pack"},
    "userAccounts": [{"name": "batchuser", "password": "x"}],
    "metadata": [{"name": "team", "value": "data"}],
    "stats": {"url": "https://acct/pools/pool-1"},
    "mountConfiguration": [{"nfsMountConfiguration": {"source": "s", "relativeMountPath": "m"}}],
    "identity": {"type": "None"},
    "upgradePolicy": {"mode": "manual"},
}


@pytest.mark.parametrize(
    ("cls", "wire"),
    [
        (BatchTask, TASK_WIRE),
        (BatchJob, JOB_WIRE),
        (BatchPool, POOL_WIRE),
        (models.BatchJobSchedule, SCHEDULE_WIRE),
    ],
    ids=["task", "job", "pool", "schedule"],
)
def test_fully_populated_resource_round_trips(cls: type[BatchModel], wire: dict[str, Any]) -> None:
    model = cls.model_validate(wire)
    unset = [name for name in cls.model_fields if getattr(model, name) is None]
    assert unset == [], "the fixture must populate every field"
    assert model.to_wire() == wire
    assert cls.model_validate(model.to_wire()) == model
    assert cls.model_validate_json(model.model_dump_json(by_alias=True)) == model


def test_round_trip_keeps_types() -> None:
    task = BatchTask.model_validate(TASK_WIRE)
    assert task.state is TaskState.COMPLETED
    assert task.execution_info is not None
    assert task.execution_info.result is TaskExecutionResult.FAILURE
    assert task.constraints is not None
    assert task.constraints.max_wall_clock_time == timedelta(hours=1, minutes=30)
    assert task.task_statistics is not None and task.task_statistics.read_iops == 12
    assert task.creation_time == datetime(2025, 6, 1, 10, tzinfo=timezone.utc)
    job = BatchJob.model_validate(JOB_WIRE)
    assert job.state is JobState.COMPLETED
    assert job.job_statistics is not None and job.job_statistics.failed_tasks_count == 1


def test_python_names_and_wire_names_both_populate() -> None:
    by_name = BatchTaskCreateOptions(id="t", command_line="x", required_slots=2)
    by_alias = BatchTaskCreateOptions.model_validate(
        {"id": "t", "commandLine": "x", "requiredSlots": 2}
    )
    assert by_name == by_alias
    assert by_name.to_wire() == {"id": "t", "commandLine": "x", "requiredSlots": 2}


# --- formats ----------------------------------------------------------------------------------


def test_duration_parses_and_serialises_iso8601() -> None:
    constraints = models.BatchTaskConstraints.model_validate({"maxWallClockTime": "PT1H30M"})
    assert constraints.max_wall_clock_time == timedelta(hours=1, minutes=30)
    assert constraints.to_wire() == {"maxWallClockTime": "PT1H30M"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "PT0S"),
        (timedelta(hours=1), "PT1H"),
        (timedelta(days=7), "P7D"),
        (timedelta(days=400, seconds=1), "P400DT1S"),
        (timedelta(milliseconds=500), "PT0.5S"),
        (timedelta(days=10675199, seconds=10085, microseconds=477581), "P10675199DT2H48M5.477581S"),
        (-timedelta(minutes=2), "-PT2M"),
    ],
)
def test_duration_to_iso(value: timedelta, text: str) -> None:
    assert models.duration_to_iso(value) == text


def test_datetimes_are_utc_on_the_wire() -> None:
    plus_two = timezone(timedelta(hours=2))
    info = models.BatchTaskExecutionInfo(
        start_time=datetime(2025, 6, 1, 12, 0, tzinfo=plus_two),
        end_time=datetime(2025, 6, 1, 10, 30),  # naive: taken as UTC
    )
    assert info.to_wire() == {
        "startTime": "2025-06-01T10:00:00Z",
        "endTime": "2025-06-01T10:30:00Z",
    }


def test_int64_counters_travel_as_strings() -> None:
    stats = models.BatchTaskStatistics.model_validate({"readIOps": "7", "writeIOps": 8})
    assert (stats.read_iops, stats.write_iops) == (7, 8)
    assert stats.to_wire() == {"readIOps": "7", "writeIOps": "8"}


# --- validation -------------------------------------------------------------------------------


def _error_locs(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [tuple(error["loc"]) for error in exc.value.errors()]


@pytest.mark.parametrize("bad_id", ["", "x" * 65, "has space", "slash/id", "dot.id", "ünï"])
@pytest.mark.parametrize("cls", [BatchTaskCreateOptions, BatchJobCreateOptions])
def test_bad_ids_are_rejected(cls: type[BatchModel], bad_id: str) -> None:
    body: dict[str, Any] = {"id": bad_id, "commandLine": "x", "poolInfo": {"poolId": "p"}}
    if cls is BatchTaskCreateOptions:
        del body["poolInfo"]
    else:
        del body["commandLine"]
    with pytest.raises(ValidationError) as exc:
        cls.model_validate(body)
    assert _error_locs(exc) == [("id",)]


def test_bad_pool_and_job_manager_ids_are_rejected() -> None:
    with pytest.raises(ValidationError):
        BatchPoolCreateOptions.model_validate({"id": "a" * 65, "vmSize": "small"})
    with pytest.raises(ValidationError) as exc:
        BatchJobCreateOptions.model_validate(
            {
                "id": "job",
                "poolInfo": {"poolId": "p"},
                "jobManagerTask": {"id": "bad id", "commandLine": "x"},
            }
        )
    assert _error_locs(exc) == [("jobManagerTask", "id")]


def test_longest_and_shortest_ids_are_accepted() -> None:
    assert BatchTaskCreateOptions(id="a" * 64, command_line="x").id == "a" * 64
    assert BatchTaskCreateOptions(id="A-_9", command_line="x").id == "A-_9"


@pytest.mark.parametrize("priority", [1001, -1001])
def test_priority_out_of_range(priority: int) -> None:
    with pytest.raises(ValidationError) as exc:
        BatchJobCreateOptions.model_validate(
            {"id": "j", "poolInfo": {"poolId": "p"}, "priority": priority}
        )
    assert _error_locs(exc) == [("priority",)]


def test_priority_defaults_to_unset() -> None:
    job = BatchJobCreateOptions.model_validate({"id": "j", "poolInfo": {"poolId": "p"}})
    assert job.priority is None
    assert "priority" not in job.to_wire()
    assert models.BatchJobUpdateOptions(priority=1000).to_wire() == {"priority": 1000}


@pytest.mark.parametrize(
    ("cls", "body", "loc"),
    [
        (models.BatchTaskConstraints, {"maxWallClockTime": "-PT1S"}, ("maxWallClockTime",)),
        (models.BatchTaskConstraints, {"retentionTime": "-P1D"}, ("retentionTime",)),
        (models.BatchJobConstraints, {"maxWallClockTime": "-PT1H"}, ("maxWallClockTime",)),
        (models.BatchPoolResizeOptions, {"resizeTimeout": "-PT5M"}, ("resizeTimeout",)),
    ],
)
def test_negative_durations_are_rejected(
    cls: type[BatchModel], body: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(ValidationError, match="non-negative duration") as exc:
        cls.model_validate(body)
    assert _error_locs(exc) == [loc]


@pytest.mark.parametrize(
    ("cls", "body", "loc"),
    [
        (BatchJobCreateOptions, {"maxParallelTasks": 0}, ("maxParallelTasks",)),
        (BatchJobCreateOptions, {"maxParallelTasks": -2}, ("maxParallelTasks",)),
        (BatchJobCreateOptions, {"displayName": "d" * 1025}, ("displayName",)),
        (
            BatchJobCreateOptions,
            {"metadata": [{"name": "", "value": "v"}]},
            ("metadata", 0, "name"),
        ),
        (
            BatchJobCreateOptions,
            {"constraints": {"maxTaskRetryCount": -2}},
            ("constraints", "maxTaskRetryCount"),
        ),
        (BatchTaskCreateOptions, {"requiredSlots": 0}, ("requiredSlots",)),
        (BatchTaskCreateOptions, {"commandLine": ""}, ("commandLine",)),
        (
            BatchTaskCreateOptions,
            {"environmentSettings": [{"name": "", "value": "v"}]},
            ("environmentSettings", 0, "name"),
        ),
        (BatchPoolCreateOptions, {"taskSlotsPerNode": 0}, ("taskSlotsPerNode",)),
        (BatchPoolCreateOptions, {"taskSlotsPerNode": 257}, ("taskSlotsPerNode",)),
        (BatchPoolCreateOptions, {"targetDedicatedNodes": -1}, ("targetDedicatedNodes",)),
        (BatchPoolCreateOptions, {"targetLowPriorityNodes": -1}, ("targetLowPriorityNodes",)),
    ],
)
def test_out_of_range_values_are_rejected(
    cls: type[BatchModel], body: dict[str, Any], loc: tuple[Any, ...]
) -> None:
    base: dict[str, Any] = {
        BatchJobCreateOptions: {"id": "j", "poolInfo": {"poolId": "p"}},
        BatchTaskCreateOptions: {"id": "t", "commandLine": "x"},
        BatchPoolCreateOptions: {"id": "p", "vmSize": "small"},
    }[cls]
    with pytest.raises(ValidationError) as exc:
        cls.model_validate(base | body)
    assert _error_locs(exc) == [loc]


def test_edge_values_are_accepted() -> None:
    job = BatchJobCreateOptions.model_validate(
        {"id": "j", "poolInfo": {"poolId": "p"}, "maxParallelTasks": -1, "priority": -1000}
    )
    assert (job.max_parallel_tasks, job.priority) == (-1, -1000)
    pool = BatchPoolCreateOptions.model_validate(
        {"id": "p", "vmSize": "s", "taskSlotsPerNode": 256, "resizeTimeout": "PT0S"}
    )
    assert pool.task_slots_per_node == 256


def test_extra_field_on_nested_request_model_is_rejected() -> None:
    with pytest.raises(ValidationError) as exc:
        BatchTaskCreateOptions.model_validate(
            {"id": "t", "commandLine": "x", "constraints": {"maxRetries": 3}}
        )
    assert _error_locs(exc) == [("constraints", "maxRetries")]


def test_pool_info_needs_exactly_one_source() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        models.BatchPoolInfo()
    with pytest.raises(ValidationError, match="exactly one"):
        models.BatchPoolInfo(
            pool_id="p",
            auto_pool_specification={"poolLifetimeOption": "job", "pool": {"vmSize": "local"}},
        )


def test_ranges_must_be_ordered() -> None:
    with pytest.raises(ValidationError, match="start must not be greater than end"):
        models.BatchTaskIdRange(start=5, end=1)
    with pytest.raises(ValidationError, match="start must not be greater than end"):
        models.ExitCodeRangeMapping.model_validate(
            {"start": 9, "end": 1, "exitOptions": {"jobAction": "none"}}
        )


def test_task_collection_holds_at_most_100() -> None:
    tasks = [{"id": f"t{i}", "commandLine": "x"} for i in range(101)]
    with pytest.raises(ValidationError):
        models.BatchTaskGroup.model_validate({"value": tasks})
    group = models.BatchTaskGroup.model_validate({"value": tasks[:100]})
    assert len(group.task_values) == 100


def test_response_models_only_require_id() -> None:
    for cls in (BatchPool, BatchJob, BatchTask, models.BatchNode, models.BatchJobSchedule):
        assert [n for n, f in cls.model_fields.items() if f.is_required()] == ["id"]
        assert cls.model_validate({"id": "x"}).to_wire() == {"id": "x"}


# --- interchange with the SDK -----------------------------------------------------------------


def test_sdk_reads_our_task_create_body() -> None:
    ours = BatchTaskCreateOptions.model_validate(
        {
            "id": "t1",
            "commandLine": "echo hi",
            "constraints": {"maxWallClockTime": "PT1H30M", "maxTaskRetryCount": 3},
            "environmentSettings": ENV,
            "outputFiles": [OUTPUT_FILE],
            "exitConditions": {"default": EXIT_OPTIONS},
            "dependsOn": {"taskIdRanges": [{"start": 1, "end": 2}]},
        }
    )
    sdk = sdk_models.BatchTaskCreateOptions(ours.to_wire())
    assert sdk.id == "t1"
    assert sdk.command_line == "echo hi"
    assert sdk.constraints.max_wall_clock_time == timedelta(hours=1, minutes=30)
    assert sdk.constraints.max_task_retry_count == 3
    assert sdk.environment_settings[0].name == "A"
    assert sdk.output_files[0].upload_options.upload_condition == "taskcompletion"
    assert sdk.exit_conditions.default.job_action == "terminate"
    assert sdk.depends_on.task_id_ranges[0].end == 2
    assert BatchTaskCreateOptions.model_validate(sdk.as_dict()) == ours


def test_sdk_reads_our_resources() -> None:
    task = sdk_models.BatchTask(BatchTask.model_validate(TASK_WIRE).to_wire())
    assert task.state == "completed"
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.category == "usererror"
    assert task.task_statistics.read_iops == 12
    assert task.task_statistics.user_cpu_time == timedelta(seconds=1.5)
    assert task.creation_time == datetime(2025, 6, 1, 10, tzinfo=timezone.utc)
    job = sdk_models.BatchJob(BatchJob.model_validate(JOB_WIRE).to_wire())
    assert job.all_tasks_complete_mode == "terminatejob"
    assert job.task_failure_mode == "performexitoptionsjobaction"
    assert job.constraints.max_wall_clock_time > timedelta(days=10_000_000)
    assert job.execution_info.termination_reason == "AllTasksComplete"
    assert job.job_statistics.task_retries_count == 2
    pool = sdk_models.BatchPool(BatchPool.model_validate(POOL_WIRE).to_wire())
    assert pool.virtual_machine_configuration.node_agent_sku_id == "batch.node.ubuntu 22.04"
    assert pool.task_scheduling_policy.node_fill_type == "pack"
    assert pool.auto_scale_run.error.error_values[0].name == "line"


def test_we_read_sdk_built_bodies() -> None:
    sdk_job = sdk_models.BatchJobCreateOptions(
        id="job-2",
        priority=100,
        max_parallel_tasks=4,
        pool_info=sdk_models.BatchPoolInfo(pool_id="pool-1"),
        constraints=sdk_models.BatchJobConstraints(
            max_wall_clock_time=timedelta(hours=2), max_task_retry_count=1
        ),
        all_tasks_complete_mode="terminatejob",
        task_failure_mode="performexitoptionsjobaction",
        metadata=[sdk_models.BatchMetadataItem(name="k", value="v")],
    )
    ours = BatchJobCreateOptions.model_validate(sdk_job.as_dict())
    assert ours.priority == 100
    assert ours.constraints is not None
    assert ours.constraints.max_wall_clock_time == timedelta(hours=2)
    assert ours.all_tasks_complete_mode is OnAllTasksComplete.TERMINATE_JOB
    assert ours.to_wire()["constraints"]["maxWallClockTime"] == "PT2H"

    sdk_result = sdk_models.BatchCreateTaskCollectionResult(
        result_values=[
            sdk_models.BatchTaskCreateResult(status="success", task_id="a", etag="0x1"),
            sdk_models.BatchTaskCreateResult(
                status="clienterror",
                task_id="b",
                error=sdk_models.BatchError(
                    code="InvalidPropertyValue",
                    message=sdk_models.BatchErrorMessage(lang="en-US", value="bad"),
                    error_values=[sdk_models.BatchErrorDetail(key="PropertyName", value="id")],
                ),
            ),
        ]
    )
    result = models.BatchCreateTaskCollectionResult.model_validate(sdk_result.as_dict())
    assert result.result_values is not None
    assert [r.task_id for r in result.result_values] == ["a", "b"]
    error = result.result_values[1].error
    assert error is not None and error.error_values is not None
    assert error.error_values[0].value == "id"

    sdk_node = sdk_models.BatchNode(
        id="n1",
        state="waitingforstarttask",
        scheduling_state="enabled",
        start_task_info=sdk_models.BatchStartTaskInfo(
            state="running", start_time=datetime(2025, 6, 1, tzinfo=timezone.utc), retry_count=0
        ),
        errors=[sdk_models.BatchNodeError(code="NodeLost", error_details=[])],
    )
    node = models.BatchNode.model_validate(sdk_node.as_dict())
    assert node.state is NodeState.WAITING_FOR_START_TASK
    assert sdk_models.BatchNode(node.to_wire()).as_dict() == sdk_node.as_dict()


def test_irregular_sdk_names() -> None:
    assert models.BatchTaskGroup(task_values=[]).to_wire() == {"value": []}
    assert models.BatchNodeRemoveOptions(node_ids=["n1"]).to_wire() == {"nodeList": ["n1"]}
    assert models.BatchNodeRebootOptions(node_reboot_kind="requeue").to_wire() == {
        "nodeRebootOption": "requeue"
    }
    assert models.BatchJobTerminateOptions(termination_reason="done").to_wire() == {
        "terminateReason": "done"
    }


def _sdk_request_body(sdk_model: Any) -> dict[str, Any]:
    """The JSON the SDK sends for ``sdk_model``: read-only fields dropped, as its operations do."""
    from azure.batch._utils.model_base import SdkJSONEncoder

    return json.loads(json.dumps(sdk_model, cls=SdkJSONEncoder, exclude_readonly=True))


def test_sdk_replace_bodies_fit_our_update_models() -> None:
    # replace_task and replace_job take the whole resource; only its writable fields are sent.
    sdk_task = sdk_models.BatchTask(BatchTask.model_validate(TASK_WIRE).to_wire())
    update = models.BatchTaskUpdateOptions.model_validate(_sdk_request_body(sdk_task))
    assert update.to_wire() == {"constraints": TASK_WIRE["constraints"]}
    sdk_job = sdk_models.BatchJob(BatchJob.model_validate(JOB_WIRE).to_wire())
    job_update = models.BatchJobUpdateOptions.model_validate(_sdk_request_body(sdk_job))
    assert job_update.priority == -5
    assert job_update.pool_info == models.BatchPoolInfo(pool_id="pool-1")


def test_job_schedules_interchange_with_the_sdk() -> None:
    ours = models.BatchJobSchedule.model_validate(SCHEDULE_WIRE)
    sdk = sdk_models.BatchJobSchedule(ours.to_wire())
    assert sdk.state == "completed"
    assert sdk.schedule.recurrence_interval == timedelta(hours=1)
    assert sdk.schedule.do_not_run_until == datetime(2025, 6, 1, 8, tzinfo=timezone.utc)
    assert sdk.job_specification.all_tasks_complete_mode == "terminatejob"
    assert sdk.job_specification.pool_info.pool_id == "pool-1"
    assert sdk.execution_info.recent_job.id == "nightly:job-2"
    assert sdk.job_schedule_statistics.task_retries_count == 2

    sdk_create = sdk_models.BatchJobScheduleCreateOptions(
        id="hourly",
        schedule=sdk_models.BatchJobScheduleConfiguration(
            recurrence_interval=timedelta(hours=1), start_window=timedelta(minutes=5)
        ),
        job_specification=sdk_models.BatchJobSpecification(
            pool_info=sdk_models.BatchPoolInfo(pool_id="p"),
            priority=-3,
            job_manager_task=sdk_models.BatchJobManagerTask(id="m", command_line="run"),
        ),
    )
    create = models.BatchJobScheduleCreateOptions.model_validate(_sdk_request_body(sdk_create))
    assert create.schedule.recurrence_interval == timedelta(hours=1)
    assert create.job_specification.priority == -3
    assert create.to_wire()["schedule"] == {"startWindow": "PT5M", "recurrenceInterval": "PT1H"}

    # replace_job_schedule takes the whole schedule; only its writable fields are sent.
    update = models.BatchJobScheduleUpdateOptions.model_validate(_sdk_request_body(sdk))
    assert update.to_wire() == {
        "schedule": SCHEDULE_WIRE["schedule"],
        "jobSpecification": SCHEDULE_WIRE["jobSpecification"],
        "metadata": SCHEDULE_WIRE["metadata"],
    }
