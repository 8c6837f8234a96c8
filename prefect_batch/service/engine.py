"""The engine: the loop that runs pools — nodes up and down, tasks onto slots, results back.

One engine thread per process that runs one. It holds *leases* on pools in the database (so two
engines never drive the same pool and no task starts twice), keeps an agent connection per node
of its pools, and repeats one step: take the events the agents sent, record them in one
transaction (task started/ended, node joined/lost), then fill free slots from the head of the
queue and send the run requests — only after the transaction that assigned them committed.

Crash safety: a task is marked ``preparing`` on its node before it is sent; if the process dies
in between, the next engine asks the node's agent about it (``recover``) and requeues it when the
agent never heard of it. Results the agent reports are durable before the agent is told to forget
them. At-least-once: a task whose node was lost while it ran is run again elsewhere
(``requeueCount`` + 1).

What it does not do: validate requests (``service/`` operations do), or decide retries and
exit-code actions (``core.completion`` does).
"""

from __future__ import annotations

import logging
import os
import queue as queue_mod
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select, update

from prefect_batch.core.commandline import split_command_line
from prefect_batch.core.completion import AttemptOutcome
from prefect_batch.core.scheduler import NodeSlots, QueuedTask, assign
from prefect_batch.core.states import AllocationState, NodeFillType, NodeState, PoolState
from prefect_batch.service import lifecycle
from prefect_batch.service.common import Clock, new_node_id
from prefect_batch.service.common import now as wall_now
from prefect_batch.service.pools import node_source_of
from prefect_batch.store import Store
from prefect_batch.store.schema import jobs, node_commands, nodes, pools, queue, tasks

__all__ = ["Engine"]

log = logging.getLogger("prefect_batch.engine")

PREPARING = lifecycle.PREPARING
RUNNING = lifecycle.RUNNING
IN_FLIGHT = lifecycle.IN_FLIGHT
RESTART_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
REQUEUE_AFTER_FAILURES = 3
"""Agent starts that may fail in a row before a node's tasks are requeued elsewhere."""
SPREAD_GRACE_SECONDS = 2.0
"""How long a spread pool waits for nodes that are still starting before it fills the others."""
POLL_OTHERS_SECONDS = 0.1
"""How often the engine looks for kill requests and node commands written by other processes."""

# Hot statements, built once (building SQLAlchemy expressions costs more than running them).
_MARK_STARTED = (
    update(tasks)
    .where(
        tasks.c.pk == bindparam("b_pk"),
        tasks.c.attempt == bindparam("b_attempt"),
        tasks.c.state == PREPARING,
    )
    .values(
        state=RUNNING,
        previous_state=PREPARING,
        previous_state_transition_time=tasks.c.state_transition_time,
        state_transition_time=bindparam("b_start"),
        start_time=bindparam("b_start"),
        version=tasks.c.version + 1,
    )
)
_QUEUE_HEAD = (
    select(queue.c.task_pk, queue.c.job_pk, queue.c.slots)
    .where(queue.c.pool_key == bindparam("b_pool"))
    .order_by(queue.c.neg_priority, queue.c.job_pk, queue.c.task_pk)
    .limit(bindparam("b_limit"))
)
_JOB_LIMITS = select(jobs.c.pk, jobs.c.max_parallel_tasks, jobs.c.n_running).where(
    jobs.c.pk.in_(bindparam("pks", expanding=True)), jobs.c.max_parallel_tasks > 0
)
_DEQUEUE = delete(queue).where(queue.c.task_pk.in_(bindparam("pks", expanding=True)))
_MARK_PREPARING = (
    update(tasks)
    .where(tasks.c.pk == bindparam("b_pk"))
    .values(
        state=PREPARING,
        previous_state=tasks.c.state,
        previous_state_transition_time=tasks.c.state_transition_time,
        state_transition_time=bindparam("b_now"),
        last_modified=bindparam("b_now"),
        version=tasks.c.version + 1,
        node_pk=bindparam("b_node"),
        attempt=tasks.c.attempt + 1,
        node_info=None,
    )
)
_RUN_ROWS = (
    select(
        tasks.c.pk,
        tasks.c.id,
        tasks.c.attempt,
        tasks.c.spec,
        tasks.c.wall_clock_seconds,
        tasks.c.node_pk,
        jobs.c.id.label("job_id"),
        jobs.c.spec.label("job_spec"),
    )
    .join(jobs, jobs.c.pk == tasks.c.job_pk)
    .where(tasks.c.pk.in_(bindparam("pks", expanding=True)))
)
_NODE_RUNNING = (
    update(nodes)
    .where(nodes.c.pk == bindparam("b_pk"))
    .values(
        running_tasks=nodes.c.running_tasks + bindparam("b_tasks"),
        running_slots=nodes.c.running_slots + bindparam("b_slots"),
    )
)


