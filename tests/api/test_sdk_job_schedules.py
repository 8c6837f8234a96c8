"""Job schedules through the official azure-batch SDK (15.x) against a real server, unchanged.

The server's engine creates the schedules' jobs (``<schedule>:job-<n>``). Their pool does not
exist, so a scheduled job stays active until the test ends it: the next run waits for it, and a
test sees exactly the jobs it let happen. Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import datetime as dt

import pytest
from azure.batch import models
from azure.batch.models import _models as sdk_models
from azure.core import MatchConditions
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)

from prefect_batch import BatchClient, BatchConflictError
from tests.api.conftest import Server, wait_for

NOWHERE = models.BatchPoolInfo(pool_id="nowhere")


def _create(sdk, schedule_id: str, **schedule) -> None:
    sdk.create_job_schedule(
        models.BatchJobScheduleCreateOptions(
            id=schedule_id,
            schedule=models.BatchJobScheduleConfiguration(**schedule),
            job_specification=models.BatchJobSpecification(pool_info=NOWHERE),
        )
    )


def _jobs(sdk, schedule_id: str) -> list[str]:
    return [j.id for j in sdk.list_jobs_from_schedule(schedule_id)]


def _end_job(sdk, job_id: str) -> None:
    # The SDK needs an options body for terminate (without one it fails before sending).
    sdk.begin_terminate_job(
        job_id,
        options=sdk_models.BatchJobTerminateOptions(termination_reason="Done"),
        polling_interval=0.1,
    ).result()


def test_a_schedule_through_the_sdk(sdk) -> None:
    sdk.create_job_schedule(
        models.BatchJobScheduleCreateOptions(
            id="nightly",
            display_name="Nightly",
            schedule=models.BatchJobScheduleConfiguration(
                recurrence_interval=dt.timedelta(seconds=1),
                start_window=dt.timedelta(minutes=5),
            ),
            job_specification=models.BatchJobSpecification(
                pool_info=NOWHERE,
                priority=5,
                constraints=models.BatchJobConstraints(max_task_retry_count=1),
                metadata=[models.BatchMetadataItem(name="kind", value="scheduled")],
            ),
            metadata=[models.BatchMetadataItem(name="owner", value="me")],
        )
    )
    got = sdk.get_job_schedule("nightly")
    assert got.state == models.BatchJobScheduleState.ACTIVE
    assert got.display_name == "Nightly"
    assert got.url.endswith("/jobschedules/nightly")
    assert got.schedule.recurrence_interval == dt.timedelta(seconds=1)
    assert got.schedule.start_window == dt.timedelta(minutes=5)
    assert got.job_specification.pool_info.pool_id == "nowhere"
    assert got.job_specification.priority == 5
    assert got.metadata[0].value == "me"
    assert sdk.job_schedule_exists("nightly") is True
    assert "nightly" in [s.id for s in sdk.list_job_schedules(filter="state eq 'active'")]

    # The engine creates the first job; the next run waits while it is active.
    assert wait_for(lambda: _jobs(sdk, "nightly")) == ["nightly:job-1"]
    job = sdk.get_job("nightly:job-1")
    assert job.priority == 5
    assert job.constraints.max_task_retry_count == 1
    assert job.metadata[0].value == "scheduled"
    assert job.pool_info.pool_id == "nowhere"
    info = wait_for(lambda: sdk.get_job_schedule("nightly").execution_info.recent_job)
    assert info.id == "nightly:job-1"
    assert info.url.endswith("/jobs/nightly:job-1")
    assert sdk.get_job_schedule("nightly").execution_info.next_run_time is not None
    assert _jobs(sdk, "nightly") == ["nightly:job-1"]

    _end_job(sdk, "nightly:job-1")
    assert wait_for(lambda: len(_jobs(sdk, "nightly")) == 2 and _jobs(sdk, "nightly")) == [
        "nightly:job-1",
        "nightly:job-2",
    ]

    sdk.disable_job_schedule("nightly")
    disabled = sdk.get_job_schedule("nightly")
    assert disabled.state == models.BatchJobScheduleState.DISABLED
    assert disabled.previous_state == models.BatchJobScheduleState.ACTIVE
    sdk.enable_job_schedule("nightly")
    assert sdk.get_job_schedule("nightly").state == models.BatchJobScheduleState.ACTIVE

    sdk.update_job_schedule(
        "nightly",
        models.BatchJobScheduleUpdateOptions(
            metadata=[models.BatchMetadataItem(name="owner", value="you")]
        ),
    )
    assert sdk.get_job_schedule("nightly").metadata[0].value == "you"

    # Terminate: the active job is terminated and the schedule completes.
    sdk.begin_terminate_job_schedule("nightly", polling_interval=0.1).result()
    ended = sdk.get_job_schedule("nightly")
    assert ended.state == models.BatchJobScheduleState.COMPLETED
    assert ended.execution_info.end_time is not None
    last = sdk.get_job("nightly:job-2")
    assert last.state == models.BatchJobState.COMPLETED
    assert last.execution_info.termination_reason == "TerminateJobSchedule"

    sdk.begin_delete_job_schedule("nightly", polling_interval=0.1).result()
    with pytest.raises(ResourceNotFoundError) as nf:
        sdk.get_job_schedule("nightly")
    assert nf.value.error.code == "JobScheduleNotFound"
    with pytest.raises(ResourceNotFoundError) as nf:
        sdk.get_job("nightly:job-1")
    assert nf.value.error.code == "JobNotFound"


def test_replace_takes_the_whole_schedule(sdk) -> None:
    _create(sdk, "replaced", do_not_run_until=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))
    current = sdk.get_job_schedule("replaced")
    assert current.execution_info.next_run_time.year == 2100
    # replace_job_schedule takes a BatchJobSchedule; the SDK sends its writable fields only.
    current.job_specification.priority = 3
    current.schedule = models.BatchJobScheduleConfiguration(
        do_not_run_until=dt.datetime(2101, 1, 1, tzinfo=dt.timezone.utc)
    )
    sdk.replace_job_schedule("replaced", current)
    got = sdk.get_job_schedule("replaced")
    assert got.job_specification.priority == 3
    assert got.execution_info.next_run_time.year == 2101
    assert _jobs(sdk, "replaced") == []
    sdk.begin_delete_job_schedule("replaced", polling_interval=0.1).result()


def test_errors_carry_azure_codes(sdk) -> None:
    _create(sdk, "dup", do_not_run_until=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))
    with pytest.raises(ResourceExistsError) as exists:
        _create(sdk, "DUP")
    assert exists.value.status_code == 409
    assert exists.value.error.code == "JobScheduleExists"
    with pytest.raises(HttpResponseError) as bad:
        _create(sdk, "too-often", recurrence_interval=dt.timedelta(milliseconds=100))
    assert bad.value.status_code == 400
    assert bad.value.error.code == "InvalidPropertyValue"
    assert ("PropertyName", "schedule.recurrenceInterval") in {
        (d.code, d.message) for d in bad.value.error.details
    }
    with pytest.raises(HttpResponseError) as conflict:
        sdk.enable_job_schedule("dup")
    assert conflict.value.status_code == 409
    assert conflict.value.error.code == "OperationInvalidForCurrentState"
    with pytest.raises(ResourceNotFoundError) as nf:
        sdk.disable_job_schedule("nope")
    assert nf.value.error.code == "JobScheduleNotFound"
    with pytest.raises(ResourceExistsError) as same:
        sdk.create_job(models.BatchJobCreateOptions(id="dup", pool_info=NOWHERE))
    assert same.value.error.code == "JobScheduleWithSameIdExists"
    # Nothing of the refused schedule was kept. (Like pool_exists, the SDK's
    # job_schedule_exists raises for a missing schedule instead of returning False.)
    with pytest.raises(ResourceNotFoundError):
        sdk.job_schedule_exists("too-often")
    sdk.begin_delete_job_schedule("dup", polling_interval=0.1).result()


def test_etags_guard_writes_and_reads(sdk) -> None:
    _create(sdk, "tagged", do_not_run_until=dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc))
    stale = sdk.get_job_schedule("tagged").etag
    sdk.update_job_schedule(
        "tagged",
        models.BatchJobScheduleUpdateOptions(
            metadata=[models.BatchMetadataItem(name="v", value="2")]
        ),
        etag=stale,
        match_condition=MatchConditions.IfNotModified,
    )
    fresh = sdk.get_job_schedule("tagged")
    assert fresh.etag != stale
    with pytest.raises(ResourceModifiedError) as info:
        sdk.disable_job_schedule(
            "tagged", etag=stale, match_condition=MatchConditions.IfNotModified
        )
    assert info.value.status_code == 412
    assert info.value.error.code == "ConditionNotMet"
    assert sdk.get_job_schedule("tagged").state == models.BatchJobScheduleState.ACTIVE
    with pytest.raises(ResourceModifiedError) as info:
        sdk.get_job_schedule("tagged", etag=fresh.etag, match_condition=MatchConditions.IfModified)
    assert info.value.status_code == 304
    sdk.begin_delete_job_schedule("tagged", polling_interval=0.1).result()


def test_the_python_client_over_http(server: Server) -> None:
    with BatchClient(server.account.name, url=server.url, account_key=server.account.primary) as c:
        c.create_job_schedule(
            {
                "id": "remote",
                "schedule": {"doNotRunUntil": "2100-01-01T00:00:00Z"},
                "jobSpecification": {"poolInfo": {"poolId": "nowhere"}},
            }
        )
        assert c.job_schedule_exists("remote") is True
        assert c.job_schedule_exists("absent") is False
        assert c.get_job_schedule("remote").state == "active"
        assert "remote" in [s.id for s in c.list_job_schedules()]
        c.update_job_schedule("remote", {"metadata": [{"name": "a", "value": "b"}]})
        c.replace_job_schedule("remote", {"jobSpecification": {"poolInfo": {"poolId": "p2"}}})
        got = c.get_job_schedule("remote")
        assert got.metadata is None
        assert got.job_specification is not None
        assert got.job_specification.pool_info.pool_id == "p2"
        c.disable_job_schedule("remote")
        with pytest.raises(BatchConflictError) as info:
            c.disable_job_schedule("remote")
        assert info.value.code == "JobScheduleDisabled"
        c.enable_job_schedule("remote")
        # With its schedule replaced by "one run, now", the engine creates that run's job.
        assert wait_for(lambda: [j.id for j in c.list_jobs_from_schedule("remote")]) == [
            "remote:job-1"
        ]
        c.terminate_job_schedule("remote")
        assert c.get_job_schedule("remote").state == "completed"
        c.delete_job_schedule("remote")
        assert c.job_schedule_exists("remote") is False
