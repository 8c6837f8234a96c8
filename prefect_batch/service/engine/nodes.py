"""Nodes as the engine runs them: agents, start tasks, node operations, pool size (a mixin).

A node's life: ``creating`` (row made) -> ``starting`` (agent starting) -> with a start task and
``waitForSuccess`` ``waitingforstarttask`` -> ``idle``/``running``/``offline``; a start task that
fails after its retries leaves it ``starttaskfailed`` (it takes no task). Every change goes
through ``NODE_TRANSITIONS``. Requested operations (reboot, reimage, remove; also pool shrink) wait
for their deallocation option's condition — running tasks requeued or ended (``requeue``,
``terminate``), finished (``taskcompletion``), or finished and their retention passed
(``retaineddata``) — then run. A node whose agent died is restarted and asked to ``recover`` its
tasks; only a node that cannot be restarted has its tasks requeued elsewhere.

Every kind of node source is driven the same way, through its provider
(:mod:`prefect_batch.providers.contract`): the provider places new nodes (a machine each, for a
kind that has machines, recorded on the node row so that a restarted engine finds it again),
their agents start on worker threads (``service/engine/starts.py``) and the outcome comes back as
an event, and a node that leaves is released by its provider. What differs between kinds comes
from the provider's traits: a node whose kind has ``unreachable_grace`` keeps its running tasks
for ``node_unreachable_grace_seconds`` once unreachable (its agent runs them on and a reconnect
collects their results) before they are requeued elsewhere, other nodes after a few failed
restarts; a kind with ``wipe_fresh_nodes`` has a new node's root emptied through its agent.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import BindParameter, bindparam, delete, func, insert, select, update

from prefect_batch.core.commandline import split_command_line
from prefect_batch.core.completion import AttemptOutcome, decide
from prefect_batch.core.states import (
    NODE_TRANSITIONS,
    AllocationState,
    NodeState,
    TaskExecutionResult,
)
from prefect_batch.exceptions import AgentError, IllegalTransitionError
from prefect_batch.providers.base import hello
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    PoolRef,
    ProviderEvent,
    ProviderTraits,
    ResizeError,
)
from prefect_batch.service.engine.confinement import (
    elevation_refusal,
    run_confinement,
    unconfined_errors,
)
from prefect_batch.service.engine.dispatcher import (
    NODE_RUNNING,
    base_environment,
    completed_info,
    settings_env,
    stage_request,
)
from prefect_batch.service.engine.starts import AgentStarts
from prefect_batch.service.ops.nodes import mark_in_flight
from prefect_batch.service.ops.pools import PoolOperations
from prefect_batch.service.ops.quotas import AgentStartLimiter, node_room
from prefect_batch.service.rows import certificates, lifecycle
from prefect_batch.service.rows.common import iso, new_node_id, node_source_of
from prefect_batch.service.rows.providers import ProviderDirectory, machines_in_use
from prefect_batch.service.rows.statewrites import POOL_SETTLED, strict
from prefect_batch.store.schema import nodes, pools, tasks

if TYPE_CHECKING:
    from prefect_batch.service.engine.gangs import Gangs
    from prefect_batch.service.engine.jobtasks import JobTasks

__all__ = [
    "PREEMPTED_SHOWN_SECONDS",
    "REQUEUE_AFTER_FAILURES",
    "RESTART_DELAYS_SECONDS",
    "NodeMixin",
    "NodeRuntime",
]

log = logging.getLogger("prefect_batch.engine")

RESTART_DELAYS_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0)
REQUEUE_AFTER_FAILURES = 3
"""Agent starts that may fail in a row before a node's tasks are requeued elsewhere."""
PREEMPTED_SHOWN_SECONDS = 600.0
"""How long a preempted node stays listed (in state ``preempted``) after its replacement."""

_BUSY_STATE: BindParameter[str] = bindparam("b_state")


