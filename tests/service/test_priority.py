"""Queue order on a pool: job priority first, then job age, then task age; no preemption.

Every test runs on a one-node, one-slot pool, so tasks run one at a time and their
``executionInfo.startTime`` order is the dispatch order. A *gate* task holds the slot while the
test queues the work, so the order never depends on how fast anything is.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task

POOL = "one-slot"


@pytest.fixture(scope="module", autouse=True)
def one_slot_pool(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 1}
    )
    wait_for_nodes(client, POOL, 1, timeout=30)


def _hold_slot(client: BatchClient, make_job: Callable[..., str], gate: Path) -> str:
    """A job whose only task occupies the pool's slot until the gate opens."""
    holder = make_job(POOL)
    client.create_task(holder, {"id": "hold", "commandLine": gate_command(gate)})
    wait_for_task(client, holder, "hold", "running")
    return holder


def _start_order(client: BatchClient, *jobs: str) -> list[tuple[str, str]]:
    """``(job, task)`` of every task of ``jobs``, by start time."""
    started = []
    for job in jobs:
        for t in client.list_tasks(job):
            assert t.execution_info is not None and t.execution_info.start_time is not None, t.id
            started.append((t.execution_info.start_time, job, t.id))
    return [(job, task) for _, job, task in sorted(started)]


def test_higher_priority_job_goes_first_without_preempting(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    low = make_job(POOL, priority=0)
    client.create_task(low, {"id": "long", "commandLine": gate_command(gate)})
    wait_for_task(client, low, "long", "running")
    client.create_tasks(low, [{"id": f"low{i}", "commandLine": "true"} for i in range(2)])
    high = make_job(POOL, priority=100)
    client.create_tasks(high, [{"id": f"high{i}", "commandLine": "true"} for i in range(2)])
    # The running low-priority task is not preempted by the queued high-priority ones.
    assert client.get_task(low, "long").state == "running"
    gate.touch()
    client.wait_for_job(low, timeout=30)
    client.wait_for_job(high, timeout=30)

    long = client.get_task(low, "long")
    assert long.execution_info.result == "success"
    assert not long.execution_info.requeue_count
    assert _start_order(client, low, high) == [
        (low, "long"),
        (high, "high0"),
        (high, "high1"),
        (low, "low0"),
        (low, "low1"),
    ]


def test_equal_priority_runs_older_job_first_then_older_task(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    holder = _hold_slot(client, make_job, gate)
    first = make_job(POOL)
    client.create_tasks(
        first, [{"id": "a0", "commandLine": "true"}, {"id": "a1", "commandLine": "true"}]
    )
    second = make_job(POOL)
    client.create_task(second, {"id": "b0", "commandLine": "true"})
    client.create_task(first, {"id": "a2", "commandLine": "true"})  # added after b0
    client.create_task(second, {"id": "b1", "commandLine": "true"})
    gate.touch()
    for job in (holder, first, second):
        client.wait_for_job(job, timeout=30)
    assert _start_order(client, first, second) == [
        (first, "a0"),
        (first, "a1"),
        (first, "a2"),
        (second, "b0"),
        (second, "b1"),
    ]


def test_raising_a_job_priority_reorders_its_queued_tasks(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    holder = _hold_slot(client, make_job, gate)
    early = make_job(POOL)
    client.create_tasks(early, [{"id": f"e{i}", "commandLine": "true"} for i in range(2)])
    late = make_job(POOL)
    client.create_tasks(late, [{"id": f"l{i}", "commandLine": "true"} for i in range(2)])
    client.update_job(late, {"priority": 500})
    assert client.get_job(late).priority == 500
    gate.touch()
    for job in (holder, early, late):
        client.wait_for_job(job, timeout=30)
    assert _start_order(client, early, late) == [
        (late, "l0"),
        (late, "l1"),
        (early, "e0"),
        (early, "e1"),
    ]


def test_negative_priority_waits_behind_default(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    holder = _hold_slot(client, make_job, gate)
    low = make_job(POOL, priority=-1000)
    client.create_task(low, {"id": "low", "commandLine": "true"})
    normal = make_job(POOL)
    client.create_task(normal, {"id": "normal", "commandLine": "true"})
    gate.touch()
    for job in (holder, low, normal):
        client.wait_for_job(job, timeout=30)
    assert _start_order(client, low, normal) == [(normal, "normal"), (low, "low")]
