"""``prefect-batch quickstart``: the README's first command, end to end on local nodes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from prefect_batch import BatchClient
from prefect_batch.quickstart import BASE_LIMIT, POOL_ID, STEP

pytestmark = pytest.mark.slow


def _primes_below(n: int) -> int:
    """Trial division: independent of the task's sieve."""
    return sum(all(p % d for d in range(2, int(p**0.5) + 1)) for p in range(2, n))


def test_quickstart_runs_six_tasks_and_reports_them(cli, home: Path):
    result = cli("quickstart", "--tasks", "6", "--nodes", "2")
    out = result.stdout

    rows = [line for line in out.splitlines() if re.match(r"^\W*task-\d{3}\b", line)]
    assert [re.search(r"task-\d{3}", r).group() for r in rows] == [
        f"task-{i:03d}" for i in range(6)
    ]
    for i, row in enumerate(rows):
        assert re.search(rf"primes below {BASE_LIMIT + i * STEP}: \d+", row), row
    assert "primes below 200000: 17984" in rows[0]  # pi(200000), a known value
    assert "6 succeeded, 0 failed of 6 tasks." in out

    # The concrete example path exists and holds the task's output.
    example = re.search(r"^\s*(/\S+/stdout\.txt)$", out, re.MULTILINE)
    assert example is not None, out
    path = Path(example.group(1))
    assert path.is_relative_to(home / "nodes")
    assert path.read_text().startswith("primes below")
    assert "Try next:" in out and "task show quickstart-" in out

    with BatchClient(home=home, engine=False) as client:
        pool = client.get_pool(POOL_ID)
        assert (pool.target_dedicated_nodes, pool.task_slots_per_node) == (2, 4)
        [job] = client.list_jobs()
        tasks = client.list_tasks(job.id)
        assert len(tasks) == 6
        assert {t.execution_info.exit_code for t in tasks} == {0}
        assert {t.node_info.node_id for t in tasks} <= {n.id for n in client.list_nodes(POOL_ID)}


def test_quickstart_again_reuses_the_pool_and_replaces_the_job(cli, home: Path):
    first = json.loads(cli("quickstart", "--tasks", "2", "--nodes", "1", "--json").stdout)
    assert first["ok"] is True
    assert [t["result"] for t in first["tasks"]] == [
        f"primes below {BASE_LIMIT}: {_primes_below(BASE_LIMIT)}",
        f"primes below {BASE_LIMIT + STEP}: {_primes_below(BASE_LIMIT + STEP)}",
    ]

    second = cli("quickstart", "--tasks", "3", "--nodes", "2")
    assert f"Reusing pool {POOL_ID}, resized to 2 node(s)" in second.stdout
    assert "Removed 1 earlier quickstart job(s)" in second.stdout

    with BatchClient(home=home, engine=False) as client:
        jobs = [j.id for j in client.list_jobs()]
        assert first["jobId"] not in jobs
        assert len(jobs) == 1
        assert len(client.list_tasks(jobs[0])) == 3
        assert client.get_pool(POOL_ID).target_dedicated_nodes == 2
