"""``SSHNodeSource`` against real sshd servers on loopback: agents, host keys, disconnects."""

from __future__ import annotations

import shlex
import socket
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from prefect_batch.exceptions import AgentError, HostKeyError
from prefect_batch.providers.contract import PoolRef
from prefect_batch.providers.ssh import SSHNodeSource
from prefect_batch.testing.fixtures import gate_command, wait_until
from prefect_batch.testing.sshd import SSHServers, generate_key

from .conftest import Node

pytestmark = pytest.mark.timeout(120)

StartNode = Callable[..., Node]
MakeSource = Callable[..., SSHNodeSource]


def keygen_fingerprint(public_key_file: Path) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key_file)],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()[1]


def gated(gate: Path, then: str) -> list[str]:
    return shlex.split(gate_command(gate, then=then, limit_seconds=60))


def start_when_up(
    start_node: StartNode, source: SSHNodeSource, node_id: str, attempts: int = 50
) -> Node:
    """Start an agent, retrying while the host's sshd comes back (as the engine's backoff)."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return start_node(source, node_id)
        except AgentError as exc:
            last = exc
            threading.Event().wait(0.1)
    raise AssertionError(f"could not reconnect: {last}")


# -- agents over SSH ---------------------------------------------------------------------


def test_three_hosts_run_tasks_and_report_exits(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    source = make_source()
    pool = PoolRef(account="a", pool_id="p", vm_size="standard_d1", task_slots_per_node=1)
    placement = source.place(pool, ["node-0", "node-1", "node-2"], ())
    assert placement.error is None
    assert [s.machine_id for s in placement.slots] == [h.id for h in source.hosts]
    nodes = [start_node(source, s.node_id, s.machine_id) for s in placement.slots]
    for i, node in enumerate(nodes):
        hello = node.hello()
        assert hello["v"] == 1 and hello["root"] == str(tmp_path / servers[i].address)
        assert node.conn.root == hello["root"]
        assert node.conn.address == servers[i].address
        assert node.conn.pid == hello["pid"]
    for node in nodes:
        for k in range(20):
            node.run(
                f"t{k}",
                [
                    "/bin/sh",
                    "-c",
                    'echo "$AZ_BATCH_NODE_ROOT_DIR $AZ_BATCH_TASK_ID"; exit $1',
                    "sh",
                    str(k % 3),
                ],
                env={"AZ_BATCH_TASK_ID": f"t{k}"},
            )
    for i, node in enumerate(nodes):
        for k in range(20):
            exited = node.events.event("exited", f"t{k}")
            assert exited["exit_code"] == k % 3 and exited["error"] is None
        out = (tmp_path / servers[i].address / "job" / "t7" / "stdout.txt").read_text()
        assert out == f"{tmp_path / servers[i].address} t7\n"
    # A closed request stream drains: the agent exits 0 and the connection reports it.
    for node in nodes:
        node.conn.close()
        assert node.conn.wait(20) == 0
        closed = node.events.event("closed")
        assert "exit status 0" in closed["reason"]
        assert len(node.events.matching("closed")) == 1


def test_agent_is_shipped_once_and_replaced_when_it_changes(
    make_source: MakeSource, start_node: StartNode, tmp_path: Path, servers: SSHServers
) -> None:
    source = make_source()
    node = start_node(source)
    node.hello()
    agent_dir = tmp_path / servers[0].address / ".agent"
    (shipped,) = agent_dir.glob("agent-*.py")
    assert shipped.name == source._agent_name
    assert shipped.read_bytes() == source._agent_data
    first = shipped.stat()
    node.conn.close()
    assert node.conn.wait(20) == 0

    again = start_node(source)
    again.hello()
    assert shipped.stat().st_mtime_ns == first.st_mtime_ns and shipped.stat().st_ino == first.st_ino
    again.conn.close()
    assert again.conn.wait(20) == 0

    # A different agent (another version or hash) gets a file of its own; the old one stays.
    changed = make_source()
    changed._agent_name = "agent-0.0.0-0000000000000000.py"
    changed._agent_data = source._agent_data + b"\n# changed\n"
    third = start_node(changed)
    third.hello()
    assert sorted(p.name for p in agent_dir.glob("agent-*.py")) == sorted(
        [changed._agent_name, source._agent_name]
    )
    assert (agent_dir / changed._agent_name).read_bytes() == changed._agent_data


def test_remote_arguments_are_quoted(
    make_source: MakeSource, start_node: StartNode, tmp_path: Path, servers: SSHServers
) -> None:
    marker = tmp_path / "INJECTED"
    root = tmp_path / f"we ird $(touch {marker}) `touch {marker}` ';touch {marker};' \"x\""
    source = make_source(hosts=[servers[0].host_config(root=str(root))])
    node = start_node(source)
    assert node.hello()["root"] == str(root)
    node.run("k", ["/bin/true"])
    assert node.events.event("exited", "k")["exit_code"] == 0
    assert (root / "job" / "k" / "stdout.txt").exists()
    assert not marker.exists()


def test_home_relative_root_is_expanded_on_the_host(
    make_source: MakeSource, start_node: StartNode, servers: SSHServers
) -> None:
    home = Path.home()
    rel = f".pb-node-root-test-{uuid.uuid4().hex[:12]}"  # unique: test runs may overlap
    source = make_source(hosts=[servers[0].host_config(root=f"~/{rel}")])
    try:
        node = start_node(source)
        assert node.hello()["root"] == str(home / rel)
        assert node.conn.root == str(home / rel)
        node.conn.close()
        assert node.conn.wait(20) == 0
    finally:
        import shutil

        shutil.rmtree(home / rel, ignore_errors=True)


def test_missing_python_is_a_clear_error(make_source: MakeSource, start_node: StartNode) -> None:
    source = make_source(python="/nonexistent/python3")
    with pytest.raises(AgentError, match="no /nonexistent/python3 on this host"):
        start_node(source)


def test_kill_with_tasks_records_them_killed(
    make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    source = make_source()
    node = start_node(source)
    node.hello()
    node.run("long", gated(tmp_path / "never", "exit 0"))
    node.events.event("started", "long")
    node.conn.kill(tasks=True, grace_seconds=10)
    exited = node.events.event("exited", "long")
    assert exited["killed"] is True
    node.events.event("closed")


# -- host keys ---------------------------------------------------------------------------


def test_wrong_pinned_key_is_refused_naming_host_and_fingerprint(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode
) -> None:
    target, other = servers[0], servers[1]
    hosts = [target.host_config(host_key=other.host_public_key)]
    source = make_source(hosts=hosts)
    with pytest.raises(HostKeyError) as info:
        start_node(source)
    err = info.value
    offered = keygen_fingerprint(target.host_key_path.with_suffix(".pub"))
    expected = keygen_fingerprint(other.host_key_path.with_suffix(".pub"))
    assert err.reason == "changed"
    assert err.host == target.known_hosts_name
    assert err.fingerprint == offered and err.expected == [expected]
    assert target.known_hosts_name in str(err) and offered in str(err) and expected in str(err)


def test_unknown_key_is_refused_and_nothing_is_recorded(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(servers[1].known_hosts_line + "\n")  # another host only
    target = servers[0]
    source = make_source(
        hosts=[{"address": target.address, "port": target.port, "user": target.user}],
        known_hosts=str(known),
    )
    with pytest.raises(HostKeyError) as info:
        start_node(source)
    offered = keygen_fingerprint(target.host_key_path.with_suffix(".pub"))
    assert info.value.reason == "unknown" and info.value.fingerprint == offered
    assert offered in str(info.value) and target.known_hosts_name in str(info.value)
    assert known.read_text() == servers[1].known_hosts_line + "\n"


def test_known_hosts_file_with_hashed_names_is_accepted(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(servers.known_hosts_text())
    subprocess.run(
        ["ssh-keygen", "-H", "-f", str(known)], check=True, capture_output=True, timeout=30
    )
    assert servers[0].address not in known.read_text()
    hosts = [
        {"address": s.address, "port": s.port, "user": s.user, "root": str(tmp_path / s.address)}
        for s in servers
    ]
    source = make_source(hosts=hosts, known_hosts=str(known))
    for i, host in enumerate(source.hosts):
        node = start_node(source, f"n{i}", host.id)
        node.hello()


def test_known_hosts_with_a_different_key_is_refused(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    target, other = servers[0], servers[1]
    known.write_text(f"{target.known_hosts_name} {other.host_public_key}\n")
    source = make_source(
        hosts=[{"address": target.address, "port": target.port, "user": target.user}],
        known_hosts=str(known),
        trust_on_first_use=True,
    )  # TOFU never overrides a changed key
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        start_node(source)
    assert info.value.reason == "changed"
    assert str(known) in str(info.value)


def test_trust_on_first_use_records_the_key_once(
    servers: SSHServers,
    make_source: MakeSource,
    start_node: StartNode,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    known = tmp_path / "ssh" / "known_hosts"
    target = servers[0]
    hosts = [
        {
            "address": target.address,
            "port": target.port,
            "user": target.user,
            "root": str(tmp_path / "root"),
        }
    ]
    tofu = make_source(hosts=hosts, known_hosts=str(known), trust_on_first_use=True)
    with caplog.at_level("WARNING", logger="prefect_batch.providers.hostkeys"):
        start_node(tofu, "n1").hello()
    offered = keygen_fingerprint(target.host_key_path.with_suffix(".pub"))
    assert any(offered in r.getMessage() for r in caplog.records)
    lines = known.read_text().splitlines()
    assert lines == [target.known_hosts_line]
    # Recorded once: later connections (and groups without TOFU) verify against it.
    start_node(tofu, "n2", tofu.hosts[0].id).hello()
    strict = make_source(hosts=hosts, known_hosts=str(known))
    start_node(strict, "n3").hello()
    assert known.read_text().splitlines() == lines


# -- failures are quick and clear --------------------------------------------------------


def test_unreachable_host_is_a_clear_error(make_source: MakeSource, servers: SSHServers) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.5", 0))
        port = s.getsockname()[1]
    host = {
        "address": "127.0.0.5",
        "port": port,
        "user": servers[0].user,
        "host_key": servers[0].host_public_key,
    }
    source = make_source(hosts=[host], connect_timeout_seconds=2)
    with pytest.raises(AgentError, match=f"cannot connect to .*127.0.0.5:{port}"):
        source.start_agent_on(source.hosts[0].id, "n", lambda m: None)


def test_silent_host_times_out_within_the_connect_timeout(
    make_source: MakeSource, servers: SSHServers
) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.6", 0))
    listener.listen(4)  # accepts TCP, never speaks SSH
    port = listener.getsockname()[1]
    try:
        host = {
            "address": "127.0.0.6",
            "port": port,
            "user": servers[0].user,
            "host_key": servers[0].host_public_key,
        }
        source = make_source(hosts=[host], connect_timeout_seconds=0.5)
        with pytest.raises(AgentError, match="cannot connect to"):
            source.start_agent_on(source.hosts[0].id, "n", lambda m: None)
    finally:
        listener.close()


def test_key_not_authorized_is_a_clear_error(make_source: MakeSource, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    generate_key(stranger)
    source = make_source(private_key_path=str(stranger))
    fp = keygen_fingerprint(stranger.with_name("stranger.pub"))
    with pytest.raises(AgentError, match="authentication as .* failed") as info:
        source.start_agent_on(source.hosts[0].id, "n", lambda m: None)
    assert fp in str(info.value) and not isinstance(info.value, HostKeyError)


def test_private_key_text_works_like_a_file(
    make_source: MakeSource, start_node: StartNode, servers: SSHServers
) -> None:
    text = servers.client_key_path.read_text()
    source = make_source(private_key_path=None, private_key=text)
    start_node(source).hello()


# -- disconnects -------------------------------------------------------------------------


def test_sshd_killed_mid_task_then_restarted_result_is_collected(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    source = make_source()
    node = start_node(source, "node-1")
    node.hello()
    gate = tmp_path / "gate"
    node.run("t1-1", gated(gate, "echo finished; exit 7"))
    node.run("quick", ["/bin/true"])
    node.events.event("exited", "quick")
    node.events.event("started", "t1-1")
    host = node.conn.host
    server = next(s for s in servers if s.address == host.address)

    server.kill()  # the listener and the session's sshd die; the agent sees its stdin close
    node.events.event("closed")
    gate.touch()  # the task ends while no connection exists
    root = tmp_path / server.address
    record = root / ".agent" / "runs" / "t1-1.json"
    assert wait_until(lambda: '"end_time"' in _read(record), timeout=20)

    server.start()
    again = start_when_up(start_node, source, "node-1")
    again.hello()
    again.send(op="recover", keys=["t1-1", "quick", "never-sent"])
    exited = again.events.event("exited", "t1-1")
    assert exited["recovered"] is True and exited["exit_code"] == 7
    assert again.events.event("exited", "quick")["exit_code"] == 0
    assert again.events.event("lost", "never-sent")
    assert (root / "job" / "t1-1" / "stdout.txt").read_text() == "finished\n"
    assert not again.events.matching("lost", "t1-1")


def test_reconnect_while_the_old_agent_still_runs_the_task(
    servers: SSHServers, make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    source = make_source()
    node = start_node(source, "node-1")
    node.hello()
    gate = tmp_path / "gate"
    node.run("t2-1", gated(gate, "exit 5"))
    node.events.event("started", "t2-1")
    server = servers[0]
    server.kill()
    node.events.event("closed")
    old_pid = node.conn.pid
    assert old_pid is not None and _alive(old_pid)  # draining, still supervising its task

    server.start()
    again = start_when_up(start_node, source, "node-1")
    again.hello()
    again.send(op="recover", keys=["t2-1"])
    again.events.event("adopted", "t2-1")
    gate.touch()
    exited = again.events.event("exited", "t2-1")
    assert exited["exit_code"] == 5 and exited["recovered"] is True
    assert wait_until(lambda: not _alive(old_pid), timeout=20)  # the drained agent exits


def test_agent_killed_its_task_is_lost(
    make_source: MakeSource, start_node: StartNode, tmp_path: Path
) -> None:
    source = make_source()
    node = start_node(source, "node-1")
    node.hello()
    gate = tmp_path / "gate"
    node.run("t3-1", gated(gate, "exit 0"))
    node.events.event("started", "t3-1")
    pid = node.conn.pid
    node.conn.kill()  # SIGKILL on the host through a second channel; the task lives on
    node.events.event("closed")
    assert pid is not None and wait_until(lambda: not _alive(pid), timeout=20)

    again = start_node(source, "node-1")
    again.hello()
    again.send(op="recover", keys=["t3-1"])
    again.events.event("adopted", "t3-1")
    gate.touch()
    lost = again.events.event("lost", "t3-1")
    assert "exit code is unknown" in lost["reason"]
    assert not again.events.matching("exited", "t3-1")


def test_many_tasks_in_flight_over_one_connection(
    make_source: MakeSource, start_node: StartNode
) -> None:
    source = make_source()
    node = start_node(source)
    node.hello()
    msgs: list[dict[str, Any]] = [
        {"op": "run", "key": f"m{i}", "argv": ["/bin/true"], "dir": f"job/m{i}"} for i in range(300)
    ]
    for start in range(0, len(msgs), 50):
        node.conn.send_many(msgs[start : start + 50])
    for i in range(300):
        assert node.events.event("exited", f"m{i}")["exit_code"] == 0


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return False
    return data[data.rfind(b")") + 2 :].split()[0] not in (b"Z", b"X")