@dataclass
class NodeRuntime:
    """What the engine knows about one node it drives (the database has the rest)."""

    pk: int
    node_id: str
    pool_pk: int
    root: Path
    total_slots: int
    state: str = NodeState.CREATING.value
    boot_id: int = 0
    free_slots: int = 0
    connection: Any = None
    ready: bool = False
    schedulable: bool = True
    leaving: bool = False
    pending_op: str | None = None
    start_task_ok: bool = True
    busy: bool = False
    failures: int = 0
    restart_at: float | None = None
    connect_time: float = 0.0
    kills_sent: set[str] = field(default_factory=set)
    generation: int = 0
    """Counts agent connections; events of an older connection are dropped."""
    held: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    account: str = ""
    pool_id: str = ""
    machine_id: str | None = None
    """The machine the node runs on (an SSH host, an instance); None when it has none."""
    address: str | None = None
    """The node's IP address (its machine's address)."""
    dedicated: bool = True
    traits: ProviderTraits = field(default_factory=ProviderTraits)
    """What the node's kind of provider is like."""
    agent_uid: int | None = None
    """The uid the node's agent runs as (from its ``hello``): admin runs need root."""
    connecting: bool = False
    """An agent start runs on a worker thread; its outcome arrives as an event."""
    unreachable_since: float | None = None
    """When the node's agent was last lost; a grace period counts from here."""
    wipe: bool = False
    """Empty the node root before the next agent says hello (a fresh node, a reimage)."""
    abandoned: set[str] = field(default_factory=set)
    """Attempts requeued after the grace period: killed if the host comes back."""

    def lost(self, now: float) -> None:
        """The agent is gone or could not start: schedule its restart with backoff."""
        self.ready = False
        self.failures += 1
        delay = RESTART_DELAYS_SECONDS[min(self.failures - 1, len(RESTART_DELAYS_SECONDS) - 1)]
        self.restart_at = now + delay

    def ref(self) -> NodeRef:
        """The node as its provider is told of it."""
        return NodeRef(
            account=self.account,
            pool_id=self.pool_id,
            node_id=self.node_id,
            root=str(self.root),
            machine_id=self.machine_id,
            address=self.address,
            dedicated=self.dedicated,
        )

    @property
    def accepting(self) -> bool:
        """Whether the scheduler may place tasks here now."""
        return (
            self.ready
            and self.schedulable
            and not self.leaving
            and self.pending_op is None
            and self.start_task_ok
        )


def _is_dedicated(row: Any) -> bool:
    return row.dedicated is not False


def _pool_ref(pool: Any) -> PoolRef:
    return PoolRef(
        account=pool.account,
        pool_id=pool.id,
        vm_size=pool.vm_size,
        task_slots_per_node=pool.task_slots_per_node,
        inter_node_communication=bool(pool.spec.get("enableInterNodeCommunication")),
    )


