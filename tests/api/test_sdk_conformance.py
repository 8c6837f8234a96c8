"""The official azure-batch SDK (15.x) against a real server, unchanged.

The scenario: a pool of local nodes, a job with priority and constraints, 250 tasks
through ``create_tasks`` (addtaskcollection, 100 per request), a filtered list, waiting,
``get_job_task_counts``, ``download_task_file`` of stdout.txt, terminate and delete — and the
errors the SDK surfaces as ``HttpResponseError`` with Azure's ``error.code``.
"""

from __future__ import annotations

import datetime as dt
import json

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

from prefect_batch import BatchClient
from prefect_batch.testing import check_invariants
from tests.api.conftest import Server, wait_for

POOL = "pool-sdk"


@pytest.fixture(scope="module")
def pool(server: Server, sdk) -> str:
    sdk.create_pool(
        models.BatchPoolCreateOptions(
            id=POOL,
            vm_size="local",
            target_dedicated_nodes=2,
            task_slots_per_node=4,
            metadata=[models.BatchMetadataItem(name="team", value="render")],
        )
    )
    return POOL


def _job(sdk, job_id: str, pool_id: str = POOL, **kwargs) -> None:
    sdk.create_job(
        models.BatchJobCreateOptions(
            id=job_id, pool_info=models.BatchPoolInfo(pool_id=pool_id), **kwargs
        )
    )


def _completed(sdk, job_id: str, n: int):
    def probe():
        counts = sdk.get_job_task_counts(job_id).task_counts
        return counts if counts.completed == n else None

    return wait_for(probe)


def _check(server: Server, job_id: str) -> None:
    with BatchClient(server.account.name, database_url=server.store.url, engine=False) as c:
        check_invariants(c, job_id)


def test_the_issue_scenario(server: Server, sdk, pool: str) -> None:
    _job(
        sdk,
        "render",
        priority=100,
        constraints=models.BatchJobConstraints(
            max_wall_clock_time=dt.timedelta(hours=1), max_task_retry_count=2
        ),
    )
    job = sdk.get_job("render")
    assert job.priority == 100
    assert job.constraints.max_task_retry_count == 2
    assert job.constraints.max_wall_clock_time == dt.timedelta(hours=1)
    assert job.pool_info.pool_id == POOL

    tasks = [
        models.BatchTaskCreateOptions(
            id=f"frame-{i:03d}",
            command_line=f"/bin/sh -c 'echo frame {i}; echo warn {i} >&2'",
        )
        for i in range(250)
    ]
    added = sdk.create_tasks("render", tasks)
    assert len(added.result_values) == 250
    assert {r.status for r in added.result_values} == {models.BatchTaskAddStatus.SUCCESS}

    counts = _completed(sdk, "render", 250)
    assert counts.succeeded == 250 and counts.failed == 0 and counts.active == 0
    slots = sdk.get_job_task_counts("render").task_slot_counts
    assert slots.succeeded == 250

    done = list(sdk.list_tasks("render", filter="state eq 'completed'", max_results=40))
    assert len(done) == 250  # seven pages, followed through odata.nextLink
    assert len({t.id for t in done}) == 250
    assert all(t.execution_info.exit_code == 0 for t in done)
    assert not list(sdk.list_tasks("render", filter="state eq 'active'"))
    some = list(
        sdk.list_tasks(
            "render", filter="startswith(id,'frame-00') and state eq 'completed'", select=["id"]
        )
    )
    assert sorted(t.id for t in some) == [f"frame-{i:03d}" for i in range(10)]
    assert some[0].state is None  # $select kept only the id

    out = b"".join(sdk.download_task_file("render", "frame-007", "stdout.txt"))
    assert out == b"frame 7\n"
    err = b"".join(sdk.download_task_file("render", "frame-007", "stderr.txt"))
    assert err == b"warn 7\n"
    part = b"".join(
        sdk.download_task_file("render", "frame-007", "stdout.txt", ocp_range="bytes=6-6")
    )
    assert part == b"7"
    props = sdk.get_task_file_properties("render", "frame-007", "stdout.txt")
    assert props.content_length == len(b"frame 7\n")
    assert props.is_directory is False
    assert props.url.endswith("/jobs/render/tasks/frame-007/files/stdout.txt")
    names = {f.name for f in sdk.list_task_files("render", "frame-007")}
    assert {"stdout.txt", "stderr.txt", "wd"} <= names

    # The SDK needs an options body here (without one it fails before sending), and does not
    # export its class.
    sdk.begin_terminate_job(
        "render",
        options=sdk_models.BatchJobTerminateOptions(termination_reason="Done"),
        polling_interval=0.1,
    ).result()
    ended = sdk.get_job("render")
    assert ended.state == models.BatchJobState.COMPLETED
    assert ended.execution_info.termination_reason == "Done"
    _check(server, "render")
    sdk.begin_delete_job("render", polling_interval=0.1).result()
    with pytest.raises(ResourceNotFoundError) as info:
        sdk.get_job("render")
    assert info.value.error.code == "JobNotFound"


