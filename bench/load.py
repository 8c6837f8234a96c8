"""Load: clients reading tasks from a server while a job of tasks runs on it.

    python bench/load.py [--clients 4] [--requests 2000] [--tasks 2000] [--timeout 1800]

Runs ``prefect-batch server start`` as a process on 127.0.0.1 (SQLite under a temporary home; 2
local nodes x 8 slots), adds a job of ``--tasks`` tasks (each sleeps 0.1-0.3 s), and while they
run starts ``--clients`` threads, each with its own official azure-batch SDK client, each sending
``--requests`` requests that alternate ``get_task`` (a random task of the job) and
``list_tasks`` (the first page, ``maxresults=100``: one request). It prints:

* the errors (any exception of a request, by type and message; every request is bounded by the
  SDK's read timeout), which must be 0;
* per request kind: count, p50, p99 and max latency;
* the server process's resident memory (``VmRSS``) before the clients start and after they
  end, and its peak (``VmHWM``);
* how many tasks completed while the clients ran, and that all of them completed afterwards.

Every wait is bounded (``--timeout``); the exit status is 1 on any error or an unfinished job.
The SDK retries 5xx and connection errors by itself; ``retries`` counts the requests the
server answered with a status >= 500 before the SDK retried (from its own HTTP log), so a
silent retry still shows.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from azure.batch import models  # noqa: E402

from bench.faults import (  # noqa: E402
    FaultError,
    Server,
    add_tasks,
    counts,
    create_pool_and_job,
    wait_completed,
)
from prefect_batch.core.sharedkey import new_key  # noqa: E402

KINDS = ("get_task", "list_tasks")
_5XX = re.compile(r"Response status: '?5\d\d")


@dataclass
class LoadResult:
    clients: int
    requests: int
    tasks: int
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    errors: Counter[str] = field(default_factory=Counter)
    server_errors: int = 0
    responses_logged: int = 0
    rss_before: int = 0
    rss_after: int = 0
    rss_peak: int = 0
    completed_during: int = 0
    completed_after: int = 0
    seconds: float = 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.completed_after == self.tasks


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in KiB (empty when it is gone)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "VmHWM"):
                    out[name] = int(value.split()[0])
    except OSError:
        pass
    return out


class _ServerErrors(logging.Handler):
    """Counts the responses in the SDK's HTTP log, and those with a status >= 500 (retried ones
    included)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0
        self.responses = 0
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Response status:" in message:
            with self._lock:
                self.responses += 1
                if _5XX.search(message):
                    self.count += 1


