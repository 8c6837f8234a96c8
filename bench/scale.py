"""The control plane at scale: the engine alone, on simulated nodes, measured in one run.

    python bench/scale.py [--nodes 1000] [--slots 8] [--queued 100000] [--jobs 10]

Nodes come from a ``sim`` node source (``prefect_batch.testing.simnodes``): in-process agents
that answer a ``run`` with ``started`` and ``exited`` at once, spawning nothing. So what is
measured is the service's own path — embedded client -> store (SQLite, or ``--database-url``)
-> engine -> scheduler -> run request -> result durable — at a size no real fleet here could
have. Prints:

(s) how long the pool took to reach ``--nodes`` idle nodes;
(r1) dispatch decisions per second (run requests sent) while 1,000 tasks are queued in
     ``--jobs`` jobs of different priority, and (rN) the same while ``--queued`` are (the
     target: rN within 20 % of r1, and >= 10,000/s);
(l) dispatch latency (the task's batch added -> its run request sent) p50 / p99 while batches
    of 100 tasks arrive below capacity, so it is the engine's reaction time, not queueing;
(m) the process's RSS with the pool idle, with 1,000 queued, and with ``--queued`` queued —
    memory should follow nodes and tasks in flight, not tasks queued;
(c) the service's CPU per task over the (rN) phase.

Every wait is bounded; the whole run takes a few minutes on 2 cores. Figures drift up to 2x on
shared machines: compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_batch import BatchClient  # noqa: E402
from prefect_batch.service.engine import Engine  # noqa: E402
from prefect_batch.service.ops.quotas import set_quota  # noqa: E402
from prefect_batch.settings import get_settings  # noqa: E402
from prefect_batch.testing import simnodes  # noqa: E402

WAIT_SECONDS = 600.0
SOURCE = "fleet"


def rss_mib() -> float:
    """The resident set size of this process now (not the peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def wait_until(predicate, what: str, timeout: float = WAIT_SECONDS) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(0.05)


def add_queued(client: BatchClient, jobs: list[str], total: int, tag: str) -> None:
    """``total`` trivial tasks spread over ``jobs``, added 100 at a time."""
    per_job = total // len(jobs)
    for job in jobs:
        for start in range(0, per_job, 100):
            client.create_tasks(
                job,
                [
                    {"id": f"{tag}{i}", "commandLine": "true"}
                    for i in range(start, min(start + 100, per_job))
                ],
            )


class StatementCounter:
    """Counts what the store is asked to do: statements, and rows of ``executemany`` batches."""

    def __init__(self, engine: Any) -> None:
        self.statements: Counter[str] = Counter()
        self.rows: Counter[str] = Counter()
        self.on = False
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if not self.on:
            return
        verb = " ".join(statement.split()[:3])[:48]
        self.statements[verb] += 1
        self.rows[verb] += len(parameters) if executemany else 1

    def report(self, per: int) -> list[tuple[str, str, str]]:
        out = []
        total_s, total_r = sum(self.statements.values()), sum(self.rows.values())
        out.append(
            (
                "(q) store work per run request over (rN)",
                f"{total_s / per:.2f} stmts",
                f"{total_r / per:.2f} row operations",
            )
        )
        for verb, n in self.rows.most_common(8):
            out.append(
                (f"    {verb}", f"{self.statements[verb] / per:.3f} stmts", f"{n / per:.2f} rows")
            )
        return out


class StepHook:
    """Around the engine's step (on its own thread): hold it while ``paused`` is clear, so
    tasks added meanwhile wait in the queue as they are (nothing is dispatched), and profile it
    with cProfile while ``profiling``."""

    def __init__(self) -> None:
        self.profile = cProfile.Profile()
        self.profiling = False
        self.running = threading.Event()
        self.running.set()
        original = Engine.step
        me = self

        def step(engine: Engine) -> None:
            while not me.running.wait(0.05):
                pass
            if not me.profiling:
                return original(engine)
            me.profile.enable()
            try:
                return original(engine)
            finally:
                me.profile.disable()

        self._original = original
        Engine.step = step  # type: ignore[method-assign]

    def close(self) -> None:
        """Put the engine's own step back."""
        self.running.set()
        Engine.step = self._original  # type: ignore[method-assign]

    def report(self, per: int, top: int = 20) -> str:
        out = io.StringIO()
        stats = pstats.Stats(self.profile, stream=out)
        stats.sort_stats("tottime").print_stats(top)
        total = sum(v[2] for v in stats.stats.values())  # type: ignore[attr-defined]
        head = f"engine steps under cProfile: {total / per * 1e6:,.0f} µs of own time per run"
        return head + "\n" + out.getvalue()


def held(hook: StepHook) -> None:
    """Hold the engine: tasks added now are queued and stay so until :func:`release`."""
    hook.running.clear()
    time.sleep(0.2)  # a step under way ends; the next one waits


def release(hook: StepHook, sent: dict[str, float], count: int) -> float:
    """Let the engine go, then time its first ``count`` run requests: run requests per second."""
    before = len(sent)
    t = time.perf_counter()
    hook.running.set()
    wait_until(lambda: len(sent) >= before + count, f"{count:,} run requests")
    return (len(sent) - before) / (time.perf_counter() - t)


def ready_nodes(client: BatchClient, pool: str) -> int:
    return sum(n.state in ("idle", "running") for n in client.list_nodes(pool))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--measure", type=int, default=20_000, help="run requests timed per rate")
    ap.add_argument("--database-url", default=None, help="a PostgreSQL URL instead of SQLite")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="profile the engine's steps over (rN) and print the top functions (slows it)",
    )
    args = ap.parse_args(argv)
    if args.nodes < 1 or args.slots < 1 or args.jobs < 1 or args.queued < 1000 * 2:
        ap.error("--nodes, --slots, --jobs must be >= 1 and --queued >= 2,000")

    simnodes.install()
    home = Path(tempfile.mkdtemp(prefix="prefect-batch-scale-"))
    settings = get_settings().model_copy(
        update={"home": home, "agent_starts_per_second": float(max(args.nodes, 10))}
    )
    if args.database_url:
        settings = settings.model_copy(update={"database_url": args.database_url})
    rows: list[tuple[str, str, str]] = []
    hook = StepHook()
    try:
        measured = run(args, settings, hook, rows)
    finally:
        hook.close()
    width = max(len(r[0]) for r in rows)
    print(
        f"bench/scale.py  nodes={args.nodes} slots={args.slots} queued={args.queued:,} "
        f"({time.strftime('%Y-%m-%d')})"
    )
    for name, figure, note in rows:
        print(f"{name:<{width}}  {figure:>18}  {note}")
    if args.profile:
        print(hook.report(measured))
        path = settings.home / "engine.prof"
        hook.profile.dump_stats(path)
        print(f"(the whole profile: {path}, for pstats or snakeviz)")
    return 0


