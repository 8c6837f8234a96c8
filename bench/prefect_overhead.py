"""What Prefect costs a batch job: the driver flow against the client alone, in one run.

    python bench/prefect_overhead.py [--tasks 5000] [--nodes 3] [--slots 8] [--rounds 3]

One process (plus its node agents and a Prefect test server subprocess) runs, on one warm
pool of local nodes, alternately:

(A) the client alone: ``create_job`` + ``create_tasks`` + ``wait_for_job`` for N trivial tasks;
(B) the same N tasks through the driver flow ``run_batch_job`` (a flow run; above the task-run
    threshold: a progress artifact, task runs for failed tasks only, the job.completed event,
    every task's result returned);
(B') (B) again, with Prefect's flow heartbeat off: prefect 3.8 joins its heartbeat thread, which
    sleeps in 1-second slices, at the end of every flow run (an empty flow run takes 1.05 s with
    it, 0.06 s without) — Prefect's fixed cost, shown apart from ours.

and prints each round and the median of the rounds' ratios (B)/(A) (target <= 1.3). The flow
borrows the warm client (``using_client``), as a long-lived worker would; a flow run that starts
its own embedded engine also pays for starting its nodes.

Figures drift up to 2x on shared 2-core machines; compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry calls offline

from prefect_batch import BatchClient  # noqa: E402
from prefect_batch.testing import embedded_client  # noqa: E402

TRUE = shutil.which("true") or "/bin/true"
TARGET = 1.3
SETTLE_SECONDS = 3.0
"""Pause before each measurement: the Prefect server finishes ingesting the previous one's
logs and events, so neither side pays for the other's."""


def wait_nodes(client: BatchClient, pool: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(x.state in ("idle", "running") for x in client.list_nodes(pool)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("nodes did not become idle")
        time.sleep(0.05)


def client_alone(client: BatchClient, job: str, n: int) -> float:
    """Seconds for n trivial tasks through the client: create, add, wait."""
    t = time.perf_counter()
    client.create_job(
        {"id": job, "poolInfo": {"poolId": "bench"}, "onAllTasksComplete": "noaction"}
    )
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": TRUE} for i in range(n)])
    counts = client.wait_for_job(job)
    elapsed = time.perf_counter() - t
    assert counts.task_counts.succeeded == n, counts
    client.terminate_job(job)
    return elapsed


def through_flow(pool: object, job: str, n: int, *, heartbeats: bool = True) -> float:
    """Seconds for n trivial tasks through the driver flow (flow run included)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from prefect_batch.flows import run_batch_job

    specs = [{"id": f"t{i}", "commandLine": TRUE} for i in range(n)]
    off = {} if heartbeats else {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    with temporary_settings(off):
        t = time.perf_counter()
        result = run_batch_job(pool=pool, job_id=job, tasks=specs)
        elapsed = time.perf_counter() - t
    assert result.succeeded_count == n, result.failure_message()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    from prefect_batch.blocks import BatchPool
    from prefect_batch.flows import using_client

    logging.getLogger("prefect").setLevel(logging.WARNING)
    home = Path(tempfile.mkdtemp(prefix="prefect-overhead-"))
    print(f"starting a Prefect test server and {args.nodes} local nodes x {args.slots} slots...")
    with prefect_test_harness(server_startup_timeout=90), embedded_client(home) as client:
        pool = BatchPool(
            pool_id="bench", target_dedicated_nodes=args.nodes, task_slots_per_node=args.slots
        )
        with using_client(client):
            pool.ensure(client)
            wait_nodes(client, "bench", args.nodes)
            client_alone(client, "warm-client", 200)  # warm both paths up
            through_flow(pool, "warm-flow", 20)
            alone: list[float] = []
            flow: list[float] = []
            quiet: list[float] = []
            print(
                f"\n{'round':>5} {'(A) client alone':>22} {'(B) driver flow':>22} {'B/A':>6}"
                f" {'(B) no heartbeat':>22} {'B/A':>6}"
            )
            for r in range(args.rounds):
                time.sleep(SETTLE_SECONDS)
                a = client_alone(client, f"alone-{r}", args.tasks)
                time.sleep(SETTLE_SECONDS)
                b = through_flow(pool, f"flow-{r}", args.tasks)
                time.sleep(SETTLE_SECONDS)
                c = through_flow(pool, f"quiet-{r}", args.tasks, heartbeats=False)
                alone.append(a)
                flow.append(b)
                quiet.append(c)
                print(
                    f"{r + 1:>5} {a:7.2f} s {args.tasks / a:6.0f} tasks/s "
                    f"{b:7.2f} s {args.tasks / b:6.0f} tasks/s {b / a:6.2f} "
                    f"{c:7.2f} s {args.tasks / c:6.0f} tasks/s {c / a:6.2f}"
                )
    shutil.rmtree(home, ignore_errors=True)
    ratio = statistics.median(b / a for a, b in zip(alone, flow, strict=True))
    quiet_ratio = statistics.median(c / a for a, c in zip(alone, quiet, strict=True))
    print(
        f"\nmedians: client alone {statistics.median(alone):.2f} s, driver flow "
        f"{statistics.median(flow):.2f} s, without Prefect's flow heartbeat "
        f"{statistics.median(quiet):.2f} s"
    )
    print(
        f"driver flow / client alone = {ratio:.2f} (median of the rounds' ratios; target <= "
        f"{TARGET}) -> {'OK' if ratio <= TARGET else 'OVER TARGET'}"
    )
    print(
        f"without the heartbeat thread's join (Prefect's own 0-1 s per flow run): {quiet_ratio:.2f}"
    )


if __name__ == "__main__":
    main()
