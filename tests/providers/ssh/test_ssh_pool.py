"""Pools of SSH hosts end to end: an embedded service with an engine, real sshd on 127.0.0.2-4.

A registered host group is a node source (``batch.node.ssh.<name>``); each node of a pool takes
a host of its own. These tests drive everything through the public client and wait on states
with deadlines: host keys, unreachable hosts, sshd and agents killed mid-task, hosts that never
come back, files read through the agents.
"""

from __future__ import annotations

import base64
import os
import shlex
import signal
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchClient, BatchConflictError, BatchInvalidRequestError
from prefect_batch.models import BatchNode
from prefect_batch.providers.hostkeys import fingerprint, parse_public_key
from prefect_batch.testing import (
    embedded_client,
    gate_command,
    wait_for_nodes,
    wait_for_task,
    wait_until,
)
from prefect_batch.testing.certificates import make_certificate
from prefect_batch.testing.sshd import SSHServer, SSHServers, generate_key
from prefect_batch.testing.storage import moto_s3_server

pytestmark = pytest.mark.timeout(180)

WAIT = 45.0


@dataclass
class Lab:
    """An embedded client plus the sshd servers, with helpers to register groups and pools."""

    client: BatchClient
    servers: SSHServers
    hosts_dir: Path

    def host(self, server: SSHServer, **extra: Any) -> dict[str, Any]:
        return server.host_config(root=str(self.hosts_dir / server.address), **extra)

    def register(
        self, name: str = "lab", hosts: list[dict[str, Any]] | None = None, **extra: Any
    ) -> dict[str, Any]:
        if hosts is None:
            hosts = [self.host(s) for s in self.servers]
        group = self.servers.group_config(name=name, hosts=hosts, **extra)
        self.client.create_node_source(group)
        return group

    def pool(self, pool_id: str, nodes: int, group: str = "lab", slots: int = 1) -> None:
        self.client.create_pool(
            {
                "id": pool_id,
                "vmSize": "ssh",
                "targetDedicatedNodes": nodes,
                "taskSlotsPerNode": slots,
                "virtualMachineConfiguration": {
                    "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": group},
                    "nodeAgentSKUId": f"batch.node.ssh.{group}",
                },
            }
        )

    def server_of(self, node: BatchNode) -> SSHServer:
        return next(s for s in self.servers if s.address == node.ip_address)

    def root_of(self, server: SSHServer) -> Path:
        return self.hosts_dir / server.address