def test_task_collection_answers_per_task(sdk, pool: str) -> None:
    _job(sdk, "mixed")
    sdk.create_task("mixed", models.BatchTaskCreateOptions(id="a", command_line="/bin/true"))
    group = models.BatchTaskGroup(
        task_values=[
            models.BatchTaskCreateOptions(id="a", command_line="/bin/true"),  # exists
            models.BatchTaskCreateOptions(id="b", command_line="/bin/true"),
            models.BatchTaskCreateOptions(id="bad id!", command_line="/bin/true"),
            models.BatchTaskCreateOptions(
                id="c",
                command_line="/bin/true",
                environment_settings=[
                    models.EnvironmentSetting(name="AZ_BATCH_NODE_ID", value="x")
                ],
            ),
        ]
    )
    result = sdk.create_task_collection("mixed", group)
    by_id = {r.task_id: r for r in result.result_values}
    assert by_id["b"].status == models.BatchTaskAddStatus.SUCCESS
    assert by_id["a"].status == models.BatchTaskAddStatus.CLIENT_ERROR
    assert by_id["a"].error.code == "TaskExists"
    assert by_id["bad id!"].error.code == "InvalidPropertyValue"
    assert by_id["c"].error.code == "InvalidPropertyValue"

    too_many = models.BatchTaskGroup(
        task_values=[
            models.BatchTaskCreateOptions(id=f"x{i}", command_line="/bin/true") for i in range(101)
        ]
    )
    with pytest.raises(HttpResponseError) as info:
        sdk.create_task_collection("mixed", too_many)
    assert info.value.status_code == 413
    assert info.value.error.code == "RequestBodyTooLarge"
    _completed(sdk, "mixed", 2)