def run(
    args: argparse.Namespace, settings: Any, hook: StepHook, rows: list[tuple[str, str, str]]
) -> int:
    """The measurements, in order, into ``rows``; returns how many run requests (rN) timed."""
    with BatchClient(settings=settings) as client:
        assert client.store is not None
        set_quota(client.store, client.account_name, dedicated_nodes=args.nodes)
        client.create_node_source({"kind": "sim", "name": SOURCE, "taskSeconds": 0})
        sent = simnodes.sent_runs(client.account_name, SOURCE)
        t = time.perf_counter()
        client.create_pool(
            {
                "id": "big",
                "vmSize": "sim",
                "targetDedicatedNodes": args.nodes,
                "taskSlotsPerNode": args.slots,
                "virtualMachineConfiguration": {
                    "nodeAgentSKUId": simnodes.KIND.sku(SOURCE),
                    "imageReference": {"publisher": "prefect-batch", "offer": "sim", "sku": SOURCE},
                },
            }
        )
        wait_until(
            lambda: ready_nodes(client, "big") >= args.nodes,
            f"{args.nodes} nodes idle",
        )
        rows.append(
            (
                f"(s) {args.nodes:,} nodes x {args.slots} slots idle",
                f"{time.perf_counter() - t:.1f} s",
                "",
            )
        )
        rss_idle = rss_mib()

        jobs = [f"j{p}" for p in range(args.jobs)]
        for p, job in enumerate(jobs):
            client.create_job({"id": job, "poolInfo": {"poolId": "big"}, "priority": p * 10})

        # (l) latency below capacity: a batch of 100 every 20 ms into an idle pool.
        added: dict[str, float] = {}
        for b in range(50):
            job = jobs[b % len(jobs)]
            ids = [f"lat{b}-{i}" for i in range(100)]
            client.create_tasks(job, [{"id": x, "commandLine": "true"} for x in ids])
            now = time.monotonic()
            added.update({f"{job}/{x}": now for x in ids})
            time.sleep(0.02)
        wait_until(lambda: all(k in sent for k in added), "latency tasks dispatched")
        lat = sorted((sent[k] - added[k]) * 1000 for k in added)
        p50, p99 = statistics.median(lat), lat[int(len(lat) * 0.99) - 1]
        rows.append(
            (
                f"(l) dispatch latency below capacity ({len(lat):,} tasks)",
                f"p50 {p50:.1f} ms",
                f"p99 {p99:.1f} ms",
            )
        )

        # (r1) 1,000 queued at a time (added while the engine is held), five rounds.
        small, rounds, r1s = 1000, 5, []
        for r in range(rounds):
            held(hook)
            add_queued(client, jobs, small, f"s{r}-")
            if r == 0:
                rss_small = rss_mib()
            r1s.append(release(hook, sent, small))
        r1 = statistics.median(r1s)

        # (rN) the deep queue: --queued tasks added while the engine is held, then let go.
        held(hook)
        t = time.perf_counter()
        add_queued(client, jobs, args.queued, "q")
        ingest = args.queued / (time.perf_counter() - t)
        rss_deep = rss_mib()
        counter = StatementCounter(client.store.engine)
        cpu0, before = cpu_seconds(), len(sent)
        counter.on = True
        hook.profiling = args.profile
        rn = release(hook, sent, min(args.measure, args.queued))
        counter.on = False
        hook.profiling = False
        measured = max(len(sent) - before, 1)
        cpu_us = (cpu_seconds() - cpu0) / measured * 1e6
        wait_until(lambda: len(sent) >= before + args.queued, "deep queue drained")
        rss_after = rss_mib()
        top = client.get_job_task_counts(jobs[-1]).task_counts.completed
        rows.append(
            (f"(r1) dispatch, {small:,} queued (median of {rounds})", f"{r1:,.0f} runs/s", "")
        )
        rows.append(
            (
                f"(rN) dispatch, {args.queued:,} queued in {args.jobs} priorities",
                f"{rn:,.0f} runs/s",
                f"rN/r1 = {rn / r1:.2f} (target >= 0.8; both >= 10,000)",
            )
        )
        rows.append((f"    ingest of {args.queued:,} tasks", f"{ingest:,.0f} tasks/s", ""))
        rows.append(
            ("(c) service CPU per run request over (rN)", f"{cpu_us:,.0f} µs", "target <= 100")
        )
        rows.append(
            (
                "(m) RSS: idle / 1k queued / deep queued / drained",
                f"{rss_idle:.0f} / {rss_small:.0f} / {rss_deep:.0f} / {rss_after:.0f} MiB",
                "",
            )
        )
        rows.extend(counter.report(measured))
        rows.append((f"    highest-priority job {jobs[-1]} completed", f"{top:,}", ""))
    return measured


if __name__ == "__main__":
    raise SystemExit(main())
