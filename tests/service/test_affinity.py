"""``affinityInfo`` reaches the scheduler: tasks that name a node's ``affinityId`` run there.

A pool of two local nodes with ``spread`` and room for every task on either: without the hint the
first task would go to the first node (the tie-break); with it every task runs on the node named.
"""

from __future__ import annotations

from pathlib import Path

from prefect_batch.testing import embedded_client, wait_for_nodes, wait_for_task


def test_tasks_run_on_the_node_their_affinity_names(tmp_path: Path) -> None:
    with embedded_client(tmp_path / "home") as client:
        client.create_pool(
            {"id": "p", "vmSize": "local", "targetDedicatedNodes": 2, "taskSlotsPerNode": 4}
        )
        nodes = wait_for_nodes(client, "p", 2, timeout=60)
        target = sorted(nodes, key=lambda n: n.id)[-1]
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        ids = [f"t{i}" for i in range(3)]
        client.create_tasks(
            "j",
            [
                {"id": t, "commandLine": "true", "affinityInfo": {"affinityId": target.affinity_id}}
                for t in ids
            ],
        )
        ran_on = {wait_for_task(client, "j", t, timeout=60).node_info.node_id for t in ids}
        assert ran_on == {target.id}
        other = next(n for n in nodes if n.id != target.id)
        client.create_task(
            "j",
            {
                "id": "other",
                "commandLine": "true",
                "affinityInfo": {"affinityId": other.affinity_id},
            },
        )
        assert wait_for_task(client, "j", "other", timeout=60).node_info.node_id == other.id
