"""Node states: every change the engine (or a request) writes is an edge of ``NODE_TRANSITIONS``.

:class:`StateLog` is shared by the ``test_lifecycle_*`` modules: it installs SQLite triggers that
log *every* write of a node's ``state`` (and of a pool's ``allocationState``) to the store,
whoever makes it — the engine's ``_set_state``, its bulk idle/running/offline updates, the
service's enable/disable scheduling, engine shutdown — so no change is missed between two polls.
It also collects the transitions the engine refused (``_set_state`` logs and drops an illegal
edge, which would leave a node's row stale). Each module checks its log when it ends.

The tests here walk one node through the states a user can drive (start task, running, offline,
rebooting, reimaging, leaving) and check the exact sequence recorded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from prefect_batch import BatchClient
from prefect_batch.core.states import NODE_TRANSITIONS, NodeState
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
]


class _Refused(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "illegal transition" in message:
            self.messages.append(message)


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
        # Engines of other clients in this process log to the same logger: keep our nodes'.
        ours = {name for _, name, _, _ in self._rows("node")}
        refused = [m for m in self._refused.messages if any(f"node {name}:" in m for name in ours)]
        return bad + [f"refused by the engine: {m}" for m in refused]

    def assert_legal(self) -> None:
        """Fail listing every illegal edge seen."""
        bad = self.illegal()
        assert not bad, "illegal node state changes:\n  " + "\n  ".join(bad)


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
