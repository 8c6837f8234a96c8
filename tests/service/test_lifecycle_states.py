"""States: every change the engine (or a request) writes is an edge of its ``core.states`` table.

:class:`StateLog` is shared by the ``test_lifecycle_*`` modules: it installs SQLite triggers that
log *every* write of a node's ``state`` (and of a pool's ``allocationState``) to the store,
whoever makes it — the engine's ``_set_state``, its bulk idle/running/offline updates, the
service's enable/disable scheduling, engine shutdown — so no change is missed between two polls.
Tasks, jobs and job schedules are logged the same way, and checked against
``TASK_TRANSITIONS``, ``JOB_TRANSITIONS`` and ``JOB_SCHEDULE_TRANSITIONS``. It also collects the
transitions that were refused (``_set_state`` logs and drops an illegal node edge, which would
leave a node's row stale; a guarded task or job write logs the rows it refused, or raises
``IllegalTransitionError`` in strict mode). Each module checks its log when it ends.

The tests here walk one node through the states a user can drive (start task, running, offline,
rebooting, reimaging, leaving) and check the exact sequence recorded; and run tasks and jobs
through success, retries, requeue, termination, reactivation, a job manager and a job schedule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from prefect_batch import BatchClient
from prefect_batch.core.states import (
    JOB_SCHEDULE_TRANSITIONS,
    JOB_TRANSITIONS,
    NODE_TRANSITIONS,
    TASK_TRANSITIONS,
    JobScheduleState,
    JobState,
    NodeState,
    TaskState,
)
from prefect_batch.exceptions import IllegalTransitionError
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

_TRIGGERS = [
    """CREATE TABLE IF NOT EXISTS test_state_log (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, pk INTEGER, name TEXT,
        old TEXT, new TEXT)""",
    """CREATE TRIGGER IF NOT EXISTS test_node_insert AFTER INSERT ON nodes BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('node', NEW.pk, NEW.node_id, NULL, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_node_state AFTER UPDATE OF state ON nodes
        WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('node', NEW.pk, NEW.node_id, OLD.state, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_pool_insert AFTER INSERT ON pools BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('pool', NEW.pk, NEW.id, NULL, NEW.allocation_state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_pool_alloc AFTER UPDATE OF allocation_state ON pools
        WHEN OLD.allocation_state IS NOT NEW.allocation_state BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('pool', NEW.pk, NEW.id, OLD.allocation_state, NEW.allocation_state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_task_insert AFTER INSERT ON tasks BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('task', NEW.pk, (SELECT id FROM jobs WHERE pk = NEW.job_pk) || '/' || NEW.id,
                NULL, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_task_state AFTER UPDATE OF state ON tasks
        WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('task', NEW.pk, (SELECT id FROM jobs WHERE pk = NEW.job_pk) || '/' || NEW.id,
                OLD.state, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_job_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('job', NEW.pk, NEW.id, NULL, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_job_state AFTER UPDATE OF state ON jobs
        WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('job', NEW.pk, NEW.id, OLD.state, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_schedule_insert AFTER INSERT ON job_schedules BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('schedule', NEW.pk, NEW.id, NULL, NEW.state); END""",
    """CREATE TRIGGER IF NOT EXISTS test_schedule_state AFTER UPDATE OF state ON job_schedules
        WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO test_state_log (kind, pk, name, old, new)
        VALUES ('schedule', NEW.pk, NEW.id, OLD.state, NEW.state); END""",
]

# Per kind other than nodes: its table, its state enum, and the states a row may be made in
# (a job whose auto pool could not be created is made ``completed``).
_TABLES: dict[str, tuple[Any, type[Enum], frozenset[str]]] = {
    "task": (TASK_TRANSITIONS, TaskState, frozenset({TaskState.ACTIVE.value})),
    "job": (
        JOB_TRANSITIONS,
        JobState,
        frozenset({JobState.ACTIVE.value, JobState.COMPLETED.value}),
    ),
    "schedule": (
        JOB_SCHEDULE_TRANSITIONS,
        JobScheduleState,
        frozenset({JobScheduleState.ACTIVE.value}),
    ),
}


class _Refused(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.writes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.levelno >= logging.ERROR and "illegal transition" in message:
            self.messages.append(message)
        if record.exc_info and isinstance(record.exc_info[1], IllegalTransitionError):
            self.writes.append(str(record.exc_info[1]))
        elif " rows refused " in message:
            self.writes.append(message)


class StateLog:
    """Every node-state and pool allocation-state change written to one client's store."""

    def __init__(self, client: BatchClient) -> None:
        self.client = client
        with client.store.begin() as conn:
            for statement in _TRIGGERS:
                conn.execute(text(statement))
        self._refused = _Refused()
        logging.getLogger("prefect_batch.engine").addHandler(self._refused)

    def close(self) -> None:
        """Stop collecting refused transitions."""
        logging.getLogger("prefect_batch.engine").removeHandler(self._refused)

    def _rows(self, kind: str) -> list[tuple[int, str, str | None, str]]:
        with self.client.store.read() as conn:
            return [
                (r.pk, r.name, r.old, r.new)
                for r in conn.execute(
                    text(
                        "SELECT pk, name, old, new FROM test_state_log WHERE kind = :k ORDER BY seq"
                    ),
                    {"k": kind},
                ).all()
            ]

    def node_states(self, node_id: str) -> list[str]:
        """The states a node was written in, in order (its first is the one it was made in)."""
        return [new for _, name, _, new in self._rows("node") if name == node_id]

    def allocation_states(self, pool_id: str) -> list[str]:
        """A pool's allocation states, in order (of the last pool of that id)."""
        rows = [(pk, new) for pk, name, _, new in self._rows("pool") if name == pool_id]
        last = rows[-1][0] if rows else None
        return [new for pk, new in rows if pk == last]

    def illegal(self) -> list[str]:
        """Edges written that ``NODE_TRANSITIONS`` does not have, and edges the engine refused."""
        bad = []
        for _, name, old, new in self._rows("node"):
            if old is None:
                if new != NodeState.CREATING.value:
                    bad.append(f"{name}: made in state {new}")
                continue
            if NodeState(new) not in NODE_TRANSITIONS[NodeState(old)]:
                bad.append(f"{name}: {old} -> {new}")
        for kind, (table, enum, made_in) in _TABLES.items():
            for _, name, old, new in self._rows(kind):
                if old is None:
                    if new not in made_in:
                        bad.append(f"{kind} {name}: made in state {new}")
                elif enum(new) not in table[enum(old)]:
                    bad.append(f"{kind} {name}: {old} -> {new}")
        # Engines of other clients in this process log to the same logger: keep our nodes'.
        ours = {name for _, name, _, _ in self._rows("node")}
        refused = [m for m in self._refused.messages if any(f"node {name}:" in m for name in ours)]
        return (
            bad
            + [f"refused by the engine: {m}" for m in refused]
            + [f"refused write: {m}" for m in self._refused.writes]
        )

    def assert_legal(self) -> None:
        """Fail listing every illegal edge seen."""
        bad = self.illegal()
        assert not bad, "illegal state changes:\n  " + "\n  ".join(bad)

    def states(self, kind: str, name: str) -> list[str]:
        """The states a task (``job/task``), job or schedule was written in, in order."""
        return [new for _, n, _, new in self._rows(kind) if n == name]


def state_log_fixture() -> Callable[..., Iterator[StateLog]]:
    """A module-scoped autouse fixture that logs the module client's states and checks them."""

    @pytest.fixture(scope="module", autouse=True)
    def state_log(client: BatchClient) -> Iterator[StateLog]:
        log = StateLog(client)
        try:
            yield log
            log.assert_legal()
        finally:
            log.close()

    return state_log


state_log = state_log_fixture()


# -- tests -------------------------------------------------------------------------------------


def test_the_check_can_fail(client: BatchClient, state_log: StateLog) -> None:
    # An edge the table lacks (and one the engine refused) is reported; then both are undone.
    with client.store.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO test_state_log (kind, pk, name, old, new) VALUES "
                "('node', -1, 'fake', 'idle', 'creating'), "
                "('node', -1, 'fake', NULL, 'idle')"
            )
        )
    logging.getLogger("prefect_batch.engine").error("node fake: illegal transition a -> b")
    logging.getLogger("prefect_batch.engine").error("node other: illegal transition a -> b")
    try:
        assert state_log.illegal() == [
            "fake: idle -> creating",
            "fake: made in state idle",
            "refused by the engine: node fake: illegal transition a -> b",
        ]
    finally:
        with client.store.begin() as conn:
            conn.execute(text("DELETE FROM test_state_log WHERE pk = -1"))
        state_log._refused.messages.clear()
    assert state_log.illegal() == []


def test_one_node_through_its_life(
    client: BatchClient, state_log: StateLog, make_job: Callable[..., str], tmp_path: Path
) -> None:
    gate, start_gate = tmp_path / "gate", tmp_path / "start-gate"
    pool = "life"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": gate_command(start_gate)},
        }
    )
    (node,) = wait_for_nodes(client, pool, 1, states=("waitingforstarttask",), timeout=30)
    start_gate.touch()
    wait_for_nodes(client, pool, 1, timeout=30)
    job = make_job(pool)
    client.create_task(job, {"id": "a", "commandLine": gate_command(gate)})
    wait_for_task(client, job, "a", "running")
    wait_until(
        lambda: client.get_node(pool, node.id).state == "running",
        timeout=20,
        message="node running",
    )
    client.disable_node_scheduling(pool, node.id, "taskcompletion")
    # A witness task on another pool completes: the engine has taken the disable in since, so
    # the task's end takes the node straight to offline (not idle first).
    client.create_pool({"id": "life-witness", "vmSize": "local", "targetDedicatedNodes": 1})
    wait_for_nodes(client, "life-witness", 1, timeout=30)
    witness = make_job("life-witness")
    client.create_task(witness, {"id": "w", "commandLine": "true"})
    wait_for_task(client, witness, "w")
    gate.touch()
    wait_for_task(client, job, "a")
    wait_until(
        lambda: client.get_node(pool, node.id).state == "offline",
        timeout=20,
        message="node offline",
    )
    client.enable_node_scheduling(pool, node.id)
    wait_until(
        lambda: client.get_node(pool, node.id).state == "idle", timeout=20, message="node idle"
    )
    client.reboot_node(pool, node.id)
    wait_until(
        lambda: "rebooting" in state_log.node_states(node.id), timeout=20, message="node rebooted"
    )
    wait_for_nodes(client, pool, 1, timeout=30)
    client.reimage_node(pool, node.id)
    wait_until(
        lambda: "reimaging" in state_log.node_states(node.id), timeout=20, message="node reimaged"
    )
    wait_for_nodes(client, pool, 1, timeout=30)
    client.remove_nodes(pool, {"nodeList": [node.id]})
    wait_for_nodes(client, pool, 0, timeout=30)
    client.delete_pool("life-witness")

    assert state_log.node_states(node.id) == [
        "creating",
        "starting",
        "waitingforstarttask",
        "idle",
        "running",
        "offline",
        "idle",
        "rebooting",
        "starting",
        "waitingforstarttask",
        "idle",
        "reimaging",
        "starting",
        "waitingforstarttask",
        "idle",
        "leavingpool",
    ]
    assert state_log.allocation_states(pool) == ["resizing", "steady", "resizing", "steady"]
    state_log.assert_legal()


def _job_state(client: BatchClient, job: str, state: str) -> None:
    wait_until(lambda: client.get_job(job).state == state, timeout=20, message=f"job {job} {state}")


def test_the_check_can_fail_for_tasks_and_jobs(client: BatchClient, state_log: StateLog) -> None:
    with client.store.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO test_state_log (kind, pk, name, old, new) VALUES "
                "('task', -1, 'j/t', 'active', 'running'), "
                "('task', -1, 'j/u', NULL, 'completed'), "
                "('job', -1, 'j', 'completed', 'active'), "
                "('schedule', -1, 's', 'deleting', 'active')"
            )
        )
    try:
        assert state_log.illegal() == [
            "task j/t: active -> running",
            "task j/u: made in state completed",
            "job j: completed -> active",
            "schedule s: deleting -> active",
        ]
    finally:
        with client.store.begin() as conn:
            conn.execute(text("DELETE FROM test_state_log WHERE pk = -1"))
    assert state_log.illegal() == []


def test_tasks_and_jobs_through_their_lives(
    client: BatchClient, state_log: StateLog, make_job: Callable[..., str], tmp_path: Path
) -> None:
    pool = "runs"
    client.create_pool(
        {"id": pool, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 4}
    )
    wait_for_nodes(client, pool, 1, timeout=30)

    # Success; failure with retries; reactivation of the failed task.
    job = make_job(pool, usesTaskDependencies=True)
    client.create_task(job, {"id": "ok", "commandLine": "true"})
    client.create_task(
        job, {"id": "fails", "commandLine": "false", "constraints": {"maxTaskRetryCount": 2}}
    )
    wait_for_task(client, job, "ok")
    wait_for_task(client, job, "fails")
    assert state_log.states("task", f"{job}/fails").count("active") == 3
    client.reactivate_task(job, "fails")
    wait_until(
        lambda: state_log.states("task", f"{job}/fails").count("active") == 6,
        timeout=20,
        message="reactivated task retried",
    )
    wait_for_task(client, job, "fails")

    # Requeue on disable; enable; a queued task ended by the user; terminate the job.
    gate = tmp_path / "gate"
    client.create_task(job, {"id": "gated", "commandLine": gate_command(gate)})
    client.create_task(
        job, {"id": "child", "commandLine": "true", "dependsOn": {"taskIds": ["gated"]}}
    )
    wait_for_task(client, job, "gated", "running")
    client.disable_job(job, "requeue")
    _job_state(client, job, "disabled")
    assert client.get_task(job, "gated").state == "active"
    client.enable_job(job)
    wait_for_task(client, job, "gated", "running")
    client.terminate_task(job, "child")
    client.terminate_job(job)
    _job_state(client, job, "completed")
    assert state_log.states("task", f"{job}/gated") == [
        "active",
        "preparing",
        "running",
        "active",
        "preparing",
        "running",
        "completed",
    ]
    assert state_log.states("task", f"{job}/child") == ["active", "completed"]
    assert state_log.states("job", job) == [
        "active",
        "disabling",
        "disabled",
        "active",
        "terminating",
        "completed",
    ]

    # Enabled again while still disabling (its running task awaited).
    waiting = make_job(pool)
    wait_gate = tmp_path / "wait-gate"
    client.create_task(waiting, {"id": "w", "commandLine": gate_command(wait_gate)})
    wait_for_task(client, waiting, "w", "running")
    client.disable_job(waiting, "wait")
    assert client.get_job(waiting).state == "disabling"
    client.enable_job(waiting)
    wait_gate.touch()
    wait_for_task(client, waiting, "w")
    assert state_log.states("job", waiting) == ["active", "disabling", "active"]

    # Deleted while a task runs: deleting, then gone.
    doomed = make_job(pool)
    doom_gate = tmp_path / "doom-gate"
    client.create_task(doomed, {"id": "d", "commandLine": gate_command(doom_gate)})
    wait_for_task(client, doomed, "d", "running")
    client.delete_job(doomed)
    wait_until(
        lambda: doomed not in {j.id for j in client.list_jobs()}, timeout=20, message="job deleted"
    )
    assert state_log.states("job", doomed) == ["active", "deleting"]

    # A job manager ends its job; a schedule's one job does the same, and the schedule ends.
    managed = make_job(pool, jobManagerTask={"id": "manager", "commandLine": "true"})
    _job_state(client, managed, "completed")
    assert state_log.states("job", managed) == ["active", "terminating", "completed"]
    client.create_job_schedule(
        {
            "id": "states-once",
            "schedule": {},
            "jobSpecification": {
                "poolInfo": {"poolId": pool},
                "jobManagerTask": {"id": "manager", "commandLine": "true"},
            },
        }
    )
    wait_until(
        lambda: [j.state for j in client.list_jobs_from_schedule("states-once")] == ["completed"],
        timeout=20,
        message="the schedule's job completed",
    )
    if client.get_job_schedule("states-once").state != "completed":
        client.terminate_job_schedule("states-once")
    wait_until(
        lambda: client.get_job_schedule("states-once").state == "completed",
        timeout=20,
        message="schedule completed",
    )
    client.delete_job_schedule("states-once")
    client.delete_pool(pool)
    assert state_log.states("job", "states-once:job-1")[-1] == "completed"
    assert state_log.states("schedule", "states-once")[-1] == "completed"
    state_log.assert_legal()
