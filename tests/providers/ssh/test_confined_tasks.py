"""Tasks on SSH nodes are confined (``confineTasks``, on by default): real sshd on 127.0.0.2-4.

The loopback "hosts" log in as the current user, so the SSH user's home is this user's home: a
directory made there for the test (removed at the end) stands for ``~/.ssh``. A confined task
reads neither it nor the home, the node root's agent state or the agent's ``/proc`` entries,
and still writes its own directories; the same task on an unconfined group reads them, which
shows the confinement is what stops it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_batch import BatchInvalidRequestError
from prefect_batch.providers.contract import NodeRef
from prefect_batch.providers.ssh import SSHNodeSource
from prefect_batch.providers.sshkind import validate_registration
from prefect_batch.service.engine.confinement import unconfined_errors
from prefect_batch.testing import embedded_client, wait_for_nodes, wait_for_task
from prefect_batch.testing.sshd import SSHServers

from .conftest import Node

pytestmark = pytest.mark.timeout(180)

PROBE = """
import json, os, sys, tempfile
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read()
        out[name] = "read"
    except OSError as exc:
        out[name] = type(exc).__name__
for name, where in (("task_dir", os.environ["AZ_BATCH_TASK_DIR"]),
                    ("tmpdir", tempfile.gettempdir())):
    try:
        with tempfile.NamedTemporaryFile("w", dir=where) as f:
            f.write("x")
        out[name] = "written"
    except OSError as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
"""


@pytest.fixture
def home_secret() -> Iterator[Path]:
    """A file in a directory of the SSH user's home (the loopback hosts' user is this one)."""
    where = Path(tempfile.mkdtemp(prefix=".prefect-batch-confine-test-", dir=Path.home()))
    secret = where / "id_ed25519"
    secret.write_text("not a key\n")
    try:
        yield secret
    finally:
        shutil.rmtree(where, ignore_errors=True)


def _targets(secret: Path, root: Path, agent_pid: int) -> dict[str, str]:
    return {
        "home_secret": str(secret),
        "home": str(Path.home()),
        "agent_state": str(root / ".agent" / "agent.log"),
        "agent_environ": f"/proc/{agent_pid}/environ",
    }


def _pool(client: Any, servers: SSHServers, hosts_dir: Path, **group: Any) -> None:
    hosts = [s.host_config(root=str(hosts_dir / s.address)) for s in servers]
    client.create_node_source(servers.group_config(name="lab", hosts=hosts, **group))
    client.create_pool(
        {
            "id": "p",
            "vmSize": "ssh",
            "targetDedicatedNodes": 1,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": "lab"},
                "nodeAgentSKUId": "batch.node.ssh.lab",
            },
        }
    )


@pytest.mark.parametrize("confine", [True, False, None], ids=["confined", "unconfined", "default"])
def test_a_task_on_an_ssh_pool_reaches_only_its_own_directories_when_confined(
    servers: SSHServers, tmp_path: Path, home_secret: Path, confine: bool | None
) -> None:
    hosts_dir = tmp_path / "hosts"
    with embedded_client(tmp_path / "home") as client:
        _pool(client, servers, hosts_dir, **({} if confine is None else {"confineTasks": confine}))
        (node,) = wait_for_nodes(client, "p", 1, timeout=60)
        assert not node.errors  # this kernel confines: no "tasks unconfined"
        root = hosts_dir / node.ip_address
        targets = _targets(home_secret, root, _agent_pid(root))
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        # ``python3`` by name: the host's interpreter, found in the login PATH, runs confined.
        client.create_task(
            "j", {"id": "probe", "commandLine": f"python3 -c '{PROBE}' '{json.dumps(targets)}'"}
        )
        task = wait_for_task(client, "j", "probe", timeout=60)
        assert task.execution_info.exit_code == 0, client.get_task_file("j", "probe", "stderr.txt")
        seen = json.loads(client.get_task_file("j", "probe", "stdout.txt"))
    assert seen["task_dir"] == seen["tmpdir"] == "written"
    if confine is False:
        assert seen["home_secret"] == seen["home"] == seen["agent_state"] == "read"
        # The agent is not dumpable: only root (CAP_SYS_PTRACE) reads its environ unconfined.
        assert seen["agent_environ"] == ("read" if os.geteuid() == 0 else "PermissionError")
    else:
        assert seen == {
            "home_secret": "PermissionError",
            "home": "PermissionError",
            "agent_state": "PermissionError",
            "agent_environ": "PermissionError",
            "task_dir": "written",
            "tmpdir": "written",
        }


def _agent_pid(root: Path) -> int:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(b"/.agent/agent-" in a for a in argv) and str(root).encode() in argv:
                return int(proc.name)
    raise AssertionError(f"no agent serving {root}")


def test_a_confined_ssh_agent_says_so_in_its_hello(
    make_source: Callable[..., SSHNodeSource], start_node: Callable[..., Node]
) -> None:
    confined = start_node(make_source()).hello()
    assert confined["confined"] is True and "unconfined" not in confined
    assert unconfined_errors(confined) is None
    source = make_source(confineTasks=False)
    plain = start_node(source, "node-2", source.hosts[1].id).hello()
    assert plain["confined"] is False and "unconfined" not in plain


@pytest.mark.parametrize("value", ["true", 1, None])
def test_confine_tasks_must_be_a_boolean(servers: SSHServers, value: Any) -> None:
    group = servers.group_config(name="lab", confineTasks=value)
    if value is None:  # a null is the default (fields given as None are left out)
        assert validate_registration(group)["confine_tasks"] is True
        return
    with pytest.raises(BatchInvalidRequestError) as info:
        validate_registration(group)
    assert info.value.values["PropertyName"] == "confineTasks"


def test_a_group_stores_confine_tasks_and_its_agents_get_confinement_options(
    servers: SSHServers,
) -> None:
    stored = validate_registration(servers.group_config(name="lab", confineTasks=False))
    assert stored["confine_tasks"] is False
    assert "--confine" not in SSHNodeSource(stored).launcher_command("~/r")
    command = SSHNodeSource(validate_registration(servers.group_config(name="lab")))
    words = command.launcher_command("~/r").split()
    assert words[-6:] == [
        "--confine",
        "--confine-optional",
        "--protect",
        "'~'",
        "--protect",
        "'~/r'",
    ]


def test_ec2_instances_agents_are_confined_unless_the_template_says_not(tmp_path: Path) -> None:
    from prefect_batch.providers.contract import MemoryRecords
    from prefect_batch.providers.ec2 import EC2Provider, EC2Template, validate_registration

    known = tmp_path / "known_hosts"
    known.write_text("")
    spec = {
        "name": "e",
        "amiId": "ami-1",
        "instanceType": "t3.micro",
        "endpointUrl": "http://127.0.0.1:9",
        "privateKeyPath": str(tmp_path / "key"),
        "knownHosts": str(known),
    }
    node = NodeRef(account="a", pool_id="p", node_id="n", root="~/.prefect-batch-node/n")
    record = {"instanceId": "i-1"}
    for extra, confined in (
        ({}, True),
        ({"confineTasks": True}, True),
        ({"confineTasks": False}, False),
    ):
        template = EC2Template.model_validate({**spec, **extra})
        assert template.confine_tasks is confined
        provider = EC2Provider("batch.node.ec2.e", template, "a", MemoryRecords())
        group = provider._ssh_group(node, record, "127.0.0.2", 22)
        command = SSHNodeSource(group).launcher_command(node.root)
        assert ("--confine" in command.split()) is confined
    with pytest.raises(BatchInvalidRequestError) as info:
        validate_registration({**spec, "confineTasks": "yes"})
    assert info.value.values["PropertyName"] == "confineTasks"


WITHOUT_LANDLOCK = """#!{python}
# Runs the node agent as on a host whose kernel has no Landlock (its Confinement cannot be
# built): the launcher calls this as ``python -I agent.py --root ...``.
import errno, runpy, sys