def run_load(
    base: Path, *, clients: int, requests: int, tasks: int, timeout: float = 1800.0, seed: int = 7
) -> LoadResult:
    """Run the load against a fresh server under ``base``; the figures."""
    result = LoadResult(clients, requests, tasks)
    start = time.monotonic()
    server = Server(base / "load-home", new_key())
    ledger = base / "tasks" / "load-ledger.txt"
    rng = random.Random(seed)
    http_log = logging.getLogger("azure.core.pipeline.policies.http_logging_policy")
    watcher = _ServerErrors()
    http_log.addHandler(watcher)
    previous_level = http_log.level
    http_log.setLevel(logging.INFO)
    http_log.propagate = False
    try:
        server.start(min(timeout, 180))
        sdk = server.sdk()
        try:
            create_pool_and_job(sdk, nodes=2, slots=8)
            work = [
                models.BatchTaskCreateOptions(
                    id=f"t{i:05d}",
                    command_line=(
                        f"/bin/sh -c 'sleep {rng.uniform(0.1, 0.3):.2f}; "
                        f"echo $AZ_BATCH_TASK_ID >> {ledger}'"
                    ),
                )
                for i in range(tasks)
            ]
            accepted = add_tasks(sdk, work)
            ids = list(accepted)
            result.rss_before = memory_kib(server.pid).get("VmRSS", 0)
            done_before = counts(sdk).completed
            lock = threading.Lock()
            deadline = time.monotonic() + timeout

            def client(index: int) -> None:
                mine = random.Random(seed + index)
                own = server.sdk()
                local: dict[str, list[float]] = {k: [] for k in KINDS}
                errors: Counter[str] = Counter()
                try:
                    for n in range(requests):
                        if time.monotonic() > deadline:
                            errors["not sent: --timeout reached"] += requests - n
                            break
                        kind = KINDS[n % 2]
                        began = time.perf_counter()
                        try:
                            if kind == "get_task":
                                own.get_task("job", mine.choice(ids))
                            else:
                                pages = own.list_tasks("job", max_results=100).by_page()
                                list(next(pages))
                        except Exception as exc:  # noqa: BLE001 - every error is counted
                            errors[f"{kind}: {type(exc).__name__}: {str(exc)[:120]}"] += 1
                            continue
                        local[kind].append(time.perf_counter() - began)
                finally:
                    own.close()
                with lock:
                    for kind in KINDS:
                        result.latencies[kind].extend(local[kind])
                    result.errors.update(errors)

            threads = [
                threading.Thread(target=client, args=(i,), name=f"load-{i}") for i in range(clients)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(max(1.0, deadline - time.monotonic() + 60))
                if thread.is_alive():
                    result.errors["a client did not finish in time"] += 1
            memory = memory_kib(server.pid)
            result.rss_after = memory.get("VmRSS", 0)
            result.rss_peak = memory.get("VmHWM", 0)
            result.completed_during = counts(sdk).completed - done_before
            try:
                wait_completed(sdk, len(accepted), max(60.0, deadline - time.monotonic()))
            except FaultError as exc:
                result.errors[f"job: {exc}"] += 1
            result.completed_after = counts(sdk).completed
        finally:
            sdk.close()
    finally:
        server.stop()
        server.kill()
        http_log.removeHandler(watcher)
        http_log.setLevel(previous_level)
        http_log.propagate = True
        result.server_errors = watcher.count
        result.responses_logged = watcher.responses
        result.seconds = time.monotonic() - start
    return result


def report(result: LoadResult) -> None:
    total = sum(len(v) for v in result.latencies.values())
    print(
        f"{result.clients} clients x {result.requests} requests "
        f"({total} answered) while {result.tasks} tasks ran; {result.seconds:.1f} s"
    )
    print(
        f"  errors: {result.error_count}   5xx answers seen (retried by the SDK): "
        f"{result.server_errors}"
    )
    for text, n in result.errors.most_common(10):
        print(f"    {n} x {text}")
    print(f"  {'request':<12} {'count':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for kind in KINDS:
        values = result.latencies[kind]
        print(
            f"  {kind:<12} {len(values):>6} {1000 * percentile(values, 50):>8.1f} "
            f"{1000 * percentile(values, 99):>8.1f} "
            f"{1000 * max(values, default=float('nan')):>8.1f}"
        )
    print(
        f"  server RSS: {result.rss_before / 1024:.1f} MiB before, "
        f"{result.rss_after / 1024:.1f} MiB after (peak {result.rss_peak / 1024:.1f} MiB)"
    )
    print(
        f"  tasks completed while the clients ran: {result.completed_during}; "
        f"afterwards: {result.completed_after} of {result.tasks}"
    )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=2000, help="per client")
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--timeout", type=float, default=1800.0, help="bound of the whole load")
    args = ap.parse_args(argv)
    for name, top in (("clients", 64), ("requests", 100_000), ("tasks", 100_000)):
        if not 1 <= getattr(args, name) <= top:
            ap.error(f"--{name} must be between 1 and {top}")
    if not 10 <= args.timeout <= 3600:
        ap.error("--timeout must be between 10 and 3600 seconds")
    print(
        f"load {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="prefect-batch-load-") as tmp:
        result = run_load(
            Path(tmp),
            clients=args.clients,
            requests=args.requests,
            tasks=args.tasks,
            timeout=args.timeout,
        )
    report(result)
    print("result:", "ok" if result.ok else "FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
