"""Slot assignment: which queued task goes to which node, in one pass.

The store hands over a pool's runnable tasks already in priority order (:func:`ordering_key`:
higher job priority first, then older jobs, then older tasks) and the pool's schedulable nodes
with their free task slots. :func:`assign` walks the tasks once and places each on a node with
enough free slots (``requiredSlots``), by the pool's ``taskSchedulingPolicy.nodeFillType``:

* ``spread``: the node with the most free slots (ties: the earlier node in ``nodes``);
* ``pack``: the most loaded node that still fits, i.e. the fewest free slots that are enough
  (ties: the earlier node).

A task whose ``affinityId`` names a node that fits goes there first (a soft hint, as in Azure).
A job's ``maxParallelTasks`` caps how many of its tasks run at once.

A multi-instance task (``instances`` > 1) is a gang: it needs that many distinct nodes with all
their slots free at once, and is placed on all of them or on none. Its assignment is one pair
per node, primary first, next to each other in the result. When the first gang of a pass does
not fit, the nodes it would take (the emptiest ones) are held for it for the rest of the pass,
so later, smaller tasks cannot keep them busy forever: they drain and the gang gets them — but
only when the pool has enough nodes (``gang_capacity``) for it to fit ever, or a gang too large
for the pool would hold nodes for good. Ordinary tasks pay one integer test for this.

Head-of-line choice: a task that fits on no node is skipped and later, smaller tasks may still
take the free slots. That keeps slots busy, at the price that a large task can wait while small
ones overtake it; it gets its turn on the next pass when a node has drained enough. A task held
back by its job's ``maxParallelTasks`` is skipped the same way.

Cost: O((n + m) log m) for ``n`` tasks and ``m`` nodes when tasks need one slot, using one lazy
heap of nodes per distinct ``requiredSlots`` value in the pass (each keeps the nodes with at
least that many free slots, best first); generally O(n·r·log m + r·m) for ``r`` distinct values,
and ``r`` is small (Azure caps slots per node at 256).

This module does not read or write the store, reserve slots, or look at node states; it returns
assignments, and the caller starts them (and must re-check, as the data may have moved on).
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from prefect_batch.core.states import NodeFillType

__all__ = [
    "NodeSlots",
    "QueuedTask",
    "assign",
    "ordering_key",
]


@dataclass(frozen=True)
class QueuedTask:
    """A runnable task waiting for slots.

    Attributes:
        key: The task's store key; returned in the assignment.
        job_key: Its job's store key (for ``maxParallelTasks``).
        required_slots: Slots it occupies on one node (``requiredSlots``, at least 1).
        node_affinity: The node (``node_key``) it prefers (from ``affinityInfo``), if any.
        instances: Nodes it needs at once (``multiInstanceSettings.numberOfInstances``).
    """

    key: int
    job_key: int
    required_slots: int = 1
    node_affinity: str | None = None
    instances: int = 1

    def __post_init__(self) -> None:
        if self.required_slots < 1:
            raise ValueError(f"required_slots must be >= 1, not {self.required_slots}")
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, not {self.instances}")


@dataclass
class NodeSlots:
    """A schedulable node and its slots, as the caller last saw them.

    :func:`assign` does not change it; it counts on its own copy. A negative ``free_slots``
    (slot accounting that briefly ran behind) counts as 0 rather than stopping the dispatch loop.

    Attributes:
        node_key: The node's key; returned in the assignment.
        free_slots: Slots not taken by running or preparing tasks.
        total_slots: The pool's ``taskSlotsPerNode``.
    """

    node_key: str
    free_slots: int
    total_slots: int


def ordering_key(job_priority: int, job_seq: int, task_seq: int) -> tuple[int, int, int]:
    """The key queued tasks are ordered by: higher priority, then older job, then older task.

    Args:
        job_priority: The job's ``priority`` (-1000 to 1000).
        job_seq: The job's creation sequence number (or creation time as an integer).
        task_seq: The task's creation sequence number within the service.

    Returns:
        ``(-job_priority, job_seq, task_seq)``; sort ascending.
    """
    return (-job_priority, job_seq, task_seq)


def assign(
    queued: Sequence[QueuedTask],
    nodes: Sequence[NodeSlots],
    fill_type: NodeFillType,
    *,
    job_running: Mapping[int, int] | None = None,
    job_max_parallel: Mapping[int, int] | None = None,
    gang_capacity: int | None = None,
) -> list[tuple[int, str]]:
    """Place queued tasks on free slots, in queue order.

    Args:
        queued: Runnable tasks in priority order (sorted by :func:`ordering_key`).
        nodes: Nodes that can take tasks now, with their free slots.
        fill_type: ``spread`` or ``pack``.
        job_running: Tasks per job already running or preparing (for ``maxParallelTasks``).
        job_max_parallel: ``maxParallelTasks`` per job; -1, 0 or absent means unlimited.
        gang_capacity: Nodes the pool could give one gang (its usable nodes, busy or not);
            None: the nodes in ``nodes``. A gang larger than this holds no nodes back.

    Returns:
        ``(task key, node key)`` pairs in the order the tasks were placed; a gang has one pair
        per node, its primary's first.
    """
    fill_type = NodeFillType(fill_type)
    free = [max(node.free_slots, 0) for node in nodes]
    index_of: dict[str, int] = {}
    for i, node in enumerate(nodes):
        index_of.setdefault(node.node_key, i)
    total_free = sum(free)
    running = dict(job_running or {})
    caps = {job: cap for job, cap in (job_max_parallel or {}).items() if cap > 0}
    heaps = _NodeHeaps(free, fill_type)

    capacity = len(nodes) if gang_capacity is None else gang_capacity
    holding = False  # nodes are held for the first gang that did not fit

    placed: list[tuple[int, str]] = []
    for task in queued:
        if total_free == 0:
            break  # nothing more can be placed
        need = task.required_slots
        cap = caps.get(task.job_key)
        if cap is not None and running.get(task.job_key, 0) >= cap:
            continue
        if task.instances > 1:
            if holding:
                continue
            chosen = _gang(free, nodes, task.instances)
            if chosen is None:
                if task.instances <= capacity:
                    holding = True
                    for i in _emptiest(free, nodes, task.instances):
                        total_free -= free[i]
                        free[i] = 0
                        heaps.changed(i)
                continue
            for i in chosen:
                total_free -= free[i]
                free[i] = 0
                heaps.changed(i)
                placed.append((task.key, nodes[i].node_key))
            running[task.job_key] = running.get(task.job_key, 0) + 1
            continue
        target: int | None = None
        if task.node_affinity is not None:
            preferred = index_of.get(task.node_affinity)
            if preferred is not None and free[preferred] >= need:
                target = preferred
        if target is None:
            target = heaps.best(need)
            if target is None:
                continue  # fits nowhere now; later, smaller tasks may still fit
        free[target] -= need
        total_free -= need
        heaps.changed(target)
        running[task.job_key] = running.get(task.job_key, 0) + 1
        placed.append((task.key, nodes[target].node_key))
    return placed


def _gang(free: list[int], nodes: Sequence[NodeSlots], count: int) -> list[int] | None:
    """``count`` distinct nodes with every slot free (earlier nodes first), or None."""
    chosen: list[int] = []
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if free[i] > 0 and free[i] >= node.total_slots and node.node_key not in seen:
            seen.add(node.node_key)
            chosen.append(i)
            if len(chosen) == count:
                return chosen
    return None


def _emptiest(free: list[int], nodes: Sequence[NodeSlots], count: int) -> list[int]:
    """The ``count`` nodes closest to having every slot free (ties: earlier nodes)."""
    ranked = sorted(
        (i for i in range(len(nodes)) if free[i] > 0),
        key=lambda i: (nodes[i].total_slots - free[i], i),
    )
    return ranked[:count]


class _NodeHeaps:
    """Per ``requiredSlots`` value ``r``: a lazy heap of the nodes with at least ``r`` free slots.

    An entry is ``(rank, node index, free slots when pushed)``; the rank puts the best node on top
    (``-free`` for spread, ``free`` for pack; the index breaks ties towards earlier nodes). Free
    slots only go down during a pass, so an entry whose free count is out of date is dropped when
    it reaches the top, and a node that falls below ``r`` never needs to come back to heap ``r``.
    """

    def __init__(self, free: list[int], fill_type: NodeFillType) -> None:
        self._free = free
        self._spread = fill_type is NodeFillType.SPREAD
        self._heaps: dict[int, list[tuple[int, int, int]]] = {}

    def _rank(self, free: int) -> int:
        return -free if self._spread else free

    def best(self, need: int) -> int | None:
        """The index of the best node with ``need`` free slots, or ``None``."""
        heap = self._heaps.get(need)
        if heap is None:
            heap = [(self._rank(f), i, f) for i, f in enumerate(self._free) if f >= need]
            heapq.heapify(heap)
            self._heaps[need] = heap
        while heap:
            _, index, pushed_free = heap[0]
            if pushed_free == self._free[index]:
                return index
            heapq.heappop(heap)  # stale: a newer entry was pushed if the node still fits
        return None

    def changed(self, index: int) -> None:
        """Record that node ``index`` has fewer free slots now."""
        now_free = self._free[index]
        for need, heap in self._heaps.items():
            if now_free >= need:
                heapq.heappush(heap, (self._rank(now_free), index, now_free))
