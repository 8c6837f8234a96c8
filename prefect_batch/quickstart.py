"""The quickstart: one command that shows pools, jobs, tasks, nodes and files working end to end.

:func:`run_quickstart` (``prefect-batch quickstart``) uses the embedded service under the
configured home:

1. creates pool ``quickstart-pool`` of local nodes — or reuses it (resized to ``nodes``), so
   running it again is fine;
2. removes the jobs of earlier quickstart runs (unless ``keep``), so files do not pile up;
3. creates a fresh job ``quickstart-<timestamp>`` with ``tasks`` tasks, each a real computation:
   ``python -c <sieve> N`` counts the primes below ``N = 200000 + i*1000`` and prints the count;
4. runs the engine in this process and follows the job with a progress bar;
5. prints every task (node, exit code, retries, seconds, result), where the tasks' files live,
   the tail of one task's stdout, and what to try next.

The job and its files stay, so the "try next" commands work. This module holds no CLI parsing
(``prefect_batch.cli`` wraps it) and no service logic (it only calls :class:`BatchClient`).
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from prefect_batch.client import BatchClient
from prefect_batch.exceptions import BatchConflictError, PrefectBatchError
from prefect_batch.models import BatchTask, BatchTaskCountsResult

__all__ = [
    "JOB_PREFIX",
    "POOL_ID",
    "PRIME_PROGRAM",
    "QuickstartResult",
    "QuickstartTask",
    "primes_task_command",
    "run_quickstart",
]

POOL_ID = "quickstart-pool"
"""The pool the quickstart creates or reuses."""
JOB_PREFIX = "quickstart-"
"""Jobs of the quickstart are ``quickstart-<UTC timestamp>``."""
BASE_LIMIT = 200_000
STEP = 1_000

PRIME_PROGRAM = """\
import sys, time
start = time.perf_counter()
n = int(sys.argv[1])
sieve = bytearray([1]) * n
sieve[0:2] = bytes(2)
for p in range(2, int(n ** 0.5) + 1):
    if sieve[p]:
        sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
print(f"primes below {n}: {sum(sieve)}")
print(f"largest: {sieve.rindex(1)}")
print(f"sieve took {time.perf_counter() - start:.3f} s")
"""
"""The task program: a sieve of Eratosthenes; ``argv[1]`` is the limit."""


def primes_task_command(limit: int, python: str | None = None) -> str:
    """The command line of a task counting the primes below ``limit`` (no shell involved)."""
    return shlex.join([python or sys.executable, "-c", PRIME_PROGRAM, str(limit)])


@dataclass
class QuickstartTask:
    """One row of the summary."""

    task_id: str
    node_id: str | None
    exit_code: int | None
    retries: int
    seconds: float | None
    result: str
    state: str
    succeeded: bool
    stdout_path: str | None


@dataclass
class QuickstartResult:
    """What the quickstart did."""

    pool_id: str
    job_id: str
    counts: dict[str, Any]
    tasks: list[QuickstartTask] = field(default_factory=list)
    removed_jobs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every task succeeded."""
        return bool(self.tasks) and all(t.succeeded for t in self.tasks)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "poolId": self.pool_id,
            "jobId": self.job_id,
            "taskCounts": self.counts,
            "removedJobs": self.removed_jobs,
            "tasks": [{_camel(k): v for k, v in asdict(t).items()} for t in self.tasks],
            "ok": self.ok,
        }


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.capitalize() for w in rest)


