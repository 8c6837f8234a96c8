"""Bad requests are refused with Azure's error codes and change nothing; bulk adds answer per task.

The pool has no nodes, so added tasks stay queued and every count below is exact.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
)

POOL = "validation"


@pytest.fixture(scope="module", autouse=True)
def empty_pool(client: BatchClient) -> None:
    client.create_pool({"id": POOL, "vmSize": "local", "targetDedicatedNodes": 0})


def snapshot(client: BatchClient, job_id: str) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    job = client.get_job(job_id)
    return (
        [(j.id, j.state, j.priority, j.constraints) for j in client.list_jobs()],
        (job.state, job.priority, job.constraints, job.etag),
        [(t.id, t.state, t.command_line, t.etag) for t in client.list_tasks(job_id)],
        client.get_job_task_counts(job_id),
    )


@pytest.fixture
def job(client: BatchClient, make_job: Callable[..., str]) -> str:
    job_id = make_job(POOL)
    client.create_task(job_id, {"id": "existing", "commandLine": "true"})
    return job_id


def _expect(
    client: BatchClient, job_id: str, exc: type[Exception], code: str, call: Callable[[], Any]
) -> Any:
    before = snapshot(client, job_id)
    with pytest.raises(exc) as err:
        call()
    assert err.value.code == code, err.value
    assert snapshot(client, job_id) == before
    return err.value


def test_priority_out_of_range(client: BatchClient, job: str) -> None:
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.create_job({"id": "prio", "poolInfo": {"poolId": POOL}, "priority": 1001}),
    )
    assert err.values["PropertyName"] == "priority"
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.update_job(job, {"priority": -1001}),
    )
    assert err.values["PropertyName"] == "priority"


def test_negative_max_wall_clock_time(client: BatchClient, job: str) -> None:
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.create_job(
            {
                "id": "negwall",
                "poolInfo": {"poolId": POOL},
                "constraints": {"maxWallClockTime": "-PT5S"},
            }
        ),
    )
    assert err.values["PropertyName"] == "constraints.maxWallClockTime"
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.create_task(
            job,
            {"id": "negwall", "commandLine": "true", "constraints": {"maxWallClockTime": "-PT1S"}},
        ),
    )
    assert "maxWallClockTime" in err.values["PropertyName"]


def test_unknown_pool_and_job(client: BatchClient, job: str) -> None:
    err = _expect(
        client, job, BatchNotFoundError, "PoolNotFound", lambda: client.get_pool("no-such-pool")
    )
    assert err.status_code == 404
    assert not client.pool_exists("no-such-pool")
    _expect(
        client,
        job,
        BatchNotFoundError,
        "PoolNotFound",
        lambda: client.resize_pool("no-such-pool", {"targetDedicatedNodes": 1}),
    )
    _expect(client, job, BatchNotFoundError, "JobNotFound", lambda: client.get_job("no-such-job"))
    _expect(
        client,
        job,
        BatchNotFoundError,
        "JobNotFound",
        lambda: client.create_task("no-such-job", {"id": "t", "commandLine": "true"}),
    )
    _expect(
        client,
        job,
        BatchNotFoundError,
        "TaskNotFound",
        lambda: client.get_task(job, "no-such-task"),
    )


def test_task_on_a_completed_job(client: BatchClient, make_job: Callable[..., str]) -> None:
    done = make_job(POOL)
    client.terminate_job(done)
    assert client.get_job(done).state == "completed"
    err = _expect(
        client,
        done,
        BatchConflictError,
        "JobCompleted",
        lambda: client.create_task(done, {"id": "late", "commandLine": "true"}),
    )
    assert err.status_code == 409
    _expect(
        client,
        done,
        BatchConflictError,
        "JobCompleted",
        lambda: client.create_tasks(done, [{"id": "late", "commandLine": "true"}]),
    )
    assert client.list_tasks(done) == []


@pytest.mark.parametrize("line", ['echo "unbalanced', "echo 'x", "echo x\\", "   "])
def test_malformed_command_line(client: BatchClient, job: str, line: str) -> None:
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.create_task(job, {"id": "bad", "commandLine": line}),
    )
    assert err.values["PropertyName"] == "commandLine"


@pytest.mark.parametrize("name", ["AZ_BATCH_TASK_DIR", "AZ_BATCH_NODE_SHARED_DIR", "A=B", ""])
def test_reserved_or_malformed_environment_variable(
    client: BatchClient, job: str, name: str
) -> None:
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.create_task(
            job,
            {
                "id": "env",
                "commandLine": "true",
                "environmentSettings": [{"name": name, "value": "x"}],
            },
        ),
    )
    assert err.values["PropertyName"].startswith("environmentSettings")


def test_lower_case_az_batch_name_is_an_ordinary_variable(client: BatchClient, job: str) -> None:
    client.create_task(
        job,
        {
            "id": "lower",
            "commandLine": "true",
            "environmentSettings": [{"name": "az_batch_task_dir", "value": "x"}],
        },
    )
    assert client.get_task(job, "lower").environment_settings[0].name == "az_batch_task_dir"


def test_depends_on_without_uses_task_dependencies(client: BatchClient, job: str) -> None:
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "TaskDependenciesNotSpecifiedOnJob",
        lambda: client.create_task(
            job, {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["existing"]}}
        ),
    )
    assert err.status_code == 400


def test_dependency_on_a_missing_task(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    client.create_task(job, {"id": "1", "commandLine": "true"})
    for depends_on in (
        {"taskIds": ["nope"]},
        {"taskIdRanges": [{"start": 5, "end": 9}]},
        {"taskIds": ["1", "nope"]},
    ):
        err = _expect(
            client,
            job,
            BatchInvalidRequestError,
            "InvalidPropertyValue",
            lambda d=depends_on: client.create_task(
                job, {"id": "child", "commandLine": "true", "dependsOn": d}
            ),
        )
        assert err.values["PropertyName"] == "dependsOn"
    # Depending on itself is refused too.
    _expect(
        client,
        job,
        BatchInvalidRequestError,
        "InvalidPropertyValue",
        lambda: client.create_task(
            job,
            {
                "id": "2",
                "commandLine": "true",
                "dependsOn": {"taskIdRanges": [{"start": 1, "end": 3}]},
            },
        ),
    )


def test_unknown_property_and_missing_command_line(client: BatchClient, job: str) -> None:
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "UnsupportedProperty",
        lambda: client.create_task(job, {"id": "x", "commandLine": "true", "bogus": 1}),
    )
    assert err.values["PropertyName"] == "bogus"
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "MissingRequiredProperty",
        lambda: client.create_task(job, {"id": "x"}),
    )
    assert err.values["PropertyName"] == "commandLine"


# -- bulk add ---------------------------------------------------------------------------------


def _statuses(result: Any) -> list[tuple[str, str, str | None]]:
    return [
        (r.task_id, getattr(r.status, "value", r.status), r.error.code if r.error else None)
        for r in result.result_values
    ]


def test_collection_with_duplicates_adds_the_rest(client: BatchClient, job: str) -> None:
    result = client.create_task_collection(
        job,
        [
            {"id": "a", "commandLine": "true"},
            {"id": "b", "commandLine": "true"},
            {"id": "A", "commandLine": "false"},  # same id as "a", other case
            {"id": "existing", "commandLine": "true"},  # already in the job
            {"id": "c", "commandLine": 'echo "oops'},  # invalid on its own
            {"id": "d", "commandLine": "true"},
        ],
    )
    assert _statuses(result) == [
        ("a", "success", None),
        ("b", "success", None),
        ("A", "clienterror", "TaskExists"),
        ("existing", "clienterror", "TaskExists"),
        ("c", "clienterror", "InvalidPropertyValue"),
        ("d", "success", None),
    ]
    assert [t.id for t in client.list_tasks(job)] == ["existing", "a", "b", "d"]
    assert client.get_task(job, "A").command_line == "true"  # the first "a" won
    counts = client.get_job_task_counts(job).task_counts
    assert (counts.active, counts.running, counts.completed) == (4, 0, 0)


def test_collection_over_100_is_too_large_and_adds_nothing(client: BatchClient, job: str) -> None:
    many = [{"id": f"t{i}", "commandLine": "true"} for i in range(101)]
    err = _expect(
        client,
        job,
        BatchInvalidRequestError,
        "RequestBodyTooLarge",
        lambda: client.create_task_collection(job, many),
    )
    assert err.status_code == 413
    result = client.create_task_collection(job, many[:100])
    assert [r.task_id for r in result.result_values] == [f"t{i}" for i in range(100)]
    assert {getattr(r.status, "value", r.status) for r in result.result_values} == {"success"}


def test_create_tasks_takes_any_number_in_input_order(client: BatchClient, job: str) -> None:
    items = [{"id": f"n{i:03d}", "commandLine": f"echo {i}"} for i in range(250)]
    items.insert(120, {"id": "n005", "commandLine": "true"})  # duplicate of an earlier one
    result = client.create_tasks(job, items)
    statuses = _statuses(result)
    assert [s[0] for s in statuses] == [i["id"] for i in items]
    assert statuses[120] == ("n005", "clienterror", "TaskExists")
    assert sum(1 for s in statuses if s[1] == "success") == 250
    assert client.get_job_task_counts(job).task_counts.active == 251
    assert len(client.list_tasks(job)) == 251


def test_collection_child_of_a_refused_parent_is_refused_too(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL, usesTaskDependencies=True)
    result = client.create_task_collection(
        job,
        [
            {"id": "5", "commandLine": "true", "dependsOn": {"taskIds": ["missing"]}},
            {"id": "by-id", "commandLine": "true", "dependsOn": {"taskIds": ["5"]}},
            {
                "id": "by-range",
                "commandLine": "true",
                "dependsOn": {"taskIdRanges": [{"start": 1, "end": 9}]},
            },
            {"id": "grandchild", "commandLine": "true", "dependsOn": {"taskIds": ["by-id"]}},
            {"id": "fine", "commandLine": "true"},
            {"id": "fine-child", "commandLine": "true", "dependsOn": {"taskIds": ["fine"]}},
        ],
    )
    assert _statuses(result) == [
        ("5", "clienterror", "InvalidPropertyValue"),
        ("by-id", "clienterror", "InvalidPropertyValue"),
        ("by-range", "clienterror", "InvalidPropertyValue"),
        ("grandchild", "clienterror", "InvalidPropertyValue"),
        ("fine", "success", None),
        ("fine-child", "success", None),
    ]
    assert [t.id for t in client.list_tasks(job)] == ["fine", "fine-child"]
