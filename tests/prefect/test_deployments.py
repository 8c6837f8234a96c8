"""``flows/prefect.yaml`` against a real ``prefect server start`` on loopback.

One test, end to end, as a user would do it: start a Prefect server (random port, its own
PREFECT_HOME), create the process work pool, register the blocks of ``blocks/``, ``prefect
deploy --prefect-file flows/prefect.yaml --all``, check that the server's scheduler put the daily
cleanup on its cron, then run all three deployments through a process worker — one triggered by
hand, one scheduled run of the cron moved to now (as if it were 03:00), one with parameters —
and check the batch jobs they made. Then the fourth deployment, on the ``batch`` work pool: a
``prefect worker start`` of that pool runs it as a batch task on the scenarios' pool. Heavy
(about two minutes: a server, two workers and four flow runs), so it lives in its own module;
every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from flowtest_helpers import wait_for
from prefect_server import PREFECT, REPO, Server, entry_point_dist

from prefect_batch import BatchClient

pytestmark = pytest.mark.slow

WORK_POOL = "batch-local"
BATCH_WORK_POOL = "batch-flows"
SCENARIOS = {"parallel-compute", "daily-node-cleanup", "batch-processing"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("prefect-server")
    srv = Server(root)
    # The `batch` worker type through the entry point, as after `pip install`.
    srv.env["PYTHONPATH"] = os.pathsep.join([str(entry_point_dist(root)), str(REPO)])
    try:
        wait_for(srv.healthy, timeout=90, interval=0.5, what="prefect server health")
        yield srv
    finally:
        srv.stop()


def _deployment_filter(deployment_id: Any) -> Any:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))


def _node_reported(client: Any, flow_run_id: Any) -> str | None:
    """The node node-report printed it ran on, once its logs have it."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    lines = {
        m.split(": ", 1)[0]: m.split(": ", 1)[1] for m in (x.message for x in logs) if ": " in m
    }
    if lines.get("pool") != "local-pool" or lines.get("task") != str(flow_run_id):
        return None
    return lines.get("node")


def _scheduled_runs(client: Any, deployment_id: Any) -> list[Any]:
    return [
        r
        for r in client.read_flow_runs(
            deployment_filter=_deployment_filter(deployment_id),
            limit=50,
            offset=0,
        )
        if r.state_name == "Scheduled"
    ]


def test_deploy_the_three_scenarios_and_run_them(server: Server, tmp_path: Path) -> None:
    from prefect.states import Scheduled

    server.cli(*PREFECT, "work-pool", "create", WORK_POOL, "--type", "process")
    server.cli(*PREFECT, "work-pool", "create", BATCH_WORK_POOL, "--type", "batch")
    server.cli(sys.executable, str(REPO / "blocks" / "register.py"))
    out = server.cli(
        *PREFECT, "--no-prompt", "deploy", "--prefect-file", "flows/prefect.yaml", "--all"
    )
    assert out.count("successfully created") == 4, out

    with server.client() as client:
        deployments = {d.name: d for d in client.read_deployments(limit=50, offset=0)}
        assert set(deployments) == SCENARIOS | {"node-report"}
        cleanup = deployments["daily-node-cleanup"]
        assert [s.schedule.cron for s in cleanup.schedules] == ["0 3 * * *"]
        assert all(deployments[name].work_pool_name == WORK_POOL for name in SCENARIOS)
        report = deployments["node-report"]
        assert report.work_pool_name == BATCH_WORK_POOL
        assert report.job_variables == {"pool_id": "local-pool", "required_slots": 1}

        # The scheduler plans the cron's next runs, each at 03:00 UTC.
        planned = wait_for(
            lambda: _scheduled_runs(client, cleanup.id), timeout=60, what="scheduled runs"
        )
        assert all(r.expected_start_time.astimezone(timezone.utc).hour == 3 for r in planned)
        # As if it were 03:00: the first planned run is due now.
        due = min(planned, key=lambda r: r.expected_start_time)
        client.set_flow_run_state(
            due.id, Scheduled(scheduled_time=datetime.now(timezone.utc)), force=True
        )

    server.cli(
        *PREFECT,
        "deployment",
        "run",
        "batch-parallel-compute/parallel-compute",
        "--param",
        "tasks=4",
    )
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    for i, text in enumerate(["one two", "three four five", "six"]):
        (inbox / f"doc{i}.txt").write_text(text)
    server.cli(
        *PREFECT,
        "deployment",
        "run",
        "batch-processing/batch-processing",
        "--params",
        json.dumps({"inputs": str(inbox), "outputs": str(outbox)}),
    )

    # One poll of the worker takes all three due runs and waits for them to finish.
    server.cli(*PREFECT, "worker", "start", "--pool", WORK_POOL, "--run-once", timeout=240)

    with server.client() as client:
        runs = client.read_flow_runs(limit=50, offset=0)
        finished = {r.name: r.state_name for r in runs if r.state_name != "Scheduled"}
        assert sorted(finished.values()) == ["Completed"] * 3, finished

    with BatchClient(home=server.batch_home, engine=False) as batch:
        jobs = {j.id.rsplit("-", 1)[0]: j for j in batch.list_jobs()}
        assert set(jobs) == {"batch-parallel-compute", "batch-node-cleanup", "batch-processing"}
        assert all(j.state == "completed" for j in jobs.values())
        counts = {k: batch.get_job_task_counts(j.id).task_counts for k, j in jobs.items()}
        assert counts["batch-parallel-compute"].succeeded == 4
        assert counts["batch-node-cleanup"].succeeded == 2  # one per node of local-pool
        assert counts["batch-processing"].succeeded == 3
    outputs = {p.name: p.read_text().split()[0] for p in outbox.iterdir()}
    assert outputs == {"doc0.txt.out": "2", "doc1.txt.out": "3", "doc2.txt.out": "1"}

    # node-report on the batch work pool: a task of the scenarios' pool (which they made).
    report_run = server.cli(*PREFECT, "deployment", "run", "node-report/node-report")
    worker_log = (tmp_path / "batch-worker.log").open("wb")
    worker = subprocess.Popen(
        [*PREFECT, "worker", "start", "--pool", BATCH_WORK_POOL],
        env={**server.env, "PREFECT_WORKER_QUERY_SECONDS": "1"},
        cwd=REPO,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with server.client() as client:
            (run,) = client.read_flow_runs(
                deployment_filter=_deployment_filter(report.id), limit=5, offset=0
            )
            assert str(run.id) in report_run
            done = wait_for(
                lambda: (r := client.read_flow_run(run.id)).state.is_final() and r,
                timeout=120,
                interval=0.5,
                what="node-report final",
            )
            assert done.state.name == "Completed", done.state.message
            assert (
                done.infrastructure_pid == f"local/prefect-{BATCH_WORK_POOL}-local-pool-p0/{run.id}"
            )
            node = wait_for(
                lambda: _node_reported(client, run.id), timeout=30, interval=0.5, what="report"
            )
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)
        worker_log.close()
    with BatchClient(home=server.batch_home, engine=False) as batch:
        task = batch.get_task(f"prefect-{BATCH_WORK_POOL}-local-pool-p0", str(run.id))
        assert task.node_info.node_id == node and task.node_info.pool_id == "local-pool"
