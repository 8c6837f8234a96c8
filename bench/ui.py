"""How fast the web page renders a pool of 1,000 nodes and a job of 100,000 tasks.

    python bench/ui.py [--nodes 1000] [--tasks 100000] [--repeat 7]
                       [--database-url postgresql+psycopg://...]

Builds a store (SQLite under a temporary home unless ``--database-url``) holding, for one
account, a pool ``big`` of ``--nodes`` nodes in a mix of states and a job ``huge`` of ``--tasks``
tasks (1 % failed, 90 % succeeded, some running, the rest queued), and the baseline: pool
``small`` of 10 nodes and job ``tiny`` of 100 tasks in the same mix. The nodes and the tasks'
outcomes are written into the store as an engine would leave them (no agents run: the page's
cost is reading and rendering, not running tasks); the tasks are added with ``create_tasks``.

Then serves the app (``create_app``, no engine) on 127.0.0.1, signs in as a browser does, and
times each page from the server — the median of ``--repeat`` GETs, whole answer received — for
the big resources and the baseline, with the ratio big/baseline. The target: under a second
for the pool of 1,000 nodes and the job of 100,000 tasks. Figures drift up to 2x on a shared
2-core machine; compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from sqlalchemy import insert, select, update  # noqa: E402

from prefect_batch.api import create_app  # noqa: E402
from prefect_batch.service import BatchService  # noqa: E402
from prefect_batch.service.ops.accounts import AccountOperations  # noqa: E402
from prefect_batch.store import Store  # noqa: E402
from prefect_batch.store.schema import jobs, nodes, pools, queue, tasks  # noqa: E402
from prefect_batch.testing.webapp import serve_app  # noqa: E402

NODE_STATES = ("idle",) * 5 + ("running",) * 12 + ("starting", "waitingforstarttask", "offline")
"""The mix of node states (one in 20 starting, waiting for its start task or offline)."""


def add_nodes(store: Store, account: str, pool_id: str, count: int, slots: int) -> None:
    """``count`` node rows of ``pool_id``, as an engine leaves them."""
    now = time.time()
    with store.begin() as conn:
        pool_pk = conn.execute(
            select(pools.c.pk).where(pools.c.account == account, pools.c.id == pool_id)
        ).scalar_one()
        rows = []
        for i in range(count):
            state = NODE_STATES[i % len(NODE_STATES)]
            busy = slots if state == "running" else 0
            rows.append(
                {
                    "node_id": f"tvmps_{pool_id}_{i:05d}",
                    "pool_pk": pool_pk,
                    "account": account,
                    "state": state,
                    "state_transition_time": now,
                    "allocation_time": now - 3600,
                    "vm_size": "local",
                    "root_dir": f"/nonexistent/{pool_id}/{i}",
                    "total_slots": slots,
                    "running_tasks": busy,
                    "running_slots": busy,
                    "total_tasks_run": 40 + i % 7,
                    "total_tasks_succeeded": 39 + i % 7,
                }
            )
        conn.execute(insert(nodes), rows)
        conn.execute(update(pools).where(pools.c.pk == pool_pk).values(target_dedicated=count))


def finish_tasks(store: Store, account: str, job_id: str, node_pk: int) -> dict[str, int]:
    """Give the job's tasks outcomes: 1 % failed, 90 % succeeded, 0.5 % running."""
    now = time.time()
    with store.begin() as conn:
        job_pk = conn.execute(
            select(jobs.c.pk).where(jobs.c.account == account, jobs.c.id == job_id)
        ).scalar_one()
        pks = [
            r[0]
            for r in conn.execute(
                select(tasks.c.pk).where(tasks.c.job_pk == job_pk).order_by(tasks.c.pk)
            )
        ]
        failed = pks[::100]
        rest = [pk for pk in pks if pk % 100 != pks[0] % 100]
        succeeded = rest[: len(pks) * 9 // 10]
        running = rest[len(succeeded) : len(succeeded) + max(len(pks) // 200, 1)]
        done = {"state": "completed", "start_time": now - 5, "end_time": now - 2}
        for group, values in (
            (failed, {**done, "result": "failure", "exit_code": 1, "attempt": 1}),
            (succeeded, {**done, "result": "success", "exit_code": 0, "attempt": 1}),
            (running, {"state": "running", "start_time": now - 3, "attempt": 1}),
        ):
            for i in range(0, len(group), 5000):
                part = group[i : i + 5000]
                conn.execute(
                    update(tasks).where(tasks.c.pk.in_(part)).values(node_pk=node_pk, **values)
                )
                conn.execute(queue.delete().where(queue.c.task_pk.in_(part)))
        active = len(pks) - len(failed) - len(succeeded) - len(running)
        counts = {"n_active": active, "n_running": len(running), "n_succeeded": len(succeeded)}
        counts["n_failed"] = len(failed)
        slots = {f"s_{k[2:]}": v for k, v in counts.items()}
        conn.execute(update(jobs).where(jobs.c.pk == job_pk).values(**counts, **slots))
    return counts


def build(store: Store, account: str, pool_id: str, n_nodes: int, job_id: str, n_tasks: int):
    svc = BatchService(store, account)
    svc.create_pool({"id": pool_id, "vmSize": "local", "targetDedicatedNodes": 0})
    add_nodes(store, account, pool_id, n_nodes, 1)
    svc.create_job({"id": job_id, "poolInfo": {"poolId": pool_id}})
    started = time.perf_counter()
    svc.create_tasks(job_id, [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(n_tasks)])
    added = time.perf_counter() - started
    with store.read() as conn:
        node_pk = conn.execute(
            select(nodes.c.pk).where(nodes.c.node_id == f"tvmps_{pool_id}_00000")
        ).scalar_one()
    finish_tasks(store, account, job_id, node_pk)
    return added


def median_ms(client: httpx.Client, path: str, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        answer = client.get(path)
        answer.raise_for_status()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pb-bench-ui-") as home:
        store = Store(args.database_url or f"sqlite:///{Path(home) / 'batch.db'}")
        account = AccountOperations(store).create("bench")
        added = build(store, "bench", "big", args.nodes, "huge", args.tasks)
        build(store, "bench", "small", 10, "tiny", 100)
        print(
            f"store: {store.engine.url.get_backend_name()}; "
            f"{args.tasks:,} tasks added in {added:.1f} s"
        )
        with serve_app(create_app(store)) as url, httpx.Client(base_url=url, timeout=60) as web:
            web.post("/ui/signin", data={"account": "bench", "key": account.primary})
            assert web.cookies.get("pb_session"), "sign-in failed"
            web.get("/ui/jobs/huge")  # warm up the templates
            # A page deep into the job: the cursor after 90 % of its tasks.
            deep = f"o{int(args.tasks * 0.9)}"
            pages = [
                ("pools page (both pools)", "/ui/pools", None),
                ("pool page", "/ui/pools/{pool}", "pool"),
                ("pool tiles JSON (polled)", "/ui/api/pools/{pool}/tiles", "pool"),
                ("jobs page (both jobs)", "/ui/jobs", None),
                ("job page, first page (failed first)", "/ui/jobs/{job}", "job"),
                ("job page, failed tasks", "/ui/jobs/{job}?state=failed", "job"),
                ("job page, 90 % deep", "/ui/jobs/{job}?state=all&cursor=" + deep, "job"),
                ("job progress JSON (polled)", "/ui/api/jobs/{job}/progress", "job"),
                ("task page", "/ui/jobs/{job}/tasks/t1", "job"),
            ]
            print(f"\n{'page':40} {'big ms':>9} {'baseline ms':>12} {'ratio':>6}")
            for label, path, kind in pages:
                big = path.format(pool="big", job="huge")
                small = path.format(pool="small", job="tiny")
                if kind is None:
                    ms = median_ms(web, big, args.repeat)
                    print(f"{label:40} {ms:9.1f} {'':>12} {'':>6}")
                    continue
                ms_big = median_ms(web, big, args.repeat)
                ms_small = median_ms(web, small, args.repeat)
                print(f"{label:40} {ms_big:9.1f} {ms_small:12.1f} {ms_big / ms_small:6.2f}")
            size = len(web.get("/ui/pools/big").content)
            print(f"\npool page of {args.nodes:,} nodes: {size / 1024:.0f} KiB of HTML")
        store.dispose()


if __name__ == "__main__":
    main()
