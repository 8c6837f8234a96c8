"""Pools: where tasks land (spread / pack, requiredSlots), resizing, deleting."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, BatchNotFoundError
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until


def _pool(client: BatchClient, pool_id: str, nodes: int, slots: int, fill: str = "spread") -> None:
    client.create_pool(
        {
            "id": pool_id,
            "vmSize": "local",
            "targetDedicatedNodes": nodes,
            "taskSlotsPerNode": slots,
            "taskSchedulingPolicy": {"nodeFillType": fill},
        }
    )
    wait_for_nodes(client, pool_id, nodes, timeout=30)


def _running_nodes(client: BatchClient, job: str) -> Counter[str]:
    return Counter(t.node_info.node_id for t in client.list_tasks(job, state="running"))


@pytest.mark.parametrize(("fill", "per_node"), [("spread", [2, 2]), ("pack", [4])])
def test_fill_type_places_tasks(
    client: BatchClient, make_job: Callable[..., str], gate: Path, fill: str, per_node: list[int]
) -> None:
    pool = f"fill-{fill}"
    _pool(client, pool, nodes=2, slots=4, fill=fill)
    job = make_job(pool)
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": gate_command(gate)} for i in range(4)])
    wait_until(
        lambda: len(client.list_tasks(job, state="running")) == 4,
        timeout=20,
        message="4 tasks running",
    )
    assert sorted(_running_nodes(client, job).values()) == per_node
    nodes = {n.id: n for n in client.list_nodes(pool)}
    for node_id, count in _running_nodes(client, job).items():
        assert nodes[node_id].running_tasks_count == count
        assert nodes[node_id].state == "running"
    gate.touch()
    client.wait_for_job(job, timeout=30)
    assert client.get_job_task_counts(job).task_counts.succeeded == 4
    assert sum(n.total_tasks_run for n in client.list_nodes(pool)) == 4
    assert sum(n.total_tasks_succeeded for n in client.list_nodes(pool)) == 4


def test_required_slots_fill_whole_nodes(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "two-by-two"
    _pool(client, pool, nodes=2, slots=2)
    job = make_job(pool)
    client.create_tasks(
        job,
        [
            {"id": f"big{i}", "commandLine": gate_command(gate), "requiredSlots": 2}
            for i in range(3)
        ],
    )
    wait_until(
        lambda: len(client.list_tasks(job, state="running")) == 2,
        timeout=20,
        message="2 tasks running",
    )
    assert sorted(_running_nodes(client, job).values()) == [1, 1]
    counts = client.get_job_task_counts(job)
    assert (counts.task_counts.running, counts.task_counts.active) == (2, 1)
    assert (counts.task_slot_counts.running, counts.task_slot_counts.active) == (4, 2)
    assert all(n.running_task_slots_count == 2 for n in client.list_nodes(pool))
    # A one-slot task does not fit either while the big ones run.
    client.create_task(job, {"id": "small", "commandLine": "true"})
    assert client.get_task(job, "small").state == "active"
    gate.touch()
    client.wait_for_job(job, timeout=30)
    counts = client.get_job_task_counts(job)
    assert counts.task_counts.succeeded == 4
    assert counts.task_slot_counts.succeeded == 7
    assert {t.required_slots for t in client.list_tasks(job)} == {1, 2}


def test_max_parallel_tasks_caps_a_job(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "parallel"
    _pool(client, pool, nodes=1, slots=4)
    capped = make_job(pool, maxParallelTasks=1)
    client.create_tasks(
        capped, [{"id": f"c{i}", "commandLine": gate_command(gate)} for i in range(3)]
    )
    other = make_job(pool)
    client.create_tasks(
        other, [{"id": f"o{i}", "commandLine": gate_command(gate)} for i in range(2)]
    )
    # The other job's tasks fill free slots the capped job may not use.
    wait_until(
        lambda: len(client.list_tasks(other, state="running")) == 2,
        timeout=20,
        message="other job running",
    )
    wait_until(
        lambda: len(client.list_tasks(capped, state="running")) == 1,
        timeout=20,
        message="one capped task running",
    )
    assert client.get_job_task_counts(capped).task_counts.active == 2
    client.update_job(capped, {"maxParallelTasks": 2})
    wait_until(
        lambda: len(client.list_tasks(capped, state="running")) == 2,
        timeout=20,
        message="two capped tasks running after the update",
    )
    gate.touch()
    client.wait_for_job(capped, timeout=30)
    client.wait_for_job(other, timeout=30)
    assert client.get_job_task_counts(capped).task_counts.succeeded == 3


def test_counts_match_the_task_list(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "counts"
    _pool(client, pool, nodes=1, slots=3)
    job = make_job(pool)
    client.create_tasks(
        job,
        [
            {"id": "ok", "commandLine": "true"},
            {"id": "bad", "commandLine": "false"},
            {"id": "hold1", "commandLine": gate_command(gate), "requiredSlots": 2},
            {"id": "queued", "commandLine": "true", "requiredSlots": 3},
        ],
    )
    wait_for_task(client, job, "hold1", "running")
    wait_for_task(client, job, "ok")
    wait_for_task(client, job, "bad")
    tasks = client.list_tasks(job)
    counts = client.get_job_task_counts(job)
    by_state = Counter(t.state for t in tasks)
    assert counts.task_counts.active == by_state["active"] == 1
    assert counts.task_counts.running == by_state["running"] + by_state["preparing"] == 1
    assert counts.task_counts.completed == by_state["completed"] == 2
    assert counts.task_counts.succeeded == 1
    assert counts.task_counts.failed == 1
    slots = Counter()
    for t in tasks:
        slots[t.state] += t.required_slots
    assert counts.task_slot_counts.active == slots["active"] == 3
    assert counts.task_slot_counts.running == slots["running"] == 2
    assert counts.task_slot_counts.completed == 2
    assert [t.id for t in client.list_tasks(job, state="completed")] == ["ok", "bad"]
    gate.touch()
    client.wait_for_job(job, timeout=30)


def test_resize_up_and_down(client: BatchClient, make_job: Callable[..., str]) -> None:
    pool = "resizable"
    _pool(client, pool, nodes=1, slots=1)
    first = {n.id for n in client.list_nodes(pool)}
    client.resize_pool(pool, {"targetDedicatedNodes": 3})
    got = client.get_pool(pool)
    assert got.target_dedicated_nodes == 3
    nodes = wait_for_nodes(client, pool, 3, timeout=30)
    assert first <= {n.id for n in nodes}
    got = client.get_pool(pool)
    assert (got.allocation_state, got.current_dedicated_nodes) == ("steady", 3)

    # The new nodes take work.
    job = make_job(pool)
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": "true"} for i in range(3)])
    client.wait_for_job(job, timeout=30)
    assert {t.node_info.node_id for t in client.list_tasks(job)} <= {n.id for n in nodes}
    assert client.get_job_task_counts(job).task_counts.succeeded == 3

    three = {n.id for n in nodes}
    client.resize_pool(pool, {"targetDedicatedNodes": 1})
    nodes = wait_for_nodes(client, pool, 1, timeout=30)
    got = client.get_pool(pool)
    assert (got.allocation_state, got.current_dedicated_nodes) == ("steady", 1)
    removed = three - {n.id for n in nodes}
    assert len(removed) == 2
    root = client.settings.effective_node_root
    wait_until(
        lambda: not any((root / n).exists() for n in removed),
        timeout=20,
        message="removed nodes' directories deleted",
    )


def test_resize_down_requeues_running_tasks(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path, gate: Path
) -> None:
    pool = "shrinking"
    _pool(client, pool, nodes=2, slots=1)
    job = make_job(pool)
    marker = f"{tmp_path}/ran-$AZ_BATCH_TASK_ID"
    # The first run of each task waits for the gate; a second run (after a requeue) ends at once.
    first_run_waits = gate_command(gate).replace(
        "/bin/sh -c '", f"/bin/sh -c '[ -e {marker} ] && exit 0; touch {marker}; ", 1
    )
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": first_run_waits} for i in range(2)])
    wait_until(
        lambda: len(client.list_tasks(job, state="running")) == 2,
        timeout=20,
        message="both running",
    )
    client.resize_pool(pool, {"targetDedicatedNodes": 1, "nodeDeallocationOption": "requeue"})
    wait_for_nodes(client, pool, 1, states=("running",), timeout=30)
    requeued = [t for t in client.list_tasks(job) if t.state == "active"]
    assert len(requeued) == 1
    assert requeued[0].execution_info.requeue_count == 1
    gate.touch()
    client.wait_for_job(job, timeout=30)
    tasks = client.list_tasks(job)
    assert {t.execution_info.result for t in tasks} == {"success"}
    assert sorted(t.execution_info.requeue_count or 0 for t in tasks) == [0, 1]
    assert all(not t.execution_info.retry_count for t in tasks)


def test_delete_pool_removes_its_nodes_and_their_directories(client: BatchClient) -> None:
    pool = "doomed"
    _pool(client, pool, nodes=2, slots=1)
    root = client.settings.effective_node_root
    node_ids = [n.id for n in client.list_nodes(pool)]
    assert all((root / n).is_dir() for n in node_ids)
    client.delete_pool(pool)

    def gone() -> bool:
        return not client.pool_exists(pool)

    wait_until(gone, timeout=30, message="pool deleted")
    with pytest.raises(BatchNotFoundError) as err:
        client.list_nodes(pool)
    assert err.value.code == "PoolNotFound"
    wait_until(
        lambda: not any((root / n).exists() for n in node_ids),
        timeout=20,
        message="node directories removed",
    )
    # The id can be used again.
    client.create_pool({"id": pool, "vmSize": "local", "targetDedicatedNodes": 0})
    assert client.get_pool(pool).current_dedicated_nodes == 0


def test_a_job_may_name_a_pool_before_it_exists(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job("Late-Pool")
    client.create_task(job, {"id": "t", "commandLine": "true"})
    assert client.get_task(job, "t").state == "active"
    _pool(client, "late-pool", nodes=1, slots=1)  # the same pool, ids ignore case
    done = wait_for_task(client, job, "t")
    assert done.execution_info.result == "success"
    assert done.node_info.pool_id == "late-pool"