def run_quickstart(
    *,
    tasks: int = 100,
    nodes: int = 2,
    slots: int = 4,
    keep: bool = False,
    home: str | Path | None = None,
    account: str | None = None,
    timeout: float | None = None,
    console: Console | None = None,
    progress_console: Console | None = None,
    command_prefix: str = "prefect-batch",
) -> QuickstartResult:
    """Run the quickstart (see the module docstring) and return what happened.

    Args:
        tasks: How many tasks to run.
        nodes: Nodes of the pool (an existing pool is resized to this).
        slots: Task slots per node for a new pool (an existing pool keeps its own).
        keep: Keep the jobs of earlier quickstart runs instead of deleting them.
        home: State directory (default ``PREFECT_BATCH_HOME``).
        account: Account name (default from the settings).
        timeout: Give up waiting after this many seconds (``TimeoutError``).
        console: Where the report goes; ``None`` prints nothing.
        progress_console: Where the progress bar goes (default ``console``; none if both None).
        command_prefix: How to spell the CLI in the "try next" hints (e.g. with ``--home``).

    Raises:
        PrefectBatchError: The service refused a request.
        TimeoutError: ``timeout`` passed before all tasks completed.
    """
    if tasks < 1 or nodes < 1 or slots < 1:
        raise ValueError("tasks, nodes and slots must be at least 1")
    say = console.print if console is not None else (lambda *a, **k: None)
    progress_console = progress_console or console
    # No engine yet: the pool and the tasks are in the database before the engine's first look,
    # so it starts the nodes at once instead of at its next lease refresh.
    client = BatchClient(account, home=home, engine=False)
    try:
        _ensure_pool(client, nodes, slots, say)
        # Pick the id while the earlier jobs still exist, so it is never one of theirs: their
        # directories are removed on the nodes later, by id.
        job_id = _new_job_id(client)
        removed = [] if keep else _remove_earlier_jobs(client)
        if removed:
            say(f"Removed {len(removed)} earlier quickstart job(s) (--keep keeps them).")
        client.create_job(
            {
                "id": job_id,
                "poolInfo": {"poolId": POOL_ID},
                "displayName": f"quickstart: primes below {BASE_LIMIT}..",
                "constraints": {"maxTaskRetryCount": 1},
            }
        )
        specs = [
            {
                "id": _task_id(i, tasks),
                "displayName": f"primes below {BASE_LIMIT + i * STEP}",
                "commandLine": primes_task_command(BASE_LIMIT + i * STEP),
            }
            for i in range(tasks)
        ]
        added = client.create_tasks(job_id, specs)
        rejected = [r for r in added.result_values or [] if r.error is not None]
        if rejected:
            err = rejected[0].error
            raise PrefectBatchError(
                f"{len(rejected)} task(s) were rejected, e.g. {rejected[0].task_id}: "
                f"{err.code if err else ''}"
            )
        say(
            f"Job [bold]{job_id}[/bold]: {tasks} tasks, each counting the primes below "
            f"{BASE_LIMIT:,} + i × {STEP:,} with a sieve, on {nodes} local node(s)."
        )
        client.start_engine()
        counts = _follow(client, job_id, progress_console, timeout)
        result = QuickstartResult(
            pool_id=POOL_ID,
            job_id=job_id,
            counts=counts.task_counts.to_wire(),
            removed_jobs=removed,
        )
        node_root = client.settings.effective_node_root
        for task in client.list_tasks(job_id):
            result.tasks.append(_row(client, job_id, task, node_root))
        if console is not None:
            _report(console, result, client, command_prefix)
        return result
    finally:
        client.close()


# -- steps -------------------------------------------------------------------------------------


def _ensure_pool(client: BatchClient, nodes: int, slots: int, say: Any) -> None:
    if not client.pool_exists(POOL_ID):
        client.create_pool(
            {
                "id": POOL_ID,
                "vmSize": "local",
                "targetDedicatedNodes": nodes,
                "taskSlotsPerNode": slots,
                "taskSchedulingPolicy": {"nodeFillType": "spread"},
                "metadata": [{"name": "createdBy", "value": "prefect-batch quickstart"}],
            }
        )
        say(f"Created pool [bold]{POOL_ID}[/bold]: {nodes} local node(s) × {slots} slot(s).")
        return
    pool = client.get_pool(POOL_ID)
    have_slots = pool.task_slots_per_node or 1
    if pool.target_dedicated_nodes != nodes:
        try:
            client.resize_pool(POOL_ID, {"targetDedicatedNodes": nodes})
        except BatchConflictError:  # a resize is under way: settle it, then ask again
            client.stop_pool_resize(POOL_ID)
            client.resize_pool(POOL_ID, {"targetDedicatedNodes": nodes})
        say(
            f"Reusing pool [bold]{POOL_ID}[/bold], resized to {nodes} node(s) "
            f"× {have_slots} slot(s)."
        )
    else:
        say(f"Reusing pool [bold]{POOL_ID}[/bold]: {nodes} node(s) × {have_slots} slot(s).")
    if have_slots != slots:
        say(f"(The pool keeps its {have_slots} slots per node; delete it to change that.)")