class NodeMixin:
    """Node lifecycle for the engine, for every kind of provider."""

    store: Any
    clock: Any
    providers: ProviderDirectory
    node_root: Path
    starts: AgentStarts
    node_unreachable_grace_seconds: float
    account_urls: dict[str, str]
    _nodes: dict[int, NodeRuntime]
    _pools: dict[int, Any]
    _short: dict[int, float]
    """Pool -> when its placement last came up short; a later resize asks again."""
    # The engine's other parts this one uses (the engine, JobTasks).
    _next_lease: float
    local_node_limit: int
    agent_starts: AgentStartLimiter
    _on_event: Callable[[int, dict[str, Any], int], None]
    _detach_pool: Callable[[int], None]
    job_tasks: JobTasks
    gangs: Gangs

    # -- state -----------------------------------------------------------------------------

    def _set_state(
        self, conn: Any, rt: NodeRuntime, target: NodeState, now: float, **values: Any
    ) -> None:
        """Move a node along a legal edge of ``NODE_TRANSITIONS``.

        An illegal edge is refused and logged (nothing is written); in strict mode
        (``PREFECT_BATCH_STRICT_STATES=1``, the test suite) it raises ``IllegalTransitionError``.
        """
        current = NodeState(rt.state)
        if target != current and target not in NODE_TRANSITIONS[current]:
            message = f"node {rt.node_id}: illegal transition {current.value} -> {target.value}"
            if strict():
                raise IllegalTransitionError(message)
            log.error("%s", message)
            return
        if target != current:
            values.update(state=target.value, state_transition_time=now)
        rt.state = target.value
        if values:
            conn.execute(update(nodes).where(nodes.c.pk == rt.pk).values(**values))

    def _idle_state(self, rt: NodeRuntime) -> NodeState:
        busy = rt.free_slots < rt.total_slots
        if busy:
            return NodeState.RUNNING
        return NodeState.IDLE if rt.schedulable else NodeState.OFFLINE

    def _update_busy(self, conn: Any, now: float) -> None:
        changes = []
        for rt in self._nodes.values():
            if not rt.ready or rt.leaving or not rt.start_task_ok:
                continue
            if rt.state not in (
                NodeState.IDLE.value,
                NodeState.RUNNING.value,
                NodeState.OFFLINE.value,
            ):
                continue
            target = self._idle_state(rt).value
            if target != rt.state:
                rt.state = target
                changes.append({"b_pk": rt.pk, "b_state": target})
        if changes:
            conn.execute(
                update(nodes)
                .where(nodes.c.pk == bindparam("b_pk"))
                .values(state=_BUSY_STATE, state_transition_time=now),
                changes,
            )

    def _node_counts(self, conn: Any, node_pk: int, d_tasks: int, d_slots: int) -> None:
        conn.execute(NODE_RUNNING, [{"b_pk": node_pk, "b_tasks": d_tasks, "b_slots": d_slots}])

    # -- pool size -------------------------------------------------------------------------

    def _reconcile(self, pool: Any, now: float) -> None:
        """Bring the pool's nodes to its target: attach, create, or mark nodes for removal."""
        if pool.state == "deleting":
            self._release_pool(pool)
            return
        traits = self.providers.traits(node_source_of(pool.spec))
        with self.store.begin() as conn:
            self._forget_preempted(conn, pool, now)
            rows = conn.execute(select(nodes).where(nodes.c.pool_pk == pool.pk)).all()
            targets = self._targets(pool, traits)
            live = {
                dedicated: [r for r in rows if not r.leaving and _is_dedicated(r) == dedicated]
                for dedicated in targets
            }
            # A resize whose placement already came up short waits for the next resize or
            # evaluation rather than asking the provider again on every pass.
            blocked = pool.allocation_state_transition_time <= self._short.get(pool.pk, -1.0)
            slots: list[Any] = []
            short = None
            for dedicated, target in targets.items():
                missing = target - len(live[dedicated])
                if blocked:
                    missing = min(missing, 0)
                grow, capped = self._allowed_growth(conn, pool, missing, dedicated=dedicated)
                placed, not_placed = self._place_nodes(conn, pool, grow, dedicated=dedicated)
                slots += placed
                short = short or not_placed or capped
            if short is not None:
                self._short[pool.pk] = now  # (the pool turns steady at ``now`` below)
            fresh = set()
            for slot in slots:
                conn.execute(
                    insert(nodes).values(
                        node_id=slot.node_id,
                        pool_pk=pool.pk,
                        account=pool.account,
                        state=NodeState.CREATING.value,
                        state_transition_time=now,
                        scheduling_state="enabled",
                        allocation_time=now,
                        vm_size=slot.vm_size or pool.vm_size,
                        root_dir=slot.root or str(self.node_root / slot.node_id),
                        total_slots=pool.task_slots_per_node,
                        running_tasks=0,
                        running_slots=0,
                        total_tasks_run=0,
                        total_tasks_succeeded=0,
                        leaving=False,
                        boot_id=0,
                        host_id=slot.machine_id,
                        ip_address=slot.address,
                        dedicated=slot.dedicated,
                    )
                )
                if traits.wipe_fresh_nodes:
                    fresh.add(slot.node_id)  # the machine may hold an earlier node's files
            for dedicated, target in targets.items():
                if len(live[dedicated]) > target:
                    self._shrink(conn, pool, live[dedicated], len(live[dedicated]) - target)
            rows = conn.execute(select(nodes).where(nodes.c.pool_pk == pool.pk)).all()
            if pool.allocation_state == AllocationState.RESIZING.value:
                counts = {d: 0 for d in targets}
                for r in rows:
                    if not r.leaving:
                        counts[_is_dedicated(r)] = counts.get(_is_dedicated(r), 0) + 1
                done = counts == targets and not any(
                    r.leaving and r.state != NodeState.PREEMPTED.value for r in rows
                )
                timed_out = now - pool.allocation_state_transition_time > (
                    pool.resize_timeout_seconds or 900.0
                )
                if done or timed_out or short is not None:
                    values: dict[str, Any] = {"allocation_state_transition_time": now}
                    if short is not None and not done:
                        # Not every node could be placed: the pool keeps the nodes it got.
                        values["resize_errors"] = [short]
                    elif timed_out and not done:
                        values["resize_errors"] = [
                            {
                                "code": "AllocationTimedOut",
                                "message": "The pool did not reach its target size within its "
                                "resize timeout",
                            }
                        ]
                    # Read before this transaction: a pool stopped meanwhile keeps its state.
                    POOL_SETTLED.write(conn, pools.c.pk == pool.pk, only_from=True, **values)
            attach = [
                r for r in rows if r.pk not in self._nodes and r.state != NodeState.PREEMPTED.value
            ]
        for r in attach:
            rt = NodeRuntime(
                pk=r.pk,
                node_id=r.node_id,
                pool_pk=pool.pk,
                root=Path(r.root_dir),
                total_slots=r.total_slots,
                state=r.state,
                boot_id=r.boot_id,
                schedulable=r.scheduling_state == "enabled",
                leaving=bool(r.leaving),
                pending_op=r.pending_op,
                account=pool.account,
                pool_id=pool.id,
                machine_id=r.host_id,
                address=r.ip_address,
                dedicated=_is_dedicated(r),
                traits=traits,
                wipe=r.node_id in fresh,
            )
            self._nodes[r.pk] = rt
            self._connect(rt, pool, now)
        for rt in list(self._nodes.values()):
            if (
                rt.pool_pk == pool.pk
                and rt.connection is None
                and rt.restart_at is not None
                and now >= rt.restart_at
            ):
                self._connect(rt, pool, now)

    def _targets(self, pool: Any, traits: ProviderTraits) -> dict[bool, int]:
        """Nodes wanted by market (True: dedicated, False: low-priority)."""
        low = (pool.target_low_priority or 0) if traits.low_priority else 0
        return {True: pool.target_dedicated, False: low}

    def _forget_preempted(self, conn: Any, pool: Any, now: float) -> None:
        """Delete the rows of the pool's preempted nodes once they have been shown long enough."""
        conn.execute(
            delete(nodes).where(
                nodes.c.pool_pk == pool.pk,
                nodes.c.state == NodeState.PREEMPTED.value,
                nodes.c.state_transition_time < now - PREEMPTED_SHOWN_SECONDS,
            )
        )

    # -- what providers report -------------------------------------------------------------

    def _on_provider_report(self, conn: Any, event: ProviderEvent, now: float) -> None:
        """A provider lost a node's machine or had it preempted: its tasks run elsewhere.

        Either way the node's running tasks are requeued (``requeueCount`` + 1, ``retryCount``
        unchanged), the provider is asked to release the node once, and the pool's next pass
        places a replacement. A lost node leaves the pool; a preempted one stays listed as
        ``preempted`` for ``PREEMPTED_SHOWN_SECONDS``. A draining node only stops taking new
        tasks (``schedulingState`` ``disabled``; it shows ``offline`` once idle).
        """
        rt = next((r for r in self._nodes.values() if r.node_id == event.node_id), None)
        if rt is None:
            log.debug("provider event for a node this engine does not hold: %s", event)
            return
        log.warning("node %s %s: %s", rt.node_id, event.kind, event.message)
        if event.kind == "draining":  # as disableScheduling with taskcompletion
            rt.schedulable = False
            conn.execute(
                update(nodes).where(nodes.c.pk == rt.pk).values(scheduling_state="disabled")
            )
            return
        if event.kind == "unusable":  # the node stays (its failed start says why)
            self._placement_failed(conn, rt.pool_pk, event, now)
            return
        in_flight = lifecycle.running_task_rows(conn, rt.pk)
        lifecycle.requeue_tasks(conn, in_flight, now)
        if event.kind == "preempted":
            self._preempted(conn, rt, event, now)
            return
        self._carry_out(conn, rt, "remove", now)
        if event.kind == "failed":
            self._placement_failed(conn, rt.pool_pk, event, now)

    def _placement_failed(self, conn: Any, pool_pk: int, event: ProviderEvent, now: float) -> None:
        """A placed node's machine could not be had: the pool's resize ends with the error."""
        error = event.error or ResizeError("AllocationFailed", f"{event.node_id}: {event.message}")
        self._short[pool_pk] = now  # not grown again until the next resize or evaluation
        conn.execute(
            update(pools).where(pools.c.pk == pool_pk).values(resize_errors=[error.wire()])
        )
        POOL_SETTLED.write(
            conn, pools.c.pk == pool_pk, only_from=True, allocation_state_transition_time=now
        )

    def _preempted(self, conn: Any, rt: NodeRuntime, event: ProviderEvent, now: float) -> None:
        self._disconnect(rt, kill=True)
        rt.held.clear()
        self._drop_node_work(conn, rt, now)
        rt.leaving = True
        self._set_state(
            conn,
            rt,
            NodeState.PREEMPTED,
            now,
            leaving=True,
            pending_op=None,
            pending_option=None,
            running_tasks=0,
            running_slots=0,
            errors=[{"code": event.code, "message": event.message}],
        )
        self._nodes.pop(rt.pk, None)
        pool = self._pools.get(rt.pool_pk)
        if pool is not None:
            self._release(rt.account, node_source_of(pool.spec), rt.ref(), "preempted")
        self._next_lease = 0.0  # place the replacement

    def _drop_node_work(self, conn: Any, rt: NodeRuntime, now: float) -> None:
        """The node's disk is gone or emptied: its jobs' preparation and its kept files too."""
        self.job_tasks.forget_node_jobs(conn, rt.pk, reimage=True, now=now)
        conn.execute(
            update(tasks)
            .where(tasks.c.files_node_pk == rt.pk)
            .values(files_node_pk=None, retention_deadline=None)
        )

    def _provider(self, pool: Any) -> NodeProvider | None:
        """The pool's provider (None when its node source is not there).

        Raises:
            AgentError: It cannot be built now (e.g. its Secret block cannot be loaded).
        """
        return self.providers.get(pool.account, node_source_of(pool.spec))

    def _place_nodes(
        self, conn: Any, pool: Any, count: int, *, dedicated: bool = True
    ) -> tuple[list[Any], dict[str, Any] | None]:
        """Where ``count`` new (dedicated or low-priority) nodes go, by the pool's provider.

        Returns the slots placed and, when the provider placed fewer, the pool's resize error;
        the pool then keeps the nodes it got.
        """
        if count <= 0:
            return [], None
        sku = node_source_of(pool.spec)
        try:
            provider = self._provider(pool)
        except AgentError as exc:
            return [], {"code": "AllocationFailed", "message": f"{sku}: {exc}"}
        if provider is None:
            return [], {
                "code": "AllocationFailed",
                "message": f"The node source {sku} is not registered",
            }
        in_use = set(machines_in_use(conn, pool.account)) | self.starts.reserved(pool.account)
        placement = provider.place(
            _pool_ref(pool),
            [new_node_id() for _ in range(count)],
            in_use,
            dedicated=dedicated,
        )
        error = placement.error.wire() if placement.error is not None else None
        return list(placement.slots), error

    def _release_pool(self, pool: Any) -> None:
        """A deleted pool: stop its nodes' agents and tasks, then release every node."""
        for rt in [r for r in self._nodes.values() if r.pool_pk == pool.pk]:
            self._disconnect(rt, kill=True)
        self._detach_pool(pool.pk)
        self._short.pop(pool.pk, None)
        ops = PoolOperations(self.store, pool.account, clock=self.clock)
        refs = ops.finish_pool_delete(pool.pk, release=False)
        for ref in refs:
            self._release(pool.account, node_source_of(pool.spec), ref, f"delete-{pool.pk}")
        try:
            provider = self._provider(pool)
        except AgentError as exc:
            log.warning("cannot clean up after pool %s: %s", pool.id, exc)
            return
        if provider is not None:
            gone = _pool_ref(pool)
            self.starts.later(lambda: provider.pool_deleted(gone))

    def _release(self, account: str, sku: str, ref: NodeRef, why: str) -> None:
        """Release a departed node through its provider, off the engine thread."""
        try:
            provider = self.providers.get(account, sku)
        except AgentError as exc:  # a later node on the machine empties it anyway
            log.warning("cannot release %s: %s", ref.node_id, exc)
            return
        if provider is not None:
            self.starts.release(provider, f"{why}-{ref.node_id}", ref)

    def _allowed_growth(
        self, conn: Any, pool: Any, missing: int, *, dedicated: bool = True
    ) -> tuple[int, dict[str, str] | None]:
        """How many nodes to add now, within the quotas and the agent start rate.

        Returns the count and, once the pool has all a quota lets it have, the resize error
        that says so (``service/ops/quotas.py``). Nodes the start rate holds back come on a later
        pass, which is asked for at once.
        """
        if missing <= 0:
            return 0, None
        room, error = node_room(
            conn,
            pool.account,
            local=self.providers.traits(node_source_of(pool.spec)).local_node_limit,
            local_limit=self.local_node_limit,
            dedicated=dedicated,
        )
        allowed = min(missing, room)
        grow = self.agent_starts.take(allowed)
        if grow < allowed:
            self._reconcile_soon = True  # the rest after the bucket refills
            return grow, None
        return grow, (error if allowed < missing else None)

    def _shrink(self, conn: Any, pool: Any, live: list[Any], count: int) -> None:
        """Mark ``count`` nodes for removal: idle ones first, a job manager's node last."""
        managers = {
            r[0]
            for r in conn.execute(
                select(tasks.c.node_pk).where(
                    tasks.c.kind == "jobmanager", tasks.c.state.in_(lifecycle.IN_FLIGHT)
                )
            ).all()
        }
        victims = sorted(live, key=lambda r: (r.pk in managers, r.running_tasks, -r.pk))[:count]
        for r in victims:
            mark_in_flight(conn, r.pk, pool.deallocation_option)
            conn.execute(
                update(nodes)
                .where(nodes.c.pk == r.pk)
                .values(leaving=True, pending_op="remove", pending_option=pool.deallocation_option)
            )
            rt = self._nodes.get(r.pk)
            if rt is not None:
                rt.leaving = True
                rt.pending_op = "remove"

    # -- agents ----------------------------------------------------------------------------

    def _connect(self, rt: NodeRuntime, pool: Any, now: float) -> None:
        """Start the node's agent on a worker thread; the outcome comes back as an event."""
        with self.store.begin() as conn:
            edges = NODE_TRANSITIONS[NodeState(rt.state)]
            if NodeState.STARTING not in edges and NodeState.UNKNOWN in edges:
                # Left idle or running by an engine that died: it was unknown since.
                self._set_state(conn, rt, NodeState.UNKNOWN, now)
            self._set_state(conn, rt, NodeState.STARTING, now)
        rt.connect_time = now
        rt.restart_at = None
        try:
            provider = self._provider(pool)
        except Exception as exc:  # noqa: BLE001 - e.g. its Secret block cannot be loaded
            self._node_failed(rt, "NodeSourceUnavailable", f"{rt.machine_id or rt.node_id}: {exc}")
            return
        if provider is None:
            sku = node_source_of(pool.spec)
            self._node_failed(rt, "NodeSourceNotFound", f"the node source {sku} is not there")
            return
        rt.generation += 1
        rt.connecting = True
        wipe, rt.wipe = rt.wipe, False
        self.starts.start(
            provider,
            rt.pk,
            rt.ref(),
            rt.generation,
            self._on_event,
            wipe=wipe,
        )

    def _on_agent_started(
        self, conn: Any, rt: NodeRuntime, msg: dict[str, Any], now: float
    ) -> None:
        """A node's agent is up (a worker started it): greet it."""
        rt.connecting = False
        agent = msg["connection"]
        if agent.closed:  # it went away before the engine saw it
            agent.close()
            self._record_node_failure(
                conn, rt, "NodeAgentLost", f"{rt.machine_id or rt.node_id}: the agent exited", now
            )
            return
        rt.connection = agent
        self.starts.set_live(rt.pk, msg["calls"])
        root = msg.get("root")
        if root and str(root) != str(rt.root):
            rt.root = Path(str(root))
            conn.execute(update(nodes).where(nodes.c.pk == rt.pk).values(root_dir=str(root)))
        address = msg.get("address")
        if address and address != rt.address:  # known once the machine is up (an instance)
            rt.address = str(address)
            conn.execute(update(nodes).where(nodes.c.pk == rt.pk).values(ip_address=rt.address))
        try:
            agent.send(hello(rt.node_id, rt.pool_id))
        except Exception:  # noqa: BLE001 - a broken session shows up as a "closed" event
            log.debug("hello to %s failed", rt.node_id, exc_info=True)

    def _stale_event(self, msg: dict[str, Any]) -> None:
        """An event for a node gone or reconnected: close an agent that came up meanwhile."""
        if msg.get("ev") == "_agent_started":
            try:
                msg["connection"].close()
            except Exception:  # noqa: BLE001
                log.debug("closing a stale agent connection failed", exc_info=True)

    def _node_failed(self, rt: NodeRuntime, code: str, message: str) -> None:
        now = self.clock()
        with self.store.begin() as conn:
            self._record_node_failure(conn, rt, code, message, now)

    def _record_node_failure(
        self, conn: Any, rt: NodeRuntime, code: str, message: str, now: float
    ) -> None:
        """An agent could not be started: the node is unusable and retried with backoff.

        Its running tasks go back to the queue once the node is given up on: after
        ``REQUEUE_AFTER_FAILURES`` failed starts in a row, or, for a kind with
        ``unreachable_grace``, once it has been unreachable for
        ``node_unreachable_grace_seconds`` (until then its agent keeps running them, and a
        reconnect collects their results).
        """
        rt.connecting = False
        rt.lost(now)
        if rt.unreachable_since is None:
            rt.unreachable_since = now
        values: dict[str, Any] = {"errors": [{"code": code, "message": message}]}
        if rt.traits.unreachable_grace:
            give_up = now - rt.unreachable_since >= self.node_unreachable_grace_seconds
        else:
            give_up = rt.failures >= REQUEUE_AFTER_FAILURES
        if give_up:
            # The node cannot be reached again: its tasks run elsewhere (at least once).
            in_flight = lifecycle.running_task_rows(conn, rt.pk)
            lifecycle.requeue_tasks(conn, in_flight, now)
            values.update(running_tasks=0, running_slots=0)
            if rt.traits.unreachable_grace and in_flight:
                rt.abandoned.update(f"t{r.pk}-{r.attempt}" for r in in_flight)
                rt.free_slots = rt.total_slots
                values["errors"] = [
                    {
                        "code": code,
                        "message": f"{message}; unreachable for more than "
                        f"{self.node_unreachable_grace_seconds:g} s, its {len(in_flight)} "
                        "running task(s) were requeued",
                    }
                ]
            conn.execute(
                update(pools)
                .where(pools.c.pk == rt.pool_pk)
                .values(resize_errors=[{"code": code, "message": f"{rt.node_id}: {message}"}])
            )
        self._set_state(conn, rt, NodeState.UNUSABLE, now, **values)

    def _disconnect(self, rt: NodeRuntime, *, kill: bool) -> None:
        conn, rt.connection = rt.connection, None
        rt.ready = False
        if rt.connecting:  # an agent start still running: drop what it brings
            rt.generation += 1
            rt.connecting = False
        self.starts.set_live(rt.pk, None)
        if conn is None:
            return
        try:
            if kill:
                conn.kill(tasks=True)
            else:
                conn.close()
        except Exception:  # noqa: BLE001
            log.debug("disconnect of %s failed", rt.node_id, exc_info=True)

    def _on_closed(self, conn: Any, rt: NodeRuntime, msg: dict[str, Any], now: float) -> None:
        if rt.connection is None:
            return
        # The agent is gone but its tasks run on in their own sessions: restart the agent and
        # let it recover them (adopted, finished, or lost -> requeued) rather than requeueing
        # now and running a task twice at once.
        rt.connection = None
        rt.lost(now)
        self.starts.set_live(rt.pk, None)
        if rt.unreachable_since is None:
            rt.unreachable_since = now  # a grace period starts
        self._set_state(
            conn,
            rt,
            NodeState.UNUSABLE,
            now,
            errors=[
                {
                    "code": "NodeAgentLost",
                    "message": str(msg.get("reason", "agent connection closed")),
                }
            ],
        )
        self._next_lease = 0.0  # reconnect soon

    def _on_hello(
        self,
        conn: Any,
        rt: NodeRuntime,
        msg: dict[str, Any],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        row = conn.execute(select(nodes).where(nodes.c.pk == rt.pk)).one()
        in_flight = lifecycle.running_task_rows(conn, rt.pk)
        used = sum(r.required_slots for r in in_flight)
        rt.free_slots = max(rt.total_slots - used, 0)
        self.gangs.requeue_orphans(conn, in_flight, now)
        rt.ready = True
        rt.failures = 0
        rt.unreachable_since = None
        rt.boot_id = row.boot_id
        uid = msg.get("uid")
        rt.agent_uid = uid if isinstance(uid, int) and not isinstance(uid, bool) else None
        rt.schedulable = row.scheduling_state == "enabled"
        rt.held.clear()
        self.job_tasks.forget_node_jobs(conn, rt.pk, reimage=False, now=now)
        self.job_tasks.load_prep_failures(conn, rt)
        info = {
            k: msg.get(k) for k in ("agent_version", "hostname", "cpu_count", "memory_bytes", "pid")
        }
        errors = unconfined_errors(msg)
        if errors is not None:
            log.warning("node %s: %s", rt.node_id, errors[0]["message"])
        values = dict(
            last_boot_time=now,
            ip_address=rt.address or "127.0.0.1",
            agent_info=info,
            last_heartbeat=now,
            errors=errors,
            running_tasks=len(in_flight),
            running_slots=used,
        )
        pool = self._pools.get(rt.pool_pk)
        if pool is not None:
            # Certificates first: the start task and every task may need them (Azure installs
            # them before the start task). This boot's set; a pool's change waits for a reboot.
            refs, had = certificates.node_references(conn, rt.pk, rt.boot_id, pool.spec)
            if refs or had:
                sends[rt.pk].append(certificates.install_request(conn, pool.account, refs))
        start = (pool.spec or {}).get("startTask") if pool is not None else None
        st = row.start_task_info or {}
        if start and not (st.get("bootId") == rt.boot_id and st.get("state") == "completed"):
            rt.start_task_ok = not start.get("waitForSuccess", True)
            self._run_start_task(conn, rt, pool, start, 0, now, sends)
            target = (
                NodeState.WAITING_FOR_START_TASK if not rt.start_task_ok else self._idle_state(rt)
            )
        elif start and st.get("result") == "failure" and start.get("waitForSuccess", True):
            rt.start_task_ok = False
            target = NodeState.START_TASK_FAILED
        else:
            rt.start_task_ok = True
            target = self._idle_state(rt)
        self._set_state(conn, rt, target, now, **values)
        if in_flight:
            sends[rt.pk].append(
                {"op": "recover", "keys": [f"t{r.pk}-{r.attempt}" for r in in_flight]}
            )
        if rt.abandoned:
            # Requeued after the grace period and maybe still running here: stop them (their
            # results no longer count; the new attempts elsewhere do).
            keys = sorted(rt.abandoned)
            rt.abandoned.clear()
            sends[rt.pk].append({"op": "recover", "keys": keys})
            sends[rt.pk].extend({"op": "kill", "key": k} for k in keys)

    # -- start task ------------------------------------------------------------------------

    def _run_start_task(
        self,
        conn: Any,
        rt: NodeRuntime,
        pool: Any,
        start: dict[str, Any],
        retry: int,
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        info = {
            "state": "running",
            "startTime": iso(now),
            "retryCount": retry,
            "bootId": rt.boot_id,
        }
        conn.execute(update(nodes).where(nodes.c.pk == rt.pk).values(start_task_info=info))
        env = settings_env(start.get("environmentSettings"))
        base_url = self.account_urls.get(pool.account, "embedded://local")
        env.update(
            base_environment(pool.account, base_url, pool.id, rt.node_id, dedicated=rt.dedicated)
        )
        sends[rt.pk].append(
            {
                "op": "run",
                "key": f"s{rt.pk}-{rt.boot_id}-{retry}",
                "argv": split_command_line(start["commandLine"]),
                "dir": "startup",
                "certs": "starttask",
                "env": env,
                "wall_clock_seconds": None,
                "job_prep_dir": None,
                **stage_request(start, pool.account),
                **run_confinement(start),
                **elevation_refusal(start, rt.agent_uid),
            }
        )

    def _on_start_task_exit(
        self,
        conn: Any,
        rt: NodeRuntime,
        key: str,
        outcome: AttemptOutcome,
        msg: dict[str, Any],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        try:
            _pk, boot_s, retry_s = key[1:].split("-")
            boot, retry = int(boot_s), int(retry_s)
        except ValueError:
            return
        pool = self._pools.get(rt.pool_pk)
        start = (pool.spec or {}).get("startTask") if pool is not None else None
        if boot != rt.boot_id or not start:
            return
        decision = decide(
            outcome,
            retry_count=retry,
            max_task_retry_count=start.get("maxTaskRetryCount", 0),
            exit_conditions=None,
            task_failure_mode="noaction",
        )
        if decision.retry:
            self._run_start_task(conn, rt, pool, start, retry + 1, now, sends)
            return
        success = decision.result == TaskExecutionResult.SUCCESS
        info = {
            **completed_info(decision, msg, now),
            "startTime": iso(msg.get("start_time") or now),
            "retryCount": retry,
            "bootId": rt.boot_id,
        }
        if retry:
            info["lastRetryTime"] = iso(now)
        values: dict[str, Any] = {"start_task_info": info}
        wait = start.get("waitForSuccess", True)
        if success or not wait:
            rt.start_task_ok = True
            target = (
                self._idle_state(rt)
                if rt.state == NodeState.WAITING_FOR_START_TASK.value
                else NodeState(rt.state)
            )
        else:
            rt.start_task_ok = False
            target = NodeState.START_TASK_FAILED
        self._set_state(conn, rt, target, now, **values)

    # -- requested operations --------------------------------------------------------------

    def _node_ops(
        self, conn: Any, now: float, sends: dict[int, list[dict[str, Any]]] | None = None
    ) -> None:
        """Pick up scheduling changes and carry out node operations whose time has come."""
        mine = list(self._nodes)
        if not mine:
            return
        rows = conn.execute(
            select(
                nodes.c.pk,
                nodes.c.pending_op,
                nodes.c.pending_option,
                nodes.c.scheduling_state,
                nodes.c.leaving,
            ).where(nodes.c.pk.in_(mine))
        ).all()
        for r in rows:
            rt = self._nodes[r.pk]
            rt.schedulable = r.scheduling_state == "enabled"
            rt.pending_op = r.pending_op
            rt.leaving = bool(r.leaving)
            if r.pending_op is None:
                continue
            in_flight = lifecycle.running_task_rows(conn, r.pk)
            if r.pending_option == "requeue" and in_flight:
                # Requeue now; the agent is stopped with its tasks below.
                lifecycle.requeue_tasks(conn, in_flight, now)
                in_flight = []
            if in_flight:
                continue  # terminate: kills are on their way; taskcompletion: let them finish
            if r.pending_option == "retaineddata":
                # Wait until the retained files are deleted, not just until their deadline
                # passed: ``_retention`` clears ``retention_deadline`` when it sends the
                # deletion, which must reach a live agent.
                kept = conn.execute(
                    select(func.count())
                    .select_from(tasks)
                    .where(tasks.c.files_node_pk == r.pk, tasks.c.retention_deadline.is_not(None))
                ).scalar_one()
                if kept:
                    continue
            self._carry_out(conn, rt, r.pending_op, now, sends)

    def _carry_out(
        self,
        conn: Any,
        rt: NodeRuntime,
        op: str,
        now: float,
        sends: dict[int, list[dict[str, Any]]] | None = None,
    ) -> None:
        # Deliver what this step queued for the node (a retention deletion, ...) now: the
        # step's sends go out after its transaction, when this agent is already gone.
        pending = sends.pop(rt.pk, None) if sends is not None else None
        if pending and rt.connection is not None:
            try:
                rt.connection.send_many(pending)
            except Exception:  # noqa: BLE001 - the node is going down anyway
                log.debug("could not send to %s before %s", rt.node_id, op, exc_info=True)
        self._disconnect(rt, kill=True)
        rt.held.clear()
        if op == "remove":
            self._set_state(conn, rt, NodeState.LEAVING_POOL, now)
            self._drop_node_work(conn, rt, now)
            conn.execute(delete(nodes).where(nodes.c.pk == rt.pk))
            self._nodes.pop(rt.pk, None)
            pool = self._pools.get(rt.pool_pk)
            if pool is not None:
                self._release(rt.account, node_source_of(pool.spec), rt.ref(), "remove")
            self._next_lease = 0.0  # settle the pool's size
            return
        target = NodeState.REIMAGING if op == "reimage" else NodeState.REBOOTING
        self._set_state(
            conn,
            rt,
            target,
            now,
            pending_op=None,
            pending_option=None,
            boot_id=rt.boot_id + 1,
            running_tasks=0,
            running_slots=0,
        )
        rt.boot_id += 1
        rt.pending_op = None
        if op == "reimage":
            self._drop_node_work(conn, rt, now)
            rt.wipe = True  # through the next agent, before it says hello
        rt.restart_at = now  # the agent comes back at the next reconcile, start task and all
        self._next_lease = 0.0
