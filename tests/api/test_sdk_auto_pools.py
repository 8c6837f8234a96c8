"""Auto pools through the official azure-batch SDK (15.x) against a real server and engine.

A job names an ``autoPoolSpecification`` instead of a pool: the server creates the pool (with a
local node), the job's task runs on it, and the pool goes when the job ends. A schedule shares
one pool between its jobs. Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import re

import pytest
from azure.batch import models
from azure.batch.models import _models as sdk_models
from azure.core.exceptions import HttpResponseError

from tests.api.conftest import wait_for


def _auto(lifetime: str, prefix: str, nodes: int = 1) -> models.BatchPoolInfo:
    return models.BatchPoolInfo(
        auto_pool_specification=models.BatchAutoPoolSpecification(
            auto_pool_id_prefix=prefix,
            pool_lifetime_option=lifetime,
            pool=models.BatchPoolSpecification(
                vm_size="local",
                target_dedicated_nodes=nodes,
                metadata=[models.BatchMetadataItem(name="made", value="auto")],
            ),
        )
    )


def _pool_ids(sdk) -> set[str]:
    return {p.id for p in sdk.list_pools()}


def _terminate(sdk, job_id: str) -> None:
    # The SDK needs an options body for terminate (without one it fails before sending).
    sdk.begin_terminate_job(
        job_id,
        options=sdk_models.BatchJobTerminateOptions(termination_reason="Done"),
        polling_interval=0.1,
    ).result()


def test_a_job_runs_on_its_auto_pool_which_goes_with_the_job(sdk) -> None:
    sdk.create_job(models.BatchJobCreateOptions(id="auto-job", pool_info=_auto("job", "render")))
    job = sdk.get_job("auto-job")
    pool_id = job.execution_info.pool_id
    assert re.fullmatch(r"render_[0-9a-f-]{36}", pool_id)
    assert job.pool_info.auto_pool_specification.pool_lifetime_option == "job"
    assert pool_id in _pool_ids(sdk)
    assert sdk.get_pool(pool_id).metadata[0].value == "auto"

    sdk.create_task("auto-job", models.BatchTaskCreateOptions(id="t", command_line="echo hello"))
    task = wait_for(
        lambda: (t := sdk.get_task("auto-job", "t")).state == models.BatchTaskState.COMPLETED and t,
        timeout=60,
    )
    assert task.execution_info.exit_code == 0
    assert task.node_info.pool_id == pool_id
    assert b"".join(sdk.download_task_file("auto-job", "t", "stdout.txt")) == b"hello\n"

    _terminate(sdk, "auto-job")
    wait_for(lambda: pool_id not in _pool_ids(sdk), timeout=60)
    assert sdk.get_job("auto-job").execution_info.pool_id == pool_id  # still shown
    sdk.begin_delete_job("auto-job", polling_interval=0.1).result()


def test_a_schedule_shares_its_auto_pool_until_it_is_deleted(sdk) -> None:
    sdk.create_job_schedule(
        models.BatchJobScheduleCreateOptions(
            id="auto-sched",
            schedule=models.BatchJobScheduleConfiguration(),
            job_specification=models.BatchJobSpecification(
                pool_info=_auto("jobschedule", "nightly", nodes=0)
            ),
        )
    )
    job = wait_for(lambda: list(sdk.list_jobs_from_schedule("auto-sched")), timeout=30)[0]
    pool_id = sdk.get_job(job.id).execution_info.pool_id
    assert pool_id.startswith("nightly_")
    _terminate(sdk, job.id)
    assert pool_id in _pool_ids(sdk)  # the schedule's pool outlives its job
    sdk.begin_delete_job_schedule("auto-sched", polling_interval=0.1).result()
    wait_for(lambda: pool_id not in _pool_ids(sdk), timeout=60)


def test_a_job_cannot_be_moved_off_its_auto_pool(sdk) -> None:
    sdk.create_job(models.BatchJobCreateOptions(id="auto-move", pool_info=_auto("job", "m", 0)))
    pool_id = sdk.get_job("auto-move").execution_info.pool_id
    sdk.begin_disable_job(
        "auto-move",
        models.BatchJobDisableOptions(disable_tasks=models.DisableBatchJobOption.WAIT),
        polling_interval=0.1,
    ).result()
    with pytest.raises(HttpResponseError) as info:
        sdk.update_job(
            "auto-move", models.BatchJobUpdateOptions(pool_info=models.BatchPoolInfo(pool_id="x"))
        )
    assert info.value.status_code == 400
    assert info.value.error.code == "InvalidPropertyValue"
    assert any(d.message == "poolInfo.poolId" for d in info.value.error.details)
    assert sdk.get_job("auto-move").execution_info.pool_id == pool_id
    sdk.begin_delete_job("auto-move", polling_interval=0.1).result()
    wait_for(lambda: pool_id not in _pool_ids(sdk), timeout=60)


def test_a_plain_job_cannot_ask_for_a_schedule_lifetime(sdk) -> None:
    before = _pool_ids(sdk)
    with pytest.raises(HttpResponseError) as info:
        sdk.create_job(
            models.BatchJobCreateOptions(id="auto-bad", pool_info=_auto("jobschedule", "b"))
        )
    assert info.value.status_code == 400
    assert any(
        d.message == "poolInfo.autoPoolSpecification.poolLifetimeOption"
        for d in info.value.error.details
    )
    assert _pool_ids(sdk) == before
