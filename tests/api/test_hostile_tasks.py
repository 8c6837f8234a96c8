"""What a hostile task leaves behind cannot wedge or break the file API, through the official SDK.

One task fills its working directory with a FIFO, a dangling and a looping symlink, a symlink to
a file beside it, a hard link to ``/etc/passwd``, two hard links to one file of its own, and
files named with a newline and with invalid UTF-8. Every file request about them answers — a
clear 400 or 404, never a hang and never a 500 — and the service keeps answering meanwhile.
A task that leaves a background process behind, and a large ``stdout.txt`` served in ranges,
leave the service as responsive (and the server's memory bounded).

The server here runs its tasks unconfined (``confine_tasks=False``): what is under test is the
file API's own rules against whatever a task can leave, not the confinement, under which most of
these entries could not be made at all.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError

from prefect_batch.exceptions import BatchInvalidRequestError
from prefect_batch.remote import RemoteBatchService
from tests.api.conftest import Server, database, running_server, wait_for

POOL = "hostile"
JOB = "hostile"
# Runs with /bin/sh in the task's working directory.
HOSTILE = (
    "mkfifo pipe && ln -s nowhere dangling && ln -s loop loop && mkdir sub && "
    "echo ok > sub/ok.txt && ln -s sub/ok.txt inner && ln /etc/passwd pw && "
    "echo mine > own1 && ln own1 own2 && "
    "echo nl > \"$(printf 'new\\nline')\" && echo bad > \"$(printf 'bad\\377name')\""
)
ANSWER_WITHIN = 60.0
"""Generous: a request that has not answered by then is wedged (not slow)."""


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """SQLite only: nothing here depends on the store."""
    with database("sqlite", tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="module")
def server(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server whose tasks run unconfined (see the module's docstring)."""
    home = tmp_path_factory.mktemp("home")
    with running_server(store_url, home, settings={"confine_tasks": False}) as s:
        yield s


@pytest.fixture(scope="module")
def sdk(server: Server) -> Iterator[Any]:
    client = server.sdk()
    client.create_pool(
        models.BatchPoolCreateOptions(
            id=POOL, vm_size="local", target_dedicated_nodes=1, task_slots_per_node=2
        )
    )
    client.create_job(
        models.BatchJobCreateOptions(id=JOB, pool_info=models.BatchPoolInfo(pool_id=POOL))
    )
    yield client
    client.close()


def _run(sdk: Any, task_id: str, script: str) -> Any:
    sdk.create_task(
        JOB, models.BatchTaskCreateOptions(id=task_id, command_line=f"/bin/sh -c '{script}'")
    )
    done = wait_for(
        lambda: (t := sdk.get_task(JOB, task_id)).state == "completed" and t, timeout=60
    )
    assert done.execution_info.exit_code == 0, done.execution_info
    return done


@pytest.fixture(scope="module")
def node(sdk: Any, server: Server) -> Iterator[str]:
    """The node of the task that left the hostile entries in its ``wd``."""
    done = _run(sdk, "h", HOSTILE.replace("'", "'\"'\"'"))
    yield done.node_info.node_id
    for fifo in server.home.rglob("pipe"):  # a reader wedged on it (before the fix) ends
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass


def _download(sdk: Any, path: str, node: str | None = None, **kw: Any) -> bytes:
    if node is None:
        return b"".join(sdk.download_task_file(JOB, "h", path, **kw))
    return b"".join(sdk.download_node_file(POOL, node, f"{JOB}/h/{path}", **kw))


def _refused(call: Callable[[], Any]) -> int:
    """The status of the error ``call`` ends with (it must end with one)."""
    with pytest.raises(HttpResponseError) as info:
        call()
    return int(info.value.status_code or 0)


def _answers(sdk: Any, calls: list[Callable[[], Any]]) -> list[BaseException | None]:
    """Run ``calls`` at once; each must answer, while ``get_job`` keeps answering too."""
    results: list[BaseException | None] = [None] * len(calls)
    done = [threading.Event() for _ in calls]

    def run(i: int) -> None:
        try:
            calls[i]()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            results[i] = exc
        finally:
            done[i].set()

    for i in range(len(calls)):
        threading.Thread(target=run, args=(i,), daemon=True).start()
    assert sdk.get_job(JOB).id == JOB
    hung = [i for i, ev in enumerate(done) if not ev.wait(ANSWER_WITHIN)]
    return results if not hung else pytest.fail(f"file requests {hung} never answered")


