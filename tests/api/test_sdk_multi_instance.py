"""Multi-instance tasks through the official SDK: a real TCP rendezvous between local nodes.

Every node of the pool has a loopback address of its own (127.x.y.z). The coordination command
of each instance starts a background sender that connects to the primary named by
``AZ_BATCH_MASTER_NODE`` (on a port of the test's, > 1100) and sends its node id; the primary's
coordination command also starts the listener. The primary's application command prints what
the listener received. The script reaches every node as a common resource file over HTTP.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from prefect_batch.testing.storage import HttpFileServer, http_file_server
from prefect_batch.testing.webapp import free_port
from tests.api.conftest import Server, database, running_server, wait_for

POOL = "mpi"
PLAIN_POOL = "plain"
NODES = 4

RENDEZVOUS = r"""
import os, socket, subprocess, sys, time

mode, port, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
env = os.environ
shared = env["AZ_BATCH_TASK_SHARED_DIR"]
master_ip = env["AZ_BATCH_MASTER_NODE"].split(":")[0]
count = len(env["AZ_BATCH_HOST_LIST"].split(","))
received = os.path.join(shared, "received.txt")

def background(*args):
    # Same process group as the coordination command: it outlives it, as a service would.
    log = open(os.path.join(env["AZ_BATCH_TASK_DIR"], "bg-%s.txt" % args[0]), "w")
    return subprocess.Popen([sys.executable, __file__, *args, str(port), out],
                            stdout=log, stderr=subprocess.STDOUT)

if mode == "coord":
    assert env["AZ_BATCH_NODE_LIST"].split(";") == env["AZ_BATCH_HOST_LIST"].split(",")
    if env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == "true":
        background("listen")
        for _ in range(600):
            if os.path.exists(received + ".ready"):
                break
            time.sleep(0.05)
        else:
            sys.exit(7)
    background("send")
    print("coordination on", env["AZ_BATCH_NODE_ID"], "of", env["AZ_BATCH_HOST_LIST"])
elif mode == "listen":
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((master_ip, port))
    srv.listen(count)
    open(received + ".ready", "w").close()
    lines = []
    while len(lines) < count:
        conn, _ = srv.accept()
        lines.append(conn.makefile().readline().strip())
        conn.close()
    with open(received + ".tmp", "w") as f:
        f.write("\n".join(sorted(lines)) + "\n")
    os.rename(received + ".tmp", received)
elif mode == "send":
    for _ in range(600):
        try:
            conn = socket.create_connection((master_ip, port), timeout=5)
            break
        except OSError:
            time.sleep(0.05)
    else:
        sys.exit(8)
    conn.sendall(("hello from %s %d\n" % (env["AZ_BATCH_NODE_ID"], os.getpid())).encode())
    conn.close()
    # Then stay, like a daemon, until the service ends the task on every node.
    time.sleep(600)
elif mode == "app":
    gate, code = sys.argv[4], int(sys.argv[5])
    for _ in range(1200):
        if os.path.exists(received):
            break
        time.sleep(0.05)
    else:
        sys.exit(9)
    print(open(received).read(), end="", flush=True)
    while gate != "-" and not os.path.exists(gate):
        time.sleep(0.05)
    sys.exit(code)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpFileServer]:
    directory = tmp_path_factory.mktemp("files")
    (directory / "rendezvous.py").write_text(RENDEZVOUS)
    with http_file_server(directory) as served:
        yield served


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_server(store_url, tmp_path_factory.mktemp("home")) as running:
        yield running


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[object]:
    client = server.sdk()
    client.create_pool(
        models.BatchPoolCreateOptions(
            id=POOL,
            vm_size="local",
            target_dedicated_nodes=NODES,
            enable_inter_node_communication=True,
        )
    )
    client.create_pool(
        models.BatchPoolCreateOptions(id=PLAIN_POOL, vm_size="local", target_dedicated_nodes=0)
    )
    client.create_job(
        models.BatchJobCreateOptions(id="mpi", pool_info=models.BatchPoolInfo(pool_id=POOL))
    )
    client.create_job(
        models.BatchJobCreateOptions(id="plain", pool_info=models.BatchPoolInfo(pool_id=PLAIN_POOL))
    )
    wait_for(lambda: sum(n.state == "idle" for n in client.list_nodes(POOL)) == NODES, timeout=120)
    yield client
    client.close()


