"""Throughput of the whole stack against the machine's own limit, measured in one run.

    python bench/throughput.py [--tasks 5000] [--nodes 3] [--slots 8] [--ingest 100000]

Prints, from one process (plus its node agents):

(a) the machine's limit: a plain Python loop ``subprocess.run(["/bin/true"])``;
(b) the same N trivial tasks through the whole stack — client -> durable store (SQLite) ->
    scheduler -> local node agents -> results durable — and the ratio (b)/(a) (target >= 0.6);
(c) bulk ingest of ``--ingest`` tasks through ``create_tasks`` (target >= 5,000 tasks/s);
(d) dispatch rate while 10 jobs of different priority hold ``--ingest`` queued tasks, against
    the rate while 1,000 are queued (target: within 20 %; the queue is read through an index,
    not scanned).

Figures drift up to 2x on shared 2-core machines; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_batch import BatchClient  # noqa: E402

TRUE = shutil.which("true") or "/bin/true"


def raw_spawn_rate(n: int) -> float:
    """Tasks/s of a plain subprocess loop: the machine's limit."""
    t = time.perf_counter()
    for _ in range(n):
        subprocess.run([TRUE], check=True)
    return n / (time.perf_counter() - t)


def wait_nodes(client: BatchClient, pool: str, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while sum(x.state in ("idle", "running") for x in client.list_nodes(pool)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError("nodes did not become idle")
        time.sleep(0.05)


def service_cpu_seconds() -> float:
    """CPU time of this process (client, store and engine; the agents are other processes)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stack_rate(client: BatchClient, job: str, n: int) -> tuple[float, float, float]:
    """(tasks/s end to end, tasks/s of ingest alone, service CPU µs per task) for n tasks.

    The CPU figure hardly moves with other work on the machine, unlike the rate.
    """
    client.create_job({"id": job, "poolInfo": {"poolId": "bench"}})
    cpu = service_cpu_seconds()
    t = time.perf_counter()
    res = client.create_tasks(job, [{"id": f"t{i}", "commandLine": TRUE} for i in range(n)])
    t_ingest = time.perf_counter() - t
    assert all(r.status == "success" for r in res.result_values)
    counts = client.wait_for_job(job, poll_seconds=0.05, timeout=600)
    elapsed = time.perf_counter() - t
    cpu = service_cpu_seconds() - cpu
    assert counts.task_counts.succeeded == n, counts
    return n / elapsed, n / t_ingest, cpu / n * 1e6


def ingest_rate(client: BatchClient, n: int, jobs: int) -> float:
    """Tasks/s of create_tasks for n tasks spread over ``jobs`` jobs on a pool without nodes."""
    per_job = n // jobs
    specs = [[{"id": f"t{i}", "commandLine": TRUE} for i in range(per_job)] for _ in range(jobs)]
    t = time.perf_counter()
    for j in range(jobs):
        client.create_job(
            {"id": f"deep{j}", "poolInfo": {"poolId": "deep"}, "priority": 100 * j - 500}
        )
        client.create_tasks(f"deep{j}", specs[j])
    return (per_job * jobs) / (time.perf_counter() - t)


def dispatch_rate(client: BatchClient, job_ids: list[str], measure: int, warmup: int) -> float:
    """Tasks/s completed between ``warmup`` and ``warmup + measure`` completions.

    Polls every 50 ms with one read per job, the same for the shallow and the deep queue, so
    the measurement itself weighs the same on both.
    """

    def done() -> int:
        return sum(client.get_job_task_counts(j).task_counts.completed for j in job_ids)

    deadline = time.monotonic() + 600
    while done() < warmup:
        if time.monotonic() > deadline:
            raise TimeoutError("dispatch did not start")
        time.sleep(0.01)
    first = done()
    t = time.perf_counter()
    while (last := done()) - first < measure:
        if time.monotonic() > deadline:
            raise TimeoutError("dispatch did not progress")
        time.sleep(0.05)
    return (last - first) / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--ingest", type=int, default=100_000)
    ap.add_argument(
        "--measure", type=int, default=500, help="tasks timed for (d), after 100 warm-up tasks"
    )
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="prefect-batch-bench-"))
    rows: list[tuple[str, str, str]] = []
    try:
        raw = raw_spawn_rate(min(args.tasks, 3000))
        rows.append(("(a) subprocess.run loop (machine limit)", f"{raw:,.0f} tasks/s", ""))
        with BatchClient(home=home) as client:
            client.create_pool(
                {
                    "id": "bench",
                    "vmSize": "local",
                    "targetDedicatedNodes": args.nodes,
                    "taskSlotsPerNode": args.slots,
                }
            )
            wait_nodes(client, "bench", args.nodes)
            stack, _, cpu_us = stack_rate(client, "stack", args.tasks)
            rows.append(
                (
                    f"(b) whole stack, {args.tasks:,} tasks on {args.nodes}x{args.slots} slots",
                    f"{stack:,.0f} tasks/s",
                    f"(b)/(a) = {stack / raw:.2f}  (target >= 0.6)",
                )
            )
            rows.append(("    service CPU per task in (b)", f"{cpu_us:,.0f} µs", ""))
            raw2 = raw_spawn_rate(min(args.tasks, 3000))
            rows.append(
                (
                    "(a') subprocess.run loop again",
                    f"{raw2:,.0f} tasks/s",
                    f"(b)/mean(a,a') = {stack / ((raw + raw2) / 2):.2f}",
                )
            )

            # (d) baseline: 1,000 queued.
            small = min(1000, args.ingest)
            client.create_job({"id": "shallow", "poolInfo": {"poolId": "bench"}})
            client.create_tasks(
                "shallow", [{"id": f"t{i}", "commandLine": TRUE} for i in range(small)]
            )
            shallow = dispatch_rate(client, ["shallow"], args.measure, small // 10)
            client.wait_for_job("shallow", timeout=600)

            # (c) ingest into a pool with no nodes (nothing runs while we add).
            client.create_pool(
                {
                    "id": "deep",
                    "vmSize": "local",
                    "targetDedicatedNodes": 0,
                    "taskSlotsPerNode": args.slots,
                }
            )
            ingest = ingest_rate(client, args.ingest, 10)
            rows.append(
                (
                    f"(c) bulk ingest of {args.ingest:,} tasks (10 jobs)",
                    f"{ingest:,.0f} tasks/s",
                    "target >= 5,000",
                )
            )

            # (d) deep queue: give the deep pool nodes, time the head of the queue.
            client.resize_pool("deep", {"targetDedicatedNodes": args.nodes})
            client.resize_pool("bench", {"targetDedicatedNodes": 0})
            wait_nodes(client, "deep", args.nodes)
            deep = dispatch_rate(client, [f"deep{j}" for j in range(10)], args.measure, small // 10)
            rows.append((f"(d) dispatch with {small:,} queued", f"{shallow:,.0f} tasks/s", ""))
            rows.append(
                (
                    f"(d) dispatch with {args.ingest:,} queued (10 priorities)",
                    f"{deep:,.0f} tasks/s",
                    f"deep/shallow = {deep / shallow:.2f}  (target >= 0.8)",
                )
            )
            top = client.get_job_task_counts("deep9").task_counts
            rows.append(
                (
                    "    highest-priority job went first",
                    f"{top.completed:,} done",
                    "of deep9 (priority 400)",
                )
            )
            for j in range(10):
                client.terminate_job(f"deep{j}")
            client.close(kill_tasks=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    print(
        f"\nprefect-batch throughput ({time.strftime('%Y-%m-%d')}, {sys.platform}, "
        f"{__import__('os').cpu_count()} cores)"
    )
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")


if __name__ == "__main__":
    main()
