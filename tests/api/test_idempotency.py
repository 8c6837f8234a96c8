"""Writes retried with the same ``client-request-id`` are answered, not done again.

Through the official SDK (which keeps one id across its own retries of a call, and takes one
per call as ``request_id=``) and raw signed requests, on SQLite and PostgreSQL:

* the same create task twice with one id: 201 both times, one task; other ids: 409 TaskExists;
  the same id with another body: 400 ``InvalidHeaderValue`` naming ``client-request-id``;
* ``create_task_collection`` replayed: the same per-task results, the tasks added once;
* a refused request (400) leaves no record: the corrected request with the same id runs;
* concurrent duplicates: every one answers 201, one task exists;
* the client timed out while the server committed, then retried: one task, the original answer;
* the first attempt's answer failed after its write (503): the SDK's own retry succeeds;
* a conditional write (If-Match) replayed: its original 200, not 412;
* an implausible id takes no part;
* prefect-batch's own HTTP client sends an id per write and retries a lost answer with it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from azure.batch import models
from azure.core import MatchConditions
from azure.core.exceptions import HttpResponseError, ResourceExistsError
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from prefect_batch.remote import RemoteBatchService
from prefect_batch.service import BatchService
from prefect_batch.store.schema import client_requests
from tests.api.conftest import Server
from tests.api.test_auth import error, send

HEADER = "client-request-id"
REPLAYED = "x-prefect-batch-replayed"


def _task(task_id: str, command: str = "/bin/true") -> models.BatchTaskCreateOptions:
    return models.BatchTaskCreateOptions(id=task_id, command_line=command)


@pytest.fixture
def job(server: Server, sdk: Any) -> Iterator[str]:
    """A job of its own per test, on a pool that does not exist (its tasks never run)."""
    job_id = f"idem-{uuid.uuid4().hex[:8]}"
    sdk.create_job(
        models.BatchJobCreateOptions(id=job_id, pool_info=models.BatchPoolInfo(pool_id="nowhere"))
    )
    yield job_id


def _task_ids(sdk: Any, job_id: str) -> list[str]:
    return sorted(t.id for t in sdk.list_tasks(job_id))


def _records(server: Server, request_id: str) -> int:
    """Rows that count for ``request_id``: writes that landed (a refused one's does not)."""
    with server.store.read() as conn:
        return conn.execute(
            select(func.count())
            .select_from(client_requests)
            .where(
                client_requests.c.request_id == request_id,
                ~func.coalesce(client_requests.c.status, 0).between(400, 499),
            )
        ).scalar_one()


def test_create_task_twice_with_one_id_adds_one_task(server: Server, sdk: Any, job: str) -> None:
    rid = str(uuid.uuid4())
    sdk.create_task(job, _task("t1"), request_id=rid)
    sdk.create_task(job, _task("t1"), request_id=rid)  # no ResourceExistsError: replayed
    assert _task_ids(sdk, job) == ["t1"]
    # The raw answer of the replay is the original's: 201 with the task's Location.
    body = {"id": "t1", "commandLine": "/bin/true"}
    answer = send(
        server, "POST", f"/jobs/{job}/tasks", body=body, headers={"client-request-id": rid}
    )
    assert answer.status_code == 201, answer.text
    assert answer.headers[REPLAYED] == "true"
    assert answer.headers["Location"].endswith(f"/jobs/{job}/tasks/t1")
    assert answer.headers["DataServiceId"] == answer.headers["Location"]
    # Another id is another request: the task exists.
    with pytest.raises(ResourceExistsError) as info:
        sdk.create_task(job, _task("t1"), request_id=str(uuid.uuid4()))
    assert info.value.error.code == "TaskExists"


def test_the_same_id_with_another_body_is_refused(server: Server, sdk: Any, job: str) -> None:
    rid = str(uuid.uuid4())
    sdk.create_task(job, _task("t1"), request_id=rid)
    with pytest.raises(HttpResponseError) as info:
        sdk.create_task(job, _task("t2"), request_id=rid)
    assert info.value.status_code == 400
    assert info.value.error.code == "InvalidHeaderValue"
    answer = send(
        server,
        "POST",
        f"/jobs/{job}/tasks",
        body={"id": "t2", "commandLine": "/bin/true"},
        headers={"client-request-id": rid},
    )
    code, values = error(answer)
    assert (answer.status_code, code, values["HeaderName"]) == (400, "InvalidHeaderValue", HEADER)
    assert values["HeaderValue"] == rid
    # Another path with the same id is another request too.
    with pytest.raises(HttpResponseError) as info:
        sdk.update_job(job, models.BatchJobUpdateOptions(priority=3), request_id=rid)
    assert info.value.error.code == "InvalidHeaderValue"
    assert _task_ids(sdk, job) == ["t1"]
    assert sdk.get_job(job).priority == 0


def test_task_collection_replayed_is_added_once(server: Server, sdk: Any, job: str) -> None:
    rid = str(uuid.uuid4())
    group = models.BatchTaskGroup(task_values=[_task(f"c{i}") for i in range(5)])
    first = sdk.create_task_collection(job, group, request_id=rid)
    again = sdk.create_task_collection(job, group, request_id=rid)
    assert [r.status for r in first.result_values] == [models.BatchTaskAddStatus.SUCCESS] * 5
    # The same per-task answers (not five TaskExists), and five tasks.
    assert [(r.task_id, r.status) for r in again.result_values] == [
        (r.task_id, r.status) for r in first.result_values
    ]
    assert _task_ids(sdk, job) == [f"c{i}" for i in range(5)]
    # Without the id the same collection is five TaskExists.
    fresh = sdk.create_task_collection(job, group)
    assert {r.error.code for r in fresh.result_values} == {"TaskExists"}


def test_a_refused_request_leaves_no_record(server: Server, sdk: Any, job: str) -> None:
    """A 400 wrote nothing: the corrected request with the same id runs (and is the one kept)."""
    rid = str(uuid.uuid4())
    with pytest.raises(HttpResponseError) as info:
        sdk.create_task(job, models.BatchTaskCreateOptions(id="fixed"), request_id=rid)
    assert info.value.status_code == 400
    assert _records(server, rid) == 0
    sdk.create_task(job, _task("fixed"), request_id=rid)
    assert _task_ids(sdk, job) == ["fixed"]
    assert _records(server, rid) == 1
    # The refused body again under that id: it names another request now.
    with pytest.raises(HttpResponseError) as info:
        sdk.create_task(job, models.BatchTaskCreateOptions(id="fixed"), request_id=rid)
    assert info.value.error.code == "InvalidHeaderValue"


def test_concurrent_duplicates_add_one_task(server: Server, sdk: Any, job: str) -> None:
    rid = str(uuid.uuid4())
    body = {"id": "racer", "commandLine": "/bin/true"}
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(6)

    def one() -> None:
        barrier.wait()
        answers.append(send(server, "POST", f"/jobs/{job}/tasks", body=body, headers={HEADER: rid}))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a.status_code for a in answers] == [201] * 6, [a.text for a in answers]
    assert sum(a.headers.get(REPLAYED) == "true" for a in answers) == 5
    assert _task_ids(sdk, job) == ["racer"]