@dataclass
class NodeRuntime:
    """What the engine knows about one node it drives (the database has the rest)."""

    pk: int
    node_id: str
    pool_pk: int
    root: Path
    total_slots: int
    free_slots: int = 0
    connection: Any = None
    ready: bool = False
    schedulable: bool = True
    leaving: bool = False
    busy: bool = False
    failures: int = 0
    restart_at: float | None = None
    connect_time: float = 0.0
    kills_sent: set[str] = field(default_factory=set)


class Engine:
    """Drives every pool it can lease, from one background thread.

    Args:
        store: The database.
        node_sources: Node sources by ``nodeAgentSKUId`` (e.g. ``batch.node.local``).
        node_root: Where local nodes keep their directories.
        account_urls: Base URL per account, for ``AZ_BATCH_ACCOUNT_URL``.
        tick_seconds: How often an idle engine looks for work other processes added.
        lease_seconds: Lease length on pools.
    """

    def __init__(
        self,
        store: Store,
        node_sources: Mapping[str, Any],
        node_root: Path,
        *,
        account_urls: Mapping[str, str] | None = None,
        tick_seconds: float = 0.25,
        lease_seconds: float = 15.0,
        heartbeat_seconds: float = 30.0,
        clock: Clock = wall_now,
    ) -> None:
        self.store = store
        self.node_sources = dict(node_sources)
        self.node_root = Path(node_root)
        self.account_urls = dict(account_urls or {})
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._events: queue_mod.SimpleQueue[tuple[int, dict[str, Any]]] = queue_mod.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nodes: dict[int, NodeRuntime] = {}
        self._pools: dict[int, Any] = {}
        self._next_lease = 0.0
        self._next_slow = 0.0
        self._next_ping = 0.0
        self._next_poll = 0.0
        self._poked = False
        self._reconcile_soon = False
        self.error: BaseException | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Engine:
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="prefect-batch-engine", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, *, kill_tasks: bool = False, timeout: float = 10.0) -> None:
        """Stop: release the leases and let agents finish (or kill) their running tasks."""
        if self._thread is None:
            return
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None
        if kill_tasks and self._nodes:
            # Killed because this process stops, not because anyone asked: the next engine
            # reads the agents' "killed" records and requeues these tasks (requeueCount + 1).
            with self.store.begin() as conn:
                conn.execute(
                    update(tasks)
                    .where(
                        tasks.c.node_pk.in_(list(self._nodes)),
                        tasks.c.state.in_(IN_FLIGHT),
                        tasks.c.kill_reason.is_(None),
                    )
                    .values(kill_reason="requeue")
                )
        for rt in list(self._nodes.values()):
            self._disconnect(rt, kill=kill_tasks)
        try:
            with self.store.begin() as conn:
                if self._nodes:
                    conn.execute(
                        update(nodes)
                        .where(nodes.c.pk.in_(list(self._nodes)))
                        .values(state=NodeState.UNKNOWN.value, state_transition_time=self.clock())
                    )
                conn.execute(
                    update(pools)
                    .where(pools.c.lease_owner == self.owner)
                    .values(lease_owner=None, lease_expires=None)
                )
        except Exception:  # noqa: BLE001 - best effort at shutdown
            log.exception("could not release leases")
        self._nodes.clear()
        self._pools.clear()

    def wake(self) -> None:
        """Look for new work now rather than at the next tick (a request changed something)."""
        self._poked = True
        self._reconcile_soon = True
        self._wake.set()

    @property
    def running(self) -> bool:
        """Whether the engine thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the loop must survive and retry
                self.error = exc
                log.exception("engine step failed; retrying")
                self._stop.wait(0.5)
            if self._events.empty():
                self._wake.wait(self.tick_seconds)
                self._wake.clear()

    # -- one step --------------------------------------------------------------------------

    def step(self) -> None:
        """Do one round of work (public for tests that drive the engine by hand)."""
        now = self.clock()
        if now >= self._next_lease or self._reconcile_soon:
            self._reconcile_soon = False
            self._refresh_leases(now)
            self._next_lease = now + self.lease_seconds / 3
        events = self._drain()
        sends: dict[int, list[dict[str, Any]]] = defaultdict(list)
        with self.store.begin() as conn:
            effects = self._apply_events(conn, events, now, sends)
            if now >= self._next_slow:
                self._check_deadlines(conn, now)
                self._retention(conn, now, sends)
                self._next_slow = now + 1.0
            if self._poked or now >= self._next_poll:
                self._poked = False
                self._next_poll = now + POLL_OTHERS_SECONDS
                self._node_commands(conn, sends)
                self._kills(conn, sends)
            self._dispatch(conn, now, sends)
        for node_pk, keys in effects.forget.items():
            sends[node_pk].append({"op": "forget", "keys": keys})
        if now >= self._next_ping:
            for rt in self._nodes.values():
                if rt.ready:
                    sends[rt.pk].append({"op": "ping"})
            self._next_ping = now + self.heartbeat_seconds
        for node_pk, msgs in sends.items():
            rt = self._nodes.get(node_pk)
            if rt is not None and rt.connection is not None and msgs:
                try:
                    rt.connection.send_many(msgs)
                except Exception:  # noqa: BLE001 - a broken pipe shows up as a "closed" event
                    log.warning("could not send to node %s", rt.node_id)

    def _on_event(self, node_pk: int, msg: dict[str, Any]) -> None:
        # Called from the channel's reader thread.
        self._events.put((node_pk, msg))
        self._wake.set()

    def _drain(self) -> list[tuple[int, dict[str, Any]]]:
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue_mod.Empty:
                return out

    # -- leases and nodes ------------------------------------------------------------------

    def _refresh_leases(self, now: float) -> None:
        with self.store.begin() as conn:
            conn.execute(
                update(pools)
                .where(
                    or_(
                        pools.c.lease_owner.is_(None),
                        pools.c.lease_owner == self.owner,
                        pools.c.lease_expires < now,
                    )
                )
                .values(lease_owner=self.owner, lease_expires=now + self.lease_seconds)
            )
            mine = {
                r.pk: r
                for r in conn.execute(select(pools).where(pools.c.lease_owner == self.owner)).all()
            }
        for pool_pk in list(self._pools):
            if pool_pk not in mine:
                self._detach_pool(pool_pk)
        self._pools = mine
        for pool in mine.values():
            self._reconcile(pool, now)

    def _detach_pool(self, pool_pk: int) -> None:
        for rt in [r for r in self._nodes.values() if r.pool_pk == pool_pk]:
            self._disconnect(rt, kill=False)
            self._nodes.pop(rt.pk, None)

    def _reconcile(self, pool: Any, now: float) -> None:
        """Bring the pool's nodes to its target: attach, create or remove nodes."""
        if pool.state == PoolState.DELETING.value:
            self._detach_pool(pool.pk)
            from prefect_batch.service.pools import PoolOperations

            PoolOperations(self.store, pool.account, clock=self.clock).finish_pool_delete(pool.pk)
            return
        with self.store.begin() as conn:
            rows = conn.execute(select(nodes).where(nodes.c.pool_pk == pool.pk)).all()
            live = [r for r in rows if not r.leaving]
            missing = pool.target_dedicated - len(live)
            for _ in range(max(missing, 0)):
                node_id = new_node_id()
                conn.execute(
                    insert(nodes).values(
                        node_id=node_id,
                        pool_pk=pool.pk,
                        account=pool.account,
                        state=NodeState.CREATING.value,
                        state_transition_time=now,
                        scheduling_state="enabled",
                        allocation_time=now,
                        vm_size=pool.vm_size,
                        root_dir=str(self.node_root / node_id),
                        total_slots=pool.task_slots_per_node,
                        running_tasks=0,
                        running_slots=0,
                        total_tasks_run=0,
                        total_tasks_succeeded=0,
                        leaving=False,
                    )
                )
            if missing < 0:
                self._shrink(conn, pool, live, -missing, now)
            rows = conn.execute(select(nodes).where(nodes.c.pool_pk == pool.pk)).all()
            leaving_left = [r for r in rows if r.leaving]
            for r in leaving_left:
                if r.running_tasks == 0 or pool.deallocation_option in ("requeue", "terminate"):
                    in_flight = lifecycle.running_task_rows(conn, r.pk)
                    if in_flight and pool.deallocation_option != "requeue":
                        continue  # wait for the kills to be reported
                    lifecycle.requeue_tasks(conn, in_flight, now)
                    conn.execute(delete(nodes).where(nodes.c.pk == r.pk))
                    rt = self._nodes.pop(r.pk, None)
                    if rt is not None:
                        self._disconnect(rt, kill=True)
                    import shutil

                    shutil.rmtree(r.root_dir, ignore_errors=True)
            count = conn.execute(
                select(nodes.c.pk).where(nodes.c.pool_pk == pool.pk, nodes.c.leaving.is_(False))
            ).all()
            if (
                pool.allocation_state == AllocationState.RESIZING.value
                and len(count) == pool.target_dedicated
                and not [r for r in rows if r.leaving and r.pk in {c[0] for c in count}]
            ):
                conn.execute(
                    update(pools)
                    .where(pools.c.pk == pool.pk)
                    .values(
                        allocation_state=AllocationState.STEADY.value,
                        allocation_state_transition_time=now,
                    )
                )
            attach = [r for r in rows if not r.leaving and r.pk not in self._nodes]
        for r in attach:
            rt = NodeRuntime(
                pk=r.pk,
                node_id=r.node_id,
                pool_pk=pool.pk,
                root=Path(r.root_dir),
                total_slots=r.total_slots,
                schedulable=r.scheduling_state == "enabled",
            )
            self._nodes[r.pk] = rt
            self._connect(rt, pool, now)
        for rt in list(self._nodes.values()):
            if rt.pool_pk == pool.pk and rt.connection is None and rt.restart_at is not None:
                if now >= rt.restart_at:
                    self._connect(rt, pool, now)

    def _shrink(self, conn: Any, pool: Any, live: list[Any], count: int, now: float) -> None:
        # Remove the least busy nodes first.
        victims = sorted(live, key=lambda r: (r.running_tasks, -r.pk))[:count]
        option = pool.deallocation_option
        for r in victims:
            conn.execute(
                update(nodes)
                .where(nodes.c.pk == r.pk)
                .values(leaving=True, state=NodeState.LEAVING_POOL.value, state_transition_time=now)
            )
            rt = self._nodes.get(r.pk)
            if rt is not None:
                rt.leaving = True
            if option == "terminate":
                conn.execute(
                    update(tasks)
                    .where(tasks.c.node_pk == r.pk, tasks.c.state.in_(IN_FLIGHT))
                    .values(kill_reason="terminate")
                )

    def _connect(self, rt: NodeRuntime, pool: Any, now: float) -> None:
        source = self.node_sources.get(node_source_of(pool.spec))
        with self.store.begin() as conn:
            conn.execute(
                update(nodes)
                .where(nodes.c.pk == rt.pk)
                .values(state=NodeState.STARTING.value, state_transition_time=now)
            )
        if source is None:
            self._node_failed(rt, "NodeSourceNotFound", "no such node source in this engine")
            return
        rt.connect_time = now
        try:
            rt.connection = source.start_agent(
                rt.node_id, rt.root, lambda msg, pk=rt.pk: self._on_event(pk, msg)
            )
            rt.connection.send({"op": "hello", "v": 1, "node_id": rt.node_id, "pool_id": pool.id})
        except Exception as exc:  # noqa: BLE001 - any failure makes the node unusable
            rt.connection = None
            self._node_failed(rt, "NodeAgentStartFailed", str(exc))

    def _node_failed(self, rt: NodeRuntime, code: str, message: str) -> None:
        rt.ready = False
        rt.failures += 1
        delay = RESTART_DELAYS_SECONDS[min(rt.failures - 1, len(RESTART_DELAYS_SECONDS) - 1)]
        rt.restart_at = self.clock() + delay
        now = self.clock()
        with self.store.begin() as conn:
            values: dict[str, Any] = {
                "state": NodeState.UNUSABLE.value,
                "state_transition_time": now,
                "errors": [{"code": code, "message": message}],
            }
            if rt.failures >= REQUEUE_AFTER_FAILURES:
                # The node cannot be reached again: its tasks run elsewhere (at least once).
                lifecycle.requeue_tasks(conn, lifecycle.running_task_rows(conn, rt.pk), now)
                values.update(running_tasks=0, running_slots=0)
            conn.execute(update(nodes).where(nodes.c.pk == rt.pk).values(**values))

    def _disconnect(self, rt: NodeRuntime, *, kill: bool) -> None:
        conn, rt.connection = rt.connection, None
        rt.ready = False
        if conn is None:
            return
        try:
            if kill:
                conn.kill(tasks=True)
            else:
                conn.close()
        except Exception:  # noqa: BLE001
            log.debug("disconnect of %s failed", rt.node_id, exc_info=True)

    # -- events from agents ----------------------------------------------------------------

    def _apply_events(
        self,
        conn: Any,
        events: list[tuple[int, dict[str, Any]]],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> lifecycle.BatchEffects:
        started: list[dict[str, Any]] = []
        attempts: list[lifecycle.Attempt] = []
        for node_pk, msg in events:
            rt = self._nodes.get(node_pk)
            if rt is None:
                continue
            ev = msg.get("ev")
            if ev == "started":
                pk, attempt = _parse_key(msg.get("key", ""))
                if pk is not None:
                    started.append(
                        {"b_pk": pk, "b_attempt": attempt, "b_start": msg.get("time", now)}
                    )
            elif ev == "exited":
                pk, attempt = _parse_key(msg.get("key", ""))
                if pk is None:
                    continue
                attempts.append(
                    lifecycle.Attempt(
                        pk,
                        attempt,
                        _outcome(msg),
                        msg.get("start_time"),
                        msg.get("end_time") or now,
                    )
                )
            elif ev == "lost":
                pk, attempt = _parse_key(msg.get("key", ""))
                if pk is not None:
                    row = conn.execute(
                        select(
                            tasks.c.pk, tasks.c.job_pk, tasks.c.required_slots, tasks.c.attempt
                        ).where(
                            tasks.c.pk == pk,
                            tasks.c.attempt == attempt,
                            tasks.c.node_pk == node_pk,
                            tasks.c.state.in_(IN_FLIGHT),
                        )
                    ).all()
                    if row:
                        lifecycle.requeue_tasks(conn, row, now)
                        self._node_counts(conn, node_pk, -1, -row[0].required_slots)
                        rt.free_slots += row[0].required_slots
            elif ev == "hello":
                self._on_hello(conn, rt, msg, now, sends)
            elif ev == "pong":
                conn.execute(update(nodes).where(nodes.c.pk == node_pk).values(last_heartbeat=now))
            elif ev == "closed":
                if rt.connection is not None:
                    # The agent is gone but its tasks run on in their own sessions: restart the
                    # agent and let it recover them (adopted, finished, or lost -> requeued),
                    # rather than requeueing now and running a task twice at once.
                    rt.connection = None
                    rt.ready = False
                    rt.failures += 1
                    delay = RESTART_DELAYS_SECONDS[
                        min(rt.failures - 1, len(RESTART_DELAYS_SECONDS) - 1)
                    ]
                    rt.restart_at = now + delay
                    conn.execute(
                        update(nodes)
                        .where(nodes.c.pk == rt.pk)
                        .values(
                            state=NodeState.UNUSABLE.value,
                            state_transition_time=now,
                            errors=[
                                {
                                    "code": "NodeAgentLost",
                                    "message": str(msg.get("reason", "agent connection closed")),
                                }
                            ],
                        )
                    )
                    self._next_lease = 0.0  # reconnect soon
            elif ev == "error":
                log.warning("agent on %s: %s", rt.node_id, msg.get("message"))
        if started:
            conn.execute(_MARK_STARTED, started)
        effects = lifecycle.complete_attempts(conn, attempts, now)
        for node_pk, freed in effects.node_slots_freed.items():
            rt = self._nodes.get(node_pk)
            if rt is not None:
                rt.free_slots = min(rt.total_slots, rt.free_slots + freed)
        self._update_busy(conn, now)
        return effects

    def _on_hello(
        self,
        conn: Any,
        rt: NodeRuntime,
        msg: dict[str, Any],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        in_flight = lifecycle.running_task_rows(conn, rt.pk)
        used = sum(r.required_slots for r in in_flight)
        rt.free_slots = max(rt.total_slots - used, 0)
        rt.ready = True
        rt.failures = 0
        rt.restart_at = None
        rt.busy = bool(in_flight)
        info = {
            k: msg.get(k) for k in ("agent_version", "hostname", "cpu_count", "memory_bytes", "pid")
        }
        conn.execute(
            update(nodes)
            .where(nodes.c.pk == rt.pk)
            .values(
                state=(NodeState.RUNNING if in_flight else NodeState.IDLE).value
                if rt.schedulable
                else NodeState.OFFLINE.value,
                state_transition_time=now,
                last_boot_time=now,
                ip_address="127.0.0.1",
                agent_info=info,
                last_heartbeat=now,
                errors=None,
                running_tasks=len(in_flight),
                running_slots=used,
            )
        )
        if in_flight:
            sends[rt.pk].append(
                {"op": "recover", "keys": [f"t{r.pk}-{r.attempt}" for r in in_flight]}
            )

    def _node_counts(self, conn: Any, node_pk: int, d_tasks: int, d_slots: int) -> None:
        conn.execute(
            update(nodes)
            .where(nodes.c.pk == node_pk)
            .values(
                running_tasks=nodes.c.running_tasks + d_tasks,
                running_slots=nodes.c.running_slots + d_slots,
            )
        )

    def _update_busy(self, conn: Any, now: float) -> None:
        changes = []
        for rt in self._nodes.values():
            if not rt.ready or rt.leaving:
                continue
            busy = rt.free_slots < rt.total_slots
            if busy != rt.busy:
                rt.busy = busy
                state = NodeState.RUNNING if busy else NodeState.IDLE
                if not rt.schedulable:
                    state = NodeState.RUNNING if busy else NodeState.OFFLINE
                changes.append({"b_pk": rt.pk, "b_state": state.value})
        if changes:
            conn.execute(
                update(nodes)
                .where(nodes.c.pk == bindparam("b_pk"))
                .values(state=bindparam("b_state"), state_transition_time=now),
                changes,
            )

    # -- periodic work ---------------------------------------------------------------------

    def _check_deadlines(self, conn: Any, now: float) -> None:
        expired = conn.execute(
            select(jobs).where(
                jobs.c.state == "active", jobs.c.deadline.is_not(None), jobs.c.deadline < now
            )
        ).all()
        for job in expired:
            lifecycle.terminate_job(conn, job, "MaxWallClockTimeExpiry", now)

    def _retention(self, conn: Any, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        mine = list(self._nodes)
        if not mine:
            return
        rows = conn.execute(
            select(tasks.c.pk, tasks.c.id, jobs.c.id.label("job_id"), tasks.c.files_node_pk)
            .join(jobs, jobs.c.pk == tasks.c.job_pk)
            .where(tasks.c.retention_deadline < now, tasks.c.files_node_pk.in_(mine))
            .limit(500)
        ).all()
        if not rows:
            return
        for r in rows:
            sends[r.files_node_pk].append({"op": "delete", "dir": f"{r.job_id}/{r.id}"})
        conn.execute(
            update(tasks)
            .where(tasks.c.pk.in_([r.pk for r in rows]))
            .values(retention_deadline=None, files_node_pk=None)
        )

    def _node_commands(self, conn: Any, sends: dict[int, list[dict[str, Any]]]) -> None:
        mine = [pk for pk, rt in self._nodes.items() if rt.ready]
        if not mine:
            return
        rows = conn.execute(
            select(node_commands)
            .where(node_commands.c.node_pk.in_(mine))
            .order_by(node_commands.c.pk)
            .limit(500)
        ).all()
        if not rows:
            return
        for r in rows:
            sends[r.node_pk].append(dict(r.op))
        conn.execute(delete(node_commands).where(node_commands.c.pk.in_([r.pk for r in rows])))

    def _kills(self, conn: Any, sends: dict[int, list[dict[str, Any]]]) -> None:
        mine = [pk for pk, rt in self._nodes.items() if rt.ready]
        if not mine:
            return
        rows = conn.execute(
            select(tasks.c.pk, tasks.c.attempt, tasks.c.node_pk).where(
                tasks.c.kill_reason.is_not(None),
                tasks.c.node_pk.in_(mine),
                tasks.c.state.in_(IN_FLIGHT),
            )
        ).all()
        for r in rows:
            rt = self._nodes[r.node_pk]
            key = f"t{r.pk}-{r.attempt}"
            if key not in rt.kills_sent:
                rt.kills_sent.add(key)
                sends[r.node_pk].append({"op": "kill", "key": key})

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, conn: Any, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        by_pool: dict[int, list[NodeRuntime]] = defaultdict(list)
        starting: set[int] = set()
        for rt in self._nodes.values():
            if rt.ready and rt.schedulable and not rt.leaving and rt.free_slots > 0:
                by_pool[rt.pool_pk].append(rt)
            elif (
                not rt.ready
                and rt.connection is not None
                and now - rt.connect_time < SPREAD_GRACE_SECONDS
            ):
                starting.add(rt.pool_pk)
        for pool_pk, rts in by_pool.items():
            pool = self._pools.get(pool_pk)
            if pool is None or pool.state != PoolState.ACTIVE.value:
                continue
            if pool_pk in starting and pool.fill_type == NodeFillType.SPREAD.value:
                continue  # let the other nodes join first, or "spread" would pack the first one
            self._dispatch_pool(conn, pool, rts, now, sends)

    def _dispatch_pool(
        self,
        conn: Any,
        pool: Any,
        rts: list[NodeRuntime],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        free = sum(rt.free_slots for rt in rts)
        key = lifecycle.pool_key(pool.account, pool.id)
        head = conn.execute(_QUEUE_HEAD, {"b_pool": key, "b_limit": max(free * 2, 8)}).all()
        if not head:
            return
        limits = {
            r.pk: (r.max_parallel_tasks, r.n_running)
            for r in conn.execute(_JOB_LIMITS, {"pks": list({r.job_pk for r in head})}).all()
        }
        by_key = {str(rt.pk): rt for rt in rts}
        placed = assign(
            [QueuedTask(key=r.task_pk, job_key=r.job_pk, required_slots=r.slots) for r in head],
            [
                NodeSlots(node_key=str(rt.pk), free_slots=rt.free_slots, total_slots=rt.total_slots)
                for rt in rts
            ],
            NodeFillType(pool.fill_type),
            job_running={j: v[1] for j, v in limits.items()},
            job_max_parallel={j: v[0] for j, v in limits.items()},
        )
        if not placed:
            return
        slots_of = {r.task_pk: r.slots for r in head}
        job_of = {r.task_pk: r.job_pk for r in head}
        pks = [pk for pk, _ in placed]
        conn.execute(_DEQUEUE, {"pks": pks})
        conn.execute(
            _MARK_PREPARING,
            [{"b_pk": pk, "b_node": int(node), "b_now": now} for pk, node in placed],
        )
        deltas: dict[int, lifecycle.JobDelta] = defaultdict(lifecycle.JobDelta)
        per_node: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for pk, node in placed:
            deltas[job_of[pk]].move("active", "running", slots_of[pk])
            rt = by_key[node]
            rt.free_slots -= slots_of[pk]
            per_node[rt.pk][0] += 1
            per_node[rt.pk][1] += slots_of[pk]
        lifecycle.write_job_deltas(conn, deltas, now)
        conn.execute(
            _NODE_RUNNING,
            [{"b_pk": pk, "b_tasks": n, "b_slots": sl} for pk, (n, sl) in per_node.items()],
        )
        rows = conn.execute(_RUN_ROWS, {"pks": pks}).all()
        base_url = self.account_urls.get(pool.account, "embedded://local")
        for r in rows:
            rt = self._nodes[r.node_pk]
            sends[rt.pk].append(self._run_message(r, pool, rt, base_url))
        self._update_busy(conn, now)

    def _run_message(self, r: Any, pool: Any, rt: NodeRuntime, base_url: str) -> dict[str, Any]:
        env: dict[str, str] = {}
        for e in (r.job_spec or {}).get("commonEnvironmentSettings") or []:
            env[e["name"]] = e.get("value") or ""
        for e in r.spec.get("environmentSettings") or []:
            env[e["name"]] = e.get("value") or ""
        env.update(
            {
                "AZ_BATCH_ACCOUNT_NAME": pool.account,
                "AZ_BATCH_ACCOUNT_URL": base_url,
                "AZ_BATCH_POOL_ID": pool.id,
                "AZ_BATCH_NODE_ID": rt.node_id,
                "AZ_BATCH_NODE_IS_DEDICATED": "true",
                "AZ_BATCH_JOB_ID": r.job_id,
                "AZ_BATCH_TASK_ID": r.id,
            }
        )
        return {
            "op": "run",
            "key": f"t{r.pk}-{r.attempt}",
            "argv": split_command_line(r.spec["commandLine"]),
            "dir": f"{r.job_id}/{r.id}",
            "env": env,
            "wall_clock_seconds": r.wall_clock_seconds,
            "job_prep_dir": None,
        }


def _parse_key(key: str) -> tuple[int | None, int]:
    """``t<task_pk>-<attempt>`` -> (task_pk, attempt)."""
    if not key.startswith("t") or "-" not in key:
        return None, 0
    pk, _, attempt = key[1:].partition("-")
    try:
        return int(pk), int(attempt)
    except ValueError:
        return None, 0


def _outcome(msg: dict[str, Any]) -> AttemptOutcome:
    error = msg.get("error")
    if error:
        return AttemptOutcome(
            kind="start_failed",
            exit_code=msg.get("exit_code"),
            error_code=error.get("code"),
            error_message=error.get("message"),
        )
    if msg.get("timed_out"):
        return AttemptOutcome(kind="timed_out", exit_code=msg.get("exit_code"))
    if msg.get("killed"):
        return AttemptOutcome(kind="terminated", exit_code=msg.get("exit_code"))
    return AttemptOutcome(kind="exited", exit_code=msg.get("exit_code"))

