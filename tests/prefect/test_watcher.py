"""The event watcher: Prefect events for store changes nobody follows in a flow — recorded
with a stand-in emitter, and delivered to a real Prefect test server."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowtest_helpers import events_named

from prefect_batch import BatchClient
from prefect_batch.prefect.events import task_resource_id
from prefect_batch.prefect.watcher import LAG_SECONDS, EventWatcher
from prefect_batch.testing import embedded_client, wait_for_nodes, wait_until


class Recorder:
    """Stands in for ``prefect_batch.prefect.events``: records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args: self.calls.append((name, args))

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for n, args in self.calls if n == name]


def _later() -> float:
    """A clock past the watcher's lag: what happened until now is inside its window."""
    return time.time() + LAG_SECONDS + 0.5


def _scenario(client: BatchClient) -> str:
    """A pool that works, one whose start task fails, and a job with one failing task."""
    client.create_pool({"id": "good", "vmSize": "local", "targetDedicatedNodes": 1})
    client.create_pool(
        {
            "id": "bad",
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "startTask": {"commandLine": "false", "waitForSuccess": True},
        }
    )
    wait_for_nodes(client, "good", 1)
    wait_for_nodes(client, "bad", 1, states=("starttaskfailed",))
    client.create_job(
        {"id": "watched", "poolInfo": {"poolId": "good"}, "onAllTasksComplete": "terminatejob"}
    )
    client.create_tasks(
        "watched",
        [{"id": "ok", "commandLine": "true"}, {"id": "broken", "commandLine": "false"}],
    )
    wait_until(
        lambda: client.get_job("watched").state == "completed", timeout=30, message="job done"
    )
    return "watched"


def test_the_watcher_reports_what_happened_once(tmp_path: Path) -> None:
    with embedded_client(tmp_path / "home") as client:
        client.create_pool({"id": "before", "vmSize": "local", "targetDedicatedNodes": 0})
        time.sleep(LAG_SECONDS + 0.2)  # the pool's creation lies before the watcher's start
        recorder = Recorder()
        assert client.store is not None
        watcher = EventWatcher(client.store, emit=recorder)
        job = _scenario(client)
        watcher.clock = _later
        assert watcher.poll() == len(recorder.calls) > 0

        (node_event,) = recorder.named("node_state_changed")
        pool_id, _node_id, state, detail = node_event
        assert (pool_id, state) == ("bad", "starttaskfailed")
        assert detail["account"] == "local" and detail["startTaskFailureInfo"]["code"]
        (task_event,) = recorder.named("task_failed")
        assert task_event[:2] == (job, "good")
        result = task_event[2]
        assert (result.task_id, result.exit_code, result.failure_code) == (
            "broken",
            1,
            "FailureExitCode",
        )
        assert result.node_id is not None
        (job_event,) = recorder.named("job_completed")
        assert job_event[0] == job
        assert {k: job_event[2][k] for k in ("succeeded", "failed", "terminateReason")} == {
            "succeeded": 1,
            "failed": 1,
            "terminateReason": "AllTasksComplete",
        }
        resized = {args[0] for args in recorder.named("pool_resized")}
        assert resized == {"good", "bad"}  # not "before": it settled before the watcher began

        # Nothing twice.
        recorder.calls.clear()
        watcher.clock = lambda: _later() + 1
        assert watcher.poll() == 0 and recorder.calls == []


def test_the_watcher_delivers_to_prefect(
    prefect_api: None, prefect_client: Any, tmp_path: Path
) -> None:
    with embedded_client(tmp_path / "home") as client:
        assert client.store is not None
        watcher = EventWatcher(client.store)
        job = _scenario(client)
        watcher.clock = _later
        assert watcher.poll() > 0
    found = events_named(
        prefect_client, "prefect-batch.task.failed", task_resource_id(job, "broken")
    )
    assert found[0].payload["failureCode"] == "FailureExitCode"
    assert (
        events_named(prefect_client, "prefect-batch.job.completed", f"prefect-batch.job.{job}")[
            0
        ].payload["failed"]
        == 1
    )
