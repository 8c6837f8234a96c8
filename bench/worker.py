"""Flow-run latency through the ``batch`` worker against Prefect's ``process`` worker, in one run.

    python bench/worker.py [--runs 10] [--nodes 2] [--slots 2]

Starts a real ``prefect server start`` on 127.0.0.1 (as the tests do:
``tests/prefect/prefect_server.py``, its own PREFECT_HOME and PREFECT_BATCH_HOME under a
temporary directory), a work pool of each type, and a ``prefect worker start`` for each, both
polling every second. The batch pool (``--nodes`` local nodes of ``--slots`` slots) runs with
the batch service's default engine settings.

Then ``--runs`` pairs of flow runs of one trivial flow (it returns a number), one deployment per
work pool with the same pull step: a process run, waited for, then a batch run, waited for, and
so on (one run at a time, so neither pays for the other's CPU); one unmeasured pair first warms
both (the batch worker's first run also starts its engine and the pool's nodes, which are all
idle before the first measured run). Each run's figures come from the Prefect server's own
timestamps: its creation, its Running state, its Completed state. Prints a table of medians and
maxima with the ratio batch/process, and the overhead per run (batch minus process, medians).

What the batch side adds: the batch task's queueing and dispatch to a node agent (the engine's
tick), the launcher that reads the flow run before ``prefect flow-run execute``, and the
observer's look. Figures drift up to 2x on shared 2-core machines; compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "prefect"))

from prefect_server import PREFECT, Server, entry_point_dist  # noqa: E402

from prefect_batch import BatchClient  # noqa: E402

MAX_RUNS = 50
RUN_TIMEOUT_SECONDS = 120.0
FLOW = """
from prefect import flow


@flow
def trivial():
    return 1
"""
TASK_STARTED = "created -> task started"
RUNNING = "created -> Running"
COMPLETED = "created -> Completed"
ROWS = (TASK_STARTED, RUNNING, COMPLETED)
TEST_ONLY_SETTINGS = ("PREFECT_BATCH_LEASE_SECONDS", "PREFECT_BATCH_ENGINE_TICK_SECONDS")
"""The test server's fast engine settings, left out: the bench runs the defaults."""


def wait_for(probe: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout} s")


