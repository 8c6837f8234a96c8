"""What the pages show, from a real embedded service: a job's tasks paged failed-first, the
pool's samples for the chart (and only the account's own), the chart's geometry, durations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from prefect_batch.exceptions import BatchNotFoundError
from prefect_batch.service import BatchService
from prefect_batch.service.rows.samples import store_samples
from prefect_batch.store import Store
from prefect_batch.store.schema import pools
from prefect_batch.testing import embedded_client, wait_until
from prefect_batch.ui import views


@pytest.mark.slow
def test_all_tasks_page_failed_first_then_the_rest_each_once(tmp_path: Path) -> None:
    with embedded_client(tmp_path) as client:
        client.create_pool(
            {"id": "p", "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 4}
        )
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        client.create_tasks(
            "j",
            [
                {"id": f"t{i}", "commandLine": f"/bin/sh -c 'exit {i % 3 == 1 and 7 or 0}'"}
                for i in range(11)
            ],
        )
        wait_until(lambda: client.get_job_task_counts("j").task_counts.completed == 11, timeout=60)
        svc = BatchService(client.store, client.account_name)
        seen: list[str] = []
        cursor = None
        for _ in range(10):  # 11 tasks in pages of 3: 4 pages
            rows, cursor = views.task_page(svc, "j", "all", cursor, limit=3)
            seen += [r["id"] for r in rows]
            if cursor is None:
                break
        failed = [f"t{i}" for i in range(11) if i % 3 == 1]
        assert seen == failed + [f"t{i}" for i in range(11) if i % 3 != 1]
        failed_rows, more = views.task_page(svc, "j", "failed", None, limit=100)
        assert [r["id"] for r in failed_rows] == failed and more is None
        assert {r["exitCode"] for r in failed_rows} == {7}
        ok_rows, _ = views.task_page(svc, "j", "succeeded", None, limit=100)
        assert len(ok_rows) == 11 - len(failed) and {r["exitCode"] for r in ok_rows} == {0}
        assert views.task_page(svc, "j", "running", None)[0] == []


def test_pool_samples_are_read_for_the_pools_own_account_only(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'batch.db'}")
    try:
        mine = BatchService(store, "acct")
        mine.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 0})
        now = mine.clock()
        with store.begin() as conn:
            pk = conn.execute(select(pools.c.pk).where(pools.c.id == "p")).scalar_one()
            for age in (8 * 3600, 600, 300):  # one too old for a 6-hour chart
                sample = {"$CurrentDedicatedNodes": 4.0, "$RunningTasks": float(age // 100)}
                store_samples(conn, {pk: sample}, now - age, 30.0)
        got = mine.list_pool_samples("p", hours=6)
        assert [s["$RunningTasks"] for s in got] == [6.0, 3.0]
        assert got[0]["$UsableNodeCount"] is None  # not in the sample
        with pytest.raises(BatchNotFoundError):
            BatchService(store, "other").list_pool_samples("p")
    finally:
        store.dispose()


def test_the_chart_scales_to_its_highest_value_and_spans_its_samples() -> None:
    now = 10_000.0
    samples = [
        {"time": now - 600, "$CurrentDedicatedNodes": 2.0, "$RunningTasks": 8.0},
        {"time": now, "$CurrentDedicatedNodes": 4.0, "$RunningTasks": 0.0},
    ]
    chart = views.chart(samples, now, 6.0, width=100, height=50)
    lines = {line["label"]: line for line in chart["lines"]}
    assert chart["top"] == 8 and chart["span"] == "10 min"
    assert lines["nodes"]["points"] == "0.0,37.5 100.0,25.0"
    assert lines["running tasks"]["points"] == "0.0,0.0 100.0,50.0"
    assert lines["queued tasks"]["points"] == "" and lines["nodes"]["last"] == 4.0


def test_durations() -> None:
    assert views.duration("2026-01-01T00:00:00Z", "2026-01-01T00:00:04.25Z") == "4.2s"
    assert views.duration("2026-01-01T00:00:00Z", "2026-01-01T01:02:03Z") == "1h02m03s"
    assert views.duration("2026-01-01T00:00:00Z", "2026-01-01T00:02:03Z") == "2m03s"
    assert views.duration(None, None) == ""
