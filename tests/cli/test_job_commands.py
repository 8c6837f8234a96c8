"""``prefect-batch job|task|file|engine ...`` with real local nodes.

``job wait`` and ``engine run`` start the engine in the test process, which spawns node agents
(subprocesses) under the test's ``--home``; every other command only reads and writes the
database.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _python(code: str) -> str:
    return shlex.join([sys.executable, "-c", code])


def test_job_task_wait_show_and_files(cli, home: Path, tmp_path: Path):
    cli("pool", "create", "p", "--nodes", "2", "--slots-per-node", "2", "--json")
    job = json.loads(
        cli(
            "job",
            "create",
            "j",
            "--pool",
            "p",
            "--priority",
            "10",
            "--max-wall-clock",
            "600",
            "--max-task-retries",
            "1",
            "--json",
        ).stdout
    )
    assert job["poolInfo"] == {"poolId": "p"}
    assert job["priority"] == 10
    assert job["constraints"] == {"maxWallClockTime": "PT10M", "maxTaskRetryCount": 1}

    added = json.loads(
        cli(
            "task",
            "add",
            "j",
            "greet",
            _python("import os; print('hello', os.environ['WHO'])"),
            "--env",
            "WHO=world",
            "--max-wall-clock",
            "PT5M",
            "--json",
        ).stdout
    )
    assert added["state"] == "active"
    assert added["environmentSettings"] == [{"name": "WHO", "value": "world"}]
    assert added["constraints"]["maxWallClockTime"] == "PT5M"
    for i in range(4):
        cli("task", "add", "j", f"sq{i}", _python(f"print({i} * {i})"), "--retries", "0", "--json")
    # Nothing runs before an engine does.
    assert json.loads(cli("job", "counts", "j", "--json").stdout)["taskCounts"]["active"] == 5

    waited = cli("job", "wait", "j", "--timeout", "120", "--json")
    counts = json.loads(waited.stdout)["taskCounts"]
    assert counts == {"active": 0, "running": 0, "completed": 5, "succeeded": 5, "failed": 0}
    assert "5/5" in waited.stderr  # the progress bar went to stderr, stdout is only JSON

    task = json.loads(cli("task", "show", "j", "greet", "--json").stdout)
    assert task["state"] == "completed"
    assert task["executionInfo"]["exitCode"] == 0
    assert task["executionInfo"]["result"] == "success"
    node_id = task["nodeInfo"]["nodeId"]
    assert node_id in {n["id"] for n in json.loads(cli("node", "list", "p", "--json").stdout)}

    assert cli("file", "get", "--job", "j", "--task", "greet", "stdout.txt").stdout == (
        "hello world\n"
    )
    assert cli("file", "get", "--job", "j", "--task", "sq3", "stdout.txt").stdout == "9\n"
    out = tmp_path / "copy.txt"
    cli("file", "get", "--job", "j", "--task", "sq2", "stdout.txt", "--output", str(out))
    assert out.read_bytes() == b"4\n"

    names = {
        f["name"]
        for f in json.loads(cli("file", "list", "--job", "j", "--task", "greet", "--json").stdout)
    }
    assert {"stdout.txt", "stderr.txt"} <= names
    # The same file, reached through the node that ran it.
    node_file = "j/greet/stdout.txt"
    assert cli("file", "get", "--pool", "p", "--node", node_id, node_file).stdout == (
        "hello world\n"
    )
    assert (home / "nodes" / node_id / "j" / "greet" / "stdout.txt").read_text() == "hello world\n"

    listed = json.loads(cli("task", "list", "j", "--state", "completed", "--json").stdout)
    assert sorted(t["id"] for t in listed) == ["greet", "sq0", "sq1", "sq2", "sq3"]
    assert json.loads(cli("task", "list", "j", "--state", "active", "--json").stdout) == []


def test_job_wait_exit_code_is_1_when_a_task_fails(cli):
    cli("pool", "create", "p", "--nodes", "1", "--slots-per-node", "2", "--json")
    cli("job", "create", "j", "--pool", "p", "--json")
    cli("task", "add", "j", "ok", _python("print('fine')"), "--json")
    failing = _python("import sys; print('oops', file=sys.stderr); sys.exit(3)")
    cli("task", "add", "j", "bad", failing, "--retries", "1", "--json")

    waited = cli("job", "wait", "j", "--timeout", "120", expect=1)
    assert "Task counts of job j" in waited.stdout

    bad = json.loads(cli("task", "show", "j", "bad", "--json").stdout)
    assert bad["executionInfo"]["exitCode"] == 3
    assert bad["executionInfo"]["result"] == "failure"
    assert bad["executionInfo"]["retryCount"] == 1
    assert cli("file", "get", "--job", "j", "--task", "bad", "stderr.txt").stdout == "oops\n"
    ok = json.loads(cli("task", "show", "j", "ok", "--json").stdout)
    assert ok["executionInfo"]["exitCode"] == 0

    # A failed task can be queued again; then the job has active work once more.
    reactivated = json.loads(cli("task", "reactivate", "j", "bad", "--json").stdout)
    assert reactivated["state"] == "active"
    ended = json.loads(cli("task", "terminate", "j", "bad", "--json").stdout)
    assert ended["state"] == "completed"
    assert ended["executionInfo"]["result"] == "failure"


def test_task_add_many_reports_the_duplicate(cli, tmp_path: Path):
    cli("pool", "create", "p", "--nodes", "1", "--json")
    cli("job", "create", "j", "--pool", "p", "--json")
    cli("task", "add", "j", "t1", "echo one", "--json")
    specs = tmp_path / "tasks.jsonl"
    specs.write_text(
        "\n".join(
            json.dumps({"id": tid, "commandLine": f"echo {tid}"}) for tid in ("t2", "t1", "t3")
        )
        + "\n"
    )
    result = cli("task", "add-many", "j", "--file", str(specs), expect=1)
    rejected = [line for line in result.stdout.splitlines() if "TaskExists" in line]
    assert len(rejected) == 1 and " t1 " in rejected[0]
    assert "Added 2 of 3 tasks" in result.stdout

    # The same file as a JSON list, with --json: the wire result, one entry per task.
    as_list = tmp_path / "tasks.json"
    as_list.write_text(
        json.dumps(
            [{"id": "t4", "commandLine": "echo 4"}, {"id": "T4", "commandLine": "echo again"}]
        )
    )
    body = json.loads(
        cli("task", "add-many", "j", "--file", str(as_list), "--json", expect=1).stdout
    )
    assert [(r["taskId"], r["status"]) for r in body["value"]] == [
        ("t4", "success"),
        ("T4", "clienterror"),
    ]
    assert body["value"][1]["error"]["code"] == "TaskExists"
    ids = sorted(t["id"] for t in json.loads(cli("task", "list", "j", "--json").stdout))
    assert ids == ["t1", "t2", "t3", "t4"]


def test_job_update_disable_enable_terminate_delete(cli, home: Path):
    cli("pool", "create", "p", "--nodes", "1", "--json")
    cli("job", "create", "j", "--pool", "p", "--json")
    updated = json.loads(
        cli(
            "job",
            "update",
            "j",
            "--priority",
            "-5",
            "--max-parallel-tasks",
            "2",
            "--on-all-tasks-complete",
            "terminatejob",
            "--json",
        ).stdout
    )
    assert (updated["priority"], updated["maxParallelTasks"]) == (-5, 2)
    assert updated["onAllTasksComplete"] == "terminatejob"

    assert (
        json.loads(cli("job", "disable", "j", "--tasks", "requeue", "--json").stdout)["state"]
        == "disabled"
    )
    assert cli("job", "disable", "j", expect=1).stderr.startswith("Error JobDisabled: ")
    assert json.loads(cli("job", "enable", "j", "--json").stdout)["state"] == "active"

    cli("task", "add", "j", "never", "echo never", "--json")
    terminated = json.loads(cli("job", "terminate", "j", "--reason", "enough", "--json").stdout)
    assert terminated["executionInfo"]["terminateReason"] == "enough"
    assert json.loads(cli("job", "delete", "j", "--json").stdout) == {"id": "j", "deleted": True}
    assert cli("job", "show", "j", expect=1).stderr.startswith("Error JobNotFound: ")


def test_job_wait_on_a_missing_job_exits_1(cli):
    result = cli("job", "wait", "nope", "--timeout", "5", expect=1)
    assert result.stderr.startswith("Error JobNotFound: ")


def test_file_commands_need_one_target(cli):
    assert cli("file", "list", expect=2).exit_code == 2
    assert cli("file", "get", "--job", "j", "--pool", "p", "stdout.txt", expect=2).exit_code == 2


def test_engine_run_makes_queued_tasks_run(cli):
    cli("pool", "create", "p", "--nodes", "1", "--json")
    cli("job", "create", "j", "--pool", "p", "--json")
    cli("task", "add", "j", "t", _python("print(6 * 7)"), "--json")

    lines: list[str] = []
    for _ in range(30):  # bounded: each round runs the engine for one second
        lines += cli("engine", "run", "--duration", "1").stdout.splitlines()
        if json.loads(cli("task", "show", "j", "t", "--json").stdout)["state"] == "completed":
            break
    assert cli("file", "get", "--job", "j", "--task", "t", "stdout.txt").stdout == "42\n"
    assert any(line.startswith("pool p: 1/1 nodes") for line in lines), lines


def test_engine_run_with_prefect_events_and_no_api_says_so(cli, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = cli("engine", "run", "--duration", "1", "--prefect-events")
    assert "--prefect-events without PREFECT_API_URL" in result.stderr


def test_job_on_an_auto_pool(cli, home: Path) -> None:
    job = json.loads(
        cli("job", "create", "aj", "--auto-pool", "1", "--auto-pool-prefix", "run", "--json").stdout
    )
    spec = job["poolInfo"]["autoPoolSpecification"]
    assert spec["pool"] == {"vmSize": "local", "targetDedicatedNodes": 1}
    assert spec["poolLifetimeOption"] == "job"
    pool_id = job["executionInfo"]["poolId"]
    assert pool_id.startswith("run_")
    pools = json.loads(cli("pool", "list", "--json").stdout)
    assert [p["id"] for p in pools] == [pool_id]
    assert pool_id in cli("job", "list").stdout  # the Pool column shows the auto pool
    cli("task", "add", "aj", "t", "echo auto")
    cli("job", "wait", "aj", "--timeout", "120")
    cli("job", "terminate", "aj")
    cli("job", "delete", "aj")
    # Without an engine running the pool waits as "deleting" for one to remove it.
    after = json.loads(cli("pool", "list", "--json").stdout)
    assert [(p["id"], p["state"]) for p in after] in ([], [(pool_id, "deleting")])
    both = cli("job", "create", "x", "--pool", "p", "--auto-pool", "1", expect=2)
    assert "not both" in both.stderr