def _task(
    files: HttpFileServer,
    task_id: str,
    out: Path,
    *,
    instances: int = 3,
    gate: str = "-",
    code: int = 0,
    wall: timedelta | None = None,
) -> models.BatchTaskCreateOptions:
    port = free_port()
    script = "../rendezvous.py"
    return models.BatchTaskCreateOptions(
        id=task_id,
        command_line=f"{sys.executable} {script} app {port} {out} {gate} {code}",
        multi_instance_settings=models.MultiInstanceSettings(
            number_of_instances=instances,
            coordination_command_line=f"{sys.executable} {script} coord {port} {out}",
            common_resource_files=[
                models.ResourceFile(http_url=files.url("rendezvous.py"), file_path="rendezvous.py")
            ],
        ),
        constraints=models.BatchTaskConstraints(max_wall_clock_time=wall) if wall else None,
    )


def _completed(sdk, task_id: str, timeout: float = 120):
    return wait_for(
        lambda: (t := sdk.get_task("mpi", task_id)).state == "completed" and t, timeout=timeout
    )


def _stdout(sdk, task_id: str) -> str:
    """The primary's stdout.txt so far ("" before its command started or while it moves)."""
    try:
        return b"".join(sdk.download_task_file("mpi", task_id, "stdout.txt")).decode()
    except (ResourceNotFoundError, ResourceExistsError):  # 404 no file yet, 409 no node yet
        return ""


def _hellos(sdk, task_id: str) -> dict[str, int]:
    """Node id -> pid of its sender, as the primary printed them."""
    stdout = _stdout(sdk, task_id)
    return {
        line.split()[2]: int(line.split()[3])
        for line in stdout.splitlines()
        if line.startswith("hello from ")
    }


def _dead(pids: dict[str, int]) -> bool:
    for pid in pids.values():
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            continue
    return True


def test_rendezvous_over_tcp_between_three_nodes(sdk, files, tmp_path: Path) -> None:
    sdk.create_task("mpi", _task(files, "rendezvous", tmp_path))
    task = _completed(sdk, "rendezvous")
    assert task.execution_info.exit_code == 0, sdk.download_task_file(
        "mpi", "rendezvous", "stderr.txt"
    )
    assert task.execution_info.result == "success"
    subtasks = list(sdk.list_subtasks("mpi", "rendezvous"))
    assert [s.id for s in subtasks] == [1, 2]
    nodes = [task.node_info.node_id] + [s.node_info.node_id for s in subtasks]
    assert len(set(nodes)) == 3  # three distinct nodes
    for s in subtasks:
        assert s.state == "completed"
        assert s.exit_code == 0
        assert s.result == "success"
        assert s.start_time is not None and s.end_time is not None
        assert s.node_info.pool_id == POOL
    # The primary printed what each node's sender told its listener.
    hellos = _hellos(sdk, "rendezvous")
    assert sorted(hellos) == sorted(nodes)
    # Every node has its own address, and the master is the primary's.
    addresses = {n.id: n.ip_address for n in sdk.list_nodes(POOL)}
    assert len({addresses[n] for n in nodes}) == 3
    # The senders stayed behind as daemons; the end of the task ended them on every node.
    wait_for(lambda: _dead(hellos), timeout=30)


def test_primary_exit_code_is_the_task_exit_code(sdk, files, tmp_path: Path) -> None:
    sdk.create_task("mpi", _task(files, "exit3", tmp_path, instances=2, code=3))
    task = _completed(sdk, "exit3")
    assert task.execution_info.exit_code == 3
    assert task.execution_info.result == "failure"
    (subtask,) = sdk.list_subtasks("mpi", "exit3")
    assert subtask.exit_code == 0  # its coordination command succeeded
    hellos = _hellos(sdk, "exit3")
    assert len(hellos) == 2
    wait_for(lambda: _dead(hellos), timeout=30)


