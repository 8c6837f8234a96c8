"""The node agent, driven for real through ``LocalNodeSource`` and ``AgentChannel``."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch.agent import AGENT_PATH, AGENT_VERSION, PROTOCOL_VERSION
from prefect_batch.providers import LocalNodeSource

from .driver import AgentDriver, process_gone, read_text, wait_until

pytestmark = pytest.mark.timeout(120)

SH = "/bin/sh"
DUMP_ENV = [sys.executable, "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def record(root: Path, key: str) -> dict:
    """A run record, merged like the agent merges it (JSON lines, later lines win)."""
    merged: dict = {}
    for line in (root / ".agent" / "runs" / f"{key}.json").read_text().splitlines():
        if line.strip():
            merged.update(json.loads(line))
    return merged


# --------------------------------------------------------------------------- hello and runs


def test_hello_reports_the_node_and_creates_the_layout(agent: AgentDriver, root: Path) -> None:
    agent.send(op="hello", v=PROTOCOL_VERSION, node_id="node-1", pool_id="pool")
    hello = agent.event("hello")
    assert hello["v"] == PROTOCOL_VERSION
    assert hello["agent_version"] == AGENT_VERSION
    assert hello["root"] == str(root.resolve())
    assert hello["cpu_count"] >= 1 and hello["memory_bytes"] > 0
    assert isinstance(hello["pid"], int) and hello["hostname"]
    for sub in ("shared", "startup", "fsmounts", ".agent/runs"):
        assert (root / sub).is_dir(), sub


def test_run_redirects_output_into_the_task_directory(agent: AgentDriver, root: Path) -> None:
    exited = agent.run_and_wait("t1", [SH, "-c", "echo out; echo err >&2; pwd"], dir="jobA/task1")
    assert exited["exit_code"] == 0
    assert exited["error"] is None and not exited["timed_out"] and not exited["killed"]
    assert exited["end_time"] >= exited["start_time"]
    task_dir = root.resolve() / "jobA" / "task1"
    assert (task_dir / "stdout.txt").read_text() == f"out\n{task_dir / 'wd'}\n"
    assert (task_dir / "stderr.txt").read_text() == "err\n"
    assert (task_dir / "wd").is_dir()
    started = agent.event("started", "t1")
    assert started["pid"] > 0 and started["time"] == exited["start_time"]


def test_rerun_truncates_previous_output(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait("a1", [SH, "-c", "echo first-and-long"], dir="job/t")
    agent.run_and_wait("a2", [SH, "-c", "echo 2nd"], dir="job/t")
    assert (root / "job" / "t" / "stdout.txt").read_text() == "2nd\n"


def test_environment_has_batch_variables_that_win_and_no_secrets(
    start_agent: Callable[..., AgentDriver], root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_BATCH_ACCOUNT_KEY", "c2VjcmV0")
    monkeypatch.setenv("MY_DB_PASSWORD", "hunter2")
    monkeypatch.setenv("HARMLESS_SETTING", "kept")
    agent = start_agent()
    exited = agent.run_and_wait(
        "env1",
        DUMP_ENV,
        dir="jobA/task1",
        env={"AZ_BATCH_TASK_DIR": "/elsewhere", "AZ_BATCH_TASK_ID": "task1", "MINE": "yes"},
        job_prep_dir="jobA/jobpreparation",
    )
    assert exited["exit_code"] == 0
    env = json.loads((root / "jobA" / "task1" / "stdout.txt").read_text())
    real = root.resolve()
    task_dir = f"{real}/jobA/task1"
    prep = f"{real}/jobA/jobpreparation"
    assert env["AZ_BATCH_TASK_DIR"] == task_dir  # the agent's value wins over the request's
    assert env["AZ_BATCH_NODE_TASK_DIR"] == task_dir
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == env["AZ_BATCH_NODE_TASK_WORKING_DIR"]
    assert env["AZ_BATCH_TASK_WORKING_DIR"] == f"{task_dir}/wd"
    assert env["AZ_BATCH_NODE_ROOT_DIR"] == str(real)
    assert env["AZ_BATCH_NODE_SHARED_DIR"] == f"{real}/shared"
    assert env["AZ_BATCH_NODE_STARTUP_DIR"] == f"{real}/startup"
    assert env["AZ_BATCH_NODE_MOUNTS_DIR"] == f"{real}/fsmounts"
    assert env["AZ_BATCH_JOB_PREP_DIR"] == env["AZ_BATCH_NODE_JOB_PREP_DIR"] == prep
    assert env["AZ_BATCH_JOB_PREP_WORKING_DIR"] == f"{prep}/wd"
    assert env["AZ_BATCH_NODE_JOB_PREP_WORKING_DIR"] == f"{prep}/wd"
    assert env["AZ_BATCH_TASK_ID"] == "task1" and env["MINE"] == "yes"
    assert env["HARMLESS_SETTING"] == "kept"
    assert "PREFECT_BATCH_ACCOUNT_KEY" not in env
    assert "MY_DB_PASSWORD" not in env


def test_no_job_prep_variables_without_job_prep_dir(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait("env2", DUMP_ENV, dir="job/t")
    env = json.loads((root / "job" / "t" / "stdout.txt").read_text())
    assert not [name for name in env if "JOB_PREP" in name]


def test_command_line_is_not_run_by_a_shell(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait("lit", ["echo", "$HOME", "a;b", "*"], dir="job/lit")
    assert (root / "job" / "lit" / "stdout.txt").read_text() == "$HOME a;b *\n"
    agent.run_and_wait("sh", [SH, "-c", "echo $((1+2))"], dir="job/sh")
    assert (root / "job" / "sh" / "stdout.txt").read_text() == "3\n"


def test_task_path_comes_from_the_task_environment(agent: AgentDriver, root: Path) -> None:
    bindir = root / "shared" / "bin"
    bindir.mkdir(parents=True)
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\necho from-mytool\n")
    tool.chmod(0o755)
    exited = agent.run_and_wait(
        "p1", ["mytool"], dir="job/p1", env={"PATH": f"{bindir}:/usr/bin:/bin"}
    )
    assert exited["exit_code"] == 0
    assert (root / "job" / "p1" / "stdout.txt").read_text() == "from-mytool\n"


def test_relative_program_path_is_relative_to_the_working_directory(
    agent: AgentDriver, root: Path
) -> None:
    wd = root / "job" / "rel" / "wd"
    wd.mkdir(parents=True)
    script = wd / "hello.sh"
    script.write_text("#!/bin/sh\necho hello from $(basename $(pwd))\n")
    script.chmod(0o755)
    exited = agent.run_and_wait("rel", ["./hello.sh"], dir="job/rel")
    assert exited["exit_code"] == 0
    assert (root / "job" / "rel" / "stdout.txt").read_text() == "hello from wd\n"


def test_stdin_is_empty(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait("cat", ["cat"], dir="job/cat")
    assert (root / "job" / "cat" / "stdout.txt").read_text() == ""


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        ([SH, "-c", "exit 0"], 0),
        ([SH, "-c", "exit 3"], 3),
        ([SH, "-c", "kill -TERM $$"], 128 + signal.SIGTERM),
        ([SH, "-c", "kill -KILL $$"], 128 + signal.SIGKILL),
    ],
    ids=["zero", "three", "sigterm", "sigkill"],
)
def test_exit_codes(agent: AgentDriver, argv: list[str], code: int) -> None:
    exited = agent.run_and_wait("x", argv)
    assert exited["exit_code"] == code
    assert exited["error"] is None and not exited["killed"] and not exited["timed_out"]


def test_program_not_found_is_reported_and_recorded(agent: AgentDriver, root: Path) -> None:
    exited = agent.run_and_wait("nf", ["no-such-program-prefect-batch"])
    assert exited["exit_code"] is None
    assert exited["error"]["code"] == "CommandProgramNotFound"
    assert "no-such-program-prefect-batch" in exited["error"]["message"]
    assert not agent.matching("started", "nf")
    assert record(root, "nf")["error"]["code"] == "CommandProgramNotFound"
    exited = agent.run_and_wait("nf2", ["./missing"])
    assert exited["error"]["code"] == "CommandProgramNotFound"


def test_program_not_executable(agent: AgentDriver, root: Path) -> None:
    plain = root / "shared" / "data.txt"
    plain.write_text("not a program\n")
    plain.chmod(0o644)
    exited = agent.run_and_wait("ne", [str(plain)])
    assert exited["exit_code"] is None
    assert exited["error"]["code"] == "CommandProgramNotExecutable"
    noexec = root / "shared" / "garbage"
    noexec.write_bytes(b"\x00\x01\x02\x03 not an executable format")
    noexec.chmod(0o755)
    exited = agent.run_and_wait("ne2", [str(noexec)])
    assert exited["error"]["code"] == "CommandProgramNotExecutable"


@pytest.mark.parametrize(
    "bad",
    [
        {"key": "bad key!"},
        {"argv": []},
        {"argv": "echo hi"},
        {"wall_clock_seconds": -1},
        {"env": ["A=B"]},
        {"env": {"BAD=NAME": "x"}},
    ],
    ids=["key", "empty-argv", "argv-string", "wall-clock", "env-list", "env-name"],
)
def test_invalid_run_requests_get_an_exited_error(agent: AgentDriver, bad: dict) -> None:
    msg = {"op": "run", "key": "k1", "argv": ["true"], "dir": "job/k1", **bad}
    agent.conn.send(msg)
    exited = agent.event("exited", msg["key"])
    assert exited["exit_code"] is None
    assert exited["error"]["code"] == "OperationInvalid"


# --------------------------------------------------------------------------- wall clock, kill


def test_wall_clock_kills_the_whole_process_group(agent: AgentDriver, root: Path) -> None:
    agent.run(
        "slow",
        [SH, "-c", "sleep 30 & echo $! > child.pid; sleep 30"],
        dir="job/slow",
        wall_clock_seconds=1.0,
    )
    exited = agent.event("exited", "slow")
    assert exited["timed_out"] is True and exited["killed"] is False
    started = agent.event("started", "slow")
    child_pid = int((root / "job" / "slow" / "wd" / "child.pid").read_text())
    assert wait_until(lambda: process_gone(started["pid"]))
    assert wait_until(lambda: process_gone(child_pid)), "the grandchild survived"
    assert record(root, "slow")["timed_out"] is True


def test_kill_op_kills_the_task(agent: AgentDriver, root: Path) -> None:
    agent.run("k", [SH, "-c", "sleep 30 & echo $! > child.pid; wait"], dir="job/k")
    started = agent.event("started", "k")
    pid_file = root / "job" / "k" / "wd" / "child.pid"
    assert wait_until(lambda: bool(read_text(pid_file).strip()))
    agent.send(op="kill", key="k")
    exited = agent.event("exited", "k")
    assert exited["killed"] is True and exited["timed_out"] is False
    assert wait_until(lambda: process_gone(started["pid"]))
    assert wait_until(lambda: process_gone(int(pid_file.read_text())))
    # Killing an unknown or finished key does nothing and emits nothing.
    agent.send(op="kill", key="k")
    agent.send(op="kill", key="never-ran")
    agent.ping()
    assert len(agent.matching("exited", "k")) == 1
    assert not agent.matching("exited", "never-ran")
    assert not agent.matching("error")


def test_coordination_command_leaves_its_background_services_until_killed(
    agent: AgentDriver, root: Path
) -> None:
    # A coordination command starts a service in the background and exits; the service stays
    # (an ordinary task's would too, but nothing could end it), with its own output files.
    script = "sleep 30 & echo $! > child.pid; echo $AZ_BATCH_TASK_SHARED_DIR"
    exited = agent.run_and_wait("c1-1-0", [SH, "-c", script], instance="coordination")
    assert exited["exit_code"] == 0
    task_dir = root / "job" / "c1-1-0"
    child = int(read_text(task_dir / "wd" / "child.pid"))
    assert read_text(task_dir / "coordination-stdout.txt").strip() == str(task_dir)
    assert not (task_dir / "stdout.txt").exists()
    agent.ping()
    assert not process_gone(child)
    # A kill of the finished key ends the group it left behind, and emits nothing.
    agent.send(op="kill", key="c1-1-0")
    assert wait_until(lambda: process_gone(child))
    agent.ping()
    assert len(agent.matching("exited", "c1-1-0")) == 1


def test_ordinary_finished_task_is_not_signalled_by_a_kill(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait("o", [SH, "-c", "sleep 30 & echo $! > child.pid"])
    child = int(read_text(root / "job" / "o" / "wd" / "child.pid"))
    agent.send(op="kill", key="o")
    agent.ping()
    assert not process_gone(child)
    os.kill(child, signal.SIGKILL)


def test_instance_must_be_known(agent: AgentDriver) -> None:
    exited = agent.run_and_wait("bad", ["true"], instance="everywhere")
    assert exited["error"]["code"] == "OperationInvalid"


def test_kill_with_grace_sends_sigterm_first(agent: AgentDriver, root: Path) -> None:
    """A task that handles SIGTERM gets to finish its handler: it exits with its own code."""
    script = "trap 'echo term > got.txt; exit 7' TERM; echo up > up.txt; sleep 30 & wait"
    agent.run("g", [SH, "-c", script], dir="job/g")
    agent.event("started", "g")
    assert wait_until(lambda: bool(read_text(root / "job" / "g" / "wd" / "up.txt")))
    agent.send(op="kill", key="g", grace_seconds=30)
    exited = agent.event("exited", "g")
    assert exited["killed"] is True and exited["exit_code"] == 7
    assert read_text(root / "job" / "g" / "wd" / "got.txt").strip() == "term"


def test_kill_with_grace_sigkills_a_task_ignoring_sigterm(agent: AgentDriver, root: Path) -> None:
    agent.run(
        "i", [SH, "-c", "trap '' TERM; echo up > up.txt; while :; do sleep 0.1; done"], dir="job/i"
    )
    agent.event("started", "i")
    assert wait_until(lambda: bool(read_text(root / "job" / "i" / "wd" / "up.txt")))
    agent.send(op="kill", key="i", grace_seconds=0.5)
    exited = agent.event("exited", "i")
    assert exited["killed"] is True and exited["exit_code"] == 137


def test_running_key_cannot_be_started_twice(agent: AgentDriver) -> None:
    agent.run("dup", ["sleep", "30"])
    agent.event("started", "dup")
    agent.run("dup", ["true"])
    error = agent.event("error", "dup")
    assert error["code"] == "TaskKeyInUse"
    agent.send(op="kill", key="dup")
    assert agent.event("exited", "dup")["killed"] is True


def test_shutdown_kill_kills_tasks_and_exits(agent: AgentDriver, root: Path) -> None:
    agent.run("s1", ["sleep", "30"])
    agent.run("s2", ["sleep", "30"])
    agent.event("started", "s2")
    agent.send(op="shutdown", mode="kill")
    assert agent.event("exited", "s1")["killed"] is True
    assert agent.event("exited", "s2")["killed"] is True
    assert agent.event("bye")["reason"] == "kill"
    assert agent.conn.wait(10) == 0
    assert record(root, "s1")["killed"] is True


def test_shutdown_drain_refuses_new_runs(agent: AgentDriver) -> None:
    agent.run("d1", [SH, "-c", "sleep 0.5"])
    agent.event("started", "d1")
    agent.send(op="shutdown", mode="drain")
    agent.run("d2", ["true"])
    assert agent.event("exited", "d2")["error"]["code"] == "AgentDraining"
    assert agent.event("exited", "d1")["exit_code"] == 0
    assert agent.event("bye")["reason"] == "drain"
    assert agent.conn.wait(10) == 0


# --------------------------------------------------------------------------- paths and files


@pytest.mark.parametrize("bad_dir", ["../x", "/abs/dir", "job//t", "job/./t", "job/..", ""])
def test_run_rejects_paths_outside_the_root(agent: AgentDriver, root: Path, bad_dir: str) -> None:
    exited = agent.run_and_wait("esc", ["true"], dir=bad_dir)
    assert exited["error"]["code"] == "OperationInvalid"
    assert exited["exit_code"] is None
    assert not (root.parent / "x").exists()


def test_run_rejects_a_symlinked_directory_leaving_the_root(
    agent: AgentDriver, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "job").symlink_to(outside)
    exited = agent.run_and_wait("esc", ["true"], dir="job/t1")
    assert exited["error"]["code"] == "OperationInvalid"
    assert not (outside / "t1").exists()


def test_file_operations_within_a_directory_stay_in_it(agent: AgentDriver, root: Path) -> None:
    (root / "job" / "a" / "wd").mkdir(parents=True)
    (root / "job" / "b").mkdir(parents=True)
    (root / "job" / "b" / "stdout.txt").write_text("b's output")
    (root / "job" / "a" / "wd" / "mine.txt").write_text("a's file")
    (root / "job" / "a" / "wd" / "peek").symlink_to(root / "job" / "b")
    for op, path in [
        ("read_file", "job/a/wd/peek/stdout.txt"),
        ("list_files", "job/a/wd/peek"),
        ("delete_file", "job/a/wd/peek/stdout.txt"),
    ]:
        answer = agent.request(op, path=path, within="job/a")
        assert answer["code"] == "OperationInvalid", (op, answer)
    assert (root / "job" / "b" / "stdout.txt").exists()
    ok = agent.request("read_file", path="job/a/wd/mine.txt", within="job/a")
    assert ok["ev"] == "file" and ok["size"] == len("a's file")
    # Without "within" the link stays inside the root, but no link is ever followed.
    answer = agent.request("read_file", path="job/a/wd/peek/stdout.txt")
    assert answer["code"] == "OperationInvalid" and "symbolic link" in answer["message"]


def _hostile_wd(root: Path) -> Path:
    """A task directory whose ``wd`` holds what a hostile task leaves behind."""
    wd = root / "job" / "h" / "wd"
    (wd / "sub").mkdir(parents=True)
    (wd / "sub" / "ok.txt").write_text("ok")
    os.mkfifo(wd / "pipe")
    (wd / "dangling").symlink_to("nowhere")
    (wd / "loop").symlink_to("loop")
    (wd / "inner").symlink_to("sub/ok.txt")
    os.link("/etc/passwd", wd / "pw")
    (wd / "own1").write_text("mine")
    os.link(wd / "own1", wd / "own2")
    (wd / "new\nline").write_text("nl")
    (wd / os.fsdecode(b"bad\xffname")).write_text("bad")
    return wd


def test_hostile_entries_are_listed_as_they_are_and_never_followed(
    agent: AgentDriver, root: Path
) -> None:
    _hostile_wd(root)
    for kw in ({}, {"within": "job/h"}):
        listing = agent.request("list_files", path="job/h", recursive=True, **kw)
        kinds = {f["name"]: f["kind"] for f in listing["files"]}
        assert kinds["wd/sub/ok.txt"] == "file" and kinds["wd/sub"] == "dir"
        assert (kinds["wd/dangling"], kinds["wd/loop"], kinds["wd/inner"]) == ("link",) * 3
        assert kinds["wd/pipe"] == "other" and kinds["wd/new\nline"] == "file"
        assert not [n for n in kinds if n.startswith("wd/bad")]
    whole = agent.request("list_files", path="", recursive=True)
    assert "job/h/wd/loop" in {f["name"] for f in whole["files"]}


@pytest.mark.parametrize(
    "name, code",
    [
        ("pipe", "OperationInvalid"),
        ("dangling", "OperationInvalid"),
        ("loop", "OperationInvalid"),
        ("inner", "OperationInvalid"),
        ("loop/x", "OperationInvalid"),
        ("pw", "OperationInvalid"),
        ("sub/none", "FileNotFound"),
        ("own1/x", "FileNotFound"),
    ],
)
def test_hostile_entries_are_refused_on_read(
    agent: AgentDriver, root: Path, name: str, code: str
) -> None:
    _hostile_wd(root)
    for kw in ({}, {"within": "job/h"}):
        answer = agent.request("read_file", path=f"job/h/wd/{name}", **kw)
        assert answer["ev"] == "error" and answer["code"] == code, (name, answer)
    assert agent.ping()["ev"] == "pong"  # the agent is not wedged


def test_hard_links_inside_the_directory_are_served(agent: AgentDriver, root: Path) -> None:
    wd = _hostile_wd(root)
    for name in ("own1", "own2"):
        answer = agent.request("read_file", path=f"job/h/wd/{name}", within="job/h")
        assert base64.b64decode(answer["data_b64"]) == b"mine"
    # The same file linked from a sibling task's directory is not the task's own any more.
    (root / "job" / "other").mkdir()
    os.link(wd / "own1", root / "job" / "other" / "own3")
    answer = agent.request("read_file", path="job/h/wd/own1", within="job/h")
    assert answer["code"] == "OperationInvalid" and "hard links" in answer["message"]
    nl = agent.request("read_file", path="job/h/wd/new\nline", within="job/h")
    assert base64.b64decode(nl["data_b64"]) == b"nl"


def test_deleting_hostile_entries_removes_the_entries_themselves(
    agent: AgentDriver, root: Path
) -> None:
    wd = _hostile_wd(root)
    for name in ("pipe", "dangling", "loop", "inner", "pw"):
        answer = agent.request("delete_file", path=f"job/h/wd/{name}", within="job/h")
        assert answer["ev"] == "file_deleted", (name, answer)
        assert not os.path.lexists(wd / name)
    assert (wd / "sub" / "ok.txt").exists() and Path("/etc/passwd").exists()
    (wd / "sub" / "up").symlink_to("..")
    answer = agent.request("delete_file", path="job/h/wd/sub", recursive=True, within="job/h")
    assert answer["ev"] == "file_deleted" and not (wd / "sub").exists() and wd.exists()


def test_file_operations_refuse_to_leave_the_root(
    agent: AgentDriver, root: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    (root / "shared" / "link.txt").symlink_to(secret)
    (root / "shared" / "linkdir").symlink_to(tmp_path)
    for op, path in [
        ("read_file", "shared/link.txt"),
        ("read_file", "../secret.txt"),
        ("read_file", "/etc/hostname"),
        ("list_files", ".."),
        ("list_files", "shared/linkdir"),
        ("delete_file", "shared/linkdir/secret.txt"),
    ]:
        answer = agent.request(op, path=path)
        assert answer["ev"] == "error", (op, path, answer)
        assert answer["code"] == "OperationInvalid", (op, path, answer)
    listing = agent.request("list_files", path="shared", recursive=True)
    names = {f["name"] for f in listing["files"]}
    assert {"link.txt", "linkdir"} <= names  # listed, never followed out of the root
    assert not any(name.startswith("linkdir/") for name in names)
    assert secret.read_text() == "top secret"
    deleted = agent.request("delete_file", path="shared/link.txt")
    assert deleted["ev"] == "file_deleted"
    assert secret.exists() and not (root / "shared" / "link.txt").exists()
    agent.send(op="delete", dir="../node", ev_id=1)
    assert agent.event("error", ev_id=1)["code"] == "OperationInvalid"
    assert root.exists()


def test_list_read_and_delete_files(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait(
        "f1",
        [SH, "-c", "printf 0123456789 > data.bin; mkdir -p sub/deeper; echo x > sub/deeper/y.txt"],
        dir="job/f1",
    )
    flat = agent.request("list_files", path="job/f1", recursive=False)
    assert {f["name"] for f in flat["files"]} == {"stdout.txt", "stderr.txt", "wd"}
    deep = agent.request("list_files", path="job/f1", recursive=True)
    by_name = {f["name"]: f for f in deep["files"]}
    assert set(by_name) == {
        "stdout.txt",
        "stderr.txt",
        "wd",
        "wd/data.bin",
        "wd/sub",
        "wd/sub/deeper",
        "wd/sub/deeper/y.txt",
    }
    data = by_name["wd/data.bin"]
    assert data["is_directory"] is False and data["content_length"] == 10
    assert data["file_mode"].startswith("0o") and int(data["file_mode"], 8) & 0o400
    assert data["last_modified"] > 0 and data["creation_time"] > 0
    assert by_name["wd/sub"]["is_directory"] is True

    whole = agent.request("read_file", path="job/f1/wd/data.bin", offset=0, length=None)
    assert base64.b64decode(whole["data_b64"]) == b"0123456789" and whole["size"] == 10
    part = agent.request("read_file", path="job/f1/wd/data.bin", offset=3, length=4)
    assert base64.b64decode(part["data_b64"]) == b"3456" and part["size"] == 10
    past = agent.request("read_file", path="job/f1/wd/data.bin", offset=50, length=4)
    assert past["data_b64"] == "" and past["size"] == 10
    props = agent.request("read_file", path="job/f1/wd/data.bin", offset=0, length=0)
    assert props["data_b64"] == "" and props["last_modified"] == data["last_modified"]

    missing = agent.request("read_file", path="job/f1/wd/nope", offset=0, length=None)
    assert missing["ev"] == "error" and missing["code"] == "FileNotFound"
    assert agent.request("list_files", path="job/nope")["code"] == "FileNotFound"
    assert agent.request("read_file", path="job/f1/wd")["code"] == "OperationInvalid"

    assert agent.request("delete_file", path="job/f1/wd/data.bin")["ev"] == "file_deleted"
    assert not (root / "job" / "f1" / "wd" / "data.bin").exists()
    refused = agent.request("delete_file", path="job/f1/wd/sub", recursive=False)
    assert refused["code"] == "OperationInvalid"
    assert agent.request("delete_file", path="job/f1/wd/sub", recursive=True)["ev"] == (
        "file_deleted"
    )
    assert not (root / "job" / "f1" / "wd" / "sub").exists()
    assert agent.request("delete_file", path="job/f1/wd/sub")["code"] == "FileNotFound"


def test_read_file_pages_large_files(agent: AgentDriver, root: Path) -> None:
    big = root / "shared" / "big.bin"
    payload = os.urandom(5 * 1024 * 1024 + 123)
    big.write_bytes(payload)
    first = agent.request("read_file", path="shared/big.bin", offset=0, length=None)
    chunk = base64.b64decode(first["data_b64"])
    assert len(chunk) == 4 * 1024 * 1024 and first["size"] == len(payload)
    rest = agent.request("read_file", path="shared/big.bin", offset=len(chunk), length=None)
    assert chunk + base64.b64decode(rest["data_b64"]) == payload


def test_delete_removes_a_task_directory(agent: AgentDriver, root: Path) -> None:
    agent.run_and_wait("del", [SH, "-c", "mkdir -p a/b && touch a/b/c"], dir="jobD/task1")
    agent.send(op="delete", dir="jobD/task1", ev_id="x1")
    assert agent.event("deleted", ev_id="x1")["dir"] == "jobD/task1"
    assert not (root / "jobD" / "task1").exists() and (root / "jobD").exists()
    agent.send(op="delete", dir="jobD/never-existed", ev_id="x2")
    agent.event("deleted", ev_id="x2")


# --------------------------------------------------------------------------- protocol errors


def test_unknown_ops_and_garbage_lines_do_not_crash_the_agent(agent: AgentDriver) -> None:
    agent.send(op="frobnicate")
    assert agent.event("error", op="frobnicate")["code"] == "OperationInvalid"
    agent.conn.channel._write_bytes(b"this is not json\n[1, 2]\n\n")
    agent.send(op="list_files")  # no path: the root
    agent.send(op="recover", keys="not-a-list")
    errors = agent.wait_for(lambda m: m.get("op") == "recover")
    assert errors["ev"] == "error"
    pong = agent.ping()
    assert pong["running"] == [] and len(pong["load"]) == 3
    assert pong["disk_free_bytes"] > 0
    assert len([m for m in agent.matching("error") if m.get("op") is None]) == 2


def test_ping_lists_running_tasks(agent: AgentDriver) -> None:
    agent.run("r1", ["sleep", "30"])
    agent.event("started", "r1")
    assert agent.ping()["running"] == ["r1"]


COUNTERS = (
    "disk_read_bytes",
    "disk_write_bytes",
    "disk_read_ops",
    "disk_write_ops",
    "net_in_bytes",
    "net_out_bytes",
)


def test_metrics_report_usage_and_counter_increases(agent: AgentDriver) -> None:
    first = agent.request("metrics")
    assert first["ev"] == "metrics" and first["time"] > 0
    assert 0.0 <= first["cpu_percent"] <= 100.0  # since boot
    assert first["memory_bytes"] > 0 and first["disk_bytes"] > 0
    # No previous reading: no interval and no increases yet.
    assert first["interval"] is None
    assert all(first[name] is None for name in COUNTERS)

    burn = "import time\nend = time.time() + 0.5\nwhile time.time() < end: pass"
    assert agent.run_and_wait("burn", [sys.executable, "-c", burn])["exit_code"] == 0
    second = agent.request("metrics")
    assert second["interval"] >= 0.5
    assert 0.0 < second["cpu_percent"] <= 100.0  # the busy loop ran in this interval
    for name in COUNTERS:
        assert isinstance(second[name], int) and second[name] >= 0, name


# --------------------------------------------------------------------------- sessions


def test_stdin_eof_lets_running_tasks_finish_and_records_them(
    agent: AgentDriver, root: Path
) -> None:
    agent.run("eof", [SH, "-c", "sleep 1; echo done"], dir="job/eof")
    agent.event("started", "eof")
    agent.conn.close()
    exited = agent.event("exited", "eof")
    assert exited["exit_code"] == 0
    assert agent.event("bye")["reason"] == "eof"
    assert agent.conn.wait(10) == 0
    assert (root / "job" / "eof" / "stdout.txt").read_text() == "done\n"
    rec = record(root, "eof")
    assert rec["exit_code"] == 0 and rec["end_time"] >= rec["start_time"]


def test_new_agent_recovers_recorded_results(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    first = start_agent()
    done = first.run_and_wait("r-done", [SH, "-c", "exit 7"])
    first.close()
    second = start_agent()
    second.send(op="recover", keys=["r-done", "r-unknown"])
    again = second.event("exited", "r-done")
    assert again["recovered"] is True and again["exit_code"] == 7
    assert again["start_time"] == done["start_time"] and again["end_time"] == done["end_time"]
    assert "no run record" in second.event("lost", "r-unknown")["reason"]
    second.send(op="forget", keys=["r-done"])
    second.send(op="recover", keys=["r-done"])
    second.event("lost", "r-done")
    assert wait_until(lambda: not (root / ".agent" / "runs" / "r-done.json").exists())


GATED = [SH, "-c", "while [ ! -e ../go ]; do sleep 0.05; done; exit 5"]


def test_task_of_a_killed_agent_is_adopted_then_lost(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    """A task whose agent died is nobody's child: its exit code is unknowable, so ``lost``."""
    first = start_agent()
    first.run("orphan", GATED, dir="job/orphan")
    pid = first.event("started", "orphan")["pid"]
    first.conn.kill()  # SIGKILL the agent only: the task runs on in its own session
    assert first.conn.wait(10) == -signal.SIGKILL
    assert not process_gone(pid)
    second = start_agent()
    second.send(op="recover", keys=["orphan"])
    second.event("adopted", "orphan")
    assert second.ping()["adopted"] == ["orphan"]
    (root / "job" / "orphan" / "go").touch()
    lost = second.event("lost", "orphan")
    assert "unknown" in lost["reason"]
    assert not second.matching("exited", "orphan")
    assert "end_time" not in record(root, "orphan")


