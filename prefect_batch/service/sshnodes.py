"""SSH nodes as the engine runs them: hosts for new nodes, agents started off the engine thread.

A mixin of the node runtime (``service/noderuntime.py``) for pools whose node source is a
registered SSH host group (``batch.node.ssh.<name>``): a new node takes a free host of the group
(one node per host in the account), recorded on the node row; its agent is started on a worker
thread of :class:`~prefect_batch.service.remotenodes.RemoteNodes` and the engine learns the
outcome as an event (``_agent_started`` / ``_agent_failed``); a node that leaves, or a pool that
is deleted, has its host emptied through an agent. Failures, the grace period and the
at-least-once rule stay in the node runtime, shared with local nodes.

What this module does not do: talk SSH (``providers/ssh.py``) or validate groups
(``service/nodesources.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import update

from prefect_batch.core.states import NodeState
from prefect_batch.service.nodesources import group_row, hosts_in_use, ssh_group_name
from prefect_batch.service.pools import node_source_of
from prefect_batch.service.remotenodes import HostSlot, RemoteNodes, group_hosts
from prefect_batch.store.schema import nodes

if TYPE_CHECKING:
    from prefect_batch.service.noderuntime import NodeRuntime

__all__ = ["SSHNodeMixin"]

log = logging.getLogger("prefect_batch.engine")


class SSHNodeMixin:
    """Hosts and agent starts of SSH nodes, for the node runtime."""

    store: Any
    node_sources: dict[str, Any]
    remote: RemoteNodes
    _nodes: dict[int, NodeRuntime]
    _pools: dict[int, Any]

    def _remote_sku(self, pool: Any) -> str | None:
        """The pool's node source if it is a registered SSH host group (not an engine's own)."""
        sku = node_source_of(pool.spec)
        if sku in self.node_sources or ssh_group_name(sku) is None:
            return None
        return sku

    def _place_nodes(
        self, conn: Any, pool: Any, count: int
    ) -> tuple[list[HostSlot | None], dict[str, str] | None]:
        """Where ``count`` new nodes go: None each for local nodes; free hosts for an SSH pool.

        Returns the placements and, when the group has too few free hosts, the pool's resize
        error (Azure's ``AllocationFailed``); the pool then keeps the nodes it got.
        """
        sku = self._remote_sku(pool)
        if count <= 0 or sku is None:
            return [None] * count, None
        name = ssh_group_name(sku)
        row = group_row(conn, pool.account, name or "")
        if row is None:
            return [], {
                "code": "AllocationFailed",
                "message": f"The SSH host group {name!r} is not registered",
            }
        hosts = group_hosts(row.spec)
        taken = set(hosts_in_use(conn, pool.account)) | self.remote.reserved(pool.account)
        free = [h for h in hosts if h.id not in taken]
        if len(free) >= count:
            return list(free[:count]), None
        return list(free), {
            "code": "AllocationFailed",
            "message": f"The SSH host group {name!r} has {len(free)} free host(s) of "
            f"{len(hosts)} for the {count} more node(s) pool {pool.id} asked for (a host runs one "
            "node at a time); the pool keeps the nodes it got",
        }

    def _release_remote_nodes(self, pool: Any) -> None:
        """A deleted SSH pool: kill its nodes' agents and tasks, and wipe their hosts."""
        for rt in [r for r in self._nodes.values() if r.pool_pk == pool.pk]:
            if rt.host_id is not None:
                self._disconnect(rt, kill=True)  # type: ignore[attr-defined]
                self._wipe_host_later(rt, pool)

    def _wipe_host_later(self, rt: NodeRuntime, pool: Any) -> None:
        """Empty a departed SSH node's root through an agent, off the engine thread."""
        sku = self._remote_sku(pool) if pool is not None else None
        if rt.host_id is None or sku is None:
            return
        try:
            source = self.remote.source(pool.account, sku)
        except Exception as exc:  # noqa: BLE001 - a later node on the host wipes it anyway
            log.warning("cannot wipe the host of %s: %s", rt.node_id, exc)
            return
        if source is not None:
            self.remote.wipe_host(source, pool.account, rt.host_id, str(rt.root), rt.node_id)

    def _connect_remote(self, rt: NodeRuntime, pool: Any, now: float) -> None:
        """Start an SSH node's agent on a worker thread; the outcome comes back as an event."""
        with self.store.begin() as conn:
            self._set_state(conn, rt, NodeState.STARTING, now)  # type: ignore[attr-defined]
        rt.connect_time = now
        rt.restart_at = None
        sku = self._remote_sku(pool) or ""
        try:
            source = self.remote.source(pool.account, sku)
        except Exception as exc:  # noqa: BLE001 - e.g. its Secret block cannot be loaded
            self._node_failed(  # type: ignore[attr-defined]
                rt, "NodeSourceUnavailable", f"{rt.host_id}: {exc}"
            )
            return
        if source is None or rt.host_id is None:
            self._node_failed(  # type: ignore[attr-defined]
                rt, "NodeSourceNotFound", f"the SSH host group of {sku} is not registered"
            )
            return
        rt.generation += 1
        rt.connecting = True
        wipe, rt.wipe = rt.wipe, False
        self.remote.start_agent(
            source,
            rt.pk,
            rt.node_id,
            rt.host_id,
            rt.generation,
            self._on_event,  # type: ignore[attr-defined]
            wipe=wipe,
        )

    def _on_agent_started(
        self, conn: Any, rt: NodeRuntime, msg: dict[str, Any], now: float
    ) -> None:
        """An SSH node's agent is up (a worker started it): greet it."""
        rt.connecting = False
        agent = msg["connection"]
        if agent.closed:  # it went away before the engine saw it
            agent.close()
            self._record_node_failure(  # type: ignore[attr-defined]
                conn, rt, "NodeAgentLost", f"{rt.host_id}: the agent exited at once", now
            )
            return
        rt.connection = agent
        self.remote.set_live(rt.pk, msg["calls"])
        root = msg.get("root")
        if root and str(root) != str(rt.root):
            rt.root = Path(str(root))
            conn.execute(update(nodes).where(nodes.c.pk == rt.pk).values(root_dir=str(root)))
        pool = self._pools.get(rt.pool_pk)
        try:
            agent.send(
                {
                    "op": "hello",
                    "v": 1,
                    "node_id": rt.node_id,
                    "pool_id": pool.id if pool is not None else "",
                }
            )
        except Exception:  # noqa: BLE001 - a broken session shows up as a "closed" event
            log.debug("hello to %s failed", rt.node_id, exc_info=True)

    def _stale_event(self, msg: dict[str, Any]) -> None:
        """An event for a node gone or reconnected: close an agent that came up meanwhile."""
        if msg.get("ev") == "_agent_started":
            try:
                msg["connection"].close()
            except Exception:  # noqa: BLE001
                log.debug("closing a stale agent connection failed", exc_info=True)

    def _close_remote(self) -> None:
        """The engine stops: no more agent starts."""
        self.remote.close()
