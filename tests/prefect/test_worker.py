"""The ``batch`` worker type against a real ``prefect server start`` and a real worker process.

One Prefect server and one ``prefect worker start --type batch`` subprocess for the module; the
worker runs the embedded batch service's engine (local nodes) under a temporary
PREFECT_BATCH_HOME, and the test reads the same store with an engine-less client. The worker
finds the type through the ``prefect.collections`` entry point exactly as pyproject.toml
declares it (a dist-info written from it, first on PYTHONPATH, stands for ``pip install``).
Flow runs come from deployments made with the Prefect client; every wait is bounded.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowtest_helpers import wait_for
from prefect_server import PREFECT, REPO, Server, entry_point_dist

from prefect_batch import BatchClient
from prefect_batch.testing.sshd import SSHServers

pytestmark = pytest.mark.slow

WORK_POOL = "batch-test"
API_KEY = "pk-test-7f3c1d0e9b2a-secret"
AUTH_STRING = "admin:auth-4b6e8a2c-secret"

FLOWS = """
import os, signal, sys, time, hashlib
from prefect import flow, get_run_logger


@flow(log_prints=True)
def hello():
    print("hello from node", os.environ.get("AZ_BATCH_NODE_ID"))
    return 42


@flow
def fail():
    raise ValueError("boom from the flow")


@flow
def die():
    print("about to be killed", file=sys.stderr, flush=True)
    time.sleep(1)  # the supervisor relays the flow process's output to the task's files
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


@flow
def sleepy(marker: str, seconds: float = 4.0, rerun_seconds: float | None = None):
    rerun = os.path.exists(marker)
    with open(marker, "a") as f:
        f.write(os.environ.get("AZ_BATCH_NODE_ID", "?") + "\\n")
    time.sleep(rerun_seconds if rerun and rerun_seconds is not None else seconds)
    return "slept"