class Bench:
    def __init__(self, root: Path, nodes: int, slots: int) -> None:
        self.root = root
        self.server = Server(root)
        for name in TEST_ONLY_SETTINGS:
            self.server.env.pop(name, None)
        self.nodes = nodes
        self.slots = slots
        self.workers: list[tuple[subprocess.Popen[bytes], Any]] = []
        self.deployments: dict[str, Any] = {}
        self.env: dict[str, str] = {}

    def start(self) -> None:
        wait_for(self.server.healthy, 90, "prefect server health")
        code = self.root / "code"
        code.mkdir()
        (code / "bench_flows.py").write_text(FLOW)
        dist = entry_point_dist(self.root)
        self.env = {
            **self.server.env,
            "PYTHONPATH": os.pathsep.join([str(dist), str(REPO)]),
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        with BatchClient(home=self.server.batch_home, engine=False) as batch:
            batch.create_pool(
                {
                    "id": "bench",
                    "vmSize": "local",
                    "targetDedicatedNodes": self.nodes,
                    "taskSlotsPerNode": self.slots,
                }
            )
        with self.server.client() as client:
            flow_id = client.create_flow_from_name("trivial")
        for kind in ("process", "batch"):
            pool = f"bench-{kind}"
            self.cli(*PREFECT, "work-pool", "create", pool, "--type", kind)
            log = (self.root / f"worker-{kind}.log").open("wb")
            process = subprocess.Popen(
                [*PREFECT, "worker", "start", "--pool", pool],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.workers.append((process, log))
            with self.server.client() as client:
                self.deployments[kind] = client.create_deployment(
                    flow_id=flow_id,
                    name=kind,
                    entrypoint="bench_flows.py:trivial",
                    work_pool_name=pool,
                    job_variables={"pool_id": "bench"} if kind == "batch" else {},
                    pull_steps=[
                        {
                            "prefect.deployments.steps.set_working_directory": {
                                "directory": str(code)
                            }
                        }
                    ],
                )

    def wait_nodes_idle(self) -> None:
        with BatchClient(home=self.server.batch_home, engine=False) as batch:
            wait_for(
                lambda: (
                    sum(str(n.state.value) == "idle" for n in batch.list_nodes("bench"))
                    >= self.nodes
                ),
                90,
                "batch nodes idle",
            )

    def cli(self, *args: str) -> None:
        subprocess.run(list(args), env=self.env, check=True, capture_output=True, timeout=120)

    def one_run(self, kind: str) -> dict[str, float]:
        """Seconds from the flow run's creation to its Running and Completed states (the
        server's timestamps) and, for a batch run, to its batch task's start on a node."""
        with self.server.client() as client:
            run = client.create_flow_run_from_deployment(self.deployments[kind])

            def final() -> Any:
                fr = client.read_flow_run(run.id)
                return fr if fr.state is not None and fr.state.is_final() else None

            fr = wait_for(final, RUN_TIMEOUT_SECONDS, f"{kind} flow run final")
            if fr.state.name != "Completed":
                raise RuntimeError(f"{kind} flow run {run.id} ended {fr.state.name}")
            states = client.read_flow_run_states(run.id)
        marks = {
            RUNNING: next(s.timestamp for s in states if s.name == "Running"),
            COMPLETED: next(s.timestamp for s in states if s.name == "Completed"),
        }
        if kind == "batch":
            _account, job_id, task_id = fr.infrastructure_pid.split("/")
            with BatchClient(home=self.server.batch_home, engine=False) as batch:
                marks[TASK_STARTED] = batch.get_task(job_id, task_id).execution_info.start_time
        return {name: (at - fr.created).total_seconds() for name, at in marks.items()}

    def stop(self) -> None:
        for process, log in self.workers:
            if process.poll() is None:
                os.killpg(process.pid, 15)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, 9)
                    process.wait(timeout=10)
            log.close()
        self.server.stop()


def table(figures: dict[str, list[dict[str, float]]]) -> str:
    """Medians and maxima per worker, the ratio of the medians, the overhead per run."""

    def cell(kind: str, row: str) -> tuple[str, float | None]:
        values = [f[row] for f in figures[kind] if row in f]
        if not values:
            return f"{'-':>16}", None
        median = statistics.median(values)
        return f"{median:6.2f} s {max(values):5.2f} s", median

    lines = [
        f"{'':26}{'process':>17}{'batch':>17}{'batch/process':>15}",
        f"{'':26}{'median    max':>17}{'median    max':>17}{'(medians)':>15}",
    ]
    for row in ROWS:
        (p_text, p_median), (b_text, b_median) = cell("process", row), cell("batch", row)
        ratio = f"{b_median / p_median:.2f}x" if p_median and b_median else "-"
        lines.append(f"{row:26}{p_text:>17}{b_text:>17}{ratio:>15}")
    overhead = statistics.median(f[COMPLETED] for f in figures["batch"]) - statistics.median(
        f[COMPLETED] for f in figures["process"]
    )
    lines.append(f"overhead per run (created -> Completed, medians): {overhead:+.2f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help=f"pairs of runs (1..{MAX_RUNS})")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (server, worker logs)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.runs <= MAX_RUNS:
        parser.error(f"--runs must be between 1 and {MAX_RUNS}")
    root = Path(tempfile.mkdtemp(prefix="pb-bench-worker-"))
    bench = Bench(root, args.nodes, args.slots)
    started = time.perf_counter()
    try:
        bench.start()
        print(f"prefect server and 2 workers up in {time.perf_counter() - started:.1f} s")
        for kind in ("process", "batch"):
            bench.one_run(kind)  # warm-up, not measured
        # The batch worker opens its account (and its engine, which starts the nodes) for its
        # first flow run: the warm-up paid for that, and every node is up before measuring.
        bench.wait_nodes_idle()
        figures: dict[str, list[dict[str, float]]] = {"process": [], "batch": []}
        for i in range(args.runs):
            for kind in ("process", "batch"):
                figures[kind].append(bench.one_run(kind))
            p, b = figures["process"][-1], figures["batch"][-1]
            print(
                f"pair {i + 1}: process Running {p[RUNNING]:.2f} s, Completed "
                f"{p[COMPLETED]:.2f} s; batch task started {b[TASK_STARTED]:.2f} s, Running "
                f"{b[RUNNING]:.2f} s, Completed {b[COMPLETED]:.2f} s"
            )
        print()
        print(f"{args.runs} trivial flow runs per worker, one at a time")
        print(table(figures))
        print(f"total {time.perf_counter() - started:.1f} s")
    finally:
        bench.stop()
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