@pytest.fixture
def slow_create_task(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """``create_task`` commits, then waits until the returned event is set (at most 30 s)."""
    release = threading.Event()
    original = BatchService.create_task

    def slow(self: BatchService, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        release.wait(30)

    monkeypatch.setattr(BatchService, "create_task", slow)
    return release


def test_a_client_timeout_then_retry_writes_once(
    server: Server, sdk: Any, job: str, slow_create_task: threading.Event
) -> None:
    rid = str(uuid.uuid4())
    body = {"id": "late", "commandLine": "/bin/true"}
    with pytest.raises(httpx.ReadTimeout):
        send(
            server,
            "POST",
            f"/jobs/{job}/tasks",
            body=body,
            headers={HEADER: rid},
            timeout=httpx.Timeout(10, read=0.5),
        )
    # The first is still answering (committed, not answered) when the retry comes.
    assert _records(server, rid) == 1
    threading.Timer(1.0, slow_create_task.set).start()
    retry = send(server, "POST", f"/jobs/{job}/tasks", body=body, headers={HEADER: rid})
    assert retry.status_code == 201, retry.text
    assert retry.headers[REPLAYED] == "true"
    assert retry.headers["Location"].endswith(f"/jobs/{job}/tasks/late")
    assert _task_ids(sdk, job) == ["late"]


def test_the_sdk_retry_of_a_5xx_after_the_write_succeeds(
    server: Server, sdk: Any, job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write lands, its answer fails (503); azure-core retries with the same id."""
    original = BatchService.create_task
    attempts: list[str] = []

    def lands_then_fails(self: BatchService, *args: Any, **kwargs: Any) -> None:
        attempts.append("call")
        original(self, *args, **kwargs)
        if len(attempts) == 1:
            raise OperationalError("COMMIT", {}, sqlite3.OperationalError("database is locked"))

    monkeypatch.setattr(BatchService, "create_task", lands_then_fails)
    started = time.monotonic()
    sdk.create_task(job, _task("once"))  # the SDK's own id, kept across its retry
    assert time.monotonic() - started < 30
    assert _task_ids(sdk, job) == ["once"]
    # The SDK did retry (with its id), and the retry was answered from the record.
    assert len(attempts) == 2


def test_a_conditional_write_replayed_is_not_412(server: Server, sdk: Any, job: str) -> None:
    rid = str(uuid.uuid4())
    tag = sdk.get_job(job).etag
    for _ in range(2):
        sdk.update_job(
            job,
            models.BatchJobUpdateOptions(priority=7),
            etag=tag,
            match_condition=MatchConditions.IfNotModified,
            request_id=rid,
        )
    job_now = sdk.get_job(job)
    assert job_now.priority == 7 and job_now.etag != tag


@pytest.mark.parametrize("rid", ["x" * 129, "with space", ""])
def test_an_implausible_id_takes_no_part(server: Server, job: str, rid: str) -> None:
    body = {"id": f"t{len(rid)}", "commandLine": "/bin/true"}
    first = send(server, "POST", f"/jobs/{job}/tasks", body=body, headers={HEADER: rid})
    again = send(server, "POST", f"/jobs/{job}/tasks", body=body, headers={HEADER: rid})
    assert (first.status_code, again.status_code) == (201, 409)
    assert error(again)[0] == "TaskExists"


class _AnswerLost(httpx.HTTPTransport):
    """Sends every request; the answer to the first write is lost (the connection drops)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST":
            self.writes.append(request.headers.get(HEADER, ""))
            if len(self.writes) == 1:
                response.read()  # the server answered, after its commit
                raise httpx.ReadError("connection reset by peer", request=request)
        return response


def test_the_python_client_retries_a_lost_answer_once(server: Server, sdk: Any, job: str) -> None:
    """``BatchClient(url=...)`` retries a write whose answer was lost, with the same id."""
    transport = _AnswerLost()
    remote = RemoteBatchService(
        server.url, server.account.name, server.account.primary, transport=transport
    )
    try:
        remote.create_task(job, {"id": "lost-answer", "commandLine": "/bin/true"})
    finally:
        remote.close()
    assert len(transport.writes) == 2 and transport.writes[0] == transport.writes[1] != ""
    assert _task_ids(sdk, job) == ["lost-answer"]
