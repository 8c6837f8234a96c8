"""Pool operations: create, get, list, update, resize, stop resize, delete; nodes; images.

A pool row holds what was asked (target size, slots, fill type, start task); nodes are made and
removed by the engine that holds the pool's lease, which compares target and actual.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, insert, select, update

from prefect_batch.core.commandline import split_command_line, validate_environment
from prefect_batch.core.ids import validate_id
from prefect_batch.core.staging import validate_resource_files
from prefect_batch.core.states import AllocationState, NodeState, PoolState
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    invalid_property,
)
from prefect_batch.models import (
    BatchNode,
    BatchNodeCounts,
    BatchPool,
    BatchPoolCreateOptions,
    BatchPoolNodeCounts,
    BatchPoolReplaceOptions,
    BatchPoolResizeOptions,
    BatchPoolUpdateOptions,
    BatchSupportedImage,
)
from prefect_batch.providers.contract import NodeRef
from prefect_batch.providers.kinds import KINDS, sku_traits
from prefect_batch.service.ops.autoscale import check_create_settings
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.ops.nodesources import pool_sku_is_known, registered_images
from prefect_batch.service.rows.autopools import mark_pool_deleting
from prefect_batch.service.rows.certificates import check_references
from prefect_batch.service.rows.common import (
    iso,
    iso_duration,
    node_source_of,
    parse_duration,
    refuse_unsupported,
)
from prefect_batch.service.rows.lifecycle import requeue_tasks, running_task_rows
from prefect_batch.service.rows.nodes import node_row
from prefect_batch.service.rows.providers import directory_of, node_ref
from prefect_batch.service.rows.samples import NODE_METRIC_NAMES
from prefect_batch.service.rows.statewrites import POOL_RESIZING, POOL_SETTLED
from prefect_batch.service.rows.views import node_view, pool_view
from prefect_batch.store.schema import nodes, pools

__all__ = ["PoolOperations"]

NODE_METRIC_FIELDS = [n for n in NODE_METRIC_NAMES.values() if n != "time"]

MAX_SLOTS_PER_NODE = 256
_PATCH_WITHOUT_NODES = (
    "vmSize",
    "taskSlotsPerNode",
    "taskSchedulingPolicy",
    "virtualMachineConfiguration",
    "enableInterNodeCommunication",
)
"""PATCH properties that shape the nodes: applied only while the pool has none (Azure)."""
_PATCH_UNSUPPORTED = (
    "applicationPackageReferences",
    "networkConfiguration",
    "userAccounts",
    "mountConfiguration",
    "upgradePolicy",
)
"""PATCH properties this service does not act on: refused rather than kept unused."""
MIN_RESIZE_TIMEOUT_SECONDS = 0.0  # Azure's floor is 5 minutes; local nodes need none.


def validate_start_task(start: dict[str, Any] | None) -> None:
    """Refuse a start task this service cannot run, naming the field (before anything is made)."""
    if not start:
        return
    split_command_line(start["commandLine"], "startTask.commandLine")
    env = start.get("environmentSettings") or []
    validate_environment(
        [(e["name"], e.get("value")) for e in env], "startTask.environmentSettings"
    )
    validate_resource_files(start.get("resourceFiles"), "startTask.resourceFiles")


def check_low_priority(sku: str, count: int | None) -> None:
    """Refuse low-priority nodes from a node source that has none."""
    if count and not sku_traits(sku).low_priority:
        raise invalid_property(
            "targetLowPriorityNodes", count, f"the node source {sku} has no low-priority nodes"
        )


class PoolOperations(ServiceBase):
    """Pool and node operations of one account."""

    def list_supported_images(self) -> list[BatchSupportedImage]:
        """The node sources pools can use (Azure's "supported images"): local processes and
        the account's registered node sources (``batch.node.<kind>.<name>``)."""
        local = KINDS["local"].image("", {})
        with self.store.read() as conn:
            registered = registered_images(conn, self.account)
        return [BatchSupportedImage.model_validate(i) for i in [local, *registered]]

    def list_pool_node_counts(self) -> list[BatchPoolNodeCounts]:
        """Nodes per state of every pool of the account (Azure's ``nodecounts``)."""
        from collections import defaultdict

        with self.store.read() as conn:
            pool_ids = (
                conn.execute(
                    select(pools.c.id).where(pools.c.account == self.account).order_by(pools.c.pk)
                )
                .scalars()
                .all()
            )
            counts: dict[tuple[str, bool], dict[str, int]] = defaultdict(dict)
            dedicated = nodes.c.dedicated.is_not(False)
            for pool_id, is_dedicated, state, n in conn.execute(
                select(pools.c.id, dedicated, nodes.c.state, func.count())
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(pools.c.account == self.account)
                .group_by(pools.c.id, dedicated, nodes.c.state)
            ).all():
                counts[(pool_id, bool(is_dedicated))][state] = n
        # Node states are lower-case on the wire ("waitingforstarttask"); the counts' names are
        # camelCase ("waitingForStartTask").
        names = {
            (f.alias or n).lower(): f.alias or n for n, f in BatchNodeCounts.model_fields.items()
        }

        def of(found: dict[str, int]) -> dict[str, int]:
            return {
                **{names.get(st, st): n for st, n in found.items()},
                "total": sum(found.values()),
            }

        return [
            BatchPoolNodeCounts.model_validate(
                {
                    "poolId": pid,
                    "dedicated": of(counts[(pid, True)]),
                    "lowPriority": of(counts[(pid, False)]),
                }
            )
            for pid in pool_ids
        ]

    def create_pool(self, pool: BatchPoolCreateOptions | dict[str, Any]) -> None:
        """Create a pool; the engine then brings its nodes up."""
        opts = self.parse(BatchPoolCreateOptions, pool)
        validate_id(opts.id, "id")
        spec = opts.to_wire()
        with self.store.read() as conn:
            checked = self.check_pool_spec(conn, spec)
        now = self.clock()
        with self.store.begin() as conn:
            exists = conn.execute(
                select(pools.c.pk).where(
                    pools.c.account == self.account, pools.c.id_key == opts.id.casefold()
                )
            ).first()
            if exists:
                raise BatchConflictError(
                    "PoolExists",
                    f"The specified pool already exists: {opts.id}",
                    {"PoolId": opts.id},
                )
            self.insert_pool(conn, opts.id, checked, now)
        self.wake(pools=True)

    def check_pool_spec(self, conn: Any, spec: dict[str, Any]) -> dict[str, Any]:
        """Check a pool's wire body (without its id) beyond its model; return the row values.

        Raises:
            BatchInvalidRequestError: Naming the offending property (relative to the pool).
        """
        spec = {k: v for k, v in spec.items() if k != "id"}
        # An autoscale pool starts empty; its first evaluation, right away, sets the target.
        interval = check_create_settings(spec)
        if interval is not None:
            spec["autoScaleEvaluationInterval"] = iso_duration(interval)
        sku = node_source_of(spec)
        self._check_node_source(conn, sku)
        check_low_priority(sku, spec.get("targetLowPriorityNodes"))
        slots = spec.get("taskSlotsPerNode") or 1
        if slots > MAX_SLOTS_PER_NODE:
            raise invalid_property("taskSlotsPerNode", slots, f"at most {MAX_SLOTS_PER_NODE}")
        fill = (spec.get("taskSchedulingPolicy") or {}).get("nodeFillType") or "spread"
        timeout = parse_duration(spec.get("resizeTimeout"))
        validate_start_task(spec.get("startTask"))
        if spec.get("certificateReferences") is not None:
            spec["certificateReferences"] = check_references(
                conn, self.account, spec["certificateReferences"], "certificateReferences"
            )
        return {
            "spec": spec,
            "vm_size": spec["vmSize"],
            "target_dedicated": spec.get("targetDedicatedNodes") or 0,
            "target_low_priority": spec.get("targetLowPriorityNodes") or 0,
            "task_slots_per_node": slots,
            "fill_type": fill,
            "resize_timeout_seconds": timeout if timeout is not None else 900.0,
            "autoscale": interval is not None,
        }

    def insert_pool(self, conn: Any, pool_id: str, checked: dict[str, Any], now: float) -> None:
        """Add a pool row from :meth:`check_pool_spec`'s values (its id known to be free)."""
        values = dict(checked)
        autoscale = values.pop("autoscale")
        target = values["target_dedicated"] + values["target_low_priority"]
        conn.execute(
            insert(pools).values(
                account=self.account,
                id=pool_id,
                id_key=pool_id.casefold(),
                state=PoolState.ACTIVE.value,
                state_transition_time=now,
                allocation_state=(
                    AllocationState.RESIZING.value if target else AllocationState.STEADY.value
                ),
                allocation_state_transition_time=now,
                creation_time=now,
                last_modified=now,
                version=1,
                deallocation_option="requeue",
                auto_scale_next=now if autoscale else None,
                **values,
            )
        )

    def _check_node_source(self, conn: Any, sku: str) -> None:
        """Refuse a node source that is neither local nor one the account registered."""
        if pool_sku_is_known(conn, self.account, sku):
            return
        raise invalid_property(
            "virtualMachineConfiguration.nodeAgentSKUId",
            sku,
            "unknown node source; see list_supported_images (register one, e.g. an SSH host "
            "group, with create_node_source)",
        )

    def get_pool(self, pool_id: str) -> BatchPool:
        """One pool."""
        with self.store.read() as conn:
            row = self._pool_row(conn, pool_id)
            return BatchPool.model_validate(pool_view(row, self.base_url, self._count(conn, row)))

    def pool_exists(self, pool_id: str) -> bool:
        """Whether the pool exists in this account."""
        try:
            self.get_pool(pool_id)
        except BatchNotFoundError:
            return False
        return True

    def list_pools(self) -> list[BatchPool]:
        """Every pool of the account, in creation order."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(pools).where(pools.c.account == self.account).order_by(pools.c.pk)
            ).all()
            return [
                BatchPool.model_validate(pool_view(r, self.base_url, self._count(conn, r)))
                for r in rows
            ]

    @staticmethod
    def _count(conn: Any, row: Any) -> tuple[int, int]:
        """(dedicated, low-priority) nodes of the pool not leaving it."""
        counts = dict(
            conn.execute(
                select(nodes.c.dedicated.is_not(False), func.count())
                .where(nodes.c.pool_pk == row.pk, nodes.c.leaving.is_(False))
                .group_by(nodes.c.dedicated.is_not(False))
            ).all()
        )
        return counts.get(True, 0), counts.get(False, 0)

    def update_pool(self, pool_id: str, update_options: BatchPoolUpdateOptions | dict) -> None:
        """PATCH a pool: given properties replace, omitted ones stay (start task, metadata)."""
        remove_start_task = False
        if isinstance(update_options, dict):
            # Azure: an empty startTask in a PATCH removes the start task.
            for key in ("startTask", "start_task"):
                if key in update_options and not update_options[key]:
                    update_options = {k: v for k, v in update_options.items() if k != key}
                    remove_start_task = True
        opts = self.parse(BatchPoolUpdateOptions, update_options)
        patch = opts.to_wire()
        if remove_start_task:
            patch["startTask"] = None
        validate_start_task(patch.get("startTask"))
        refuse_unsupported(
            patch, _PATCH_UNSUPPORTED, reason="is not supported by this service; omit it"
        )
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            self._check_mutable(row)
            spec = dict(row.spec)
            values: dict[str, Any] = {}
            node_shape = [k for k in _PATCH_WITHOUT_NODES if k in patch]
            if node_shape:
                values = self._node_shape_change(conn, row, spec, patch, node_shape)
            if "certificateReferences" in patch:
                # A change reaches nodes that join, reboot or are reimaged (Azure).
                patch["certificateReferences"] = check_references(
                    conn, self.account, patch["certificateReferences"], "certificateReferences"
                )
            for key in ("startTask", "metadata", "displayName", "certificateReferences"):
                if key in patch:
                    if key == "startTask" and not patch[key]:
                        spec.pop(key, None)
                    else:
                        spec[key] = patch[key]
            conn.execute(
                update(pools)
                .where(pools.c.pk == row.pk)
                .values(spec=spec, last_modified=now, version=pools.c.version + 1, **values)
            )
        self.wake(pools=True)

    def _node_shape_change(
        self, conn: Any, row: Any, spec: dict[str, Any], patch: dict[str, Any], keys: list[str]
    ) -> dict[str, Any]:
        """Apply PATCH properties that shape the nodes: only while the pool has none (Azure)."""
        if any(self._count(conn, row)) or row.target_dedicated or row.target_low_priority:
            raise BatchConflictError(
                "OperationInvalidForCurrentState",
                f"{keys[0]} can be changed only while the pool has no nodes (resize it to 0)",
                {"PoolId": row.id, "PropertyName": keys[0]},
            )
        merged = {**spec, **{k: patch[k] for k in keys}}
        checked = self.check_pool_spec(conn, merged)
        spec.update({k: patch[k] for k in keys})
        return {
            "vm_size": checked["vm_size"],
            "task_slots_per_node": checked["task_slots_per_node"],
            "fill_type": checked["fill_type"],
        }

    def replace_pool_properties(
        self, pool_id: str, pool: BatchPoolReplaceOptions | dict[str, Any]
    ) -> None:
        """Replace a pool's start task, application packages, certificate references and
        metadata (Azure's ``updateproperties``): an omitted start task is removed, the lists
        replace the old ones (omitted ``certificateReferences``, which api-version 2025-06-01
        no longer has: unchanged).

        Like a PATCH, a new start task applies to nodes that join or reboot afterwards.
        """
        opts = self.parse(BatchPoolReplaceOptions, pool)
        body = opts.to_wire()
        if body.get("applicationPackageReferences"):
            raise BatchInvalidRequestError(
                "UnsupportedProperty",
                "applicationPackageReferences are not supported; stage files with resourceFiles",
                {"PropertyName": "applicationPackageReferences"},
            )
        validate_start_task(body.get("startTask"))
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            spec = {k: v for k, v in row.spec.items() if k not in ("startTask", "metadata")}
            spec.pop("applicationPackageReferences", None)
            if body.get("startTask"):
                spec["startTask"] = body["startTask"]
            if body.get("metadata"):
                spec["metadata"] = body["metadata"]
            if "certificateReferences" in body:  # omitted (2025-06-01 clients): unchanged
                spec["certificateReferences"] = check_references(
                    conn, self.account, body["certificateReferences"], "certificateReferences"
                )
            conn.execute(
                update(pools)
                .where(pools.c.pk == row.pk)
                .values(spec=spec, last_modified=now, version=pools.c.version + 1)
            )
        self.wake(pools=True)

    def resize_pool(self, pool_id: str, resize: BatchPoolResizeOptions | dict) -> None:
        """Ask for a new node count; nodes come and go as the engine gets to it."""
        opts = self.parse(BatchPoolResizeOptions, resize)
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            check_low_priority(node_source_of(row.spec), opts.target_low_priority_nodes)
            self._check_mutable(row)
            if row.spec.get("enableAutoScale"):
                raise BatchConflictError(
                    "OperationInvalidForCurrentState", "Disable autoscale before resizing."
                )
            if row.allocation_state != AllocationState.STEADY.value:
                raise BatchConflictError(
                    "PoolBeingResized",
                    f"The pool is being resized: {row.id}; stop the resize first.",
                    {"PoolId": row.id},
                )
            values: dict[str, Any] = {
                "target_dedicated": opts.target_dedicated_nodes or 0,
                "target_low_priority": opts.target_low_priority_nodes or 0,
                "allocation_state_transition_time": now,
                "last_modified": now,
                "version": pools.c.version + 1,
                "resize_errors": None,
            }
            if opts.node_deallocation_option is not None:
                values["deallocation_option"] = str(
                    getattr(opts.node_deallocation_option, "value", opts.node_deallocation_option)
                )
            if opts.resize_timeout is not None:
                values["resize_timeout_seconds"] = opts.resize_timeout.total_seconds()
            POOL_RESIZING.write(conn, pools.c.pk == row.pk, expected=1, **values)
        self.wake(pools=True)

    def stop_pool_resize(self, pool_id: str) -> None:
        """Stop a resize: the pool keeps the nodes it has now."""
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            self._check_mutable(row)
            if row.spec.get("enableAutoScale"):
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    "The formula sizes this pool; disable autoscale to stop its resize.",
                )
            dedicated, low_priority = self._count(conn, row)
            conn.execute(
                update(pools)
                .where(pools.c.pk == row.pk)
                .values(
                    target_dedicated=dedicated,
                    target_low_priority=low_priority,
                    last_modified=now,
                    version=pools.c.version + 1,
                )
            )
            # A steady pool stays steady (stopping no resize changes nothing but the targets).
            POOL_SETTLED.write(
                conn, pools.c.pk == row.pk, only_from=True, allocation_state_transition_time=now
            )
        self.wake(pools=True)

    def delete_pool(self, pool_id: str) -> None:
        """Delete a pool: its nodes leave and their directories are removed.

        Tasks of jobs on this pool that have not run stay queued (a new pool of the same id
        would run them); tasks running on its nodes are requeued.
        """
        now = self.clock()
        with self.store.begin() as conn:
            row = self._pool_row(conn, pool_id)
            if row.state == PoolState.DELETING.value:
                raise BatchConflictError(
                    "PoolBeingDeleted", f"The pool is being deleted: {row.id}", {"PoolId": row.id}
                )
            mark_pool_deleting(conn, row.pk, now)
            leased = row.lease_owner is not None and (row.lease_expires or 0) > now
        if not leased:
            self.finish_pool_delete(row.pk)
        self.wake(pools=True)

    def finish_pool_delete(self, pool_pk: int, *, release: bool = True) -> list[NodeRef]:
        """Remove a deleting pool's nodes (rows, queued work) and the pool; returns its nodes.

        With ``release``, nodes on this machine are released here (their directories
        removed); the engine that holds a pool releases every node through its provider
        instead. A node on another machine that no engine releases is emptied by the next
        node that takes the machine.
        """
        now = self.clock()
        with self.store.begin() as conn:
            pool = conn.execute(select(pools).where(pools.c.pk == pool_pk)).one_or_none()
            node_rows = conn.execute(select(nodes).where(nodes.c.pool_pk == pool_pk)).all()
            for n in node_rows:
                requeue_tasks(conn, running_task_rows(conn, n.pk), now)
            conn.execute(delete(nodes).where(nodes.c.pool_pk == pool_pk))
            conn.execute(delete(pools).where(pools.c.pk == pool_pk))
        if pool is None:
            return []
        # A preempted node was released when it was preempted.
        refs = [node_ref(n, pool.id) for n in node_rows if n.state != NodeState.PREEMPTED.value]
        sku = node_source_of(pool.spec)
        directory = directory_of(self.store)
        if release and refs and directory.traits(sku).same_machine:
            provider = directory.get(pool.account, sku)
            for ref in refs:
                if provider is not None:
                    provider.release(f"delete-{pool_pk}-{ref.node_id}", ref)
        return refs

    def _check_mutable(self, row: Any) -> None:
        if row.state == PoolState.DELETING.value:
            raise BatchConflictError(
                "PoolBeingDeleted", f"The pool is being deleted: {row.id}", {"PoolId": row.id}
            )

    # -- nodes -----------------------------------------------------------------------------

    def list_nodes(self, pool_id: str) -> list[BatchNode]:
        """The nodes of a pool (leaving ones included until they are gone)."""
        with self.store.read() as conn:
            pool = self._pool_row(conn, pool_id)
            rows = conn.execute(
                select(nodes).where(nodes.c.pool_pk == pool.pk).order_by(nodes.c.pk)
            ).all()
            return [BatchNode.model_validate(node_view(r, pool.id, self.base_url)) for r in rows]

    def get_node(self, pool_id: str, node_id: str) -> BatchNode:
        """One node of a pool."""
        with self.store.read() as conn:
            pool = self._pool_row(conn, pool_id)
            row = node_row(conn, pool, node_id)
            return BatchNode.model_validate(node_view(row, pool.id, self.base_url))

    def get_node_metrics(self, pool_id: str, node_id: str) -> dict[str, Any]:
        """A node's liveness and latest resource readings (a prefect-batch extension).

        ``lastHeartbeat`` is the agent's last answer to the engine's ping (every
        ``heartbeat_interval_seconds``); the readings come from the agent's ``/proc`` with each
        autoscale sample (every ``autoscale_sample_interval_seconds``): ``cpuPercent``
        (0-100), ``memoryBytes`` and ``diskBytes`` in use, and the disk and network counters
        since the previous reading (``intervalSeconds`` ago). ``null`` until the first reading.
        """
        with self.store.read() as conn:
            pool = self._pool_row(conn, pool_id)
            row = node_row(conn, pool, node_id)
        readings = dict(row.metrics or {})
        taken = readings.pop("time", None)
        return {
            "poolId": pool.id,
            "nodeId": row.node_id,
            "state": row.state,
            "lastHeartbeat": iso(row.last_heartbeat) if row.last_heartbeat else None,
            "time": iso(taken) if isinstance(taken, int | float) else None,
            **{name: readings.get(name) for name in NODE_METRIC_FIELDS},
        }
