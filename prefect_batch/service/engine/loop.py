"""The engine: the loop that runs pools — nodes up and down, tasks onto slots, results back.

One engine thread per process that runs one. It holds *leases* on pools in the database (so two
engines never drive the same pool and no task starts twice), keeps an agent connection per node
of its pools, and repeats one step: take the events the agents sent, record them in one
transaction (task started/ended, node joined/lost, start/preparation/release task ended), then
fill free slots from the head of the queue and send the run requests — only after the
transaction that assigned them committed.

Crash safety: a task is marked ``preparing`` on its node before it is sent; if the process dies
in between, the next engine asks the node's agent about it (``recover``) and requeues it when the
agent never heard of it. Results the agent reports are durable before the agent is told to forget
them. At-least-once: a task whose node was lost while it ran is run again elsewhere
(``requeueCount`` + 1).

The engine's parts, one concern each, are objects told what they use: the dispatcher (queue
head to slots, :class:`~prefect_batch.service.engine.dispatcher.Dispatcher`), job preparation
and release (:class:`~prefect_batch.service.engine.jobtasks.JobTasks`), multi-instance tasks
on their nodes (:class:`~prefect_batch.service.engine.gangs.Gangs`), metric samples and
autoscale formulas (:class:`~prefect_batch.service.engine.autoscale.AutoScaler`), the jobs of
job schedules (:class:`~prefect_batch.service.engine.schedules.JobScheduler`) and agent starts
(:class:`~prefect_batch.service.engine.starts.AgentStarts`). The node runtime (``nodes``:
agents, start tasks, node operations, pool size, provider events) is still a mixin of
:class:`Engine`: it owns the node runtimes and the step's event handling that the others are
handed. It does not validate requests (``service/ops/`` does), nor decide retries and
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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, or_, select, update

from prefect_batch.core.completion import AttemptOutcome
from prefect_batch.core.states import NODE_TRANSITIONS, NodeState, TaskState
from prefect_batch.providers.contract import ProviderEvent
from prefect_batch.service.engine.autoscale import AutoScaler
from prefect_batch.service.engine.dispatcher import Dispatcher
from prefect_batch.service.engine.gangs import Gangs
from prefect_batch.service.engine.gangs import parse_key as gang_key
from prefect_batch.service.engine.jobtasks import JobTasks
from prefect_batch.service.engine.nodes import NodeMixin, NodeRuntime
from prefect_batch.service.engine.schedules import JobScheduler
from prefect_batch.service.engine.starts import AgentStarts
from prefect_batch.service.ops.quotas import AgentStartLimiter, default_local_node_limit
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.common import Clock
from prefect_batch.service.rows.common import now as wall_now
from prefect_batch.service.rows.providers import ProviderDirectory
from prefect_batch.service.rows.sealing import terminate_grace_seconds
from prefect_batch.service.rows.statewrites import task_edge
from prefect_batch.store import Store, store_unreachable
from prefect_batch.store.schema import jobs, node_commands, nodes, pools, tasks

__all__ = ["Engine", "NodeRuntime"]

log = logging.getLogger("prefect_batch.engine")

PREPARING = lifecycle.PREPARING
RUNNING = lifecycle.RUNNING
IN_FLIGHT = lifecycle.IN_FLIGHT
POLL_OTHERS_SECONDS = 0.1
"""How often the engine looks for requests written by other processes (kills, node operations,
node commands, release tasks)."""

# Hot statements, built once (building SQLAlchemy expressions costs more than running them).
_MARK_STARTED = task_edge((TaskState.PREPARING,), TaskState.RUNNING).statement(
    tasks.c.pk == bindparam("b_pk"),
    tasks.c.attempt == bindparam("b_attempt"),
    only_from=True,
    previous_state=PREPARING,
    previous_state_transition_time=tasks.c.state_transition_time,
    state_transition_time=bindparam("b_start"),
    start_time=bindparam("b_start"),
    version=tasks.c.version + 1,
)


class Engine(NodeMixin):
    """Drives every pool it can lease, from one background thread.

    Args:
        store: The database.
        node_sources: The engine's own providers by ``nodeAgentSKUId`` (``batch.node.local``);
            registered node sources are built from the store.
        node_root: Where local nodes keep their directories.
        account_urls: Base URL per account, for ``AZ_BATCH_ACCOUNT_URL``.
        tick_seconds: How often an idle engine looks for work other processes added.
        lease_seconds: Lease length on pools.
        node_unreachable_grace_seconds: How long an SSH node may stay unreachable before its
            running tasks are requeued on other nodes.
        autoscale_sample_seconds: How often pools' metrics are sampled for autoscale formulas
            (at least 1 s; Azure: 30 s).
        local_node_limit: Most local nodes over every account (default 8 per CPU).
        agent_starts_per_second: How many new nodes (agents) are started per second.
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
        autoscale_sample_seconds: float = 30.0,
        job_manager_env: Mapping[str, str] | None = None,
        scoped_job_credentials: bool = False,
        node_unreachable_grace_seconds: float = 120.0,
        storage: Any = None,
        storage_bucket_access: Mapping[str, list[str]] | None = None,
        transfer_timeout_seconds: float = 60.0,
        local_node_limit: int | None = None,
        agent_starts_per_second: float = 10.0,
        clock: Clock = wall_now,
    ) -> None:
        self.store = store
        self.providers = ProviderDirectory(store, node_sources, report=self._on_provider_event)
        self.node_root = Path(node_root)
        self.account_urls = dict(account_urls or {})
        self.tick_seconds = tick_seconds
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        # Agents start on worker threads; a node of a kind with unreachable_grace keeps its
        # running tasks this long once unreachable (its agent keeps running them meanwhile).
        self.starts = AgentStarts(store)
        self.node_unreachable_grace_seconds = node_unreachable_grace_seconds
        # Quotas: local nodes this machine holds over all accounts, and new agents per second.
        self.local_node_limit = (
            default_local_node_limit() if local_node_limit is None else local_node_limit
        )
        self.agent_starts = AgentStartLimiter(agent_starts_per_second)
        self.clock = clock
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._events: queue_mod.SimpleQueue[tuple[int, int, dict[str, Any]]] = (
            queue_mod.SimpleQueue()
        )
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
        self.autoscaler = AutoScaler(
            store, self.owner, self._nodes, self._pools_changed, autoscale_sample_seconds
        )
        self.job_schedules = JobScheduler(store, clock, self._pools_changed)
        self.job_tasks = JobTasks(
            self._nodes, self._leased_pool, self.account_urls, self._node_counts
        )
        # Multi-instance tasks: coordination on every node, then the primary's command.
        self.gangs = Gangs(self._nodes)
        self.dispatcher = Dispatcher(
            self._nodes,
            self._leased_pool,
            self.job_tasks,
            self._update_busy,
            self.gangs,
            account_urls=self.account_urls,
            # What a job manager task needs to reach this service with the Python client.
            job_manager_env=dict(job_manager_env or {}),
            # Behind a server, a job manager gets a key for its job only, not the store.
            scoped_job_credentials=scoped_job_credentials,
            # The object storage that resource and output file URLs are signed for.
            storage=storage,
            # Which buckets each account's tasks may use (fnmatch patterns); None: every bucket.
            storage_bucket_access=(
                None if storage_bucket_access is None else dict(storage_bucket_access)
            ),
            transfer_timeout_seconds=transfer_timeout_seconds,
        )
        self._short: dict[int, float] = {}
        # Agent events taken in a step whose transaction could not reach the store: recorded by
        # the next step, before newer ones (an agent reports each result once per connection).
        self._held: list[tuple[int, int, dict[str, Any]]] = []
        self.pool_passes = 0
        """Passes over the pools held (leases renewed, sizes reconciled) since the start."""
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
                # Only nodes that may go to "unknown" (never one that is leaving the pool).
                to_unknown = [
                    pk
                    for pk, rt in self._nodes.items()
                    if NodeState.UNKNOWN in NODE_TRANSITIONS[NodeState(rt.state)]
                ]
                if to_unknown:
                    conn.execute(
                        update(nodes)
                        .where(nodes.c.pk.in_(to_unknown))
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
        self.starts.close()
        self.providers.close()
        self.dispatcher.close()
        self.gangs.forget()

    def wake(self, *, pools: bool = False) -> None:
        """Look for new work now rather than at the next tick (a request changed something).

        With ``pools`` (a pool or node changed) the engine also re-reads pools and reconciles
        their nodes, which it otherwise does every ``lease_seconds / 3``.
        """
        self._poked = True
        if pools:
            self._reconcile_soon = True
        self._wake.set()

    def _leased_pool(self, pool_pk: int) -> Any:
        """The pool of ``pool_pk`` if this engine holds its lease, else None."""
        return self._pools.get(pool_pk)

    def _pools_changed(self) -> None:
        """Reconcile pools at the next step (a part of the engine changed one)."""
        self._reconcile_soon = True

    @property
    def autoscale_sample_seconds(self) -> float:
        """How often pools are sampled for autoscale formulas."""
        return self.autoscaler.sample_seconds

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
                reason = store_unreachable(exc)
                if reason:  # no traceback every half second while the database is away
                    log.warning("engine step: store %s (%s); retrying", reason, type(exc).__name__)
                else:
                    log.exception("engine step failed; retrying")
                self._stop.wait(0.5)
            if self._events.empty():
                self._wake.wait(self.job_schedules.wait(self.tick_seconds))
                self._wake.clear()

    # -- one step --------------------------------------------------------------------------

    def step(self) -> None:
        """Do one round of work (public for tests that drive the engine by hand)."""
        now = self.clock()
        if now >= self._next_lease or self._reconcile_soon:
            self._reconcile_soon = False
            self._refresh_leases(now)
            self._next_lease = now + self.lease_seconds / 3
        self.job_schedules.run(now, poked=self._poked)
        events, self._held = self._held + self._drain(), []
        sends: dict[int, list[dict[str, Any]]] = defaultdict(list)
        with self._held_back(events), self.store.begin() as conn:
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
                self._node_ops(conn, now, sends)
                self.job_tasks.release_poll(conn, now, sends)
            self.dispatcher.dispatch(conn, now, sends)
        self.dispatcher.stage_sends(sends)
        for node_pk, keys in effects.forget.items():
            sends[node_pk].append({"op": "forget", "keys": keys})
        if now >= self._next_ping:
            for rt in self._nodes.values():
                if rt.ready:
                    sends[rt.pk].append({"op": "ping"})
            self._next_ping = now + self.heartbeat_seconds
        self.autoscaler.step(now, sends)
        for node_pk, msgs in sends.items():
            target = self._nodes.get(node_pk)
            if target is not None and target.connection is not None and msgs:
                try:
                    target.connection.send_many(msgs)
                except Exception:  # noqa: BLE001 - a broken pipe shows up as a "closed" event
                    log.warning("could not send to node %s", target.node_id)

    @contextmanager
    def _held_back(self, events: list[tuple[int, int, dict[str, Any]]]) -> Iterator[None]:
        """Keep ``events`` for the next step when the store could not be reached."""
        try:
            yield
        except Exception as exc:
            if store_unreachable(exc):
                self._held = events
            raise

    def _on_event(self, node_pk: int, msg: dict[str, Any], generation: int = 0) -> None:
        # Called from the channel's reader thread.
        self._events.put((node_pk, generation, msg))
        self._wake.set()

    def _on_provider_event(self, event: ProviderEvent) -> None:
        # Called from any provider thread: handled on the engine thread like agent events.
        self._on_event(0, {"ev": "_provider", "event": event})

    def _drain(self) -> list[tuple[int, int, dict[str, Any]]]:
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
        self.pool_passes += 1

    def _detach_pool(self, pool_pk: int) -> None:
        for rt in [r for r in self._nodes.values() if r.pool_pk == pool_pk]:
            self._disconnect(rt, kill=False)
            self._nodes.pop(rt.pk, None)

    def _apply_events(
        self,
        conn: Any,
        events: list[tuple[int, int, dict[str, Any]]],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> lifecycle.BatchEffects:
        started: list[dict[str, Any]] = []
        attempts: list[lifecycle.Attempt] = []
        for node_pk, generation, msg in events:
            if node_pk == 0 and msg.get("ev") == "_provider":
                self._on_provider_report(conn, msg["event"], now)
                continue
            rt = self._nodes.get(node_pk)
            if rt is None or generation != rt.generation:
                self._stale_event(msg)
                continue  # a node gone, or an agent connection that was replaced
            ev = msg.get("ev")
            key = str(msg.get("key", ""))
            kind = key[:1]
            if ev == "started" and kind == "t":
                pk, attempt = _parse_key(key)
                if pk is not None:
                    started.append(
                        {"b_pk": pk, "b_attempt": attempt, "b_start": msg.get("time", now)}
                    )
            elif ev == "exited" and kind == "t":
                pk, attempt = _parse_key(key)
                rt.kills_sent.discard(key)
                if pk is not None:
                    attempts.append(
                        lifecycle.Attempt(
                            pk,
                            attempt,
                            _outcome(msg),
                            msg.get("start_time"),
                            msg.get("end_time") or now,
                        )
                    )
            elif ev == "started" and kind == "c":
                primary_start = self.gangs.on_started(conn, key, msg, now)
                if primary_start is not None:
                    started.append(primary_start)
            elif ev == "exited" and kind == "c":
                rt.kills_sent.discard(key)
                ended = self.gangs.on_exited(conn, key, msg, _outcome(msg), now, sends)
                if ended is not None:
                    attempts.append(ended)
            elif ev == "lost" and kind == "c":
                self._on_lost_instance(conn, key, now)
            elif ev == "exited" and kind == "s":
                self._on_start_task_exit(conn, rt, key, _outcome(msg), msg, now, sends)
            elif ev == "exited" and kind == "p":
                self.job_tasks.on_prep_exit(conn, rt, key, _outcome(msg), msg, now, sends)
            elif ev == "exited" and kind == "r":
                self.job_tasks.on_release_exit(conn, rt, key, _outcome(msg), msg, now)
            elif ev == "lost" and kind == "t":
                self._on_lost(conn, rt, key, now)
            elif ev == "hello":
                self._on_hello(conn, rt, msg, now, sends)
            elif ev == "metrics":
                self.autoscaler.on_metrics(rt, msg)
            elif ev == "pong":
                conn.execute(update(nodes).where(nodes.c.pk == node_pk).values(last_heartbeat=now))
            elif ev == "closed":
                self._on_closed(conn, rt, msg, now)
            elif ev == "_agent_started":
                self._on_agent_started(conn, rt, msg, now)
            elif ev == "_agent_failed":
                self._record_node_failure(conn, rt, msg["code"], msg["message"], now)
            elif ev == "error":
                log.warning("agent on %s: %s", rt.node_id, msg.get("message"))
            elif ev == "user_expired":
                log.info("node user %s of %s expired and was removed", msg.get("name"), rt.node_id)
        if started and attempts:
            # An attempt that started and ended within one batch (a short task) is written
            # once, by its completion, rather than moved to running first.
            began = {(s["b_pk"], s["b_attempt"]): s["b_start"] for s in started}
            attempts = [
                a
                if (a.task_pk, a.attempt) not in began
                else replace(
                    a,
                    started_with_end=True,
                    start_time=began[(a.task_pk, a.attempt)]
                    if a.start_time is None
                    else a.start_time,
                )
                for a in attempts
            ]
            ended = {(a.task_pk, a.attempt) for a in attempts}
            started = [s for s in started if (s["b_pk"], s["b_attempt"]) not in ended]
        if started:
            _MARK_STARTED.execute(conn, started)
        effects = lifecycle.complete_attempts(conn, attempts, now)
        for node_pk, freed in effects.node_slots_freed.items():
            rt = self._nodes.get(node_pk)
            if rt is not None:
                rt.free_slots = min(rt.total_slots, rt.free_slots + freed)
        self.gangs.check(conn, now, sends)
        self._update_busy(conn, now)
        return effects

    def _on_lost(self, conn: Any, rt: NodeRuntime, key: str, now: float) -> None:
        """The agent knows nothing of an attempt we sent it: queue the task again."""
        pk, attempt = _parse_key(key)
        if pk is None:
            return
        row = conn.execute(
            select(tasks.c.pk, tasks.c.job_pk, tasks.c.required_slots, tasks.c.attempt).where(
                tasks.c.pk == pk,
                tasks.c.attempt == attempt,
                tasks.c.node_pk == rt.pk,
                tasks.c.state.in_(IN_FLIGHT),
            )
        ).all()
        if row:
            lifecycle.requeue_tasks(conn, row, now)
            self._node_counts(conn, rt.pk, -1, -row[0].required_slots)
            rt.free_slots = min(rt.total_slots, rt.free_slots + row[0].required_slots)

    def _on_lost_instance(self, conn: Any, key: str, now: float) -> None:
        """An agent knows nothing of a coordination command we sent it: requeue the task.

        The node restarted or was replaced; the other nodes' part of the attempt is ended by
        :meth:`Gangs.check`, which also frees the primary's slot.
        """
        parsed = gang_key(key)
        if parsed is None:
            return
        pk, attempt, _ = parsed
        rows = conn.execute(
            select(tasks.c.pk, tasks.c.job_pk, tasks.c.required_slots, tasks.c.attempt).where(
                tasks.c.pk == pk, tasks.c.attempt == attempt, tasks.c.state.in_(IN_FLIGHT)
            )
        ).all()
        lifecycle.requeue_tasks(conn, rows, now)

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
            select(tasks.c.pk, tasks.c.attempt, tasks.c.node_pk, tasks.c.spec).where(
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
                grace = terminate_grace_seconds(r.spec)
                sends[r.node_pk].append({"op": "kill", "key": key, "grace_seconds": grace})

    # -- dispatch --------------------------------------------------------------------------


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
        # A resource file that could not be fetched is a pre-processing error; anything else
        # the agent reports without a process is a start failure.
        download = error.get("phase") == "download"
        return _error_outcome(
            "preprocessing_error" if download else "start_failed", msg.get("exit_code"), error
        )
    if msg.get("timed_out"):
        return AttemptOutcome(kind="timed_out", exit_code=msg.get("exit_code"))
    if msg.get("killed"):
        return AttemptOutcome(kind="terminated", exit_code=msg.get("exit_code"))
    if msg.get("upload_error"):
        return _error_outcome("file_upload_error", msg.get("exit_code"), msg["upload_error"])
    return AttemptOutcome(kind="exited", exit_code=msg.get("exit_code"))


def _error_outcome(kind: str, exit_code: Any, error: dict[str, Any]) -> AttemptOutcome:
    values = error.get("values")
    category = error.get("category")
    details = {str(k): str(v) for k, v in values.items()} if isinstance(values, dict) else {}
    return AttemptOutcome(
        kind=kind,
        exit_code=exit_code,
        error_code=error.get("code"),
        error_message=error.get("message"),
        error_values=details,
        error_category=category if category in ("usererror", "servererror") else "usererror",
    )
