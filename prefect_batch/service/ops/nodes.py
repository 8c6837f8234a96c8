"""Node operations: reboot, reimage, remove from the pool, disable and enable scheduling.

An operation is recorded on the node row (``pending_op``, ``pending_option``) together with what
it means for the node's running tasks: ``requeue`` and ``terminate`` mark them to be stopped
(``tasks.kill_reason``), ``taskcompletion`` lets them finish, ``retaineddata`` also waits for
their retention time. The engine that holds the node carries the operation out once that
condition holds. The node takes no new task from the moment the operation is accepted.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select, update

from prefect_batch.core.states import NodeState
from prefect_batch.exceptions import BatchConflictError, BatchInvalidRequestError
from prefect_batch.models import (
    BatchNodeDisableSchedulingOptions,
    BatchNodeRebootOptions,
    BatchNodeReimageOptions,
    BatchNodeRemoveOptions,
)
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.nodes import node_row
from prefect_batch.service.rows.statewrites import POOL_RESIZING
from prefect_batch.store.schema import nodes, pools, subtasks, tasks

__all__ = ["NodeOperations", "mark_in_flight"]

MAX_NODES_PER_REMOVE = 100

# Node states in which an operation is already under way (Azure's conflict codes).
_BUSY = {
    NodeState.REBOOTING.value: "NodeBeingRebooted",
    NodeState.REIMAGING.value: "NodeBeingReimaged",
    NodeState.LEAVING_POOL.value: "OperationInvalidForCurrentState",
    NodeState.CREATING.value: "NodeBeingCreated",
}


def _value(option: Any, default: str) -> str:
    if option is None:
        return default
    return str(getattr(option, "value", option))


def mark_in_flight(conn: Any, node_pk: int, option: str) -> None:
    """Apply a deallocation option to the node's in-flight tasks (requeue or terminate them)."""
    if option in ("requeue", "terminate"):
        # A multi-instance task with a subtask on the node goes with it as a whole (its
        # subtask rows are those of its attempt in flight: they are rewritten at dispatch).
        gangs_here = select(subtasks.c.task_pk).where(subtasks.c.node_pk == node_pk)
        conn.execute(
            update(tasks)
            .where(
                or_(tasks.c.node_pk == node_pk, tasks.c.pk.in_(gangs_here)),
                tasks.c.state.in_(lifecycle.IN_FLIGHT),
                tasks.c.kill_reason.is_(None),
            )
            .values(kill_reason=option)
        )