def test_errors_carry_azure_codes(sdk, pool: str) -> None:
    with pytest.raises(ResourceNotFoundError) as info:
        sdk.get_pool("no-such-pool")
    assert info.value.error.code == "PoolNotFound"
    assert info.value.status_code == 404

    _job(sdk, "twice")
    with pytest.raises(ResourceExistsError) as info:
        _job(sdk, "twice")
    assert info.value.error.code == "JobExists"
    assert info.value.status_code == 409

    with pytest.raises(HttpResponseError) as info:
        sdk.create_pool(
            models.BatchPoolCreateOptions(id="p2", vm_size="local", task_slots_per_node=1000)
        )
    assert info.value.status_code == 400
    assert info.value.error.code == "InvalidPropertyValue"
    assert any(
        d.code == "PropertyName" and d.message == "taskSlotsPerNode"
        for d in info.value.error.details
    )

    with pytest.raises(HttpResponseError) as info:
        sdk.create_task("twice", models.BatchTaskCreateOptions(id="no-command"))
    assert info.value.error.code == "MissingRequiredProperty"
    assert ("PropertyName", "commandLine") in {
        (d.code, d.message) for d in info.value.error.details
    }

    with pytest.raises(ResourceNotFoundError) as info:
        sdk.get_task("twice", "nope")
    assert info.value.error.code == "TaskNotFound"

    sdk.create_task("twice", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    with pytest.raises(ResourceExistsError) as info:
        sdk.create_task("twice", models.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    assert info.value.error.code == "TaskExists"
    _completed(sdk, "twice", 1)
    with pytest.raises(ResourceNotFoundError) as info:
        b"".join(sdk.download_task_file("twice", "t", "nope.txt"))
    # A streamed download's error body is not read by the SDK (error is None): read it here.
    assert info.value.status_code == 404
    assert json.loads(info.value.response.read())["code"] == "FileNotFound"


def test_pools_nodes_and_counts(sdk, pool: str) -> None:
    got = sdk.get_pool(POOL)
    assert got.vm_size == "local" and got.task_slots_per_node == 4
    assert [(m.name, m.value) for m in got.metadata] == [("team", "render")]
    assert sdk.pool_exists(POOL)
    # The server answers a missing pool's HEAD with 404, as Azure does; SDK 15.1's exception
    # policy raises on it before pool_exists can return False.
    with pytest.raises(ResourceNotFoundError):
        sdk.pool_exists("missing")
    assert POOL in {p.id for p in sdk.list_pools(filter=f"id eq '{POOL}'")}

    def two_idle():
        nodes = list(sdk.list_nodes(POOL))
        return nodes if len(nodes) == 2 and all(n.state == "idle" for n in nodes) else None

    nodes = wait_for(two_idle)
    node = sdk.get_node(POOL, nodes[0].id)
    assert node.vm_size == "local"
    sdk.disable_node_scheduling(
        POOL,
        node.id,
        models.BatchNodeDisableSchedulingOptions(node_disable_scheduling_option="taskcompletion"),
    )
    assert sdk.get_node(POOL, node.id).scheduling_state == models.SchedulingState.DISABLED
    sdk.enable_node_scheduling(POOL, node.id)
    assert sdk.get_node(POOL, node.id).scheduling_state == models.SchedulingState.ENABLED
    files = {f.name for f in sdk.list_node_files(POOL, node.id)}
    assert {"shared", "startup"} <= files

    counts = {c.pool_id: c for c in sdk.list_pool_node_counts()}
    assert counts[POOL].dedicated.total == 2
    images = list(sdk.list_supported_images())
    assert "batch.node.local" in {i.node_agent_sku_id for i in images}

    sdk.update_pool(
        POOL,
        models.BatchPoolUpdateOptions(
            metadata=[models.BatchMetadataItem(name="team", value="vfx")]
        ),
    )
    assert sdk.get_pool(POOL).metadata[0].value == "vfx"


def test_etags_guard_writes_and_reads(sdk, pool: str) -> None:
    _job(sdk, "etags", priority=1)
    job = sdk.get_job("etags")
    stale = job.etag
    sdk.update_job(
        "etags",
        models.BatchJobUpdateOptions(priority=5),
        etag=stale,
        match_condition=MatchConditions.IfNotModified,
    )
    fresh = sdk.get_job("etags")
    assert fresh.priority == 5 and fresh.etag != stale
    with pytest.raises(ResourceModifiedError) as info:
        sdk.update_job(
            "etags",
            models.BatchJobUpdateOptions(priority=9),
            etag=stale,
            match_condition=MatchConditions.IfNotModified,
        )
    assert info.value.status_code == 412
    assert info.value.error.code == "ConditionNotMet"
    assert sdk.get_job("etags").priority == 5  # the refused change did nothing
    with pytest.raises(ResourceModifiedError) as info:
        sdk.get_job("etags", etag=fresh.etag, match_condition=MatchConditions.IfModified)
    assert info.value.status_code == 304


def test_replace_pool_properties_replaces_or_removes_each_one(sdk) -> None:
    sdk.create_pool(
        models.BatchPoolCreateOptions(
            id="pool-replace",
            vm_size="local",
            start_task=models.BatchStartTask(command_line="true"),
            metadata=[models.BatchMetadataItem(name="old", value="1")],
        )
    )
    sdk.replace_pool_properties(
        "pool-replace",
        models.BatchPoolReplaceOptions(
            start_task=models.BatchStartTask(command_line="echo new"),
            application_package_references=[],
            metadata=[models.BatchMetadataItem(name="new", value="2")],
        ),
    )
    got = sdk.get_pool("pool-replace")
    assert got.start_task.command_line == "echo new"
    assert [(m.name, m.value) for m in got.metadata] == [("new", "2")]
    sdk.replace_pool_properties(
        "pool-replace",
        models.BatchPoolReplaceOptions(application_package_references=[], metadata=[]),
    )
    got = sdk.get_pool("pool-replace")
    assert got.start_task is None and not got.metadata
    with pytest.raises(HttpResponseError) as info:
        sdk.replace_pool_properties(
            "pool-replace",
            models.BatchPoolReplaceOptions(
                start_task=models.BatchStartTask(command_line="echo 'unterminated"),
                application_package_references=[],
                metadata=[],
            ),
        )
    assert info.value.error.code == "InvalidPropertyValue"
    assert sdk.get_pool("pool-replace").start_task is None  # nothing changed
    sdk.begin_delete_pool("pool-replace", polling_interval=0.2).result()


def test_large_files_stream_and_ranges_cross_chunks(server: Server, sdk, pool: str) -> None:
    from tests.api.test_auth import send

    content = bytes(range(256)) * 12_000  # 3,072,000 bytes: three 1 MiB reads and a bit
    _job(sdk, "bigfile")
    sdk.create_task(
        "bigfile",
        models.BatchTaskCreateOptions(
            id="write",
            command_line="python3 -c \"open('big.bin','wb').write(bytes(range(256))*12000)\"",
        ),
    )
    _completed(sdk, "bigfile", 1)
    assert b"".join(sdk.download_task_file("bigfile", "write", "wd/big.bin")) == content
    window = "bytes=1048000-1049999"  # across the first chunk's end
    part = b"".join(sdk.download_task_file("bigfile", "write", "wd/big.bin", ocp_range=window))
    assert part == content[1048000:1050000]
    response = send(
        server, "GET", "/jobs/bigfile/tasks/write/files/wd/big.bin", headers={"Range": "bytes=-5"}
    )
    assert response.status_code == 206
    assert response.content == content[-5:]
    assert (
        response.headers["content-range"]
        == f"bytes {len(content) - 5}-{len(content) - 1}/{len(content)}"
    )
    response = send(
        server,
        "GET",
        "/jobs/bigfile/tasks/write/files/wd/big.bin",
        headers={"ocp-range": f"bytes={len(content)}-"},
    )
    assert response.status_code == 416
    response = send(server, "HEAD", "/jobs/bigfile/tasks/write/files/wd/big.bin")
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["ocp-batch-file-isdirectory"] == "false"
    response = send(server, "GET", "/jobs/bigfile/tasks/write/files/wd")
    assert response.status_code == 400  # a directory has no content