@flow
def doomed(marker: str):
    # Says where it runs (its pid, and its parent's: the batch task's process, the leader of
    # the task's process group), then outlives any test.
    with open(marker + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {os.getppid()}")
    os.rename(marker + ".tmp", marker)
    time.sleep(600)


@flow(log_prints=True)
def manager(seconds: float = 300):
    # The job manager of its own job: adds a task beside it, waits for one quick task, returns.
    from prefect_batch import BatchClient

    job_id = os.environ["AZ_BATCH_JOB_ID"]
    with BatchClient() as client:
        client.create_tasks(
            job_id,
            [
                {"id": "beside", "commandLine": f"/bin/sh -c 'sleep {seconds}'"},
                {"id": "quick", "commandLine": "/bin/sh -c 'echo quick'"},
            ],
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {
                t.id: t.state.value
                for t in client.list_tasks(job_id)
                if t.id != os.environ["AZ_BATCH_TASK_ID"]
            }
            if states["quick"] == "completed" and states["beside"] == "running":
                break
            time.sleep(0.2)
    print("manager saw", sorted(states.items()))


@flow
def probe():
    for name in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"):
        value = os.environ.get(name, "")
        get_run_logger().info("%s sha256 %s", name, hashlib.sha256(value.encode()).hexdigest())
"""


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Harness:
    def __init__(self, server: Server, root: Path) -> None:
        self.server = server
        self.root = root
        self.code = root / "code"
        self.code.mkdir()
        (self.code / "wflows.py").write_text(FLOWS)
        dist = entry_point_dist(root)
        self.env = {
            **server.env,
            "PYTHONPATH": os.pathsep.join([str(dist), str(REPO)]),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_HEARTBEAT_SECONDS": "5",
        }
        self.batch = BatchClient(home=server.batch_home, engine=False)
        self.flow_ids: dict[str, Any] = {}
        self.worker: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        done = subprocess.run(
            list(args), env=self.env, cwd=self.root, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"{args}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def spawn_worker(
        self, pool: str = WORK_POOL, name: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A ``prefect worker start --type batch`` process (its own process group), logging to
        ``<name or worker>.log`` under the module's root."""
        worker_env = {
            **self.env,
            "PREFECT_API_KEY": API_KEY,
            "PREFECT_API_AUTH_STRING": AUTH_STRING,
        }
        named = ["--name", name] if name else []
        log = (self.root / f"{name or 'worker'}.log").open("wb")
        try:
            return subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", pool, "--type", "batch", *named],
                env=worker_env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()  # the worker has its own copy of the descriptor

    def start_worker(self) -> None:
        self.worker = self.spawn_worker()

    @staticmethod
    def stop_worker(worker: subprocess.Popen[bytes]) -> None:
        if worker.poll() is None:
            os.killpg(worker.pid, 15)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait(timeout=10)

    def stop(self) -> None:
        if self.worker is not None:
            self.stop_worker(self.worker)
        self.batch.close()

    def run(
        self,
        flow: str,
        *,
        parameters: dict[str, Any] | None = None,
        work_pool: str = WORK_POOL,
        **job_variables: Any,
    ):
        with self.server.client() as client:
            if flow not in self.flow_ids:
                self.flow_ids[flow] = client.create_flow_from_name(flow)
            variables = {"pool_id": "p", **job_variables}
            key = (work_pool, *sorted(map(str, variables.items())))
            deployment_id = client.create_deployment(
                flow_id=self.flow_ids[flow],
                name=f"{flow}-{abs(hash(key))}",
                entrypoint=f"wflows.py:{flow}",
                work_pool_name=work_pool,
                job_variables=variables,
                pull_steps=[
                    {
                        "prefect.deployments.steps.set_working_directory": {
                            "directory": str(self.code)
                        }
                    }
                ],
            )
            return client.create_flow_run_from_deployment(
                deployment_id, parameters=parameters or {}
            ).id

    def flow_run(self, run_id: Any) -> Any:
        with self.server.client() as client:
            return client.read_flow_run(run_id)

    def wait_state(self, run_id: Any, *names: str, timeout: float = 120) -> Any:
        seen: list[str] = []

        def done() -> Any:
            fr = self.flow_run(run_id)
            name = fr.state.name if fr.state is not None else "no state"
            if not seen or seen[-1] != name:
                seen.append(name)
            return fr if name in names else None

        try:
            return wait_for(done, timeout=timeout, interval=0.5, what=f"flow run in {names}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc} (states seen: {' -> '.join(seen)})") from None

    def logs(self, run_id: Any) -> str:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with self.server.client() as client:
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        return "\n".join(log.message for log in logs)

    def wait_logs(self, run_id: Any, *needles: str) -> str:
        """The flow run's logs once they contain every needle (logs are sent in batches)."""

        def probe() -> str | None:
            text = self.logs(run_id)
            return text if all(n in text for n in needles) else None

        return wait_for(probe, timeout=30, interval=0.5, what=f"logs with {needles}")


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    root = tmp_path_factory.mktemp("worker")
    server = Server(root)
    h = None
    try:
        wait_for(server.healthy, timeout=90, interval=0.5, what="prefect server health")
        h = Harness(server, root)
        h.batch.create_pool(
            {"id": "p", "vmSize": "local", "targetDedicatedNodes": 2, "taskSlotsPerNode": 2}
        )
        h.batch.create_pool({"id": "empty", "vmSize": "local", "targetDedicatedNodes": 0})
        h.cli(*PREFECT, "work-pool", "create", WORK_POOL, "--type", "batch")
        h.start_worker()
        yield h
    finally:
        if h is not None:
            h.stop()
        server.stop()


def _task(h: Harness, run_id: Any) -> Any:
    pid = h.flow_run(run_id).infrastructure_pid
    _account, job_id, task_id = pid.split("/")
    return h.batch.get_task(job_id, task_id)


def _ended_task(h: Harness, run_id: Any) -> Any:
    """The batch task once it completed (the supervisor exits after the final state is set)."""
    return wait_for(
        lambda: (t := _task(h, run_id)).state.value == "completed" and t,
        timeout=30,
        interval=0.3,
        what="batch task completed",
    )


def test_work_pool_gets_the_default_base_job_template(harness: Harness) -> None:
    from prefect_batch.prefect.worker import BatchWorker

    with harness.server.client() as client:
        pool = client.read_work_pool(WORK_POOL)
    assert pool.type == "batch"
    assert pool.base_job_template == BatchWorker.get_default_base_job_template()


def test_a_flow_run_completes_on_a_node_with_its_logs(harness: Harness) -> None:
    run_id = harness.run("hello")
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Completed"
    assert fr.infrastructure_pid == f"local/prefect-{WORK_POOL}-p-p0/{run_id}"
    task = _ended_task(harness, run_id)
    assert task.id == str(run_id) and task.execution_info.exit_code == 0
    harness.wait_logs(run_id, f"hello from node {task.node_info.node_id}")


def test_a_failing_flow_is_failed_not_crashed(harness: Harness) -> None:
    run_id = harness.run("fail")
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Failed"
    harness.wait_logs(run_id, "boom from the flow")


def test_a_killed_task_is_crashed_with_its_stderr(harness: Harness) -> None:
    run_id = harness.run("die")
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Crashed"
    assert "exit code 137" in fr.state.message
    harness.wait_logs(run_id, "stderr.txt (tail)", "about to be killed")


def test_job_variables_set_priority_and_slots(harness: Harness) -> None:
    run_id = harness.run("hello", priority=7, required_slots=2)
    harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    task = _task(harness, run_id)
    assert task.required_slots == 2
    assert harness.batch.get_job(f"prefect-{WORK_POOL}-p-p7").priority == 7


def test_cancel_while_running(harness: Harness, tmp_path: Path) -> None:
    from prefect.states import Cancelling

    marker = tmp_path / "started"
    run_id = harness.run("sleepy", parameters={"marker": str(marker), "seconds": 60})
    wait_for(marker.exists, timeout=120, interval=0.3, what="flow code running")
    with harness.server.client() as client:
        client.set_flow_run_state(run_id, Cancelling(), force=True)
    fr = harness.wait_state(run_id, "Cancelled", "Crashed", "Completed")
    assert fr.state.name == "Cancelled"
    _ended_task(harness, run_id)


def test_cancel_while_queued(harness: Harness) -> None:
    from prefect.states import Cancelling

    run_id = harness.run("hello", pool_id="empty")
    wait_for(
        lambda: harness.flow_run(run_id).infrastructure_pid,
        timeout=30,
        interval=0.3,
        what="submitted",
    )
    assert _task(harness, run_id).state.value == "active"
    with harness.server.client() as client:
        client.set_flow_run_state(run_id, Cancelling(), force=True)
    fr = harness.wait_state(run_id, "Cancelled")
    assert "cancelled while queued" in fr.state.message
    _ended_task(harness, run_id)


def test_a_node_removed_with_requeue_reruns_the_flow_once(harness: Harness, tmp_path: Path) -> None:
    marker = tmp_path / "attempts"
    # The first attempt outlives any removal; the rerun is quick.
    parameters = {"marker": str(marker), "seconds": 120, "rerun_seconds": 1}
    run_id = harness.run("sleepy", parameters=parameters)
    wait_for(marker.exists, timeout=120, interval=0.3, what="flow code running")
    node = _task(harness, run_id).node_info.node_id
    harness.batch.remove_nodes("p", {"nodeList": [node], "nodeDeallocationOption": "requeue"})
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Completed"
    task = _task(harness, run_id)
    assert task.execution_info.requeue_count == 1
    assert len(marker.read_text().split()) == 2
    with harness.server.client() as client:
        states = client.read_flow_run_states(run_id)
    names = [s.name for s in states]
    assert names.count("Completed") == 1
    # Its task was active again after the requeue, as a queued one is: the run stayed Running.
    assert all(s.type.value != "PENDING" for s in states[names.index("Running") :]), names
    harness.batch.resize_pool("p", {"targetDedicatedNodes": 2})


def test_a_requeued_task_does_not_run_a_flow_run_that_is_already_final(
    harness: Harness, tmp_path: Path
) -> None:
    from prefect.states import Completed

    marker = tmp_path / "attempts"
    run_id = harness.run("sleepy", parameters={"marker": str(marker), "seconds": 120})
    wait_for(marker.exists, timeout=120, interval=0.3, what="flow code running")
    # The run ends (as when the flow returns just before its node goes) while the task still runs.
    with harness.server.client() as client:
        client.set_flow_run_state(run_id, Completed(), force=True)
    node = _task(harness, run_id).node_info.node_id
    harness.batch.remove_nodes("p", {"nodeList": [node], "nodeDeallocationOption": "requeue"})
    task = _ended_task(harness, run_id)
    assert task.execution_info.requeue_count == 1
    assert task.execution_info.exit_code == 0
    assert len(marker.read_text().split()) == 1
    assert harness.flow_run(run_id).state.name == "Completed"
    with harness.server.client() as client:
        states = [s.name for s in client.read_flow_run_states(run_id)]
    assert states.count("Running") == 1, states
    harness.batch.resize_pool("p", {"targetDedicatedNodes": 2})


def test_no_secret_is_stored_or_logged_but_the_node_gets_them(harness: Harness) -> None:
    run_id = harness.run("probe")
    harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    harness.wait_logs(
        run_id,
        f"PREFECT_API_KEY sha256 {_sha(API_KEY)}",
        f"PREFECT_API_AUTH_STRING sha256 {_sha(AUTH_STRING)}",
    )
    task = _task(harness, run_id)
    names = {e.name for e in task.environment_settings}
    assert "PREFECT_BATCH_SECRET_PREFECT_API_KEY" in names and "PREFECT_API_KEY" not in names
    dump = "\n".join(
        "\n".join(sqlite3.connect(db).iterdump()) for db in harness.server.batch_home.rglob("*.db")
    )
    assert dump and API_KEY not in dump and AUTH_STRING not in dump
    for path in harness.server.batch_home.rglob("*"):
        if path.is_file() and not path.name.endswith((".db", ".db-wal", ".db-shm")):
            data = path.read_bytes()
            assert API_KEY.encode() not in data and AUTH_STRING.encode() not in data, path
    worker_log = (harness.root / "worker.log").read_bytes()
    assert API_KEY.encode() not in worker_log and AUTH_STRING.encode() not in worker_log


def _state_names(h: Harness, run_id: Any) -> list[str]:
    with h.server.client() as client:
        return [s.name for s in client.read_flow_run_states(run_id)]


def test_a_run_waiting_for_a_node_is_infrastructure_pending_then_runs(harness: Harness) -> None:
    harness.batch.create_pool({"id": "later", "vmSize": "local", "targetDedicatedNodes": 0})
    run_id = harness.run("hello", pool_id="later")
    fr = harness.wait_state(run_id, "InfrastructurePending", "Completed", "Failed", "Crashed")
    assert fr.state.name == "InfrastructurePending" and fr.state.is_pending()
    assert fr.state.message == (
        f"batch task {fr.infrastructure_pid} is queued: waiting for a node of pool later"
    )
    assert _task(harness, run_id).state.value == "active"
    harness.batch.resize_pool("later", {"targetDedicatedNodes": 1})
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Completed"
    names = _state_names(harness, run_id)
    assert names.count("InfrastructurePending") == 1
    assert names.index("InfrastructurePending") < names.index("Running"), names
    harness.batch.resize_pool("later", {"targetDedicatedNodes": 0})


def test_jobmanager_mode_runs_the_flow_as_the_manager_of_its_own_job(harness: Harness) -> None:
    run_id = harness.run("manager", mode="jobmanager")
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Completed", fr.state.message
    job_id = f"prefect-{run_id}"
    assert fr.infrastructure_pid == f"local/{job_id}/{run_id}"
    harness.wait_logs(run_id, "manager saw [('beside', 'running'), ('quick', 'completed')")
    # The job ends with its manager: the task beside it is terminated.
    job = wait_for(
        lambda: (j := harness.batch.get_job(job_id)).state.value == "completed" and j,
        timeout=60,
        interval=0.3,
        what="job completed",
    )
    assert job.job_manager_task is not None and job.job_manager_task.id == str(run_id)
    assert job.execution_info.termination_reason == "JMComplete"
    tasks = {t.id: t for t in harness.batch.list_tasks(job_id)}
    assert set(tasks) == {str(run_id), "beside", "quick"}
    assert all(t.state.value == "completed" for t in tasks.values())
    assert tasks[str(run_id)].execution_info.exit_code == 0
    assert tasks["quick"].execution_info.exit_code == 0
    assert tasks["beside"].execution_info.exit_code != 0


def _kill(harness: Harness, monkeypatch: pytest.MonkeyPatch, pid: str, **variables: Any) -> None:
    """The worker's kill_infrastructure, on a BatchWorker of this process.

    It reaches the module's store through the test's engine-less client: the worker process
    runs the one engine of that store, which carries the termination out.
    """
    import anyio

    from prefect_batch.prefect.worker import BatchJobConfiguration, BatchWorker

    worker = BatchWorker(work_pool_name=WORK_POOL)
    monkeypatch.setattr(worker, "batch_client", lambda account: harness.batch)
    configuration = BatchJobConfiguration(pool_id="p", **variables)
    anyio.run(lambda: worker.kill_infrastructure(pid, configuration, grace_seconds=5))


def test_kill_infrastructure_terminates_a_running_task(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "started"
    run_id = harness.run("sleepy", parameters={"marker": str(marker), "seconds": 120})
    wait_for(marker.exists, timeout=120, interval=0.3, what="flow code running")
    pid = harness.flow_run(run_id).infrastructure_pid
    _kill(harness, monkeypatch, pid)
    task = _ended_task(harness, run_id)
    assert task.execution_info.exit_code != 0
    # Ended outside Prefect's cancellation: the observer reports it.
    fr = harness.wait_state(run_id, "Crashed", "Completed", "Cancelled")
    assert fr.state.name == "Crashed" and pid in fr.state.message


def test_kill_infrastructure_terminates_the_job_in_jobmanager_mode(
    harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "started"
    parameters = {"marker": str(marker), "seconds": 120}
    run_id = harness.run("sleepy", mode="jobmanager", parameters=parameters)
    wait_for(marker.exists, timeout=120, interval=0.3, what="flow code running")
    _kill(harness, monkeypatch, harness.flow_run(run_id).infrastructure_pid, mode="jobmanager")
    job = wait_for(
        lambda: (j := harness.batch.get_job(f"prefect-{run_id}")).state.value == "completed" and j,
        timeout=60,
        interval=0.3,
        what="job completed",
    )
    assert job.execution_info.termination_reason == "UserTerminate"
    assert _ended_task(harness, run_id).execution_info.exit_code != 0


@pytest.mark.parametrize(
    "pid",
    ["local/prefect-nowhere/nothing", "local/prefect-batch-test-p-p0/no-such-task", "garbage"],
)
def test_kill_infrastructure_of_an_unknown_task_is_not_found(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, pid: str
) -> None:
    from prefect.exceptions import InfrastructureNotFound

    with pytest.raises(InfrastructureNotFound):
        _kill(harness, monkeypatch, pid)


def test_kill_infrastructure_of_an_ended_task_is_not_found(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.exceptions import InfrastructureNotFound

    run_id = harness.run("hello")
    harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    _ended_task(harness, run_id)
    with pytest.raises(InfrastructureNotFound, match="already ended"):
        _kill(harness, monkeypatch, harness.flow_run(run_id).infrastructure_pid)


def test_jobmanager_mode_refuses_a_job_that_is_not_the_runs_own(harness: Harness) -> None:
    # A job_id template without {flow_run_id} names one job for every run: the second is
    # refused (Crashed at submission) rather than left Pending with nothing to run it.
    harness.batch.create_job({"id": "jm-shared", "poolInfo": {"poolId": "p"}})
    run_id = harness.run("hello", mode="jobmanager", job_id="jm-shared")
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed")
    assert fr.state.name == "Crashed"
    assert "job 'jm-shared' exists and is not this flow run's" in fr.state.message
    harness.batch.terminate_job("jm-shared")


@pytest.fixture(scope="module")
def ssh_pool(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A pool of one node on a registered SSH host group: a private sshd on 127.0.0.2."""
    root = tmp_path_factory.mktemp("ssh")
    servers = SSHServers(root / "sshd", count=1, first_address="127.0.0.2")
    servers.start()
    try:
        (server,) = servers
        host = server.host_config(root=str(root / "host"))  # host key pinned
        # Its tasks are confined (the default): the flow's code and Prefect's home on the node
        # are opened to them, as a user would for a directory of their own.
        (harness.root / "ssh-node-prefect-home").mkdir(exist_ok=True)
        opened = [
            *("--task-read", str(harness.code)),
            *("--task-path", str(harness.root / "ssh-node-prefect-home")),
        ]
        harness.batch.create_node_source(
            servers.group_config(
                name="prefect-lab", hosts=[host], python=sys.executable, agent_args=opened
            )
        )
        harness.batch.create_pool(
            {
                "id": "sshp",
                "vmSize": "ssh",
                "targetDedicatedNodes": 1,
                "virtualMachineConfiguration": {
                    "imageReference": {
                        "publisher": "prefect-batch",
                        "offer": "ssh",
                        "sku": "prefect-lab",
                    },
                    "nodeAgentSKUId": "batch.node.ssh.prefect-lab",
                },
            }
        )
        yield "sshp"
        harness.batch.delete_pool("sshp")
        wait_for(
            lambda: not harness.batch.pool_exists("sshp"),
            timeout=60,
            interval=0.5,
            what="ssh pool deleted",
        )
    finally:
        servers.stop()


def test_a_flow_run_on_an_ssh_node_completes_with_its_logs(harness: Harness, ssh_pool: str) -> None:
    # The node is another "host" (127.0.0.2, reached over SSH) on this machine: it reaches the
    # Prefect server through api_url, and runs the flow with this interpreter (it has Prefect).
    run_id = harness.run(
        "hello",
        pool_id=ssh_pool,
        api_url=harness.server.url,
        python=sys.executable,
        env={"PREFECT_HOME": str(harness.root / "ssh-node-prefect-home")},
    )
    fr = harness.wait_state(run_id, "Completed", "Failed", "Crashed", timeout=120)
    assert fr.state.name == "Completed", fr.state.message
    task = _ended_task(harness, run_id)
    node = harness.batch.get_node(ssh_pool, task.node_info.node_id)
    assert node.ip_address == "127.0.0.2"
    names = {e.name: e.value for e in task.environment_settings}
    assert names["PREFECT_API_URL"] == harness.server.url
    harness.wait_logs(run_id, f"hello from node {node.id}", "Finished in state Completed")


# -- a restarted worker adopts its predecessor's runs -------------------------------------------

ADOPT_POOL = "batch-adopt"


@pytest.fixture(scope="module")
def adopt_pool(harness: Harness) -> str:
    """A second work pool, polled only by the workers a test starts and kills."""
    harness.cli(*PREFECT, "work-pool", "create", ADOPT_POOL, "--type", "batch")
    return ADOPT_POOL


def _sigkill_worker(worker: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker's process group: no teardown runs. Its local agents and their tasks
    live in sessions of their own and outlive it, as on a machine whose worker is killed."""
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)


def _worker_log(h: Harness, name: str) -> str:
    return (h.root / f"{name}.log").read_text(errors="replace")


def test_a_restarted_worker_adopts_a_running_run_and_reports_its_crash(
    harness: Harness, adopt_pool: str, tmp_path: Path
) -> None:
    marker = tmp_path / "pids"
    first = harness.spawn_worker(adopt_pool, "adopt-first")
    try:
        run_id = harness.run("doomed", work_pool=adopt_pool, parameters={"marker": str(marker)})
        wait_for(marker.exists, timeout=90, interval=0.3, what="flow code running")
        assert harness.flow_run(run_id).state.name == "Running"
    finally:
        _sigkill_worker(first)
    # With no worker up, the task dies outside Prefect's supervisor: its process group (the
    # supervisor) and the flow's own process (Prefect starts it in a session of its own).
    flow_pid, task_pid = map(int, marker.read_text().split())
    os.killpg(task_pid, signal.SIGKILL)
    os.kill(flow_pid, signal.SIGKILL)
    second = harness.spawn_worker(adopt_pool, "adopt-second")
    try:
        fr = harness.wait_state(run_id, "Crashed", "Completed", "Failed", "Cancelled", timeout=90)
        assert fr.state.name == "Crashed"
        pid = fr.infrastructure_pid
        assert fr.state.message.startswith(f"batch task {pid} ended (exit code 137;")
        assert _task(harness, run_id).execution_info.exit_code == 137
        harness.wait_logs(run_id, f"worker adopt-second adopted batch task {pid}")
        # The first worker was gone before the task died: the second reported it.
        wait_for(
            lambda: (
                f"Reported flow run '{run_id}' as crashed" in _worker_log(harness, "adopt-second")
            ),
            timeout=30,
            interval=0.5,
            what="the second worker's crash report",
        )
    finally:
        harness.stop_worker(second)


def test_a_run_cancelled_while_queued_after_its_worker_died_is_cancelled_by_the_next(
    harness: Harness, adopt_pool: str
) -> None:
    from prefect.states import Cancelling

    first = harness.spawn_worker(adopt_pool, "adopt-first-q")
    try:
        run_id = harness.run("hello", work_pool=adopt_pool, pool_id="empty")
        wait_for(
            lambda: harness.flow_run(run_id).infrastructure_pid,
            timeout=60,
            interval=0.3,
            what="submitted",
        )
    finally:
        _sigkill_worker(first)
    assert _task(harness, run_id).state.value == "active"
    with harness.server.client() as client:
        client.set_flow_run_state(run_id, Cancelling(), force=True)
    second = harness.spawn_worker(adopt_pool, "adopt-second-q")
    try:
        fr = harness.wait_state(run_id, "Cancelled", timeout=90)
        assert fr.state.message == f"cancelled while queued as batch task {fr.infrastructure_pid}"
        task = _ended_task(harness, run_id)
        assert task.execution_info.failure_info.code == "TaskEnded"
        assert task.node_info is None  # it never ran
        assert _state_names(harness, run_id).count("Cancelled") == 1
        harness.wait_logs(run_id, "worker adopt-second-q adopted batch task")
    finally:
        harness.stop_worker(second)


def test_a_second_crashed_or_cancelled_proposal_leaves_the_final_state(harness: Harness) -> None:
    """Two workers watching one run both propose: the second changes nothing."""
    import anyio
    from prefect import flow
    from prefect.client.orchestration import PrefectClient
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling, Running

    from prefect_batch.prefect.worker import BatchWorker

    @flow(name="raced")
    def raced() -> None:  # never run: only its flow runs' states are proposed
        pass

    async def main() -> tuple[list[Any], list[Any]]:
        async with PrefectClient(harness.server.url) as client:
            workers = [BatchWorker(work_pool_name="nobody") for _ in range(2)]
            for worker in workers:
                worker._client = client
            crashed = await client.create_flow_run(raced, state=Running())
            for i, worker in enumerate(workers):  # both read the run while it was Running
                await worker._propose_crashed_state(crashed, f"report {i}")
            cancelled = await client.create_flow_run(raced, state=Running())
            await client.set_flow_run_state(cancelled.id, Cancelling(), force=True)
            cancelling = await client.read_flow_run(cancelled.id)
            accepted = [
                await worker.observer._propose_cancelled(cancelling, f"cancel {i}")
                for i, worker in enumerate(workers)
            ]
            assert accepted == [True, False]
            return (
                await client.read_flow_run_states(crashed.id),
                await client.read_flow_run_states(cancelled.id),
            )

    with temporary_settings({PREFECT_API_URL: harness.server.url}):
        crashed_states, cancelled_states = anyio.run(main)
        APILogWorker.drain_all(timeout=10)  # the workers' run log lines, to this server
    assert [(s.name, s.message) for s in crashed_states[1:]] == [("Crashed", "report 0")]
    assert [s.name for s in cancelled_states] == ["Running", "Cancelling", "Cancelled"]
    assert cancelled_states[-1].message == "cancel 0"


def test_adoption_pages_through_its_queues_and_skips_runs_not_its_own(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded passes cover the backlog; other queues, accounts and services are left alone."""
    import anyio
    from prefect.client.orchestration import PrefectClient
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Running

    from prefect_batch.prefect import worker as worker_module
    from prefect_batch.prefect.worker import BatchWorker

    pool, job_id = "batch-adopt-paging", "adopt-paging"
    harness.cli(*PREFECT, "work-pool", "create", pool, "--type", "batch")
    harness.batch.create_job({"id": job_id, "poolInfo": {"poolId": "empty"}})
    kinds = ["good"] * 4 + ["elsewhere", "no task", "no pid", "other queue"]
    runs: dict[Any, str] = {}
    with harness.server.client() as client:
        client.create_work_queue(name="side", work_pool_name=pool)
        for kind in kinds:
            run_id = harness.run("hello", work_pool=pool, pool_id="empty")
            if kind == "other queue":
                deployment_id = harness.flow_run(run_id).deployment_id
                client.delete_flow_run(run_id)
                run_id = client.create_flow_run_from_deployment(
                    deployment_id, work_queue_name="side"
                ).id
            runs[run_id] = kind
            if kind != "no task":
                harness.batch.create_task(job_id, {"id": str(run_id), "commandLine": "true"})
            if kind != "no pid":
                account = "elsewhere" if kind == "elsewhere" else "local"
                client.update_flow_run(run_id, infrastructure_pid=f"{account}/{job_id}/{run_id}")
            client.set_flow_run_state(run_id, Running(), force=True)
    good = {run_id for run_id, kind in runs.items() if kind in ("good", "other queue")}
    monkeypatch.setattr(worker_module, "ADOPT_PAGE", 2)
    monkeypatch.setattr(worker_module, "ADOPT_MAX_RUNS", 3)

    async def main(worker: BatchWorker) -> list[list[Any] | None]:
        async with PrefectClient(harness.server.url) as client:
            worker._client = client
            passes: list[list[Any] | None] = [await worker.adopt_flow_runs()]  # not synced
            worker._work_pool = await client.read_work_pool(pool)
            for _ in range(4):
                passes.append(await worker.adopt_flow_runs())
            return passes

    with temporary_settings({PREFECT_API_URL: harness.server.url}):
        # One worker polls the default queue only, one the whole pool.
        queue_worker = BatchWorker(work_pool_name=pool, work_queues=["default"])
        pool_worker = BatchWorker(work_pool_name=pool)
        for worker in (queue_worker, pool_worker):
            monkeypatch.setattr(worker, "batch_client", lambda account: harness.batch)
        queued_passes = anyio.run(main, queue_worker)
        pool_passes = anyio.run(main, pool_worker)
        APILogWorker.drain_all(timeout=10)
    try:
        # Seven runs in the default queue, three per pass: the third pass reaches the end and
        # the fourth starts over, finding nothing new; nothing is adopted twice.
        assert queued_passes[0] is None
        adopted = [run_id for found in queued_passes[1:] for run_id in found]
        assert sorted(map(str, adopted)) == sorted(
            str(r) for r, kind in runs.items() if kind == "good"
        )
        assert queued_passes[4] == []
        assert set(queue_worker.observer.watching()) == set(adopted)
        watched = queue_worker.observer._watched[adopted[0]]
        assert (watched.account, watched.job_id, watched.mode, watched.pool_id) == (
            "local",
            job_id,
            "task",
            "empty",
        )
        assert {runs[r] for r in queue_worker._not_adopted} == {"elsewhere", "no task"}
        assert set(pool_worker.observer.watching()) == good
        assert pool_passes[4] == []
        harness.wait_logs(adopted[0], f"worker {queue_worker.name} adopted batch task local/")
    finally:
        harness.batch.terminate_job(job_id)
