"""Job schedules: CRUD and validation, and the engine creating ``<schedule>:job-<n>`` jobs.

Most tests drive an engine by hand (``step()``) on a fake clock, so runs fall due exactly when a
test says and no test waits for time to pass; their jobs name a pool that does not exist, so a
job stays active until the test ends it (``terminate_job``: no tasks, so at once). The last
tests use a real engine with a local node, a 1-second interval and job manager tasks, with
bounded waits. Two engines on one database (SQLite, and PostgreSQL when configured) create each
run's job exactly once.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
)
from prefect_batch.models import BatchJobSchedule
from prefect_batch.service import BatchService
from prefect_batch.service.engine import Engine
from prefect_batch.store import Store
from prefect_batch.testing import wait_for_nodes, wait_until
from tests.api.conftest import database

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
POOL_SPEC = {"poolInfo": {"poolId": "nowhere"}}


def iso(offset: float) -> str:
    return datetime.fromtimestamp(T0 + offset, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def at(offset: float) -> datetime:
    return datetime.fromtimestamp(T0 + offset, tz=timezone.utc)


class Harness:
    """A service and an engine on one store, sharing a fake clock the test moves."""

    def __init__(self, store: Store, root: Path) -> None:
        self.now = T0
        self.engine = Engine(store, {}, root, clock=self.clock)
        self.svc = BatchService(store, "acct", clock=self.clock, wake=self.engine.wake)

    def clock(self) -> float:
        return self.now

    def at(self, offset: float) -> None:
        """Move the clock to ``T0 + offset`` and run one engine step."""
        assert T0 + offset >= self.now, "the clock only moves forward"
        self.now = T0 + offset
        self.engine.step()

    def create(self, schedule: dict[str, Any], sid: str = "s", **props: Any) -> None:
        spec = props.pop("jobSpecification", POOL_SPEC)
        self.svc.create_job_schedule(
            {"id": sid, "schedule": schedule, "jobSpecification": spec, **props}
        )

    def jobs(self, sid: str = "s") -> list[str]:
        return [j.id for j in self.svc.list_jobs_from_schedule(sid)]

    def get(self, sid: str = "s") -> BatchJobSchedule:
        return self.svc.get_job_schedule(sid)

    def next_run(self, sid: str = "s") -> datetime | None:
        info = self.get(sid).execution_info
        return info.next_run_time if info else None

    def finish(self, job_id: str) -> None:
        """End a scheduled job (it has no tasks, so it is completed at once)."""
        self.svc.terminate_job(job_id)
        assert self.svc.get_job(job_id).state == "completed"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'batch.db'}")
    yield s
    s.dispose()


@pytest.fixture
def h(store: Store, tmp_path: Path) -> Harness:
    return Harness(store, tmp_path / "nodes")


# --- CRUD and validation ----------------------------------------------------------------------


def test_create_get_list_and_exists(h: Harness) -> None:
    spec = {
        "poolInfo": {"poolId": "nowhere"},
        "priority": 7,
        "displayName": "nightly run",
        "constraints": {"maxTaskRetryCount": 2},
        "metadata": [{"name": "team", "value": "data"}],
        "jobManagerTask": {"id": "manager", "commandLine": "python manage.py"},
    }
    h.create(
        {"doNotRunUntil": iso(3600), "recurrenceInterval": "PT1H", "startWindow": "PT10M"},
        sid="Nightly",
        jobSpecification=spec,
        displayName="Nightly",
        metadata=[{"name": "owner", "value": "me"}],
    )
    got = h.get("nightly")  # ids are case-insensitive, shown as given
    assert got.id == "Nightly"
    assert got.state == "active"
    assert got.display_name == "Nightly"
    assert got.creation_time == at(0) and got.last_modified == at(0)
    assert got.url == "embedded://local/jobschedules/Nightly"
    assert got.etag
    assert got.schedule is not None
    assert got.schedule.do_not_run_until == at(3600)
    assert got.schedule.recurrence_interval == timedelta(hours=1)
    assert got.schedule.start_window == timedelta(minutes=10)
    assert got.job_specification is not None
    assert got.job_specification.to_wire() == spec
    assert got.metadata is not None and got.metadata[0].value == "me"
    assert got.execution_info is not None
    assert got.execution_info.next_run_time == at(3600)
    assert got.execution_info.recent_job is None
    assert got.previous_state is None
    assert [s.id for s in h.svc.list_job_schedules()] == ["Nightly"]
    assert h.svc.job_schedule_exists("NIGHTLY") is True
    assert h.svc.job_schedule_exists("other") is False
    assert h.jobs("Nightly") == []
    with pytest.raises(BatchNotFoundError) as info:
        h.svc.get_job_schedule("other")
    assert info.value.code == "JobScheduleNotFound"
    assert info.value.values == {"JobScheduleId": "other"}
    with pytest.raises(BatchNotFoundError):
        h.svc.list_jobs_from_schedule("other")


PRIORITY_TOO_HIGH = {**POOL_SPEC, "priority": 5000}
RELEASE_WITHOUT_PREP = {**POOL_SPEC, "jobReleaseTask": {"commandLine": "cleanup"}}
RESERVED_ENV = {
    **POOL_SPEC,
    "jobManagerTask": {
        "id": "m",
        "commandLine": "run",
        "environmentSettings": [{"name": "AZ_BATCH_NODE_ID", "value": "x"}],
    },
}
UNBALANCED_QUOTE = {**POOL_SPEC, "jobManagerTask": {"id": "m", "commandLine": "echo 'a"}}


@pytest.mark.parametrize(
    ("body", "code", "prop"),
    [
        ({"id": "bad id"}, "InvalidPropertyValue", "id"),
        ({"id": "x" * 65}, "InvalidPropertyValue", "id"),
        ({"schedule": None}, "MissingRequiredProperty", "schedule"),
        ({"jobSpecification": None}, "MissingRequiredProperty", "jobSpecification"),
        ({"jobSpecification": {}}, "MissingRequiredProperty", "jobSpecification.poolInfo"),
        (
            {"schedule": {"recurrenceInterval": "PT0.5S"}},
            "InvalidPropertyValue",
            "schedule.recurrenceInterval",
        ),
        (
            {"schedule": {"recurrenceInterval": "-PT1M"}},
            "InvalidPropertyValue",
            "schedule.recurrenceInterval",
        ),
        ({"schedule": {"startWindow": "PT0S"}}, "InvalidPropertyValue", "schedule.startWindow"),
        (
            {"schedule": {"doNotRunUntil": "tomorrow"}},
            "InvalidPropertyValue",
            "schedule.doNotRunUntil",
        ),
        (
            {"schedule": {"doNotRunUntil": iso(60), "doNotRunAfter": iso(30)}},
            "InvalidPropertyValue",
            "schedule.doNotRunAfter",
        ),
        (
            {"jobSpecification": PRIORITY_TOO_HIGH},
            "InvalidPropertyValue",
            "jobSpecification.priority",
        ),
        (
            {"jobSpecification": RELEASE_WITHOUT_PREP},
            "InvalidPropertyValue",
            "jobSpecification.jobReleaseTask",
        ),
        (
            {"jobSpecification": RESERVED_ENV},
            "InvalidPropertyValue",
            "jobSpecification.jobManagerTask.environmentSettings",
        ),
        (
            {"jobSpecification": UNBALANCED_QUOTE},
            "InvalidPropertyValue",
            "jobSpecification.jobManagerTask.commandLine",
        ),
        (
            {
                "jobSpecification": {
                    "poolInfo": {"autoPoolSpecification": {"poolLifetimeOption": "job"}}
                }
            },
            "MissingRequiredProperty",
            "jobSpecification.poolInfo.autoPoolSpecification.pool",
        ),
        (
            {
                "jobSpecification": {
                    "poolInfo": {
                        "autoPoolSpecification": {
                            "poolLifetimeOption": "job",
                            "pool": {"vmSize": "local", "id": "named"},
                        }
                    }
                }
            },
            "UnsupportedProperty",
            "jobSpecification.poolInfo.autoPoolSpecification.pool.id",
        ),
        ({"colour": "red"}, "UnsupportedProperty", "colour"),
    ],
)
def test_bad_bodies_are_refused_naming_the_property(
    h: Harness, body: dict[str, Any], code: str, prop: str
) -> None:
    full: dict[str, Any] = {"id": "s", "schedule": {}, "jobSpecification": POOL_SPEC}
    full.update(body)
    full = {k: v for k, v in full.items() if v is not None}
    with pytest.raises(BatchInvalidRequestError) as info:
        h.svc.create_job_schedule(full)
    assert info.value.code == code
    assert info.value.values["PropertyName"] == prop
    # Nothing half-created.
    assert h.svc.list_job_schedules() == []
    assert h.svc.list_jobs() == []


def test_ids_are_shared_with_jobs_and_unique(h: Harness) -> None:
    h.create({})
    with pytest.raises(BatchConflictError) as info:
        h.create({}, sid="S")
    assert info.value.code == "JobScheduleExists"
    h.svc.create_job({"id": "plain", **POOL_SPEC})
    with pytest.raises(BatchConflictError) as info:
        h.create({}, sid="Plain")
    assert info.value.code == "JobWithSameIdExists"
    with pytest.raises(BatchConflictError) as info:
        h.svc.create_job({"id": "s", **POOL_SPEC})
    assert info.value.code == "JobScheduleWithSameIdExists"
    assert [s.id for s in h.svc.list_job_schedules()] == ["s"]


# --- runs -------------------------------------------------------------------------------------


def test_a_recurring_schedule_creates_numbered_jobs_from_its_specification(h: Harness) -> None:
    spec = {
        "poolInfo": {"poolId": "nowhere"},
        "priority": 42,
        "displayName": "scheduled",
        "metadata": [{"name": "k", "value": "v"}],
        "onAllTasksComplete": "terminatejob",
    }
    h.create({"recurrenceInterval": "PT1S"}, jobSpecification=spec)
    etag = h.get().etag
    h.at(0.25)
    assert h.jobs() == ["s:job-1"]
    job = h.svc.get_job("s:job-1")
    assert job.state == "active"
    assert job.priority == 42
    assert job.display_name == "scheduled"
    assert job.pool_info is not None and job.pool_info.pool_id == "nowhere"
    assert job.all_tasks_complete_mode == "terminatejob"
    assert job.metadata is not None and job.metadata[0].name == "k"
    assert job.creation_time == at(0.25)
    for n in (2, 3):
        h.finish(f"s:job-{n - 1}")
        h.at(n - 1)
        assert h.jobs()[-1] == f"s:job-{n}"
    assert h.jobs() == ["s:job-1", "s:job-2", "s:job-3"]
    got = h.get()
    assert got.execution_info is not None and got.execution_info.recent_job is not None
    assert got.execution_info.recent_job.id == "s:job-3"
    assert got.execution_info.recent_job.url == "embedded://local/jobs/s:job-3"
    assert got.execution_info.next_run_time == at(3)
    # Creating jobs is not a change of the schedule's own data.
    assert got.etag == etag and got.last_modified == at(0)


def test_a_run_waits_while_the_previous_job_is_active_and_runs_meanwhile_are_skipped(
    h: Harness,
) -> None:
    h.create({"recurrenceInterval": "PT1S"})
    h.at(0.25)
    for t in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5):
        h.at(t)
        assert h.jobs() == ["s:job-1"]  # at most one active job per schedule
    assert h.next_run() == at(3)  # the latest due run waits for the job
    h.finish("s:job-1")
    h.at(3.75)
    # The runs due at 1 s and 2 s were superseded; the one due at 3 s is created now.
    assert h.jobs() == ["s:job-1", "s:job-2"]
    assert h.svc.get_job("s:job-2").creation_time == at(3.75)
    assert h.next_run() == at(4)


def test_a_run_not_created_within_its_start_window_is_lost(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT10S", "startWindow": "PT1S"})
    h.at(0.25)
    assert h.jobs() == ["s:job-1"]
    h.at(10.5)
    assert h.jobs() == ["s:job-1"]
    assert h.next_run() == at(10)  # still within its window
    h.finish("s:job-1")
    h.at(11.5)  # 1.5 s after the run was due: its window has passed
    assert h.jobs() == ["s:job-1"]
    assert h.next_run() == at(20)
    h.at(20.25)
    assert h.jobs() == ["s:job-1", "s:job-2"]


def test_do_not_run_until_holds_the_first_run_back(h: Harness) -> None:
    h.create({"doNotRunUntil": iso(30)})
    for t in (0.25, 10, 29.75):
        h.at(t)
    assert h.jobs() == []
    assert h.next_run() == at(30)
    h.at(30)
    assert h.jobs() == ["s:job-1"]


def test_without_an_interval_one_job_runs_then_the_schedule_completes(h: Harness) -> None:
    h.create({})
    h.at(0.25)
    h.at(5)
    h.at(10)
    assert h.jobs() == ["s:job-1"]
    got = h.get()
    assert got.state == "active"
    assert got.execution_info is not None and got.execution_info.next_run_time is None
    h.finish("s:job-1")
    h.at(10.25)
    got = h.get()
    assert got.state == "completed" and got.previous_state == "active"
    assert got.state_transition_time == at(10.25)
    assert got.execution_info is not None and got.execution_info.end_time == at(10.25)
    h.at(20)
    assert h.jobs() == ["s:job-1"]


def test_do_not_run_after_ends_the_runs_and_completes_the_schedule(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT1S", "doNotRunAfter": iso(2.5)})
    h.at(0.25)
    h.finish("s:job-1")
    h.at(1)
    h.finish("s:job-2")
    h.at(2)
    assert h.jobs() == ["s:job-1", "s:job-2", "s:job-3"]
    h.at(3)
    got = h.get()
    assert got.state == "active"  # its last job is still active
    assert got.execution_info is not None and got.execution_info.next_run_time is None
    h.finish("s:job-3")
    h.at(3.25)
    got = h.get()
    assert got.state == "completed"
    assert got.execution_info is not None and got.execution_info.end_time == at(3.25)
    h.at(10)
    assert h.jobs() == ["s:job-1", "s:job-2", "s:job-3"]


def test_a_schedule_past_its_do_not_run_after_completes_without_a_job(h: Harness) -> None:
    h.create({"doNotRunUntil": iso(10), "doNotRunAfter": iso(10)})
    h.at(10.5)  # the engine was not there at 10 s
    assert h.jobs() == []
    assert h.get().state == "completed"


def test_disable_stops_new_jobs_and_enable_resumes(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT1S"})
    h.at(0.25)
    h.svc.disable_job_schedule("s")
    got = h.get()
    assert got.state == "disabled" and got.previous_state == "active"
    assert h.svc.get_job("s:job-1").state == "active"  # the running job goes on
    h.finish("s:job-1")
    for t in (1, 2, 3):
        h.at(t)
    assert h.jobs() == ["s:job-1"]
    with pytest.raises(BatchConflictError) as info:
        h.svc.disable_job_schedule("s")
    assert info.value.code == "JobScheduleDisabled"
    h.svc.enable_job_schedule("s")
    assert h.get().state == "active"
    h.at(3.25)
    assert h.jobs() == ["s:job-1", "s:job-2"]  # the run due at 3 s
    with pytest.raises(BatchConflictError) as info:
        h.svc.enable_job_schedule("s")
    assert info.value.code == "OperationInvalidForCurrentState"


def test_terminate_ends_the_active_job_and_completes_the_schedule(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT1S"})
    h.at(0.25)
    h.svc.terminate_job_schedule("s")
    job = h.svc.get_job("s:job-1")
    assert job.state == "completed"
    assert job.execution_info is not None
    assert job.execution_info.termination_reason == "TerminateJobSchedule"
    got = h.get()
    assert got.state == "completed"
    assert got.execution_info is not None
    assert got.execution_info.end_time == at(0.25)
    assert got.execution_info.next_run_time is None
    for t in (1, 2):
        h.at(t)
    assert h.jobs() == ["s:job-1"]
    for op in (
        lambda: h.svc.terminate_job_schedule("s"),
        lambda: h.svc.disable_job_schedule("s"),
        lambda: h.svc.update_job_schedule("s", {"metadata": []}),
    ):
        with pytest.raises(BatchConflictError) as info:
            op()
        assert info.value.code == "JobScheduleCompleted"


def test_delete_removes_the_schedule_and_its_jobs(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT1S"})
    h.at(0.25)
    h.finish("s:job-1")
    h.at(1)
    h.svc.create_job({"id": "unrelated", **POOL_SPEC})
    h.svc.delete_job_schedule("s")
    assert h.svc.job_schedule_exists("s") is False
    assert [j.id for j in h.svc.list_jobs()] == ["unrelated"]
    with pytest.raises(BatchNotFoundError) as info:
        h.svc.get_job("s:job-2")
    assert info.value.code == "JobNotFound"
    with pytest.raises(BatchNotFoundError):
        h.svc.delete_job_schedule("s")
    # The id is free again, and numbering starts over.
    h.create({})
    h.at(1.25)
    assert h.jobs() == ["s:job-1"]


def test_update_applies_to_later_jobs(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT1S"}, metadata=[{"name": "a", "value": "1"}])
    h.at(0.25)
    before = h.get()
    h.now = T0 + 0.5
    h.svc.update_job_schedule("s", {"jobSpecification": {**POOL_SPEC, "priority": 9}})
    after = h.get()
    assert after.etag != before.etag and after.last_modified == at(0.5)
    assert after.metadata is not None  # not given: kept
    assert h.svc.get_job("s:job-1").priority == 0  # jobs already made are unchanged
    h.finish("s:job-1")
    h.at(1)
    assert h.svc.get_job("s:job-2").priority == 9
    # A new interval counts from the latest job's run.
    h.svc.update_job_schedule("s", {"schedule": {"recurrenceInterval": "PT10S"}})
    assert h.next_run() == at(11)
    with pytest.raises(BatchInvalidRequestError) as info:
        h.svc.update_job_schedule("s", {"schedule": {"recurrenceInterval": "PT0.1S"}})
    assert info.value.values["PropertyName"] == "schedule.recurrenceInterval"
    with pytest.raises(BatchNotFoundError):
        h.svc.update_job_schedule("other", {"metadata": []})


def test_replace_resets_what_it_omits(h: Harness) -> None:
    h.create({"recurrenceInterval": "PT1S"}, metadata=[{"name": "a", "value": "1"}])
    with pytest.raises(BatchInvalidRequestError) as info:
        h.svc.replace_job_schedule("s", {"schedule": {}})
    assert info.value.code == "MissingRequiredProperty"
    assert info.value.values["PropertyName"] == "jobSpecification"
    h.at(0.25)
    h.svc.replace_job_schedule("s", {"jobSpecification": POOL_SPEC})
    got = h.get()
    assert got.metadata is None
    assert got.schedule is not None and got.schedule.recurrence_interval is None
    # One run, and it already ran: the schedule completes when its job does.
    h.finish("s:job-1")
    h.at(1)
    assert h.get().state == "completed"
    assert h.jobs() == ["s:job-1"]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_two_engines_on_one_database_never_create_a_run_twice(kind: str, tmp_path: Path) -> None:
    """Both engines step at every due time at once; each run's job is created exactly once."""
    with database(kind, tmp_path) as url:
        store = Store(url)
        try:
            h = Harness(store, tmp_path / "nodes")
            other = Engine(store, {}, tmp_path / "nodes2", clock=h.clock)
            for i in range(5):
                h.create({"recurrenceInterval": "PT1S"}, sid=f"s{i}")
            for n in range(1, 4):
                h.now = T0 + n - 0.75
                threads = [threading.Thread(target=e.step) for e in (h.engine, other)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(30)
                assert sorted(j.id for j in h.svc.list_jobs() if j.state == "active") == sorted(
                    f"s{i}:job-{n}" for i in range(5)
                )
                for i in range(5):
                    h.finish(f"s{i}:job-{n}")
            assert len(h.svc.list_jobs()) == 15
        finally:
            store.dispose()


# --- a real engine ----------------------------------------------------------------------------

REAL_POOL = "schedules"


@pytest.fixture(scope="module")
def real_pool(client: BatchClient) -> str:
    client.create_pool(
        {"id": REAL_POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 1}
    )
    wait_for_nodes(client, REAL_POOL, 1, timeout=30)
    return REAL_POOL


def test_a_real_engine_runs_a_schedule_every_second(client: BatchClient, real_pool: str) -> None:
    client.create_job_schedule(
        {
            "id": "every-second",
            "schedule": {"recurrenceInterval": "PT1S"},
            "jobSpecification": {
                "poolInfo": {"poolId": real_pool},
                # The manager ends its job (killJobOnCompletion, the default) as it completes.
                "jobManagerTask": {"id": "manager", "commandLine": "true"},
            },
        }
    )

    def three_done() -> list[str] | None:
        made = client.list_jobs_from_schedule("every-second")
        assert sum(j.state != "completed" for j in made) <= 1  # one active job at a time
        done = [j.id for j in made if j.state == "completed"]
        return done if len(done) >= 3 else None

    done = wait_until(three_done, timeout=60, message="three scheduled jobs completed")
    assert done[:3] == ["every-second:job-1", "every-second:job-2", "every-second:job-3"]
    task = client.get_task("every-second:job-1", "manager")
    assert task.execution_info is not None and task.execution_info.exit_code == 0
    client.terminate_job_schedule("every-second")
    got = wait_until(
        lambda: (s := client.get_job_schedule("every-second")).state == "completed" and s,
        timeout=30,
        message="schedule completed",
    )
    assert got.execution_info is not None and got.execution_info.end_time is not None
    client.delete_job_schedule("every-second")
    wait_until(
        lambda: not client.job_schedule_exists("every-second"), timeout=30, message="deleted"
    )
    assert not [j for j in client.list_jobs() if j.id.startswith("every-second:")]


def test_terminating_waits_for_the_running_job(
    client: BatchClient, real_pool: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    client.create_job_schedule(
        {
            "id": "long",
            "schedule": {},
            "jobSpecification": {
                "poolInfo": {"poolId": real_pool},
                "jobManagerTask": {
                    "id": "manager",
                    "commandLine": f"/bin/sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done'",
                },
            },
        }
    )
    wait_until(
        lambda: (
            client.job_schedule_exists("long")
            and client.list_jobs_from_schedule("long")
            and client.get_task("long:job-1", "manager").state == "running"
        ),
        timeout=30,
        message="the manager runs",
    )
    client.terminate_job_schedule("long")
    assert client.get_job_schedule("long").state in ("terminating", "completed")
    got = wait_until(
        lambda: (s := client.get_job_schedule("long")).state == "completed" and s,
        timeout=30,
        message="schedule completed",
    )
    assert got.previous_state == "terminating"
    job = client.get_job("long:job-1")
    assert job.state == "completed"
    assert job.execution_info is not None
    assert job.execution_info.termination_reason == "TerminateJobSchedule"
    client.delete_job_schedule("long")


def test_deleting_waits_for_the_running_tasks_of_its_jobs(
    client: BatchClient, real_pool: str, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    client.create_job_schedule(
        {
            "id": "doomed",
            "schedule": {},
            "jobSpecification": {
                "poolInfo": {"poolId": real_pool},
                "jobManagerTask": {
                    "id": "manager",
                    "commandLine": f"/bin/sh -c 'while [ ! -e {gate} ]; do sleep 0.05; done'",
                },
            },
        }
    )
    wait_until(
        lambda: (
            client.list_jobs_from_schedule("doomed")
            and client.get_task("doomed:job-1", "manager").state == "running"
        ),
        timeout=30,
        message="the manager runs",
    )
    client.delete_job_schedule("doomed")
    # Its job's task is being stopped: the schedule stays, "deleting", until it is gone (which
    # may already be the case by the time these calls are made).
    try:
        assert client.get_job_schedule("doomed").state == "deleting"
        client.delete_job_schedule("doomed")
    except BatchConflictError as exc:
        assert exc.code == "JobScheduleBeingDeleted"
    except BatchNotFoundError:
        pass
    else:
        pytest.fail("a second delete of a schedule being deleted was accepted")
    wait_until(lambda: not client.job_schedule_exists("doomed"), timeout=30, message="gone")
    with pytest.raises(BatchNotFoundError):
        client.get_job("doomed:job-1")