args = [a for a in sys.argv[1:] if a != "-I"]
ns = runpy.run_path(args[0], run_name="agent")


def refuse(*_):
    raise OSError(errno.ENOSYS, "Landlock is not available on this kernel")


ns["Confinement"].__init__ = refuse
sys.exit(ns["main"](args[1:]))
"""


def test_a_host_without_landlock_runs_tasks_unconfined_and_its_node_says_so(
    servers: SSHServers,
    tmp_path: Path,
    home_secret: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    python = tmp_path / "python-without-landlock"
    python.write_text(WITHOUT_LANDLOCK.format(python=sys.executable))
    python.chmod(0o755)
    hosts_dir = tmp_path / "hosts"
    caplog.set_level(logging.WARNING, logger="prefect_batch.engine")
    with embedded_client(tmp_path / "home") as client:
        _pool(client, servers, hosts_dir, python=str(python))  # confineTasks by default
        (node,) = wait_for_nodes(client, "p", 1, timeout=60)
        ((code, message),) = [(e.code, e.message) for e in node.errors or []]
        assert code == "TasksUnconfined"
        assert message.startswith("tasks unconfined: cannot confine tasks on ")
        assert message.endswith(": Landlock is not available on this kernel")
        assert any(message in r.getMessage() for r in caplog.records)
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        targets = {"home_secret": str(home_secret)}
        client.create_task(
            "j", {"id": "probe", "commandLine": f"python3 -c '{PROBE}' '{json.dumps(targets)}'"}
        )
        task = wait_for_task(client, "j", "probe", timeout=60)
        assert task.execution_info.exit_code == 0
        assert json.loads(client.get_task_file("j", "probe", "stdout.txt"))["home_secret"] == "read"
