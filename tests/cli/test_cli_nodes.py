"""``prefect-batch node reboot|reimage|remove|disable-scheduling|enable-scheduling``,
``job prep-status`` and ``pool resize --deallocation``, against real local nodes.

The commands only record requests; an engine client on the same ``--home`` (``client_factory``)
runs the nodes and carries the requests out.
"""

from __future__ import annotations

import json
import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

pytestmark = pytest.mark.slow


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def _boots(path: Path) -> Counter[str]:
    return Counter(path.read_text().split() if path.exists() else [])


@pytest.fixture
def engine(client_factory: Callable[..., BatchClient], home: Path) -> BatchClient:
    """An embedded client with an engine on the CLI's home."""
    return client_factory(home)


def test_node_operations(cli, engine: BatchClient, tmp_path: Path) -> None:
    boots = tmp_path / "boots"
    engine.create_pool(
        {
            "id": "p",
            "vmSize": "local",
            "targetDedicatedNodes": 2,
            "startTask": {"commandLine": _sh(f"echo $AZ_BATCH_NODE_ID >> {boots}")},
        }
    )
    first, second = (n.id for n in wait_for_nodes(engine, "p", 2, timeout=30))

    node = json.loads(
        cli("node", "disable-scheduling", "p", first, "--option", "taskcompletion", "--json").stdout
    )
    assert (node["id"], node["schedulingState"]) == (first, "disabled")
    wait_until(
        lambda: engine.get_node("p", first).state == "offline", timeout=30, message="node offline"
    )
    failed = cli("node", "disable-scheduling", "p", first, expect=1)
    assert "Error NodeAlreadyInTargetSchedulingState" in failed.stderr
    shown = cli("node", "enable-scheduling", "p", first).stdout
    assert "Scheduling enabled" in shown and first in shown
    assert engine.get_node("p", first).scheduling_state == "enabled"
    wait_until(lambda: engine.get_node("p", first).state == "idle", timeout=30, message="node idle")

    node = json.loads(cli("node", "reboot", "p", first, "--option", "terminate", "--json").stdout)
    assert node["id"] == first
    wait_until(lambda: _boots(boots)[first] == 2, timeout=30, message="rebooted")
    wait_for_nodes(engine, "p", 2, timeout=30)

    job = "j"
    engine.create_job({"id": job, "poolInfo": {"poolId": "p"}})
    engine.create_task(
        job,
        {
            "id": "mark",
            "commandLine": _sh("echo x > $AZ_BATCH_NODE_SHARED_DIR/marker; echo $AZ_BATCH_NODE_ID"),
        },
    )
    marked = wait_for_task(engine, job, "mark").node_info.node_id
    assert "shared/marker" in {f.name for f in engine.list_node_files("p", marked, recursive=True)}
    out = cli("node", "reimage", "p", marked).stdout
    assert "Reimage of node" in out and marked in out
    wait_until(
        lambda: _boots(boots)[marked] == (3 if marked == first else 2),
        timeout=30,
        message="reimaged",
    )
    wait_for_nodes(engine, "p", 2, timeout=30)
    assert "shared/marker" not in {
        f.name for f in engine.list_node_files("p", marked, recursive=True)
    }

    pool = json.loads(
        cli(
            "node", "remove", "p", second, "--option", "requeue", "--resize-timeout", "60", "--json"
        ).stdout
    )
    assert (pool["targetDedicatedNodes"], pool["resizeTimeout"]) == (1, "PT1M")
    (left,) = wait_for_nodes(engine, "p", 1, timeout=30)
    assert left.id == first

    assert "Error NodeNotFound" in cli("node", "reboot", "p", "tvm-nope", expect=1).stderr
    assert "Error PoolNotFound" in cli("node", "reimage", "nope", first, expect=1).stderr
    cli("node", "reboot", "p", first, "--option", "sideways", expect=2)
    # Azure has no retaineddata for disabling scheduling.
    cli("node", "disable-scheduling", "p", first, "--option", "retaineddata", expect=2)
    assert engine.get_node("p", first).scheduling_state == "enabled"


def test_job_prep_status(cli, engine: BatchClient) -> None:
    engine.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    (node,) = wait_for_nodes(engine, "p", 1, timeout=30)
    engine.create_job(
        {
            "id": "j",
            "poolInfo": {"poolId": "p"},
            "jobPreparationTask": {"commandLine": "true"},
            "jobReleaseTask": {"commandLine": _sh("exit 3")},
        }
    )
    engine.create_task("j", {"id": "t", "commandLine": "true"})
    wait_for_task(engine, "j", "t")
    engine.terminate_job("j")
    wait_until(
        lambda: engine.get_job("j").state == "completed", timeout=30, message="job completed"
    )

    (status,) = json.loads(cli("job", "prep-status", "j", "--json").stdout)
    assert (status["nodeId"], status["poolId"]) == (node.id, "p")
    prep, release = status["jobPreparationTaskExecutionInfo"], status["jobReleaseTaskExecutionInfo"]
    assert (prep["state"], prep["result"], prep["exitCode"]) == ("completed", "success", 0)
    assert (release["state"], release["result"], release["exitCode"]) == ("completed", "failure", 3)
    table = cli("job", "prep-status", "j").stdout
    row = next(line for line in table.splitlines() if node.id in line)
    assert "success" in row and "failure" in row

    engine.create_job({"id": "plain", "poolInfo": {"poolId": "p"}})
    failed = cli("job", "prep-status", "plain", expect=1)
    assert "Error JobPreparationTaskNotSpecified" in failed.stderr
    assert "Error JobNotFound" in cli("job", "prep-status", "nope", expect=1).stderr


def test_pool_resize_with_deallocation(cli, engine: BatchClient, gate: Path) -> None:
    engine.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    (node,) = wait_for_nodes(engine, "p", 1, timeout=30)
    engine.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    engine.create_task("j", {"id": "t", "commandLine": gate_command(gate)})
    wait_for_task(engine, "j", "t", "running")
    pool = json.loads(
        cli(
            "pool", "resize", "p", "--nodes", "0", "--deallocation", "taskcompletion", "--json"
        ).stdout
    )
    assert (pool["targetDedicatedNodes"], pool["allocationState"]) == (0, "resizing")
    # The node waits for its task; meanwhile the pool cannot be resized again.
    assert "Error PoolBeingResized" in cli("pool", "resize", "p", "--nodes", "2", expect=1).stderr
    assert engine.get_task("j", "t").state == "running"
    gate.touch()
    task = wait_for_task(engine, "j", "t")
    assert task.execution_info.result == "success"
    assert [a["nodeId"] for a in engine.list_task_attempts("j", "t")] == [node.id]
    wait_for_nodes(engine, "p", 0, timeout=30)
    cli("pool", "resize", "p", "--nodes", "1", "--deallocation", "sideways", expect=2)