def test_losing_a_subtask_node_requeues_the_whole_task(sdk, files, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    sdk.create_task("mpi", _task(files, "requeued", tmp_path, gate=str(gate)))
    # The primary's command runs (it printed the rendezvous) and waits on the gate.
    wait_for(lambda: "hello" in _stdout(sdk, "requeued"), timeout=120)
    first = _hellos(sdk, "requeued")
    (sub, *_) = list(sdk.list_subtasks("mpi", "requeued"))
    lost = sub.node_info.node_id
    sdk.begin_remove_nodes(
        POOL,
        models.BatchNodeRemoveOptions(node_ids=[lost], node_deallocation_option="requeue"),
    )
    wait_for(lambda: sdk.get_task("mpi", "requeued").execution_info.requeue_count == 1)
    gate.touch()
    # A new node replaces it only if the pool is resized; three nodes are left for the rerun.
    task = _completed(sdk, "requeued")
    assert task.execution_info.exit_code == 0
    assert task.execution_info.requeue_count == 1
    assert task.execution_info.retry_count == 0
    nodes_now = {n.id for n in sdk.list_nodes(POOL)}
    assert lost not in nodes_now
    subtasks = list(sdk.list_subtasks("mpi", "requeued"))
    assert all(s.node_info.node_id in nodes_now for s in subtasks)
    # The first attempt's processes were ended on every node when it was requeued.
    assert len(first) == 3
    wait_for(lambda: _dead(first), timeout=30)
    wait_for(lambda: _dead(_hellos(sdk, "requeued")), timeout=30)


def test_wall_clock_ends_every_instance(sdk, files, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    sdk.create_task(
        "mpi",
        _task(files, "slow", tmp_path, instances=3, gate=str(gate), wall=timedelta(seconds=4)),
    )
    task = _completed(sdk, "slow")
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code == "TaskEnded"
    # The senders were alive until the limit; then every node's processes were ended.
    hellos = _hellos(sdk, "slow")
    assert len(hellos) == 3
    wait_for(lambda: _dead(hellos), timeout=30)


def _refused(sdk, job: str, task: models.BatchTaskCreateOptions) -> dict[str, str]:
    with pytest.raises(HttpResponseError) as info:
        sdk.create_task(job, task)
    err = info.value.error
    assert err.code == "InvalidPropertyValue"
    assert all(t.id != task.id for t in sdk.list_tasks(job))
    return {d.code: d.message for d in err.details or []}


def test_bad_input_is_refused_naming_the_property(sdk, files, tmp_path: Path) -> None:
    too_many = _task(files, "too-many", tmp_path, instances=101)
    assert _refused(sdk, "mpi", too_many)["PropertyName"] == (
        "multiInstanceSettings.numberOfInstances"
    )
    slots = _task(files, "slots", tmp_path)
    slots.required_slots = 2
    assert _refused(sdk, "mpi", slots)["PropertyName"] == "requiredSlots"
    plain = _task(files, "no-inter-node", tmp_path)
    values = _refused(sdk, "plain", plain)
    assert values["PropertyName"] == "multiInstanceSettings"
    assert values["PoolId"] == PLAIN_POOL


def test_ordinary_tasks_run_beside_a_waiting_gang(sdk, files, tmp_path: Path) -> None:
    # A gang larger than the pool holds no node back: ordinary tasks still run.
    sdk.create_task("mpi", _task(files, "huge", tmp_path, instances=NODES + 5))
    sdk.create_task("mpi", models.BatchTaskCreateOptions(id="small", command_line="/bin/true"))
    small = _completed(sdk, "small", timeout=60)
    assert small.execution_info.exit_code == 0
    assert sdk.get_task("mpi", "huge").state == "active"
    sdk.delete_task("mpi", "huge")


def test_a_restarted_server_requeues_a_running_multi_instance_task(files, tmp_path: Path) -> None:
    home, out, gate = tmp_path / "home", tmp_path / "out", tmp_path / "gate"
    out.mkdir()
    with database("sqlite", tmp_path) as url:
        with running_server(url, home) as first:
            sdk = first.sdk()
            sdk.create_pool(
                models.BatchPoolCreateOptions(
                    id=POOL,
                    vm_size="local",
                    target_dedicated_nodes=3,
                    enable_inter_node_communication=True,
                )
            )
            sdk.create_job(
                models.BatchJobCreateOptions(id="mpi", pool_info=models.BatchPoolInfo(pool_id=POOL))
            )
            sdk.create_task("mpi", _task(files, "across", out, gate=str(gate)))
            wait_for(lambda: "hello" in _stdout(sdk, "across"), timeout=120)
            sdk.close()
        with running_server(url, home) as second:
            sdk = second.sdk()
            wait_for(lambda: sdk.get_task("mpi", "across").execution_info.requeue_count >= 1)
            gate.touch()
            task = _completed(sdk, "across")
            assert task.execution_info.exit_code == 0
            # Every node's slot came back: a task on all three nodes runs.
            sdk.create_task("mpi", _task(files, "all-three", out))
            assert _completed(sdk, "all-three").execution_info.exit_code == 0
            sdk.close()


def test_terminating_during_coordination_ends_every_instance(sdk) -> None:
    sdk.create_task(
        "mpi",
        models.BatchTaskCreateOptions(
            id="stuck",
            command_line="/bin/true",
            multi_instance_settings=models.MultiInstanceSettings(
                number_of_instances=2, coordination_command_line="/bin/sleep 120"
            ),
        ),
    )
    wait_for(lambda: sdk.get_task("mpi", "stuck").state == "running", timeout=60)
    wait_for(lambda: all(s.state == "running" for s in sdk.list_subtasks("mpi", "stuck")))
    sdk.terminate_task("mpi", "stuck")
    task = _completed(sdk, "stuck", timeout=60)
    assert task.execution_info.result == "failure"
    assert task.execution_info.failure_info.code == "TaskEnded"
    (subtask,) = sdk.list_subtasks("mpi", "stuck")
    assert subtask.state == "completed"
    # The nodes are free again: a task on three of them runs.
    sdk.create_task(
        "mpi", models.BatchTaskCreateOptions(id="after-stuck", command_line="/bin/true")
    )
    assert _completed(sdk, "after-stuck", timeout=60).execution_info.exit_code == 0


def test_job_preparation_runs_on_every_node_before_coordination(sdk) -> None:
    marker = "$AZ_BATCH_NODE_SHARED_DIR/prepared-mpiprep"
    sdk.create_job(
        models.BatchJobCreateOptions(
            id="mpiprep",
            pool_info=models.BatchPoolInfo(pool_id=POOL),
            job_preparation_task=models.BatchJobPreparationTask(
                command_line=f"/bin/sh -c 'sleep 1; echo $AZ_BATCH_NODE_ID > {marker}'"
            ),
        )
    )
    sdk.create_task(
        "mpiprep",
        models.BatchTaskCreateOptions(
            id="after-prep",
            command_line=f"/bin/sh -c 'cat {marker}'",
            multi_instance_settings=models.MultiInstanceSettings(
                number_of_instances=3, coordination_command_line=f"/bin/sh -c 'test -s {marker}'"
            ),
        ),
    )
    task = wait_for(
        lambda: (t := sdk.get_task("mpiprep", "after-prep")).state == "completed" and t,
        timeout=120,
    )
    assert task.execution_info.exit_code == 0
    subtasks = list(sdk.list_subtasks("mpiprep", "after-prep"))
    assert [s.exit_code for s in subtasks] == [0, 0]
    prepared = {
        s.node_id
        for s in sdk.list_job_preparation_and_release_task_status("mpiprep")
        if s.job_preparation_task_execution_info.exit_code == 0
    }
    assert {task.node_info.node_id, *(s.node_info.node_id for s in subtasks)} <= prepared


def test_a_failing_subtask_fails_and_retries_the_whole_task(sdk) -> None:
    sdk.create_task(
        "mpi",
        models.BatchTaskCreateOptions(
            id="subtasks-fail",
            command_line="/bin/true",
            constraints=models.BatchTaskConstraints(max_task_retry_count=1),
            multi_instance_settings=models.MultiInstanceSettings(
                number_of_instances=3,
                # Both subtasks fail (exit 1) at once; the primary's coordination succeeds.
                coordination_command_line=(
                    "/bin/sh -c 'test $AZ_BATCH_IS_CURRENT_NODE_MASTER = true'"
                ),
            ),
        ),
    )
    task = _completed(sdk, "subtasks-fail")
    assert task.execution_info.exit_code == 1
    assert task.execution_info.result == "failure"
    assert task.execution_info.retry_count == 1  # retried once as a whole, then failed
    subtasks = list(sdk.list_subtasks("mpi", "subtasks-fail"))
    # The first failure ends the attempt; the other subtask may be killed before it exits.
    assert 1 in [s.exit_code for s in subtasks]
    assert all(s.state == "completed" and s.result == "failure" for s in subtasks)
    counts = sdk.get_job_task_counts("mpi").task_counts
    assert counts.running == 0
    # Every node came back: a task on all three runs.
    sdk.create_task(
        "mpi",
        models.BatchTaskCreateOptions(
            id="after-fail",
            command_line="/bin/true",
            multi_instance_settings=models.MultiInstanceSettings(
                number_of_instances=3, coordination_command_line="/bin/true"
            ),
        ),
    )
    assert _completed(sdk, "after-fail").execution_info.exit_code == 0