def test_task_of_a_killed_agent_can_be_killed_by_the_new_agent(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    first = start_agent()
    first.run("orphan", [SH, "-c", "sleep 30 & sleep 30"], dir="job/orphan", wall_clock_seconds=60)
    pid = first.event("started", "orphan")["pid"]
    first.conn.kill()
    first.conn.wait(10)
    second = start_agent()
    second.send(op="recover", keys=["orphan"])
    second.event("adopted", "orphan")
    second.send(op="kill", key="orphan")
    exited = second.event("exited", "orphan")
    assert exited["killed"] is True and exited["exit_code"] is None
    assert wait_until(lambda: process_gone(pid))
    assert record(root, "orphan")["killed"] is True


def test_task_of_a_killed_agent_still_times_out(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    first = start_agent()
    first.run("late", ["sleep", "30"], dir="job/late", wall_clock_seconds=1.5)
    pid = first.event("started", "late")["pid"]
    first.conn.kill()
    first.conn.wait(10)
    second = start_agent()
    second.send(op="recover", keys=["late"])
    exited = second.event("exited", "late")  # the recorded deadline is enforced by the adopter
    assert exited["timed_out"] is True and exited["exit_code"] is None
    assert process_gone(pid)


def test_task_of_a_draining_agent_is_adopted_then_exits_with_its_code(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    """The old agent still supervises (its session closed): the new one reports its result."""
    first = start_agent()
    first.run("handover", GATED, dir="job/handover")
    first.event("started", "handover")
    first.conn.close()  # stdin EOF: the old agent drains
    second = start_agent()
    second.send(op="recover", keys=["handover"])
    second.event("adopted", "handover")
    (root / "job" / "handover" / "go").touch()
    exited = second.event("exited", "handover")
    assert exited["exit_code"] == 5 and exited["recovered"] is True
    assert first.event("exited", "handover")["exit_code"] == 5
    assert first.conn.wait(10) == 0


@pytest.mark.parametrize("prep_mode", ["auto", "threads"])
def test_two_hundred_tasks_eight_in_flight_complete_exactly_once(
    start_agent: Callable[..., AgentDriver], prep_mode: str
) -> None:
    agent = start_agent(LocalNodeSource(agent_args=["--prep-mode", prep_mode]))
    total, in_flight = 200, 8
    keys = [f"t{i}" for i in range(total)]
    agent.conn.send_many(
        [{"op": "run", "key": k, "argv": ["true"], "dir": f"job/{k}"} for k in keys[:in_flight]]
    )
    sent = in_flight
    while sent < total:
        done = len(agent.matching("exited"))
        while sent < min(total, done + in_flight):
            agent.run(keys[sent], ["true"])
            sent += 1
        agent.wait_for(lambda m, n=done: len(agent.matching("exited")) > n)
    agent.wait_for(lambda m: len(agent.matching("exited")) >= total)
    agent.ping()
    exited = agent.matching("exited")
    assert sorted(m["key"] for m in exited) == sorted(keys)
    assert all(m["exit_code"] == 0 for m in exited)
    assert sorted(m["key"] for m in agent.matching("started")) == sorted(keys)


# --------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    "agent_args",
    [
        ["--reaper", "sigchld"],
        ["--spawn", "popen"],
        ["--reaper", "sigchld", "--spawn", "popen"],
        ["--prep-mode", "threads"],
        ["--prep-mode", "inline"],
    ],
    ids=["sigchld", "popen", "popen-sigchld", "prep-threads", "prep-inline"],
)
def test_fallback_reapers_and_spawners(
    start_agent: Callable[..., AgentDriver], root: Path, agent_args: list[str]
) -> None:
    agent = start_agent(LocalNodeSource(agent_args=agent_args))
    agent.send(op="hello", v=1)
    hello = agent.event("hello")
    assert hello["reaper"] == ("sigchld" if "sigchld" in agent_args else "pidfd")
    assert agent.run_and_wait("a", [SH, "-c", "exit 4"])["exit_code"] == 4
    assert agent.run_and_wait("b", [SH, "-c", "kill -9 $$"])["exit_code"] == 137
    assert agent.run_and_wait("c", ["missing-program-x"])["error"]["code"] == (
        "CommandProgramNotFound"
    )
    timed = agent.run_and_wait("d", ["sleep", "30"], wall_clock_seconds=0.5)
    assert timed["timed_out"] is True
    for i in range(20):
        agent.run(f"m{i}", [SH, "-c", f"echo {i}"])
    for i in range(20):
        assert agent.event("exited", f"m{i}")["exit_code"] == 0
        assert (root / "job" / f"m{i}" / "stdout.txt").read_text() == f"{i}\n"


PY38 = Path("/root/.pyenv/versions/3.8.18/bin/python")


def _oldest_python() -> str | None:
    for candidate in (PY38, Path("/usr/bin/python3.8")):
        if candidate.exists():
            return str(candidate)
    return None


# Hosts of an SSH pool may have an old python3; the agent promises 3.8. Only a machine without
# a 3.8 interpreter to try it with skips this (pyenv's 3.8 is there on the CI machines).
@pytest.mark.skipif(_oldest_python() is None, reason="no Python 3.8 on this machine")
def test_agent_runs_on_python_3_8(start_agent: Callable[..., AgentDriver], root: Path) -> None:
    agent = start_agent(LocalNodeSource(python=_oldest_python()))
    agent.send(op="hello", v=1)
    assert agent.event("hello")["reaper"] == "sigchld"  # no os.pidfd_open before 3.9
    exited = agent.run_and_wait("old", [SH, "-c", "echo $AZ_BATCH_TASK_DIR"], dir="job/old")
    assert exited["exit_code"] == 0
    assert (root / "job" / "old" / "stdout.txt").read_text().strip().endswith("/job/old")
    assert agent.run_and_wait("t", ["sleep", "30"], wall_clock_seconds=0.5)["timed_out"]


def test_python_dash_m_runs_the_agent(root: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    request = json.dumps({"op": "hello", "v": 1}) + "\n"
    proc = subprocess.run(
        [sys.executable, "-m", "prefect_batch.agent", "--root", str(root)],
        input=request.encode(),
        capture_output=True,
        cwd=repo,
        timeout=60,
        check=True,
    )
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [e["ev"] for e in events] == ["hello", "bye"]
    assert AGENT_PATH.name == "agent.py" and AGENT_PATH.is_file()


def test_a_program_that_moved_is_found_again(agent: AgentDriver, root: Path) -> None:
    first, second = root / "shared" / "a", root / "shared" / "b"
    first.mkdir()
    second.mkdir()
    for d in (first, second):
        (d / "tool").write_text(f"#!/bin/sh\necho {d.name}\n")
        (d / "tool").chmod(0o755)
    env = {"PATH": f"{first}:{second}:/usr/bin:/bin"}
    assert agent.run_and_wait("m1", ["tool"], dir="job/m1", env=env)["exit_code"] == 0
    (first / "tool").unlink()  # the cached lookup is stale now
    assert agent.run_and_wait("m2", ["tool"], dir="job/m2", env=env)["exit_code"] == 0
    assert (root / "job" / "m2" / "stdout.txt").read_text() == "b\n"


def test_fifos_and_the_agents_own_state_are_off_limits(agent: AgentDriver, root: Path) -> None:
    os.mkfifo(root / "shared" / "pipe")
    answer = agent.request("read_file", path="shared/pipe")  # must not block the agent
    assert answer["code"] == "OperationInvalid"
    agent.run_and_wait("own", ["true"], dir="job/own")
    listing = agent.request("list_files", path="", recursive=False)
    assert ".agent" not in {f["name"] for f in listing["files"]}
    assert agent.request("delete_file", path=".agent/runs/own.json")["code"] == "OperationInvalid"
    agent.send(op="delete", dir=".agent", ev_id="own")
    assert agent.event("error", ev_id="own")["code"] == "OperationInvalid"
    bad = agent.run_and_wait("sneaky", ["true"], dir=".agent/runs")
    assert bad["error"]["code"] == "OperationInvalid"
    assert (root / ".agent" / "runs" / "own.json").exists()


def test_kill_before_start_with_prep_threads(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    agent = start_agent(LocalNodeSource(agent_args=["--prep-mode", "threads"]))
    agent.conn.send_many(
        [
            {"op": "run", "key": "early", "argv": ["sleep", "30"], "dir": "job/early"},
            {"op": "kill", "key": "early"},  # arrives in the same read: the run is still queued
            {"op": "run", "key": "later", "argv": ["true"], "dir": "job/later"},
        ]
    )
    exited = agent.event("exited", "early")
    assert exited["killed"] is True and exited["exit_code"] is None and exited["error"] is None
    assert agent.event("exited", "later")["exit_code"] == 0
    assert not agent.matching("started", "early")
    assert record(root, "early")["killed"] is True


def test_sigterm_drains_and_sighup_is_ignored(agent: AgentDriver, root: Path) -> None:
    agent.run("term", [SH, "-c", "sleep 0.5; echo finished"], dir="job/term")
    agent.event("started", "term")
    pid = agent.conn.pid
    assert pid is not None
    os.kill(pid, signal.SIGHUP)
    assert agent.ping()["running"] == ["term"]
    os.kill(pid, signal.SIGTERM)
    assert agent.event("exited", "term")["exit_code"] == 0
    assert agent.event("bye")["reason"] == "signal"
    assert agent.conn.wait(10) == 0
    assert (root / "job" / "term" / "stdout.txt").read_text() == "finished\n"


def test_package_constants_match_the_shipped_script() -> None:
    from prefect_batch.agent import agent as script

    assert script.AGENT_VERSION == AGENT_VERSION
    assert script.PROTOCOL_VERSION == PROTOCOL_VERSION
    assert Path(script.__file__).resolve() == AGENT_PATH


def test_a_deleted_tree_is_whole_or_gone_to_a_concurrent_reader(
    agent: AgentDriver, root: Path
) -> None:
    """``delete`` renames the tree aside first: a reader never lists half of it."""
    from prefect_batch.exceptions import BatchNotFoundError
    from prefect_batch.service.rows.localfiles import LocalDir

    wd = root / "job" / "big" / "wd"
    for d in range(40):
        (wd / f"d{d}").mkdir(parents=True)
        for f in range(100):
            (wd / f"d{d}" / f"f{f}").write_bytes(b"x")
    task_dir = LocalDir(root, "job/big")
    whole = len(task_dir.list("wd", False, "u"))  # quick to list: many looks mid-delete
    seen: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                seen.append(len(task_dir.list("wd", False, "u")))
            except BatchNotFoundError:
                seen.append(0)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        agent.send(op="delete", dir="job/big", ev_id=7)
        agent.event("deleted", ev_id=7)
        # Read on a little after the answer: the reader must see the tree gone, too.
        wait_until(lambda: seen.count(0) >= 3)
    finally:
        done.set()
        thread.join()
    assert not (root / "job" / "big").exists()
    assert set(seen) <= {whole, 0}, sorted(set(seen))
    assert os.listdir(root / ".agent" / "trash") == []


def test_a_tree_left_in_the_trash_is_removed_at_start(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    leftover = root / ".agent" / "trash" / "123-456" / "wd"
    leftover.mkdir(parents=True)
    (leftover / "out.txt").write_text("x")
    start_agent()
    assert os.listdir(root / ".agent" / "trash") == []