@pytest.fixture
def make_lab(servers: SSHServers, tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """``make_lab(**settings)``: an embedded client (closed at the end) over the servers."""
    with ExitStack() as stack:

        def make(**settings: Any) -> Lab:
            client = stack.enter_context(embedded_client(tmp_path / "home", **settings))
            return Lab(client, servers, tmp_path / "hosts")

        yield make


def node_error(lab: Lab, pool_id: str, state: str = "unusable") -> str:
    """Wait for a node of the pool in ``state`` with an error; its messages joined."""

    def probe() -> str | None:
        for n in lab.client.list_nodes(pool_id):
            if getattr(n.state, "value", n.state) == state and n.errors:
                return " | ".join(f"{e.code}: {e.message}" for e in n.errors)
        return None

    return wait_until(probe, timeout=WAIT, message=f"a {state} node with an error")


def agent_pids(root: Path) -> list[int]:
    """Node agents serving ``root`` (the loopback hosts share this machine's processes)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"/.agent/agent-" in a for a in argv) and str(root).encode() in argv:
            found.append(int(proc.name))
    return found


def state(obj: Any) -> str:
    value = obj.state
    return str(getattr(value, "value", value))


# -- a pool of SSH hosts -------------------------------------------------------------------


def test_three_host_pool_runs_a_job_and_its_files_are_read_through_the_agents(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab()
    lab.register(vm_size="lab-2core")
    client = lab.client
    assert "batch.node.ssh.lab" in {i.node_agent_sku_id for i in client.list_supported_images()}
    lab.pool("p", 3, slots=2)
    nodes = wait_for_nodes(client, "p", 3, timeout=WAIT)
    assert sorted(n.ip_address for n in nodes) == [s.address for s in lab.servers]
    assert {n.vm_size for n in nodes} == {"lab-2core"}
    used = client.get_node_source("lab").hosts_in_use
    assert sorted(used.values()) == sorted(n.id for n in nodes)

    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    client.create_tasks(
        "j",
        [
            {"id": f"t{i}", "commandLine": f"/bin/sh -c 'echo task {i} on $AZ_BATCH_NODE_ID'"}
            for i in range(18)
        ],
    )
    counts = client.wait_for_job("j", timeout=WAIT).task_counts
    assert counts.succeeded == 18
    ran_on = set()
    for i in range(18):
        task = client.get_task("j", f"t{i}")
        node_id = task.node_info.node_id
        ran_on.add(node_id)
        expected = f"task {i} on {node_id}\n".encode()
        assert client.get_task_file("j", f"t{i}", "stdout.txt") == expected
    assert len(ran_on) == 3
    names = [f.name for f in client.list_task_files("j", "t0", recursive=True)]
    assert {"stdout.txt", "stderr.txt", "wd"} <= set(names)
    props = client.get_task_file_properties("j", "t0", "stdout.txt")
    assert props.properties.content_length == len(b"task 0 on \n") + len(ran_on.pop())
    assert client.get_task_file("j", "t1", "stdout.txt", offset=5, length=1) == b"1"
    node = client.get_task("j", "t2").node_info.node_id
    assert {"shared", "startup", "j"} <= {f.name for f in client.list_node_files("p", node)}
    client.delete_task_file("j", "t2", "stderr.txt")
    assert "stderr.txt" not in {f.name for f in client.list_task_files("j", "t2")}

    # A task's symlink to a sibling task's directory is not followed out of its own directory.
    client.create_task("j", {"id": "peek", "commandLine": "/bin/sh -c 'ln -s ../../t3 peek'"})
    wait_until(
        lambda: client.get_task("j", "peek").state == "completed", timeout=WAIT, message="peek"
    )
    with pytest.raises(BatchInvalidRequestError):
        client.get_task_file("j", "peek", "wd/peek/stdout.txt")

    # A process without an engine reads the same files through an agent session of its own.
    with embedded_client(tmp_path / "home", engine=False) as other:
        assert other.get_task_file("j", "t4", "stdout.txt").startswith(b"task 4 on ")

    with pytest.raises(BatchConflictError) as info:
        client.delete_node_source("lab")
    assert info.value.code == "NodeSourceInUse" and "p" in info.value.message


def test_resize_takes_and_releases_hosts_and_a_restarted_engine_keeps_them(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    registered = lab.register()
    client = lab.client
    lab.pool("p", 2)
    first = {n.id: n.ip_address for n in wait_for_nodes(client, "p", 2, timeout=WAIT)}

    client.resize_pool("p", {"targetDedicatedNodes": 5})
    pool = wait_until(
        lambda: (p := client.get_pool("p")).resize_errors and p,
        timeout=WAIT,
        message="a resize error",
    )
    (error,) = pool.resize_errors
    assert error.code == "AllocationFailed" and "'lab'" in error.message
    nodes = wait_for_nodes(client, "p", 3, timeout=WAIT)  # the pool keeps what it got
    assert len({n.ip_address for n in nodes}) == 3

    client.resize_pool("p", {"targetDedicatedNodes": 1})
    (kept,) = wait_for_nodes(client, "p", 1, timeout=WAIT)
    assert list(client.get_node_source("lab").hosts_in_use.values()) == [kept.id]

    # A host with a node cannot leave the group; the free ones can.
    mine = [h for h in registered["hosts"] if h["address"] == kept.ip_address]
    others = [h for h in registered["hosts"] if h not in mine]
    with pytest.raises(BatchConflictError) as refused:
        client.update_node_source("lab", {**registered, "hosts": others})
    assert kept.id in refused.value.message
    client.update_node_source("lab", {**registered, "hosts": mine})
    assert len(client.get_node_source("lab").host_group["hosts"]) == 1

    # A new engine on the same store binds each node to the host it had.
    client.close()
    again = make_lab().client
    (node,) = wait_for_nodes(again, "p", 1, timeout=WAIT)
    assert (node.id, node.ip_address) == (kept.id, kept.ip_address)
    assert kept.id not in first or first[kept.id] == kept.ip_address


def test_an_autoscale_formula_sizes_an_ssh_pool_and_its_hosts_are_the_ceiling(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab(autoscale_sample_interval_seconds=1.0)
    lab.register()
    client = lab.client
    lab.pool("auto", 0)
    # More nodes than the group has hosts: the pool gets the three hosts and says why not more.
    client.enable_pool_auto_scale(
        "auto",
        {"autoScaleFormula": "$TargetDedicatedNodes = 5;", "autoScaleEvaluationInterval": "PT1S"},
    )
    nodes = wait_for_nodes(client, "auto", 3, timeout=WAIT)
    assert len({n.ip_address for n in nodes}) == 3
    pool = client.get_pool("auto")
    assert pool.auto_scale_run is not None and "$TargetDedicatedNodes=5" in (
        pool.auto_scale_run.results or ""
    )
    assert [e.code for e in pool.resize_errors or []] == ["AllocationFailed"]
    # A formula that wants none releases every host.
    client.enable_pool_auto_scale("auto", {"autoScaleFormula": "$TargetDedicatedNodes = 0;"})
    wait_for_nodes(client, "auto", 0, timeout=WAIT)
    assert client.get_node_source("lab").hosts_in_use == {}


def test_an_embedded_job_manager_on_an_ssh_node_is_told_it_needs_a_server(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    lab.register()
    client = lab.client
    lab.pool("jm", 1)
    wait_for_nodes(client, "jm", 1, timeout=WAIT)
    client.create_job(
        {
            "id": "managed",
            "poolInfo": {"poolId": "jm"},
            "jobManagerTask": {"id": "manager", "commandLine": "/bin/true"},
        }
    )
    manager = wait_until(
        lambda: (t := client.get_task("managed", "manager")).state == "completed" and t,
        timeout=WAIT,
        message="the job manager completed",
    )
    failure = manager.execution_info.failure_info
    assert failure is not None and failure.code == "JobManagerNeedsServer"
    assert "prefect-batch server start" in (failure.message or "")


def test_ssh_nodes_stage_resource_and_output_files_without_credentials(
    make_lab: Callable[..., Lab],
) -> None:
    with moto_s3_server(buckets=("ssh-data",)) as s3:
        s3.client().put_object(Bucket="ssh-data", Key="in/words.txt", Body=b"one two three")
        lab = make_lab(storage=s3.storage())
        lab.register()
        client = lab.client
        lab.pool("staged", 2)
        wait_for_nodes(client, "staged", 2, timeout=WAIT)
        client.create_job({"id": "sj", "poolInfo": {"poolId": "staged"}})
        client.create_tasks(
            "sj",
            [
                {
                    "id": f"count{i}",
                    "commandLine": "/bin/sh -c 'wc -w < in/words.txt > count.txt; env'",
                    "resourceFiles": [{"storageContainerUrl": "s3://ssh-data/in"}],
                    "outputFiles": [
                        {
                            "filePattern": "count.txt",
                            "destination": {
                                "container": {
                                    "containerUrl": "s3://ssh-data/out",
                                    "path": f"count{i}.txt",
                                }
                            },
                            "uploadOptions": {"uploadCondition": "tasksuccess"},
                        }
                    ],
                }
                for i in range(4)
            ],
        )
        assert client.wait_for_job("sj", timeout=WAIT).task_counts.succeeded == 4
        c = s3.client()
        for i in range(4):
            body = c.get_object(Bucket="ssh-data", Key=f"out/count{i}.txt")["Body"].read()
            assert body.strip() == b"3"
            # The node saw signed URLs, never the storage's keys.
            env = client.get_task_file("sj", f"count{i}", "stdout.txt").decode()
            assert s3.secret_access_key not in env and "AWS_SECRET" not in env


def test_reimage_and_removal_wipe_the_host_through_its_agent(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    lab.register()
    client = lab.client
    lab.pool("p", 1)
    (node,) = wait_for_nodes(client, "p", 1, timeout=WAIT)
    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    client.create_task("j", {"id": "t", "commandLine": "/bin/sh -c 'echo kept > keep.txt'"})
    client.wait_for_job("j", timeout=WAIT)
    root = lab.root_of(lab.server_of(node))
    assert (root / "j" / "t" / "wd" / "keep.txt").exists()

    client.reimage_node("p", node.id)
    wait_until(
        lambda: not (root / "j").exists(), timeout=WAIT, message="the task files wiped on reimage"
    )
    wait_for_nodes(client, "p", 1, timeout=WAIT)
    (root / "shared" / "left-behind").write_text("x")

    client.resize_pool("p", {"targetDedicatedNodes": 0})
    wait_for_nodes(client, "p", 0, timeout=WAIT)
    wait_until(
        lambda: not (root / "shared").exists(), timeout=WAIT, message="the host wiped on removal"
    )
    assert client.get_node_source("lab").hosts_in_use == {}


# -- hosts that cannot be used -------------------------------------------------------------


def test_a_wrong_host_key_makes_that_node_unusable_and_the_pool_keeps_the_others(
    make_lab: Callable[..., Lab],
) -> None:
    lab = make_lab()
    good0, liar, good2 = lab.servers
    hosts = [lab.host(good0), lab.host(liar, host_key=good0.host_public_key), lab.host(good2)]
    lab.register(hosts=hosts)
    lab.pool("p", 3)
    message = node_error(lab, "p")
    offered = fingerprint(parse_public_key(liar.host_public_key))
    assert "HostKeyVerificationFailed" in message
    assert liar.known_hosts_name in message and offered in message

    def two_good() -> list[BatchNode] | None:
        found = lab.client.list_nodes("p")
        idle = [n for n in found if state(n) == "idle"]
        return idle if len(found) == 3 and len(idle) == 2 else None

    idle = wait_until(two_good, timeout=WAIT, message="two idle nodes")
    assert {n.ip_address for n in idle} == {good0.address, good2.address}
    lab.client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    lab.client.create_tasks("j", [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(6)])
    assert lab.client.wait_for_job("j", timeout=WAIT).task_counts.succeeded == 6


def test_an_unreachable_host_and_a_bad_key_are_clear_errors_on_their_nodes(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.5", 0))
        port = s.getsockname()[1]
    nowhere = {
        "address": "127.0.0.5",
        "port": port,
        "user": lab.servers[0].user,
        "host_key": lab.servers[0].host_public_key,
        "root": str(tmp_path / "nowhere"),
    }
    lab.register("gone", hosts=[nowhere], connect_timeout_seconds=2)
    stranger = tmp_path / "stranger"
    generate_key(stranger)
    lab.register("stranger", hosts=[lab.host(lab.servers[1])], private_key_path=str(stranger))
    lab.pool("far", 1, group="gone")
    lab.pool("denied", 1, group="stranger")

    far = node_error(lab, "far")
    assert "NodeAgentStartFailed" in far and f"127.0.0.5:{port}" in far
    denied = node_error(lab, "denied")
    assert "authentication as" in denied and lab.servers[1].address in denied
    assert "PRIVATE KEY" not in denied


# -- disconnects ---------------------------------------------------------------------------


def test_sshd_killed_mid_task_and_restarted_the_result_is_collected(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab()
    lab.register()
    lab.pool("p", 1)
    (node,) = wait_for_nodes(lab.client, "p", 1, timeout=WAIT)
    server = lab.server_of(node)
    gate = tmp_path / "gate"
    lab.client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    lab.client.create_task(
        "j", {"id": "t", "commandLine": gate_command(gate, then="echo finished; exit 7")}
    )
    wait_until(lambda: state(lab.client.get_task("j", "t")) == "running", timeout=WAIT)

    server.kill()  # every session drops; the agent on the host drains and keeps the task
    node_error(lab, "p")
    gate.touch()  # the task ends while nobody is connected
    stdout = lab.root_of(server) / "j" / "t" / "stdout.txt"
    wait_until(lambda: stdout.exists() and stdout.read_text() == "finished\n", timeout=WAIT)
    server.start()

    task = wait_until(
        lambda: (t := lab.client.get_task("j", "t")) and state(t) == "completed" and t,
        timeout=WAIT,
        message="the task completed",
    )
    assert task.execution_info.exit_code == 7
    assert task.execution_info.requeue_count == 0  # collected, not run again
    assert lab.client.get_task_file("j", "t", "stdout.txt") == b"finished\n"
    wait_for_nodes(lab.client, "p", 1, timeout=WAIT)


def test_an_agent_killed_mid_task_its_task_is_requeued_once_it_ends(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab()
    lab.register(confineTasks=False)  # the task writes to the test's directory
    lab.pool("p", 1)
    (node,) = wait_for_nodes(lab.client, "p", 1, timeout=WAIT)
    root = lab.root_of(lab.server_of(node))
    runs, gate = tmp_path / "runs.txt", tmp_path / "gate"
    lab.client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    command = gate_command(gate, then=f"echo end >> {runs}")
    lab.client.create_task("j", {"id": "t", "commandLine": command})
    wait_until(lambda: state(lab.client.get_task("j", "t")) == "running", timeout=WAIT)

    (pid,) = agent_pids(root)
    os.kill(pid, signal.SIGKILL)  # the task lives on; its exit status dies with the agent
    wait_until(
        lambda: (pids := agent_pids(root)) and pid not in pids,
        timeout=WAIT,
        message="a new agent on the host",
    )
    wait_for_nodes(lab.client, "p", 1, states=("running",), timeout=WAIT)  # adopted
    gate.touch()
    task = wait_until(
        lambda: (t := lab.client.get_task("j", "t")) and state(t) == "completed" and t,
        timeout=WAIT,
        message="the task completed",
    )
    assert task.execution_info.result == "success"
    assert task.execution_info.requeue_count == 1  # lost (no exit code), so run again
    assert runs.read_text().split() == ["end", "end"]


def test_a_host_that_never_comes_back_past_the_grace_its_tasks_finish_elsewhere(
    make_lab: Callable[..., Lab], tmp_path: Path
) -> None:
    lab = make_lab(node_unreachable_grace_seconds=3)
    lab.register()
    lab.pool("p", 2)
    wait_for_nodes(lab.client, "p", 2, timeout=WAIT)
    gate = tmp_path / "gate"
    lab.client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    lab.client.create_task(
        "j", {"id": "t", "commandLine": gate_command(gate, then="echo on $AZ_BATCH_NODE_ID")}
    )
    first = wait_until(
        lambda: (t := lab.client.get_task("j", "t")) and state(t) == "running" and t,
        timeout=WAIT,
        message="the task running",
    )
    lost_node = first.node_info.node_id
    lab.server_of(lab.client.get_node("p", lost_node)).kill()  # and it stays down

    moved = wait_until(
        lambda: (
            (t := lab.client.get_task("j", "t")).node_info
            and t.node_info.node_id != lost_node
            and state(t) == "running"
            and t
        ),
        timeout=WAIT,
        message="the task running on the other node",
    )
    assert moved.execution_info.requeue_count == 1
    lost = lab.client.get_node("p", lost_node)
    assert state(lost) == "unusable"
    assert any("requeued" in (e.message or "") for e in lost.errors or [])
    gate.touch()
    task = wait_until(
        lambda: (t := lab.client.get_task("j", "t")) and state(t) == "completed" and t,
        timeout=WAIT,
        message="the task completed",
    )
    assert task.execution_info.result == "success"
    other = task.node_info.node_id
    assert other != lost_node
    assert lab.client.get_task_file("j", "t", "stdout.txt") == f"on {other}\n".encode()


# -- certificates ----------------------------------------------------------------------


def test_certificates_reach_ssh_nodes_before_the_start_task(make_lab: Callable[..., Lab]) -> None:
    lab = make_lab()
    lab.register()
    client = lab.client
    c = make_certificate("ssh")
    client.create_certificate(c.pfx_body())
    tp = c.thumbprint
    check = (
        f'test -f "$AZ_BATCH_CERTIFICATES_DIR/{tp}.pfx" && '
        f'test "$(stat -c %a "$AZ_BATCH_CERTIFICATES_DIR/{tp}.pem")" = 600'
    )
    client.create_pool(
        {
            "id": "sshcerts",
            "vmSize": "ssh",
            "targetDedicatedNodes": 1,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": "lab"},
                "nodeAgentSKUId": "batch.node.ssh.lab",
            },
            "certificateReferences": [{"thumbprint": tp, "thumbprintAlgorithm": "sha1"}],
            "startTask": {"commandLine": "/bin/sh -c " + shlex.quote(check)},
        }
    )
    (node,) = wait_for_nodes(client, "sshcerts", 1, timeout=WAIT)
    assert node.start_task_info.exit_code == 0

    blob = base64.b64encode(c.encrypt(b"via ssh")).decode()
    script = (
        f"echo {blob} | base64 -d | openssl pkeyutl -decrypt "
        f'-inkey "$AZ_BATCH_CERTIFICATES_DIR/{tp}.pem" '
        "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256"
    )
    client.create_job({"id": "sj", "poolInfo": {"poolId": "sshcerts"}})
    client.create_task("sj", {"id": "dec", "commandLine": "/bin/sh -c " + shlex.quote(script)})
    done = wait_for_task(client, "sj", "dec", timeout=WAIT)
    assert done.execution_info.exit_code == 0, client.get_task_file("sj", "dec", "stderr.txt")
    assert client.get_task_file("sj", "dec", "stdout.txt") == b"via ssh"
    root = lab.root_of(lab.server_of(node))
    assert (root / ".agent" / "certs" / "task" / f"{tp}.pem").stat().st_mode & 0o077 == 0
