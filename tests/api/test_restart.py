"""``prefect-batch server start`` as a process: the one-line start for a known account, and a
server killed (SIGKILL) mid-job and started again loses no accepted task and no result.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from azure.batch import BatchClient as SdkClient
from azure.batch import models
from azure.core.credentials import AzureNamedKeyCredential

from prefect_batch.core.sharedkey import new_key
from prefect_batch.testing import gate_command
from prefect_batch.testing.server import server_command, server_env
from tests.api.conftest import database, free_port, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database of each test's own (these tests reuse ids and start processes on it)."""
    with database(request.param, tmp_path) as url:
        yield url


ACCOUNT = "restartacct"


@contextmanager
def server_process(
    home: Path,
    port: int,
    key: str,
    store_url: str,
    log: Path,
    *,
    extra_args: tuple[str, ...] = (),
    up: Callable[[str], bool] | None = None,
    scheme: str = "http",
) -> Iterator[subprocess.Popen[bytes]]:
    """`PREFECT_BATCH_ACCOUNT_NAME=.. PREFECT_BATCH_ACCOUNT_KEY=.. prefect-batch server start`.

    ``extra_args`` go to ``server start``; ``up(url)`` tells when it answers (default: plain
    HTTP ``/openapi.json``).
    """
    database_url = store_url if store_url.startswith("postgresql") else None
    env = server_env(home, ACCOUNT, key, database_url=database_url)
    cmd = server_command(port, *extra_args)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"{scheme}://127.0.0.1:{port}"
        ready = up or _up
        wait_for(lambda: ready(url) or proc.poll() is not None, timeout=60)
        assert proc.poll() is None, log.read_text()
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/openapi.json", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _snapshot(sdk: SdkClient, job_id: str) -> dict[str, tuple]:
    return {
        t.id: (t.state, t.execution_info.exit_code, t.execution_info.end_time)
        for t in sdk.list_tasks(job_id)
        if t.state == models.BatchTaskState.COMPLETED
    }


def test_a_killed_server_loses_nothing(store_url: str, tmp_path: Path) -> None:
    key, port = new_key(), free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    sdk = SdkClient(url, AzureNamedKeyCredential(ACCOUNT, key), connection_timeout=10)
    # The first 8 tasks finish at once; the others wait for a gate that opens after the restart,
    # so the server dies with 8 tasks running and 32 queued, whatever the machine's speed.
    gate = tmp_path / "gate"
    echo = "echo done $AZ_BATCH_TASK_ID"
    tasks = [
        models.BatchTaskCreateOptions(
            id=f"t{i:02d}",
            command_line=f"/bin/sh -c '{echo}'" if i < 8 else gate_command(gate, then=echo),
        )
        for i in range(48)
    ]
    with server_process(tmp_path / "home", port, key, store_url, log) as first:
        sdk.create_pool(
            models.BatchPoolCreateOptions(
                id="pool", vm_size="local", target_dedicated_nodes=2, task_slots_per_node=4
            )
        )
        sdk.create_job(
            models.BatchJobCreateOptions(id="job", pool_info=models.BatchPoolInfo(pool_id="pool"))
        )
        # One collection, so the tasks queue in this order (the SDK's create_tasks reverses it).
        added = sdk.create_task_collection("job", models.BatchTaskGroup(task_values=tasks[:40]))
        assert len(added.result_values) == 40
        wait_for(lambda: len(_snapshot(sdk, "job")) == 8, timeout=60)
        wait_for(lambda: sdk.get_job_task_counts("job").task_counts.running == 8, timeout=60)
        # Accepted just before the crash: must survive it.
        sdk.create_tasks("job", tasks[40:])
        before = _snapshot(sdk, "job")
        first.kill()  # SIGKILL: no shutdown at all
        first.wait(10)
    assert sorted(before) == [f"t{i:02d}" for i in range(8)]

    with server_process(tmp_path / "home", port, key, store_url, log):
        gate.touch()
        wait_for(lambda: sdk.get_job_task_counts("job").task_counts.completed == 48, timeout=120)
        after = {t.id: t for t in sdk.list_tasks("job")}
        assert sorted(after) == sorted(t.id for t in tasks)  # no accepted task lost
        for task_id, (state, exit_code, end_time) in before.items():
            t = after[task_id]  # results recorded before the crash are kept as they were
            assert (t.state, t.execution_info.exit_code, t.execution_info.end_time) == (
                state,
                exit_code,
                end_time,
            )
        assert all(t.execution_info.exit_code == 0 for t in after.values())
        for task_id in ("t00", "t20", "t47"):
            out = b"".join(sdk.download_task_file("job", task_id, "stdout.txt"))
            assert out == f"done {task_id}\n".encode()
    sdk.close()