def test_a_fifo_never_blocks_the_file_api(sdk: Any, node: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: _download(sdk, "wd/pipe"),
        lambda: _download(sdk, "wd/pipe", node),
        lambda: _download(sdk, "wd/pipe", ocp_range="bytes=0-9"),
        lambda: sdk.get_task_file_properties(JOB, "h", "wd/pipe"),
        lambda: sdk.get_node_file_properties(POOL, node, f"{JOB}/h/wd/pipe"),
    ] * 2
    for exc in _answers(sdk, calls):
        assert isinstance(exc, HttpResponseError), exc
        assert exc.status_code == 400, exc
    assert sdk.get_job(JOB).id == JOB


def test_recursive_listings_survive_dangling_and_looping_links(sdk: Any, node: str) -> None:
    tasks = {f.name: f for f in sdk.list_task_files(JOB, "h", recursive=True)}
    nodes = {f.name: f for f in sdk.list_node_files(POOL, node, recursive=True)}
    for name in ("wd/sub/ok.txt", "wd/own1", "wd/new\nline", "stdout.txt"):
        assert name in tasks, sorted(tasks)
        assert f"{JOB}/h/{name}" in nodes, sorted(nodes)
    # The links are listed as what they are on disk (not directories), never followed.
    for name in ("wd/dangling", "wd/loop", "wd/inner"):
        assert tasks[name].is_directory is False
    assert "wd/sub" in tasks and tasks["wd/sub"].is_directory
    # A name that is not UTF-8 cannot be named in a request: it is left out, not a 500.
    assert not [n for n in tasks if n.startswith("wd/bad")]


@pytest.mark.parametrize("name", ["wd/dangling", "wd/loop", "wd/inner"])
def test_links_are_never_followed(sdk: Any, node: str, name: str) -> None:
    assert _refused(lambda: _download(sdk, name)) == 400
    assert _refused(lambda: _download(sdk, name, node)) == 400
    assert _refused(lambda: sdk.get_task_file_properties(JOB, "h", name)) == 400


def test_a_hard_link_to_a_file_outside_is_refused(sdk: Any, node: str, server: Server) -> None:
    # The same over REST with the project's own client, which reads the error body.
    rest = RemoteBatchService(server.url, server.account.name, server.account.primary)
    try:
        with pytest.raises(BatchInvalidRequestError) as info:
            rest.get_task_file(JOB, "h", "wd/pw")
    finally:
        rest.close()
    assert info.value.code == "InvalidPropertyValue"
    assert "hard links" in info.value.message
    assert _refused(lambda: _download(sdk, "wd/pw")) == 400
    assert _refused(lambda: _download(sdk, "wd/pw", node)) == 400
    assert _refused(lambda: _download(sdk, "wd/pw", ocp_range="bytes=0-3")) == 400
    assert _refused(lambda: sdk.get_task_file_properties(JOB, "h", "wd/pw")) == 400
    # Two links to one file, both inside the task's directory: the task's own file, served.
    assert _download(sdk, "wd/own1") == b"mine\n"
    assert _download(sdk, "wd/own2", node) == b"mine\n"


def test_odd_names_are_served(sdk: Any, node: str) -> None:
    assert _download(sdk, "wd/new\nline") == b"nl\n"
    assert _download(sdk, "wd/sub/ok.txt") == b"ok\n"


def test_a_task_that_leaves_a_process_group_behind(sdk: Any, tmp_path: Path) -> None:
    pid_file = tmp_path / "bg.pid"
    # The background child keeps the task's stdout open and outlives it.
    _run(sdk, "forker", f"sleep 60 & echo $! > {pid_file}; echo forked")
    try:
        assert b"".join(sdk.download_task_file(JOB, "forker", "stdout.txt")) == b"forked\n"
        assert sdk.get_job(JOB).id == JOB
        # The node keeps running tasks.
        _run(sdk, "after", "echo next")
        assert b"".join(sdk.download_task_file(JOB, "after", "stdout.txt")) == b"next\n"
    finally:
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def _hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_large_stdout_is_served_in_ranges_with_bounded_memory(sdk: Any) -> None:
    mib = 64
    _run(sdk, "big", f"head -c {mib << 20} /dev/zero")
    sizes = {f.name: f.properties.content_length for f in sdk.list_task_files(JOB, "big")}
    assert sizes["stdout.txt"] == mib << 20
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS of this process
    before = _hwm_kib()
    size = 0
    for chunk in sdk.download_task_file(JOB, "big", "stdout.txt"):
        assert not chunk.strip(b"\0")
        size += len(chunk)
    assert size == mib << 20
    tail = b"".join(sdk.download_task_file(JOB, "big", "stdout.txt", ocp_range="bytes=-10"))
    assert tail == b"\0" * 10
    # Server and client share this process: the whole file never sat in memory at once.
    assert (_hwm_kib() - before) < (mib * 1024) // 2, (before, _hwm_kib())
    assert sdk.get_job(JOB).id == JOB
