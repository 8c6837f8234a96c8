"""A task whose own output fills the node's disk: the task fails with ``DiskFull``, the agent
takes back the space that task's working directory holds, and the node runs the next tasks.

The disk is a real one that fills: a 32 MiB tmpfs mounted for the test (root, Linux), so the
task's writes hit ``ENOSPC``. Where mounting is not allowed, the second test simulates the
limit with ``--disk-reserve-bytes`` (the free space the agent keeps: the node counts as full
below it), as the download tests do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_batch.providers import LocalNodeSource
from prefect_batch.testing import embedded_client, wait_for_nodes, wait_until

from .driver import AgentDriver

SH = shutil.which("sh") or "/bin/sh"
MiB = 1 << 20


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs of the test's own, unmounted at the end."""
    yield from _tmpfs(tmp_path / "disk", 32)


@pytest.fixture
def service_disk(tmp_path: Path) -> Iterator[Path]:
    """A 96 MiB tmpfs: room for the agent's default 64 MiB reserve and a little more."""
    yield from _tmpfs(tmp_path / "disk", 96)


def _tmpfs(mount: Path, mib: int) -> Iterator[Path]:
    # Mounting needs root (CAP_SYS_ADMIN). CI runs as root, so there these tests always run;
    # a developer's unprivileged run skips only the real-disk ones, and the rule itself is
    # still covered there by the simulated reserve
    # (test_a_task_leaving_less_than_the_reserve_fails_with_disk_full).
    mount.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={mib}m,mode=0755", "tmpfs", str(mount)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace')}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fill_then_run_next(agent: AgentDriver, root: Path, fill_bytes: int) -> None:
    fill = f"echo started; head -c {fill_bytes} /dev/zero > big.bin"
    exited = agent.run_and_wait("fill", [SH, "-c", fill])
    error = exited["error"]
    assert error is not None, exited
    assert error["code"] == "DiskFull"
    assert error["category"] == "usererror"
    assert "disk" in error["message"]
    # Its working directory was emptied to give the space back; its stdout is kept.
    assert not (root / "job" / "fill" / "wd" / "big.bin").exists()
    assert (root / "job" / "fill" / "stdout.txt").read_text() == "started\n"
    # The node runs the next tasks, and they can write.
    for key in ("after1", "after2"):
        done = agent.run_and_wait(key, [SH, "-c", "head -c 1000 /dev/zero > out.bin; echo ok"])
        assert (done["exit_code"], done["error"]) == (0, None), done
        assert (root / "job" / key / "stdout.txt").read_text() == "ok\n"
        assert (root / "job" / key / "wd" / "out.bin").stat().st_size == 1000


def test_a_task_filling_a_real_disk_fails_with_disk_full_and_the_node_runs_on(
    start_agent: Callable[..., AgentDriver], small_disk: Path
) -> None:
    root = small_disk / "node"
    root.mkdir()
    agent = start_agent(LocalNodeSource(agent_args=["--disk-reserve-bytes", str(4 * MiB)]), root)
    _fill_then_run_next(agent, root, 64 * MiB)  # more than the disk holds: ENOSPC


def test_a_task_leaving_less_than_the_reserve_fails_with_disk_full(
    start_agent: Callable[..., AgentDriver], root: Path
) -> None:
    free = shutil.disk_usage(root).free
    # The node counts as full once its free space drops 64 MiB from now; the task writes 128.
    reserve = free - 64 * MiB
    agent = start_agent(LocalNodeSource(agent_args=["--disk-reserve-bytes", str(reserve)]))
    _fill_then_run_next(agent, root, 128 * MiB)


def test_a_task_that_did_not_fill_the_disk_keeps_its_result_and_files(
    start_agent: Callable[..., AgentDriver], small_disk: Path
) -> None:
    """The disk is full of something else (another task, a file outside the tasks): a small
    task ending now is not blamed, its files stay, and its result stands."""
    root = small_disk / "node"
    root.mkdir()
    agent = start_agent(LocalNodeSource(agent_args=["--disk-reserve-bytes", str(4 * MiB)]), root)
    hog = root / "shared" / "hog.bin"
    with hog.open("wb") as f:  # leaves about 1 MiB free of 32: below the reserve
        f.write(b"\0" * (31 * MiB))
    exited = agent.run_and_wait("small", [SH, "-c", "echo kept > kept.txt; echo done"])
    assert (exited["exit_code"], exited["error"]) == (0, None), exited
    assert (root / "job" / "small" / "wd" / "kept.txt").read_text() == "kept\n"
    # Once the hog is gone, a task that fills the disk itself is still blamed.
    hog.unlink()
    _fill_then_run_next(agent, root, 64 * MiB)


def test_a_task_that_leaves_the_disk_free_is_not_touched(agent: AgentDriver, root: Path) -> None:
    exited = agent.run_and_wait("small", [SH, "-c", "echo kept > kept.txt"])
    assert (exited["exit_code"], exited["error"]) == (0, None)
    assert (root / "job" / "small" / "wd" / "kept.txt").read_text() == "kept\n"
    assert os.path.getsize(root / "job" / "small" / "wd" / "kept.txt") == 5


def test_through_the_service_the_task_fails_with_disk_full_and_the_next_tasks_run(
    tmp_path: Path, service_disk: Path
) -> None:
    with embedded_client(tmp_path / "home", node_root=service_disk / "nodes") as client:
        client.create_pool(
            {"id": "p", "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 1}
        )
        wait_for_nodes(client, "p", 1, timeout=60)
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        fill = f"/bin/sh -c 'head -c {200 * MiB} /dev/zero > big.bin'"
        client.create_task(
            "j", {"id": "fill", "commandLine": fill, "constraints": {"maxTaskRetryCount": 2}}
        )
        for i in range(3):
            client.create_task("j", {"id": f"next{i}", "commandLine": "/bin/sh -c 'echo ok'"})

        def done() -> list:
            tasks = client.list_tasks("j")
            return (
                all(str(getattr(t.state, "value", t.state)) == "completed" for t in tasks) and tasks
            )

        tasks = {t.id: t for t in wait_until(done, timeout=90, message="every task completed")}
        info = tasks["fill"].execution_info
        assert str(getattr(info.result, "value", info.result)) == "failure"
        assert info.failure_info.code == "DiskFull"
        assert str(getattr(info.failure_info.category, "value", info.failure_info.category)) == (
            "usererror"
        )
        assert info.retry_count == 0  # not an application failure: never retried
        for i in range(3):
            after = tasks[f"next{i}"].execution_info
            assert (after.exit_code, after.failure_info) == (0, None)
            assert client.get_task_file("j", f"next{i}", "stdout.txt") == b"ok\n"
        (node,) = client.list_nodes("p")
        assert str(getattr(node.state, "value", node.state)) == "idle"
        assert not node.errors