def _remove_earlier_jobs(client: BatchClient) -> list[str]:
    removed = []
    for job in client.list_jobs():
        if job.id.startswith(JOB_PREFIX) and (job.state is None or job.state.value != "deleting"):
            client.delete_job(job.id)
            removed.append(job.id)
    return removed


def _new_job_id(client: BatchClient) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    job_id = f"{JOB_PREFIX}{stamp}"
    n = 1
    existing = {j.id.casefold() for j in client.list_jobs()}
    while job_id.casefold() in existing:
        n += 1
        job_id = f"{JOB_PREFIX}{stamp}-{n}"
    return job_id


def _task_id(i: int, total: int) -> str:
    return f"task-{i:0{max(3, len(str(total - 1)))}d}"


def _follow(
    client: BatchClient, job_id: str, console: Console | None, timeout: float | None
) -> BatchTaskCountsResult:
    if console is None:
        return client.wait_for_job(job_id, timeout=timeout)
    from prefect_batch.cli.progress import follow_job

    return follow_job(client, job_id, console=console, timeout=timeout)


def _row(client: BatchClient, job_id: str, task: BatchTask, node_root: Path) -> QuickstartTask:
    info = task.execution_info
    node = task.node_info
    seconds = None
    if info is not None and info.start_time is not None and info.end_time is not None:
        seconds = (info.end_time - info.start_time).total_seconds()
    try:
        out = client.get_task_file(job_id, task.id, "stdout.txt").decode("utf-8", "replace")
    except PrefectBatchError:
        out = ""
    first = out.splitlines()[0] if out.strip() else ""
    stdout_path = None
    if node is not None and node.node_id and node.task_root_directory:
        stdout_path = str(node_root / node.node_id / node.task_root_directory / "stdout.txt")
    result = info.result.value if info is not None and info.result is not None else None
    return QuickstartTask(
        task_id=task.id,
        node_id=node.node_id if node is not None else None,
        exit_code=info.exit_code if info is not None else None,
        retries=(info.retry_count or 0) if info is not None else 0,
        seconds=seconds,
        result=first,
        state=task.state.value if task.state is not None else "",
        succeeded=result == "success",
        stdout_path=stdout_path,
    )


def _report(console: Console, result: QuickstartResult, client: BatchClient, prefix: str) -> None:
    table = Table(title=f"Tasks of job {result.job_id}", title_justify="left")
    for name, justify in (
        ("Task", "left"),
        ("Node", "left"),
        ("Exit code", "right"),
        ("Retries", "right"),
        ("Seconds", "right"),
        ("Result (first line of stdout)", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for t in result.tasks:
        table.add_row(
            Text(t.task_id),
            Text(t.node_id or ""),
            Text(
                "" if t.exit_code is None else str(t.exit_code), style="" if t.succeeded else "red"
            ),
            Text(str(t.retries)),
            Text("" if t.seconds is None else f"{t.seconds:.2f}"),
            Text(t.result or t.state),
        )
    console.print(table)
    c = result.counts
    console.print(
        f"{c.get('succeeded', 0)} succeeded, {c.get('failed', 0)} failed "
        f"of {len(result.tasks)} tasks.",
        style="bold green" if result.ok else "bold red",
        highlight=False,
    )
    node_root = client.settings.effective_node_root
    console.print()
    console.print("Each task's stdout.txt and stderr.txt are on the node that ran it:")
    console.print(Text(f"  {node_root}/<node id>/{result.job_id}/<task id>/{{stdout,stderr}}.txt"))
    example = next((t for t in result.tasks if t.stdout_path), None)
    if example is None:
        return
    console.print("For example:")
    console.print(Text(f"  {example.stdout_path}"))
    try:
        out = client.get_task_file(result.job_id, example.task_id, "stdout.txt")
    except PrefectBatchError:
        out = b""
    console.print()
    console.print(f"Tail of {example.task_id}'s stdout:", highlight=False)
    for line in out.decode("utf-8", "replace").splitlines()[-5:]:
        console.print(Text(f"  {line}"))
    console.print()
    console.print("Try next:")
    for hint in (
        f"{prefix} task show {result.job_id} {example.task_id}",
        f"{prefix} file get --job {result.job_id} --task {example.task_id} stdout.txt",
        f"{prefix} task list {result.job_id}",
        f"{prefix} pool nodes {result.pool_id}",
    ):
        console.print(Text(f"  {hint}"))