class NodeOperations(ServiceBase):
    """Operations on the nodes of one account's pools."""

    def _busy_check(self, row: Any) -> None:
        code = _BUSY.get(row.state)
        if code is not None or row.pending_op is not None:
            raise BatchConflictError(
                code or "OperationInvalidForCurrentState",
                f"The node is {row.state}"
                + (f" with a pending {row.pending_op}" if row.pending_op else "")
                + f": {row.node_id}",
                {"NodeId": row.node_id, "NodeState": row.state},
            )

    def _request(self, pool_id: str, node_id: str, op: str, option: str) -> None:
        with self.store.begin() as conn:
            pool = self._pool_row(conn, pool_id)
            row = node_row(conn, pool, node_id)
            self._busy_check(row)
            mark_in_flight(conn, row.pk, option)
            conn.execute(
                update(nodes)
                .where(nodes.c.pk == row.pk)
                .values(pending_op=op, pending_option=option)
            )
        self.wake(pools=True)

    def reboot_node(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Restart the node's agent; its start task (and job preparation tasks) run again."""
        if isinstance(options, str):
            options = {"nodeRebootOption": options}
        opts = self.parse(BatchNodeRebootOptions, options or {})
        self._request(pool_id, node_id, "reboot", _value(opts.node_reboot_kind, "requeue"))

    def reimage_node(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Wipe the node's batch directories and restart it; the start task runs again."""
        if isinstance(options, str):
            options = {"nodeReimageOption": options}
        opts = self.parse(BatchNodeReimageOptions, options or {})
        self._request(pool_id, node_id, "reimage", _value(opts.node_reimage_option, "requeue"))

    def remove_nodes(self, pool_id: str, options: Any) -> None:
        """Remove the named nodes from the pool (its target size goes down by as many)."""
        opts = self.parse(BatchNodeRemoveOptions, options)
        option = _value(opts.node_deallocation_option, "requeue")
        ids = list(dict.fromkeys(opts.node_ids))
        if len(ids) > MAX_NODES_PER_REMOVE:
            raise BatchInvalidRequestError(
                "InvalidPropertyValue",
                f"nodeList holds at most {MAX_NODES_PER_REMOVE} node ids",
                {"PropertyName": "nodeList"},
            )
        now = self.clock()
        with self.store.begin() as conn:
            pool = self._pool_row(conn, pool_id)
            if pool.allocation_state != "steady":
                raise BatchConflictError(
                    "PoolBeingResized",
                    f"The pool is being resized: {pool.id}; stop the resize first.",
                    {"PoolId": pool.id},
                )
            rows = [node_row(conn, pool, n) for n in ids]
            for row in rows:
                self._busy_check(row)
            live = conn.execute(
                select(func.count())
                .select_from(nodes)
                .where(nodes.c.pool_pk == pool.pk, nodes.c.leaving.is_(False))
            ).scalar_one()
            for row in rows:
                mark_in_flight(conn, row.pk, option)
                conn.execute(
                    update(nodes)
                    .where(nodes.c.pk == row.pk)
                    .values(pending_op="remove", pending_option=option, leaving=True)
                )
            values: dict[str, Any] = {
                "target_dedicated": max(live - len(rows), 0),
                "allocation_state_transition_time": now,
                "last_modified": now,
                "version": pools.c.version + 1,
            }
            if opts.resize_timeout is not None:
                values["resize_timeout_seconds"] = opts.resize_timeout.total_seconds()
            POOL_RESIZING.write(conn, pools.c.pk == pool.pk, expected=1, **values)
        self.wake(pools=True)

    def disable_node_scheduling(self, pool_id: str, node_id: str, options: Any = None) -> None:
        """Take no new task on the node (it shows ``offline`` once idle)."""
        if isinstance(options, str):
            options = {"nodeDisableSchedulingOption": options}
        opts = self.parse(BatchNodeDisableSchedulingOptions, options or {})
        option = _value(opts.node_disable_scheduling_option, "requeue")
        self._set_scheduling(pool_id, node_id, "disabled", option)

    def enable_node_scheduling(self, pool_id: str, node_id: str) -> None:
        """Let the node take tasks again."""
        self._set_scheduling(pool_id, node_id, "enabled", None)

    def _set_scheduling(self, pool_id: str, node_id: str, target: str, option: str | None) -> None:
        now = self.clock()
        with self.store.begin() as conn:
            pool = self._pool_row(conn, pool_id)
            row = node_row(conn, pool, node_id)
            if row.scheduling_state == target:
                raise BatchConflictError(
                    "NodeAlreadyInTargetSchedulingState",
                    f"The node's scheduling is already {target}: {row.node_id}",
                    {"NodeId": row.node_id},
                )
            if row.state == NodeState.UNUSABLE.value:
                raise BatchConflictError(
                    "NodeStateUnusable",
                    f"The node is unusable: {row.node_id}",
                    {"NodeId": row.node_id},
                )
            values: dict[str, Any] = {"scheduling_state": target}
            if target == "disabled":
                mark_in_flight(conn, row.pk, option or "requeue")
                if row.state == NodeState.IDLE.value:
                    values.update(state=NodeState.OFFLINE.value, state_transition_time=now)
            elif row.state == NodeState.OFFLINE.value:
                values.update(state=NodeState.IDLE.value, state_transition_time=now)
            conn.execute(update(nodes).where(nodes.c.pk == row.pk).values(**values))
        self.wake(pools=True)
