"""The whole stack beside its peers, running the same trivial command, in one run.

    python bench/peers.py [--tasks 3000] [--nodes 3] [--slots 8] [--rounds 2]

Prints, from one invocation (best of ``--rounds`` for each):

(a)  the machine's limit: a plain Python loop of ``subprocess.run(["true"])``;
(b)  the same tasks through the whole stack: an embedded ``BatchClient`` -> SQLite -> scheduler
     -> ``--nodes`` local agents x ``--slots`` slots -> results durable;
(dk) Dask ``LocalCluster`` (2 workers x 4 threads, no nanny processes' extra spawn cost),
     ``client.map`` of a function that runs ``subprocess.run(["true"])``;
(pl) Parsl ``HighThroughputExecutor`` (8 workers), a ``bash_app`` running ``true``.

and the ratios (b)/(a), (b)/(dk), (b)/(pl) with their targets (>= 0.8, >= 2, >= 2). Dask and
Parsl are optional (``pip install ".[bench]"``): a peer that is not installed is skipped with a
printed note. Their start-up (cluster, interchange, workers) happens before the clock starts, as
the stack's pool is started before its clock starts.

Figures drift up to 2x on shared 2-core machines; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import raw_spawn_rate, stack_rate, wait_nodes  # noqa: E402
from prefect_batch import BatchClient  # noqa: E402

TRUE = shutil.which("true") or "/bin/true"


def run_true(_: int) -> int:
    return subprocess.run([TRUE], check=True).returncode


def stack_rates(tasks: int, nodes: int, slots: int, rounds: int) -> list[float]:
    home = Path(tempfile.mkdtemp(prefix="prefect-batch-peers-"))
    try:
        with BatchClient(home=home) as client:
            client.create_pool(
                {
                    "id": "bench",
                    "vmSize": "local",
                    "targetDedicatedNodes": nodes,
                    "taskSlotsPerNode": slots,
                }
            )
            wait_nodes(client, "bench", nodes)
            rates = [stack_rate(client, f"stack{r}", tasks)[0] for r in range(rounds)]
            client.close(kill_tasks=True)
        return rates
    finally:
        shutil.rmtree(home, ignore_errors=True)


def dask_rates(tasks: int, rounds: int) -> list[float] | str:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return "not installed (pip install '.[bench]')"
    rates = []
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=4,
            processes=True,
            dashboard_address=None,
            host="127.0.0.1",
        ) as cluster,
        Client(cluster) as client,
    ):
        client.gather(client.map(run_true, range(16), pure=False))  # warm the workers
        for _ in range(rounds):
            t = time.perf_counter()
            results = client.gather(client.map(run_true, range(tasks), pure=False))
            rates.append(tasks / (time.perf_counter() - t))
            assert results == [0] * tasks
    return rates


def parsl_rates(tasks: int, rounds: int) -> list[float] | str:
    try:
        import parsl
        from parsl.app.app import bash_app
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        return "not installed (pip install '.[bench]')"
    run_dir = tempfile.mkdtemp(prefix="parsl-bench-")
    config = Config(
        executors=[
            HighThroughputExecutor(
                label="htex",
                max_workers_per_node=8,
                address="127.0.0.1",
                loopback_address="127.0.0.1",
                provider=LocalProvider(init_blocks=1, max_blocks=1),
            )
        ],
        run_dir=run_dir,
        usage_tracking=0,
    )

    @bash_app
    def true_app() -> str:
        return "true"  # runs on the worker, which does not see this module's globals

    rates = []
    try:
        with parsl.load(config):
            [f.result() for f in [true_app() for _ in range(16)]]  # workers up
            for _ in range(rounds):
                t = time.perf_counter()
                codes = [f.result() for f in [true_app() for _ in range(tasks)]]
                rates.append(tasks / (time.perf_counter() - t))
                assert codes == [0] * tasks
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return rates


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    # Dask's and Parsl's worker processes unpickle this module's functions by reference.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )

    measures: dict[str, Callable[[], list[float] | str]] = {
        "(a) subprocess.run loop": lambda: [raw_spawn_rate(args.tasks) for _ in range(args.rounds)],
        f"(b) whole stack, {args.nodes}x{args.slots} slots": lambda: stack_rates(
            args.tasks, args.nodes, args.slots, args.rounds
        ),
        "(dk) Dask LocalCluster 2x4": lambda: dask_rates(args.tasks, args.rounds),
        "(pl) Parsl HTEX, 8 workers": lambda: parsl_rates(args.tasks, args.rounds),
    }
    best: dict[str, float | str] = {}
    for name, measure in measures.items():
        got = measure()
        best[name] = max(got) if isinstance(got, list) else got
    stack = best[f"(b) whole stack, {args.nodes}x{args.slots} slots"]
    assert isinstance(stack, float)
    targets = {"(a)": 0.8, "(dk)": 2.0, "(pl)": 2.0}

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"\nprefect-batch beside its peers ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores,"
        f" load {load:.1f}; {args.tasks:,} tasks, best of {args.rounds})"
    )
    width = max(map(len, best))
    for name, value in best.items():
        if isinstance(value, str):
            print(f"  {name:<{width}}  skipped: {value}")
            continue
        key = name.split()[0]
        ratio = ""
        if key in targets:
            r = stack / value
            met = "met" if r >= targets[key] else "not met"
            ratio = f"(b)/{key} = {r:.2f}  (target >= {targets[key]}: {met})"
        print(f"  {name:<{width}}  {value:>8,.0f} tasks/s  {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
