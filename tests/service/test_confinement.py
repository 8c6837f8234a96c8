"""Task confinement on local nodes: one account's task cannot reach the service or another account.

Two accounts share one store and one engine, as on a server. A task of account B tries to read
the store (``batch.db``, which holds every account's keys), the engine's ``/proc/<pid>/environ``,
the node files of A's pool and A's task output. With confinement on (``confine_tasks``; off by
default in this version) every read
fails with a permission error; with ``confine_tasks=False`` the same task reads them all, which
shows that the confinement is what stops it. A task asking for ``admin`` elevation is confined
too: a local node is the service's own machine, whose administrator reaches every account.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, PrefectBatchError
from prefect_batch.service.engine.confinement import confinement_unavailable, elevation_refusal
from prefect_batch.testing import wait_for_task

PROBE = r"""
import json, os, sys
found = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(16)
        found[name] = "read"
    except OSError as exc:
        found[name] = type(exc).__name__
print(json.dumps(found))
"""


def _stdout(home: Path, client: BatchClient, job: str, task: str) -> str:
    node = client.get_task(job, task).node_info.node_id
    return (home / "nodes" / node / job / task / "stdout.txt").read_text()


def _probe(
    home: Path, engine_client: BatchClient, confine: bool, *, admin: bool = False
) -> dict[str, str]:
    """A's task writes output; B's task then tries to read everything it must not."""
    a = engine_client
    a.create_pool({"id": "apool", "vmSize": "local", "targetDedicatedNodes": 1})
    a.create_job({"id": "ajob", "poolInfo": {"poolId": "apool"}})
    a.create_task("ajob", {"id": "secret", "commandLine": "echo A-private-output"})
    done = wait_for_task(a, "ajob", "secret", timeout=60)
    a_node_root = home / "nodes" / done.node_info.node_id
    assert "A-private-output" in _stdout(home, a, "ajob", "secret")
    b = BatchClient("accountb", home=home, engine=False, settings=a.settings)
    try:
        b.create_pool({"id": "bpool", "vmSize": "local", "targetDedicatedNodes": 1})
        b.create_job({"id": "bjob", "poolInfo": {"poolId": "bpool"}})
        targets = {
            "store": str(home / "batch.db"),
            "engine_environ": f"/proc/{os.getpid()}/environ",
            "other_pool_node": str(a_node_root / "shared"),
            "other_account_output": str(a_node_root / "ajob" / "secret" / "stdout.txt"),
        }
        task: dict = {
            "id": "probe",
            "commandLine": f"{sys.executable} -c '{PROBE}' '{json.dumps(targets)}'",
        }
        if admin:
            task["userIdentity"] = {"autoUser": {"elevationLevel": "admin"}}
        b.create_task("bjob", task)
        ended = wait_for_task(b, "bjob", "probe", timeout=60)
        assert ended.execution_info.exit_code == 0, ended.execution_info
        return json.loads(_stdout(home, b, "bjob", "probe"))
    finally:
        b.close()


# CI's kernel has Landlock, and under CI (CI=true) these tests never skip: without Landlock they
# run and fail. Only a developer machine without Landlock skips them.
needs_landlock = pytest.mark.skipif(
    confinement_unavailable() is not None and not os.environ.get("CI"),
    reason="this kernel offers no Landlock (a developer machine; CI never skips these)",
)


@needs_landlock
def test_a_task_cannot_reach_the_service_or_another_account(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    found = _probe(home, client_factory(home, confine_tasks=True), True)
    assert found == {
        "store": "PermissionError",
        "engine_environ": "PermissionError",
        "other_pool_node": "PermissionError",
        "other_account_output": "PermissionError",
    }


def test_without_confinement_the_same_task_reads_everything(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    found = _probe(home, client_factory(home, confine_tasks=False), False)
    assert set(found.values()) == {"read"}, found


@needs_landlock
def test_an_admin_task_is_confined_too(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    found = _probe(home, client_factory(home, confine_tasks=True), True, admin=True)
    assert set(found.values()) == {"PermissionError"}, found


@needs_landlock
def test_confining_a_task_leaves_the_agent_and_unconfined_runs_unrestricted(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    """Confined tasks are spawned from a thread that restricts itself: the agent's own threads
    and a later unconfined run (an embedded job manager, handed the store) keep their reach."""
    home = tmp_path / "home"
    client = client_factory(home, confine_tasks=True)
    client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    targets = json.dumps({"store": str(home / "batch.db")})
    probe = f"{sys.executable} -c '{PROBE}' '{targets}'"
    for i in range(3):
        client.create_task("j", {"id": f"t{i}", "commandLine": probe})
    for i in range(3):
        assert wait_for_task(client, "j", f"t{i}", timeout=60).execution_info.exit_code == 0
        assert json.loads(_stdout(home, client, "j", f"t{i}")) == {"store": "PermissionError"}
    client.create_job(
        {
            "id": "managed",
            "poolInfo": {"poolId": "p"},
            "jobManagerTask": {"id": "jm", "commandLine": probe, "killJobOnCompletion": False},
        }
    )
    manager = wait_for_task(client, "managed", "jm", timeout=60)
    assert manager.execution_info.exit_code == 0, manager.execution_info
    assert json.loads(_stdout(home, client, "managed", "jm")) == {"store": "read"}
    client.create_task("j", {"id": "after", "commandLine": probe})
    assert wait_for_task(client, "j", "after", timeout=60).execution_info.exit_code == 0
    assert json.loads(_stdout(home, client, "j", "after")) == {"store": "PermissionError"}


@needs_landlock
def test_a_confined_task_keeps_its_own_directories(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    client = client_factory(tmp_path / "home", confine_tasks=True)
    client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    script = (
        "import os, subprocess; "
        "open('wd.txt', 'w').write('x'); "
        "open(os.environ['TMPDIR'] + '/t', 'w').write('x'); "
        "open(os.environ['AZ_BATCH_NODE_SHARED_DIR'] + '/s', 'w').write('x'); "
        "print(subprocess.run(['/bin/ls', '/usr'], capture_output=True).returncode, "
        "open('/proc/self/status').readline() if False else 'ok')"
    )
    client.create_task("j", {"id": "t", "commandLine": f'{sys.executable} -c "{script}"'})
    ended = wait_for_task(client, "j", "t", timeout=60)
    assert ended.execution_info.exit_code == 0, ended.execution_info
    assert _stdout(tmp_path / "home", client, "j", "t").split() == ["0", "ok"]


def test_the_server_refuses_several_accounts_with_unconfined_tasks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect_batch.cli.server import _check_confinement
    from prefect_batch.testing import fast_settings

    off = fast_settings(tmp_path, confine_tasks=False)
    _check_confinement(off, 1, False)
    assert "run unconfined" in capsys.readouterr().err
    with pytest.raises(PrefectBatchError, match="--allow-unconfined-tasks"):
        _check_confinement(off, 2, False)
    _check_confinement(off, 2, True)  # the operator vouches for every task
    if confinement_unavailable() is None:
        capsys.readouterr()
        _check_confinement(fast_settings(tmp_path, confine_tasks=True), 2, False)
        assert capsys.readouterr().err == ""


def test_a_server_confines_by_default_and_an_embedded_client_does_not(tmp_path: Path) -> None:
    from prefect_batch.client import build_engine
    from prefect_batch.providers.kinds import LOCAL_NODE_AGENT_SKU
    from prefect_batch.service.engine.confinement import tasks_confined
    from prefect_batch.store import Store
    from prefect_batch.testing import fast_settings

    available = confinement_unavailable() is None
    assert tasks_confined(None, server=True) is available
    assert tasks_confined(None, server=False) is False
    assert tasks_confined(True, server=False) is True
    assert tasks_confined(False, server=True) is False
    settings = fast_settings(tmp_path / "home")
    assert settings.confine_tasks is None
    store = Store(settings.effective_database_url)
    try:
        for server, confined in ((True, available), (False, False)):
            engine = build_engine(store, settings, {}, server=server)
            local = engine.providers.own[LOCAL_NODE_AGENT_SKU]
            assert ("--confine" in local.agent_args) is confined
    finally:
        store.dispose()


def test_admin_elevation_is_refused_only_where_the_agent_is_not_root() -> None:
    admin = {"userIdentity": {"autoUser": {"elevationLevel": "admin"}}}
    nonadmin = {"userIdentity": {"autoUser": {"elevationLevel": "nonadmin"}}}
    refused = elevation_refusal(admin, 1000)["stage_error"]
    assert (refused["code"], refused["category"]) == ("ElevationNotAvailable", "usererror")
    assert "uid 1000" in refused["message"]
    assert elevation_refusal(admin, 0) == {}
    assert elevation_refusal(admin, None) == {}  # an agent that did not say
    assert elevation_refusal(nonadmin, 1000) == {}
    assert elevation_refusal({}, 1000) == {}
