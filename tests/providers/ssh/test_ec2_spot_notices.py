"""EC2 spot notices from instance metadata, and orphaned agents, end to end.

moto's EC2 runs on 127.0.0.1, the "instances" are the sshd servers on 127.0.0.2-4, and the spot
nodes' agents poll a fake IMDSv2 (``prefect_batch.testing.imds``) on loopback: never
169.254.169.254. Every orphan command writes a marker file. A guard fails any test whose
process connects anywhere but loopback.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchClient
from prefect_batch.testing import (
    embedded_client,
    fast_settings,
    gate_command,
    wait_for_nodes,
    wait_for_task,
    wait_until,
)
from prefect_batch.testing.ec2 import (
    create_ec2_pool,
    lab_template,
    source_instances,
)
from prefect_batch.testing.imds import FakeIMDS
from prefect_batch.testing.sshd import SSHServers


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS("127.0.0.1") as fake:
        yield fake


@pytest.fixture
def client(tmp_path: Path, loopback_only: list[str], moto_url: str) -> Iterator[BatchClient]:
    with embedded_client(tmp_path / "home", node_unreachable_grace_seconds=300) as c:
        yield c
    assert loopback_only == []


def _template(
    servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path, **extra: Any
) -> dict[str, Any]:
    return lab_template("spot", servers, ec2, moto_url, tmp_path, **extra)


def _gated(gate: Path) -> str:
    return gate_command(gate, limit_seconds=300)  # longer than any wait here


def test_an_interruption_notice_preempts_the_spot_node_requeues_its_task_and_replaces_it(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    imds: FakeIMDS,
) -> None:
    template = _template(servers, ec2, moto_url, tmp_path, imdsUrl=imds.url, imdsPollSeconds=0.2)
    client.create_node_source(template)
    name = template["name"]
    create_ec2_pool(client, "spot", name, 0, low=1)
    (node,) = wait_for_nodes(client, "spot", 1, timeout=90)
    assert node.is_dedicated is False
    gate = tmp_path / "gate"
    client.create_job({"id": "sj", "poolInfo": {"poolId": "spot"}})
    client.create_task(
        "sj", {"id": "t", "commandLine": _gated(gate), "constraints": {"maxTaskRetryCount": 0}}
    )
    wait_for_task(client, "sj", "t", "running", timeout=60)
    wait_until(lambda: imds.tokens, timeout=30, message="the spot agent polls IMDS")
    (instance,) = source_instances(ec2, name)
    imds.interrupt("terminate", "2026-12-07T12:02:00Z")  # EC2 itself has not terminated it
    preempted = wait_until(
        lambda: (n := client.get_node("spot", node.id)).state == "preempted" and n,
        timeout=30,
        message="node preempted",
    )
    (error,) = preempted.errors or []
    assert error.code == "NodePreempted"
    assert "interruption notice" in (error.message or "")
    assert instance["InstanceId"] in (error.message or "")
    task = wait_until(
        lambda: (t := client.get_task("sj", "t")).execution_info.requeue_count == 1 and t,
        timeout=30,
        message="task requeued",
    )
    assert task.execution_info.retry_count == 0
    # The preempted instance is given back; a replacement comes up (its agent has a token of
    # its own, which has no notice) and runs the task.
    wait_until(
        lambda: source_instances(ec2, name, ("terminated",)),
        timeout=30,
        message="instance terminated",
    )
    replacement = wait_until(
        lambda: [n for n in client.list_nodes("spot") if n.state in ("idle", "running")],
        timeout=90,
        message="a replacement node",
    )
    assert replacement[0].id != node.id and replacement[0].is_dedicated is False
    gate.touch()
    task = wait_for_task(client, "sj", "t", timeout=60)
    assert task.execution_info.exit_code == 0
    assert task.node_info.node_id == replacement[0].id
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    assert client.get_node("spot", replacement[0].id).state in ("idle", "running")
    client.delete_pool("spot")
    wait_until(lambda: source_instances(ec2, name) == [], timeout=60, message="cleaned up")


def test_a_rebalance_recommendation_disables_scheduling_on_the_spot_node(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    imds: FakeIMDS,
) -> None:
    template = _template(servers, ec2, moto_url, tmp_path, imdsUrl=imds.url, imdsPollSeconds=0.2)
    client.create_node_source(template)
    create_ec2_pool(client, "mixed", template["name"], 1, low=1)
    nodes = wait_for_nodes(client, "mixed", 2, timeout=90)
    spot = next(n for n in nodes if not n.is_dedicated)
    dedicated = next(n for n in nodes if n.is_dedicated)
    client.create_job({"id": "rj", "poolInfo": {"poolId": "mixed"}})
    gates = {n.id: tmp_path / f"gate-{n.id}" for n in nodes}
    # One task on each node (a slot each), each waiting on its node's gate.
    client.create_tasks(
        "rj",
        [
            {
                "id": f"t{i}",
                "commandLine": "/bin/sh -c 'while [ ! -e "
                + str(tmp_path)
                + "/gate-$AZ_BATCH_NODE_ID ]; do sleep 0.1; done'",
            }
            for i in range(2)
        ],
    )
    running = [wait_for_task(client, "rj", f"t{i}", "running", timeout=60) for i in range(2)]
    on_spot = next(t for t in running if t.node_info.node_id == spot.id)
    wait_until(lambda: imds.tokens, timeout=30, message="the spot agent polls IMDS")
    assert len(imds.tokens) == 1  # the dedicated node's agent never asks
    imds.rebalance()
    wait_until(
        lambda: client.get_node("mixed", spot.id).scheduling_state == "disabled",
        timeout=30,
        message="scheduling disabled",
    )
    assert client.get_node("mixed", dedicated.id).scheduling_state == "enabled"
    client.create_task("rj", {"id": "new", "commandLine": "/bin/true"})
    # The spot node's running task goes on to the end; then the node idles (offline), and the
    # new task is not given to it: it waits for the dedicated node.
    gates[spot.id].touch()
    done = wait_for_task(client, "rj", on_spot.id, timeout=60)
    assert done.execution_info.exit_code == 0 and done.node_info.node_id == spot.id
    wait_until(
        lambda: client.get_node("mixed", spot.id).state == "offline",
        timeout=30,
        message="the spot node offline",
    )
    assert client.get_task("rj", "new").state == "active"
    gates[dedicated.id].touch()
    new = wait_for_task(client, "rj", "new", timeout=60)
    assert new.node_info.node_id == dedicated.id
    assert client.get_node("mixed", spot.id).state == "offline"
    client.delete_pool("mixed")
    wait_until(
        lambda: source_instances(ec2, template["name"]) == [], timeout=60, message="cleaned up"
    )


def test_a_service_that_keeps_in_touch_keeps_its_agents_and_one_that_is_gone_does_not(
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    loopback_only: list[str],
) -> None:
    marker = tmp_path / "orphaned"
    command = f"{sys.executable} -c \"open('{marker}', 'a').write('x')\""
    # Unconfined: the tasks and the orphan command write to the test's directory.
    template = _template(
        servers,
        ec2,
        moto_url,
        tmp_path,
        orphanTimeoutSeconds=3,
        orphanCommand=command,
        confineTasks=False,
    )
    gate, long_run = tmp_path / "gate", tmp_path / "long-run"
    client = BatchClient(
        home=tmp_path / "home",
        settings=fast_settings(tmp_path / "home", heartbeat_interval_seconds=0.5),
    )
    try:
        client.create_node_source(template)
        create_ec2_pool(client, "p", template["name"], 1)
        wait_for_nodes(client, "p", 1, timeout=90)
        (instance,) = source_instances(ec2, template["name"])
        behaviour = ec2.describe_instance_attribute(
            InstanceId=instance["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
        )["InstanceInitiatedShutdownBehavior"]["Value"]
        assert behaviour == "terminate"  # an orphan's shutdown gives the instance back
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        # A task that outlasts the orphan timeout three times over ends on its own: the
        # engine's pings keep the agent in touch.
        client.create_task(
            "j", {"id": "long", "commandLine": f"/bin/sh -c 'sleep 9; touch {long_run}'"}
        )
        task = wait_for_task(client, "j", "long", timeout=90)
        assert task.execution_info.exit_code == 0 and long_run.exists()
        assert not marker.exists()
        client.create_task("j", {"id": "held", "commandLine": _gated(gate)})
        wait_for_task(client, "j", "held", "running", timeout=60)
    finally:
        client.close()  # the service goes away; its tasks' agents stay on the "instance"
    wait_until(lambda: marker.exists(), timeout=60, message="the orphan command ran")
    assert marker.read_text() == "x"
    wait_until(
        lambda: any(
            '"killed":true' in p.read_text().replace(" ", "")
            for p in (tmp_path / "instances").glob("*/.agent/runs/*.json")
        ),
        timeout=30,
        message="the held task killed",
    )
    assert not gate.exists()
    assert loopback_only == []
