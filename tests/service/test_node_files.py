"""What a task sees on its node (layout, environment, no shell) and the file APIs around it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, BatchConflictError, BatchInvalidRequestError
from prefect_batch.exceptions import BatchNotFoundError
from prefect_batch.testing import wait_for_nodes, wait_for_task, wait_until

POOL = "files"


@pytest.fixture(scope="module", autouse=True)
def pool(client: BatchClient) -> None:
    client.create_pool(
        {"id": POOL, "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 2}
    )
    wait_for_nodes(client, POOL, 1, timeout=30)


def _run(client: BatchClient, job: str, task: dict) -> str:
    """Add a task, wait for it to succeed, return its node id."""
    client.create_task(job, task)
    done = wait_for_task(client, job, task["id"])
    assert done.execution_info.result == "success", done.execution_info
    return done.node_info.node_id


def _env(client: BatchClient, job: str, task_id: str) -> dict[str, str]:
    text = client.get_task_file(job, task_id, "stdout.txt").decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_task_environment_and_directories(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(
        POOL,
        commonEnvironmentSettings=[
            {"name": "COMMON", "value": "job"},
            {"name": "OVERRIDE", "value": "job"},
        ],
    )
    node = _run(
        client,
        job,
        {
            "id": "EnvTask",
            "commandLine": "/bin/sh -c 'env; echo CWD=$(pwd -P)'",
            "environmentSettings": [
                {"name": "OVERRIDE", "value": "task"},
                {"name": "MINE", "value": "a b=c"},
            ],
        },
    )
    env = _env(client, job, "EnvTask")
    root = (client.settings.effective_node_root / node).resolve()
    task_dir = root / job / "EnvTask"
    assert Path(env["AZ_BATCH_NODE_ROOT_DIR"]).resolve() == root
    assert Path(env["AZ_BATCH_TASK_DIR"]).resolve() == task_dir
    assert Path(env["AZ_BATCH_TASK_WORKING_DIR"]).resolve() == task_dir / "wd"
    assert Path(env["CWD"]).resolve() == task_dir / "wd"
    assert Path(env["AZ_BATCH_NODE_SHARED_DIR"]).resolve() == root / "shared"
    assert Path(env["AZ_BATCH_NODE_STARTUP_DIR"]).resolve() == root / "startup"
    assert Path(env["AZ_BATCH_NODE_TASK_DIR"]).resolve() == task_dir
    assert Path(env["AZ_BATCH_NODE_TASK_WORKING_DIR"]).resolve() == task_dir / "wd"
    assert (env["AZ_BATCH_JOB_ID"], env["AZ_BATCH_TASK_ID"]) == (job, "EnvTask")
    assert (env["AZ_BATCH_POOL_ID"], env["AZ_BATCH_NODE_ID"]) == (POOL, node)
    assert env["AZ_BATCH_ACCOUNT_NAME"] == client.account_name
    assert (env["COMMON"], env["OVERRIDE"], env["MINE"]) == ("job", "task", "a b=c")
    # No secrets of the service leak into tasks.
    assert not [k for k in env if k.startswith("PREFECT_BATCH_")]
    task = client.get_task(job, "EnvTask")
    assert task.node_info.pool_id == POOL
    assert task.node_info.task_root_directory == f"{job}/EnvTask"


def test_command_line_is_not_run_by_a_shell(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)
    _run(client, job, {"id": "noshell", "commandLine": "echo $HOME '>' x 'a  b' \"c d\" #e *"})
    assert client.get_task_file(job, "noshell", "stdout.txt") == b"$HOME > x a  b c d #e *\n"
    files = {f.name for f in client.list_task_files(job, "noshell", recursive=True)}
    assert "wd/x" not in files  # ">" redirected nothing


def test_missing_program_fails_without_a_shell(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)
    client.create_task(job, {"id": "missing", "commandLine": "no-such-program-xyz arg"})
    info = wait_for_task(client, job, "missing").execution_info
    assert info.result == "failure"
    assert info.failure_info.code == "CommandProgramNotFound"
    assert info.failure_info.category == "usererror"


def test_task_files_list_read_and_ranges(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job(POOL)
    node = _run(
        client,
        job,
        {
            "id": "out",
            "commandLine": "/bin/sh -c 'printf 0123456789; printf oops >&2; mkdir sub; "
            "echo data > sub/f.txt'",
        },
    )
    assert client.get_task_file(job, "out", "stdout.txt") == b"0123456789"
    assert client.get_task_file(job, "out", "stderr.txt") == b"oops"
    assert client.get_task_file(job, "out", "stdout.txt", offset=3, length=4) == b"3456"
    assert client.get_task_file(job, "out", "stdout.txt", offset=8) == b"89"
    assert client.get_task_file(job, "out", "stdout.txt", offset=50) == b""
    assert client.get_task_file(job, "out", "wd/sub/f.txt") == b"data\n"
    props = client.get_task_file_properties(job, "out", "stdout.txt")
    assert props.properties.content_length == 10
    assert not props.is_directory

    top = {f.name: f.is_directory for f in client.list_task_files(job, "out")}
    assert top == {"stderr.txt": False, "stdout.txt": False, "wd": True}
    deep = {f.name for f in client.list_task_files(job, "out", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd", "wd/sub", "wd/sub/f.txt"} <= deep

    with pytest.raises(BatchNotFoundError) as err:
        client.get_task_file(job, "out", "nope.txt")
    assert err.value.code == "FileNotFound"

    # The same files through the node.
    names = {f.name for f in client.list_node_files(POOL, node)}
    assert {"shared", "startup", job} <= names
    assert not [n for n in names if n.startswith(".agent")]
    under = {f.name for f in client.list_node_files(POOL, node, recursive=True, path=job)}
    assert f"{job}/out/stdout.txt" in under
    assert client.get_node_file(POOL, node, f"{job}/out/stdout.txt", offset=1, length=2) == b"12"

    client.delete_task_file(job, "out", "wd/sub/f.txt")
    with pytest.raises(BatchNotFoundError):
        client.get_task_file(job, "out", "wd/sub/f.txt")


@pytest.mark.parametrize("path", ["../x", "wd/../../x", "/etc/passwd", "wd/link/passwd"])
def test_paths_may_not_leave_the_task_directory(
    client: BatchClient, make_job: Callable[..., str], path: str
) -> None:
    job = make_job(POOL)
    node = _run(client, job, {"id": "esc", "commandLine": "ln -s /etc link"})
    with pytest.raises(BatchInvalidRequestError) as err:
        client.get_task_file(job, "esc", path)
    assert err.value.code == "InvalidPropertyValue"
    with pytest.raises(BatchInvalidRequestError) as err:
        client.get_node_file(
            POOL, node, path if path != "wd/link/passwd" else f"{job}/esc/wd/link/passwd"
        )
    assert err.value.code == "InvalidPropertyValue"
    with pytest.raises(BatchInvalidRequestError):
        client.delete_task_file(job, "esc", path)
    assert Path("/etc/passwd").exists()


def test_files_of_a_task_that_never_ran(client: BatchClient, make_job: Callable[..., str]) -> None:
    job = make_job("no-such-pool")
    client.create_task(job, {"id": "waiting", "commandLine": "true"})
    with pytest.raises(BatchConflictError) as err:
        client.list_task_files(job, "waiting")
    assert err.value.code == "TaskFilesUnavailable"


def test_retention_time_removes_the_task_directory(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    job = make_job(POOL)
    node = _run(
        client,
        job,
        {"id": "short", "commandLine": "echo bye", "constraints": {"retentionTime": "PT1S"}},
    )
    _run(client, job, {"id": "kept", "commandLine": "echo stay"})
    task_dir = client.settings.effective_node_root / node / job / "short"

    def cleaned() -> str | None:
        try:
            client.get_task_file(job, "short", "stdout.txt")
        except BatchConflictError as exc:
            return exc.code
        return None

    code = wait_until(cleaned, timeout=20, message="task files cleaned up")
    assert code in ("TaskFilesUnavailable", "TaskFilesCleanedup")
    wait_until(lambda: not task_dir.exists(), timeout=20, message="task directory deleted")
    with pytest.raises(BatchConflictError):
        client.list_task_files(job, "short")
    # Only that task's directory went.
    assert client.get_task_file(job, "kept", "stdout.txt") == b"stay\n"
    assert client.get_task(job, "short").state == "completed"