def _lease_holder_pid(store_url: str, home: Path) -> int | None:
    from sqlalchemy import create_engine, select

    from prefect_batch.store.schema import pools

    url = store_url if store_url.startswith("postgresql") else f"sqlite:///{home / 'batch.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            owner = conn.execute(select(pools.c.lease_owner).where(pools.c.id == "pool")).scalar()
    finally:
        engine.dispose()
    return int(owner.split(":")[1]) if owner else None


def test_two_servers_on_one_store_run_each_task_once(store_url: str, tmp_path: Path) -> None:
    """Both serve requests; the pool's lease lets one engine run it; when that server dies
    the other takes the pool over and finishes the job."""
    key, home = new_key(), tmp_path / "home"
    ports = free_port(), free_port()
    marks = tmp_path / "marks"
    marks.mkdir()
    sdks = [
        SdkClient(f"http://127.0.0.1:{p}", AzureNamedKeyCredential(ACCOUNT, key)) for p in ports
    ]
    # Each run of a task leaves a file of its own: a task run twice leaves two. The first 20
    # run at once; the others wait for a gate that opens after the failover, so the lease holder
    # dies with 8 tasks running, whatever the machine's speed.
    gate = tmp_path / "gate"
    mark = f"mktemp {marks}/$AZ_BATCH_TASK_ID.XXXXXX"

    def command(i: int) -> str:
        return f"/bin/sh -c '{mark}'" if i < 20 else gate_command(gate, then=mark)

    with server_process(home, ports[0], key, store_url, tmp_path / "a.log") as a:
        with server_process(home, ports[1], key, store_url, tmp_path / "b.log") as b:
            sdks[0].create_pool(
                models.BatchPoolCreateOptions(
                    id="pool", vm_size="local", target_dedicated_nodes=2, task_slots_per_node=4
                )
            )
            sdks[1].create_job(
                models.BatchJobCreateOptions(
                    id="twin", pool_info=models.BatchPoolInfo(pool_id="pool")
                )
            )
            for i in range(60):  # requests alternate between the two servers
                sdks[i % 2].create_task(
                    "twin", models.BatchTaskCreateOptions(id=f"t{i:02d}", command_line=command(i))
                )
            wait_for(
                lambda: sdks[0].get_job_task_counts("twin").task_counts.completed == 20,
                timeout=60,
            )
            wait_for(
                lambda: sdks[0].get_job_task_counts("twin").task_counts.running == 8, timeout=60
            )
            holder = wait_for(lambda: _lease_holder_pid(store_url, home), timeout=30)
            survivor = 1 if holder == a.pid else 0
            assert holder in (a.pid, b.pid)
            done_before = {
                t.id for t in sdks[survivor].list_tasks("twin", filter="state eq 'completed'")
            }
            (a if holder == a.pid else b).kill()
            gate.touch()
            wait_for(
                lambda: sdks[survivor].get_job_task_counts("twin").task_counts.completed == 60,
                timeout=120,
            )
            counts = sdks[survivor].get_job_task_counts("twin").task_counts
            assert counts.succeeded == 60
    runs = {}
    for mark in marks.iterdir():
        task_id = mark.name.split(".")[0]
        runs[task_id] = runs.get(task_id, 0) + 1
    assert sorted(runs) == [f"t{i:02d}" for i in range(60)]  # every task ran
    # A task finished before the failover ran exactly once; one in flight when the lease holder
    # died may run again (at-least-once, README) — but never while both servers were up.
    assert sorted(done_before) == [f"t{i:02d}" for i in range(20)]
    assert all(runs[t] == 1 for t in done_before)
    for sdk in sdks:
        sdk.close()


def test_the_one_line_start_sets_the_key(store_url: str, tmp_path: Path) -> None:
    key, port = new_key(), free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(tmp_path / "home", port, key, store_url, tmp_path / "log"):
        sdk = SdkClient(url, AzureNamedKeyCredential(ACCOUNT, key))
        sdk.create_job(
            models.BatchJobCreateOptions(id="one-line", pool_info=models.BatchPoolInfo(pool_id="p"))
        )
        sdk.close()
    # Started again with another key: the primary key is replaced, the old one refused.
    new = new_key()
    with server_process(tmp_path / "home", port, new, store_url, tmp_path / "log"):
        ok = SdkClient(url, AzureNamedKeyCredential(ACCOUNT, new))
        assert ok.get_job("one-line").pool_info.pool_id == "p"
        old = SdkClient(url, AzureNamedKeyCredential(ACCOUNT, key))
        with pytest.raises(Exception) as info:
            list(old.list_pools())
        assert getattr(info.value, "status_code", None) == 403
        ok.close()
        old.close()
    assert key not in (tmp_path / "log").read_text()
