"""Slot assignment: spread and pack, required slots, max parallel tasks, affinity, scale."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping, Sequence

import pytest

from prefect_batch.core.scheduler import NodeSlots, QueuedTask, assign, ordering_key
from prefect_batch.core.states import NodeFillType

SPREAD, PACK = NodeFillType.SPREAD, NodeFillType.PACK


def nodes(*free_total: tuple[int, int]) -> list[NodeSlots]:
    return [NodeSlots(f"n{i}", free, total) for i, (free, total) in enumerate(free_total)]


def tasks(*slots: int, job: int = 1) -> list[QueuedTask]:
    return [QueuedTask(key=i, job_key=job, required_slots=s) for i, s in enumerate(slots)]


def reference(
    queued: Sequence[QueuedTask],
    pool: Sequence[NodeSlots],
    fill_type: NodeFillType,
    job_running: Mapping[int, int] | None = None,
    job_max_parallel: Mapping[int, int] | None = None,
) -> list[tuple[int, str]]:
    """The rules written the obvious O(n*m) way, to check the heap version against."""
    free = [max(n.free_slots, 0) for n in pool]
    running = Counter(job_running or {})
    placed = []
    for t in queued:
        cap = (job_max_parallel or {}).get(t.job_key, -1)
        if cap > 0 and running[t.job_key] >= cap:
            continue
        fits = [i for i in range(len(pool)) if free[i] >= t.required_slots]
        if not fits:
            continue
        preferred = [i for i in fits if pool[i].node_key == t.node_affinity]
        if preferred:
            best = preferred[0]
        elif fill_type is NodeFillType.SPREAD:
            best = min(fits, key=lambda i: (-free[i], i))
        else:
            best = min(fits, key=lambda i: (free[i], i))
        free[best] -= t.required_slots
        running[t.job_key] += 1
        placed.append((t.key, pool[best].node_key))
    return placed


PLACEMENT_CASES = [
    # (fill type, nodes (free, total), required slots per task, expected node per task)
    pytest.param(
        SPREAD, [(4, 4), (4, 4)], [1, 1, 1, 1], ["n0", "n1", "n0", "n1"], id="spread-even"
    ),
    pytest.param(PACK, [(4, 4), (4, 4)], [1, 1, 1, 1], ["n0", "n0", "n0", "n0"], id="pack-fills"),
    pytest.param(PACK, [(4, 4), (2, 4)], [1, 1, 1], ["n1", "n1", "n0"], id="pack-most-loaded"),
    pytest.param(SPREAD, [(2, 4), (3, 4)], [1, 1, 1], ["n1", "n0", "n1"], id="spread-most-free"),
    pytest.param(SPREAD, [(1, 1), (1, 1), (1, 1)], [1, 1, 1, 1], ["n0", "n1", "n2"], id="full"),
    pytest.param(SPREAD, [(2, 4), (3, 4)], [3, 2], ["n1", "n0"], id="spread-required-slots"),
    pytest.param(PACK, [(4, 4), (2, 4)], [3, 2], ["n0", "n1"], id="pack-required-slots"),
    pytest.param(PACK, [(4, 4), (3, 4)], [3], ["n1"], id="pack-tightest-fit"),
    pytest.param(SPREAD, [(2, 2), (2, 2)], [4, 1], ["n0"], id="too-big-skipped"),
    pytest.param(SPREAD, [(2, 4), (2, 4)], [3, 1, 1], ["n0", "n1"], id="head-of-line-skip"),
    pytest.param(PACK, [(0, 4), (0, 4)], [1], [], id="no-free-slots"),
    pytest.param(PACK, [], [1], [], id="no-nodes"),
]


@pytest.mark.parametrize(("fill", "pool", "slots", "expected"), PLACEMENT_CASES)
def test_placement(
    fill: NodeFillType, pool: list[tuple[int, int]], slots: list[int], expected: list[str]
) -> None:
    queued = tasks(*slots)
    result = assign(queued, nodes(*pool), fill)
    assert [node for _, node in result] == expected
    assert result == reference(queued, nodes(*pool), fill)


def test_placed_task_keys_keep_queue_order() -> None:
    queued = tasks(1, 5, 1, 1)  # the 5-slot task fits nowhere
    assert [k for k, _ in assign(queued, nodes((2, 2), (1, 1)), SPREAD)] == [0, 2, 3]


def test_inputs_are_not_changed() -> None:
    pool = nodes((3, 4))
    assign(tasks(1, 1), pool, PACK)
    assert pool[0].free_slots == 3


def test_fill_type_accepts_wire_value() -> None:
    assert assign(tasks(1), nodes((1, 1)), "pack") == [(0, "n0")]  # type: ignore[arg-type]


MAX_PARALLEL_CASES = [
    # (max parallel per job, already running per job, tasks (job) in order, placed keys)
    ({1: 2}, {}, [1, 1, 1, 2, 2], [0, 1, 3, 4]),
    ({1: 2}, {1: 1}, [1, 1, 1], [0]),
    ({1: 2}, {1: 2}, [1, 1, 2], [2]),
    ({1: -1}, {}, [1, 1, 1], [0, 1, 2]),  # -1: unlimited
    ({1: 0}, {}, [1, 1, 1], [0, 1, 2]),
    ({}, {1: 50}, [1, 1], [0, 1]),  # no cap, running does not matter
]


@pytest.mark.parametrize(("caps", "running", "jobs", "placed"), MAX_PARALLEL_CASES)
def test_max_parallel_tasks(
    caps: dict[int, int], running: dict[int, int], jobs: list[int], placed: list[int]
) -> None:
    queued = [QueuedTask(key=i, job_key=j) for i, j in enumerate(jobs)]
    pool = nodes((10, 10))
    result = assign(queued, pool, SPREAD, job_running=running, job_max_parallel=caps)
    assert [k for k, _ in result] == placed


AFFINITY_CASES = [
    # (fill, nodes, affinity, required slots, expected node)
    (SPREAD, [(1, 4), (4, 4)], "n0", 1, "n0"),  # preferred over the emptier node
    (PACK, [(4, 4), (1, 4)], "n0", 1, "n0"),  # preferred over the fuller node
    (SPREAD, [(1, 4), (4, 4)], "n0", 2, "n1"),  # preferred node does not fit: fall back
    (SPREAD, [(1, 4), (4, 4)], "gone", 1, "n1"),  # unknown node: ignored
]


@pytest.mark.parametrize(("fill", "pool", "affinity", "slots", "expected"), AFFINITY_CASES)
def test_affinity(
    fill: NodeFillType, pool: list[tuple[int, int]], affinity: str, slots: int, expected: str
) -> None:
    queued = [QueuedTask(key=0, job_key=1, required_slots=slots, node_affinity=affinity)]
    assert assign(queued, nodes(*pool), fill) == [(0, expected)]


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        QueuedTask(key=0, job_key=0, required_slots=0)


def test_negative_free_slots_count_as_none() -> None:
    pool = [NodeSlots("n0", free_slots=-1, total_slots=4), NodeSlots("n1", 1, 4)]
    assert assign(tasks(1, 1), pool, PACK) == [(0, "n1")]


@pytest.mark.parametrize("fill", [SPREAD, PACK])
@pytest.mark.parametrize("seed", range(25))
def test_matches_reference_on_random_inputs(fill: NodeFillType, seed: int) -> None:
    rng = random.Random(seed)
    pool = []
    for i in range(rng.randint(1, 12)):
        total = rng.randint(1, 8)
        pool.append(NodeSlots(f"n{i}", rng.randint(-1, total), total))
    queued = [
        QueuedTask(
            key=k,
            job_key=rng.randint(1, 4),
            required_slots=rng.choice([1, 1, 1, 2, 3, 5]),
            node_affinity=rng.choice([None, None, f"n{rng.randint(0, 14)}"]),
        )
        for k in range(rng.randint(0, 80))
    ]
    caps = {j: rng.choice([-1, 0, 1, 3]) for j in range(1, 5)}
    running = {j: rng.randint(0, 2) for j in range(1, 5)}
    got = assign(queued, pool, fill, job_running=running, job_max_parallel=caps)
    assert got == reference(queued, pool, fill, running, caps)


@pytest.mark.parametrize("fill", [SPREAD, PACK])
def test_100k_tasks_on_10_nodes(fill: NodeFillType) -> None:
    queued = [QueuedTask(key=k, job_key=k % 3) for k in range(100_000)]
    pool = [NodeSlots(f"n{i}", 10_000, 10_000) for i in range(10)]
    result = assign(queued, pool, fill)
    assert [k for k, _ in result] == list(range(100_000))  # every task, in queue order
    per_node = Counter(node for _, node in result)
    assert per_node == {f"n{i}": 10_000 for i in range(10)}  # no node over its slots
    if fill is SPREAD:
        assert [node for _, node in result[:12]] == [f"n{i}" for i in range(10)] + ["n0", "n1"]
    else:
        assert {node for _, node in result[:10_000]} == {"n0"}


def test_100k_tasks_more_than_slots() -> None:
    queued = [QueuedTask(key=k, job_key=1, required_slots=1 + k % 2) for k in range(100_000)]
    pool = [NodeSlots(f"n{i}", 16, 16) for i in range(10)]
    result = assign(queued, pool, SPREAD)
    used: Counter[str] = Counter()
    for key, node in result:
        used[node] += 1 + key % 2
    assert used == {f"n{i}": 16 for i in range(10)}  # every slot taken, none over
    assert result == reference(queued, pool, SPREAD)


def test_ordering_key() -> None:
    keys = [
        ordering_key(job_priority=0, job_seq=1, task_seq=5),
        ordering_key(job_priority=100, job_seq=2, task_seq=9),
        ordering_key(job_priority=0, job_seq=1, task_seq=2),
        ordering_key(job_priority=-5, job_seq=0, task_seq=0),
        ordering_key(job_priority=0, job_seq=0, task_seq=7),
    ]
    assert ordering_key(7, 1, 2) == (-7, 1, 2)
    assert sorted(keys) == [(-100, 2, 9), (0, 0, 7), (0, 1, 2), (0, 1, 5), (5, 0, 0)]


# -- multi-instance tasks (gangs) -----------------------------------------------------------


def gang(key: int, instances: int, job: int = 1) -> QueuedTask:
    return QueuedTask(key=key, job_key=job, instances=instances)


@pytest.mark.parametrize("fill", [SPREAD, PACK])
def test_gang_takes_distinct_whole_nodes(fill: NodeFillType) -> None:
    pool = nodes((1, 1), (1, 1), (1, 1), (1, 1))
    placed = assign([gang(0, 3), QueuedTask(key=1, job_key=1)], pool, fill)
    assert placed == [(0, "n0"), (0, "n1"), (0, "n2"), (1, "n3")]


def test_gang_is_all_or_nothing() -> None:
    # Two nodes free, a gang of three: nothing of it is placed.
    assert assign([gang(0, 3)], nodes((1, 1), (1, 1)), SPREAD, gang_capacity=2) == []


def test_gang_needs_every_slot_of_a_node() -> None:
    # A node with one slot of two taken cannot host a subtask.
    pool = nodes((2, 2), (1, 2), (2, 2))
    assert assign([gang(0, 3)], pool, PACK) == []
    assert assign([gang(0, 2)], pool, PACK) == [(0, "n0"), (0, "n2")]


def test_waiting_gang_holds_the_emptiest_nodes_against_later_tasks() -> None:
    # The gang needs 3 whole nodes; n0 and n2 are idle, n1 half busy. Without holding, the
    # small tasks behind it would keep n0 and n2 busy and the gang would never start.
    pool = nodes((2, 2), (1, 2), (2, 2), (1, 2))
    queued = [gang(0, 3), *[QueuedTask(key=k, job_key=1) for k in range(1, 5)]]
    placed = assign(queued, pool, SPREAD, gang_capacity=4)
    # Held: n0, n2 (idle) and n1 (closest to idle after them; ties go to the earlier node).
    assert placed == [(1, "n3")]


def test_gang_larger_than_the_pool_holds_nothing() -> None:
    pool = nodes((1, 1), (1, 1))
    placed = assign([gang(0, 5), QueuedTask(key=1, job_key=1)], pool, SPREAD, gang_capacity=2)
    assert placed == [(1, "n0")]


def test_only_the_first_waiting_gang_holds_nodes() -> None:
    pool = nodes((1, 1), (1, 1), (1, 1))
    queued = [gang(0, 3), gang(1, 2), QueuedTask(key=2, job_key=1)]
    # n0..n2 are all idle, so the first gang fits and takes them all.
    assert assign(queued, pool, SPREAD) == [(0, "n0"), (0, "n1"), (0, "n2")]
    pool = nodes((1, 1), (1, 1), (0, 1))
    # The first gang waits and holds n0, n1; the second gang is not placed past it.
    assert assign(queued, pool, SPREAD, gang_capacity=3) == []


def test_gang_counts_once_for_max_parallel_tasks() -> None:
    pool = nodes((1, 1), (1, 1), (1, 1))
    queued = [gang(0, 2), QueuedTask(key=1, job_key=1), QueuedTask(key=2, job_key=1)]
    placed = assign(queued, pool, SPREAD, job_max_parallel={1: 2})
    assert placed == [(0, "n0"), (0, "n1"), (1, "n2")]


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instances"):
        QueuedTask(key=0, job_key=1, instances=0)
