"""The batch server under the official azure-batch SDK, against the embedded service, in one run.

    python bench/server.py [--tasks 3000] [--nodes 3] [--slots 8] [--seconds 3] [--threads 4]
                           [--database-url postgresql+psycopg://...]

Starts ``prefect-batch server start`` as a process (its own engine and local nodes; SQLite under
a temporary home unless ``--database-url``), then from this process:

(1) ``get_task`` requests/s with the SDK: one client, then ``--threads`` clients at once;
(2) ``create_task_collection`` (addtaskcollection of 100 tasks) requests/s with the SDK;
(3) tasks/s end to end through the server — ``create_tasks`` with the SDK, then polling
    ``get_job_task_counts`` until all ``--tasks`` trivial tasks are done — and the same through
    prefect-batch's own HTTP client (``BatchClient(url=...)``);
(4) the same tasks/s with the embedded service (``BatchClient()`` on the same kind of store,
    after the server stopped, so the two never share the CPU), and the ratio server/embedded.

Every request is signed (SharedKey) and every accepted change is durable before it is answered.
Figures drift up to 2x on a shared 2-core machine; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from azure.batch import BatchClient as SdkClient  # noqa: E402
from azure.batch import models  # noqa: E402
from azure.core.credentials import AzureNamedKeyCredential  # noqa: E402

from prefect_batch import BatchClient  # noqa: E402
from prefect_batch.core.sharedkey import new_key  # noqa: E402

TRUE = shutil.which("true") or "/bin/true"
ACCOUNT = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(home: Path, port: int, key: str, database_url: str | None) -> subprocess.Popen:
    env = {
        **os.environ,
        "PREFECT_BATCH_HOME": str(home),
        "PREFECT_BATCH_ACCOUNT_NAME": ACCOUNT,
        "PREFECT_BATCH_ACCOUNT_KEY": key,
    }
    env.pop("PREFECT_BATCH_SERVICE_URL", None)
    if database_url:
        env["PREFECT_BATCH_DATABASE_URL"] = database_url
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from prefect_batch.cli import app; app()",
            "server",
            "start",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)


def stop_server(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def wait_idle(list_nodes, n: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while sum(x.state in ("idle", "running") for x in list_nodes()) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("nodes did not become idle")
        time.sleep(0.05)


def timed_loop(call, seconds: float) -> int:
    """Calls of ``call`` completed in ``seconds``."""
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        call()
        n += 1
    return n


def get_task_rate(url: str, key: str, seconds: float, threads: int) -> float:
    clients = [SdkClient(url, AzureNamedKeyCredential(ACCOUNT, key)) for _ in range(threads)]
    counts = [0] * threads

    def work(i: int) -> None:
        counts[i] = timed_loop(lambda: clients[i].get_task("reads", "t0"), seconds)

    runners = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t = time.perf_counter()
    for r in runners:
        r.start()
    for r in runners:
        r.join()
    elapsed = time.perf_counter() - t
    for c in clients:
        c.close()
    return sum(counts) / elapsed


def collection_rate(sdk: SdkClient, seconds: float) -> float:
    sdk.create_job(
        models.BatchJobCreateOptions(id="adds", pool_info=models.BatchPoolInfo(pool_id="idle"))
    )
    batch = [0]

    def add() -> None:
        b = batch[0]
        batch[0] += 1
        group = models.BatchTaskGroup(
            task_values=[
                models.BatchTaskCreateOptions(id=f"b{b}-{i}", command_line=TRUE) for i in range(100)
            ]
        )
        result = sdk.create_task_collection("adds", group)
        assert len(result.result_values) == 100

    t = time.perf_counter()
    n = timed_loop(add, seconds)
    return n / (time.perf_counter() - t)


def e2e_sdk(sdk: SdkClient, n: int) -> float:
    sdk.create_job(
        models.BatchJobCreateOptions(id="e2e-sdk", pool_info=models.BatchPoolInfo(pool_id="bench"))
    )
    t = time.perf_counter()
    sdk.create_tasks(
        "e2e-sdk", [models.BatchTaskCreateOptions(id=f"t{i}", command_line=TRUE) for i in range(n)]
    )
    deadline = time.monotonic() + 600
    while sdk.get_job_task_counts("e2e-sdk").task_counts.completed < n:
        if time.monotonic() > deadline:
            raise TimeoutError("the job did not finish")
        time.sleep(0.05)
    return n / (time.perf_counter() - t)


def e2e_client(client: BatchClient, job: str, n: int) -> float:
    client.create_job({"id": job, "poolInfo": {"poolId": "bench"}})
    t = time.perf_counter()
    res = client.create_tasks(job, [{"id": f"t{i}", "commandLine": TRUE} for i in range(n)])
    assert all(r.status == "success" for r in res.result_values)
    counts = client.wait_for_job(job, poll_seconds=0.05, timeout=600)
    assert counts.task_counts.succeeded == n, counts
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each request loop")
    ap.add_argument("--threads", type=int, default=4, help="concurrent clients for get_task")
    ap.add_argument("--database-url", default=None, help="the server's store (default SQLite)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="prefect-batch-server-bench-"))
    rows: list[tuple[str, str, str]] = []
    key, port = new_key(), free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        server = start_server(home / "server", port, key, args.database_url)
        try:
            sdk = SdkClient(url, AzureNamedKeyCredential(ACCOUNT, key))
            pool = {"vm_size": "local", "task_slots_per_node": args.slots}
            sdk.create_pool(
                models.BatchPoolCreateOptions(id="idle", target_dedicated_nodes=0, **pool)
            )
            sdk.create_pool(
                models.BatchPoolCreateOptions(id="bench", target_dedicated_nodes=args.nodes, **pool)
            )
            sdk.create_job(
                models.BatchJobCreateOptions(
                    id="reads", pool_info=models.BatchPoolInfo(pool_id="idle")
                )
            )
            sdk.create_task("reads", models.BatchTaskCreateOptions(id="t0", command_line=TRUE))

            one = get_task_rate(url, key, args.seconds, 1)
            rows.append(("(1) get_task, 1 SDK client", f"{one:,.0f} req/s", ""))
            many = get_task_rate(url, key, args.seconds, args.threads)
            rows.append(
                (f"(1) get_task, {args.threads} SDK clients at once", f"{many:,.0f} req/s", "")
            )
            adds = collection_rate(sdk, args.seconds)
            rows.append(
                (
                    "(2) addtaskcollection(100), 1 SDK client",
                    f"{adds:,.1f} req/s",
                    f"= {adds * 100:,.0f} tasks/s ingested",
                )
            )
            wait_idle(lambda: list(sdk.list_nodes("bench")), args.nodes)
            through_sdk = e2e_sdk(sdk, args.tasks)
            rows.append(
                (
                    f"(3) end to end via server, SDK, {args.tasks:,} tasks on "
                    f"{args.nodes}x{args.slots} slots",
                    f"{through_sdk:,.0f} tasks/s",
                    "",
                )
            )
            with BatchClient(ACCOUNT, url=url, account_key=key) as remote:
                through_client = e2e_client(remote, "e2e-client", args.tasks)
            rows.append(
                (
                    "(3) end to end via server, BatchClient(url=...)",
                    f"{through_client:,.0f} tasks/s",
                    "",
                )
            )
            # The embedded run may share the database (--database-url): leave it no pools.
            for pool_id in ("bench", "idle"):
                sdk.begin_delete_pool(pool_id, polling_interval=0.2).result()
            sdk.close()
        finally:
            stop_server(server)

        # The same store as the server's (another account), so the two runs compare the same.
        with BatchClient(home=home / "embedded", database_url=args.database_url) as client:
            client.create_pool(
                {
                    "id": "bench",
                    "vmSize": "local",
                    "targetDedicatedNodes": args.nodes,
                    "taskSlotsPerNode": args.slots,
                }
            )
            wait_idle(lambda: client.list_nodes("bench"), args.nodes)
            embedded = e2e_client(client, "e2e-embedded", args.tasks)
            client.close(kill_tasks=True)
        rows.append(
            (
                "(4) end to end embedded, BatchClient()",
                f"{embedded:,.0f} tasks/s",
                f"server(SDK)/embedded = {through_sdk / embedded:.2f}",
            )
        )
    finally:
        shutil.rmtree(home, ignore_errors=True)

    store = "PostgreSQL" if args.database_url else "SQLite"
    width = max(len(r[0]) for r in rows)
    print(
        f"\nprefect-batch server ({time.strftime('%Y-%m-%d')}, {sys.platform}, "
        f"{os.cpu_count()} cores, server store {store})"
    )
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
