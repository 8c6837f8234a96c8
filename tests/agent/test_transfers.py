"""The agent's file transfers against a real HTTP server on loopback: downloads before the
command (atomic, with modes, never outside the task directory, never filling the disk) and
uploads after it (conditions, logs, and a drain that waits for them)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_batch.providers import LocalNodeSource
from prefect_batch.testing.storage import HttpFileServer, http_file_server

from .driver import AgentDriver

SH = shutil.which("sh") or "/bin/sh"


@pytest.fixture
def web(tmp_path: Path) -> Iterator[HttpFileServer]:
    directory = tmp_path / "web"
    directory.mkdir()
    (directory / "small.txt").write_text("small\n")
    (directory / "big.bin").write_bytes(os.urandom(4 << 20))
    with http_file_server(directory, slow_seconds=3.0) as server:
        yield server


def test_downloads_arrive_before_the_command_with_their_modes(
    agent: AgentDriver, web: HttpFileServer, root: Path
) -> None:
    downloads = [
        {"url": web.url("small.txt"), "path": f"d/{i}/s.txt", "mode": 0o600 if i else None}
        for i in range(20)
    ]
    exited = agent.run_and_wait("dl", [SH, "-c", "cat d/*/s.txt | wc -l"], downloads=downloads)
    assert exited["exit_code"] == 0 and exited["error"] is None
    wd = root / "job" / "dl" / "wd"
    assert (root / "job" / "dl" / "stdout.txt").read_text().strip() == "20"
    assert oct((wd / "d/0/s.txt").stat().st_mode & 0o777) == oct(0o770)
    assert oct((wd / "d/1/s.txt").stat().st_mode & 0o777) == oct(0o600)
    assert not [p for p in wd.rglob("*.part-*")]  # written atomically: no leftovers


def test_a_symlink_cannot_lead_a_download_out_of_the_task(
    agent: AgentDriver, web: HttpFileServer, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    wd = root / "job" / "sym" / "wd"
    wd.mkdir(parents=True)
    (wd / "escape").symlink_to(outside)
    exited = agent.run_and_wait(
        "sym",
        ["true"],
        downloads=[{"url": web.url("small.txt"), "path": "escape/x.txt"}],
    )
    assert exited["error"]["code"] == "ResourceFileCreateFailed"
    assert exited["error"]["phase"] == "download"
    assert list(outside.iterdir()) == []


def test_a_download_that_would_fill_the_disk_fails_the_task_not_the_node(
    start_agent: Callable[..., AgentDriver], web: HttpFileServer, root: Path
) -> None:
    free = shutil.disk_usage(root).free
    # Leave the agent 1 MiB of "usable" space: the 4 MiB file does not fit.
    agent = start_agent(LocalNodeSource(agent_args=["--disk-reserve-bytes", str(free - (1 << 20))]))
    exited = agent.run_and_wait(
        "big", ["true"], downloads=[{"url": web.url("big.bin"), "path": "big.bin"}]
    )
    assert exited["error"]["code"] == "ResourceFileCreateFailed"
    assert "disk" in exited["error"]["message"]
    assert not (root / "job" / "big" / "wd" / "big.bin").exists()
    # The node still runs tasks.
    assert agent.run_and_wait("after", ["true"])["exit_code"] == 0


def test_kill_while_downloading_ends_the_run_without_starting_it(
    agent: AgentDriver, web: HttpFileServer
) -> None:
    agent.run(
        "slow",
        ["true"],
        downloads=[{"url": web.url("slow/small.txt"), "path": "s.txt"}],
        transfer_timeout_seconds=10,
    )
    agent.send(op="kill", key="slow")
    exited = agent.event("exited", "slow")
    assert exited["killed"] and exited["exit_code"] is None


def test_drain_waits_for_uploads(agent: AgentDriver, web: HttpFileServer) -> None:
    upload = {
        "pattern": "*.txt",
        "condition": "taskcompletion",
        "single": False,
        "base": "",
        "name": "drained",
        "target": {"method": "PUT", "url": web.url("up"), "headers": {}, "exact": False},
    }
    agent.run("up", [SH, "-c", "echo one > one.txt; echo two > two.txt"], uploads=[upload])
    agent.send(op="shutdown", mode="drain")
    exited = agent.event("exited", "up")
    assert exited["upload_error"] is None
    assert (web.directory / "put/up/drained/one.txt").read_text() == "one\n"
    assert (web.directory / "put/up/drained/two.txt").read_text() == "two\n"
    agent.event("bye")


def test_requests_with_escaping_upload_patterns_are_refused(agent: AgentDriver) -> None:
    bad = {"pattern": "../../x", "target": {"method": "PUT", "url": "http://127.0.0.1:9/"}}
    exited = agent.run_and_wait("bad", ["true"], uploads=[bad])
    assert exited["error"]["code"] == "OperationInvalid"
