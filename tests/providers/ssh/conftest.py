"""Real ``sshd`` servers on 127.0.0.2-4 and helpers to drive SSH node agents.

The servers (``prefect_batch.testing.sshd``) start once per session; a test that kills one
leaves it to :func:`servers` to start it again for the next test. Each test gets node roots of
its own under ``tmp_path`` (the loopback "hosts" share this machine's file system), and every
agent a test starts is killed with its tasks at the end. The EC2 tests get moto's server on
127.0.0.1 (``moto_url``, ``ec2``) and a guard that fails any connect off loopback
(``loopback_only``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from prefect_batch.providers.ssh import SSHAgentConnection, SSHNodeSource
from prefect_batch.testing.ec2 import REGION, moto_ec2
from prefect_batch.testing.ec2 import loopback_only as guard_loopback
from prefect_batch.testing.sshd import SSHServers, sshd_available

EVENT_TIMEOUT = 20.0


@pytest.fixture
def loopback_only() -> Iterator[list[str]]:
    """Fail on any IPv4/IPv6 connect that is not to loopback; yields the addresses refused."""
    with guard_loopback() as refused:
        yield refused


@pytest.fixture
def moto_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    with moto_ec2() as url:
        yield url


@pytest.fixture
def ec2(moto_url: str) -> Any:
    return boto3.client("ec2", region_name=REGION, endpoint_url=moto_url)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if sshd_available():
        return
    # Only a developer machine without openssh-server skips these: .ci/run installs it and
    # stops with an error if sshd is missing, so CI always runs them.
    skip = pytest.mark.skip(reason="needs openssh-server (/usr/sbin/sshd); .ci/run installs it")
    for item in items:
        if "needs_sshd" in item.fixturenames:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def _sshd_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServers]:
    servers = SSHServers(tmp_path_factory.mktemp("sshd"), count=3)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
def needs_sshd() -> None:
    """Marks tests that need a real sshd (skipped without openssh-server)."""


@pytest.fixture
def servers(needs_sshd: None, _sshd_session: SSHServers) -> SSHServers:
    """Three running sshd servers on 127.0.0.2, .3, .4 (restarted if a test killed one)."""
    for server in _sshd_session:
        if server.process is None or server.process.poll() is not None:
            server.start()
    return _sshd_session


class Events:
    """Every event of one agent connection, with bounded waits on them."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, msg: dict[str, Any]) -> None:
        with self._cond:
            self.events.append(msg)
            self._cond.notify_all()

    def wait_for(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = EVENT_TIMEOUT
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for ev in self.events:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no matching event within {timeout}s: {self.events}")
                self._cond.wait(left)

    def event(self, ev: str, key: str | None = None, **match: Any) -> dict[str, Any]:
        def pred(m: dict[str, Any]) -> bool:
            if m.get("ev") != ev or (key is not None and m.get("key") != key):
                return False
            return all(m.get(k) == v for k, v in match.items())

        return self.wait_for(pred)

    def matching(self, ev: str, key: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            return [m for m in self.events if m.get("ev") == ev and key in (None, m.get("key"))]


class Node:
    """An agent started over SSH plus its events."""

    def __init__(self, conn: SSHAgentConnection, events: Events) -> None:
        self.conn = conn
        self.events = events

    def send(self, **msg: Any) -> None:
        self.conn.send(msg)

    def hello(self) -> dict[str, Any]:
        self.send(op="hello", v=1, node_id=self.conn.node_id, pool_id="pool")
        return self.events.event("hello")

    def run(self, key: str, argv: list[str], **extra: Any) -> None:
        self.send(op="run", key=key, argv=argv, dir=f"job/{key}", **extra)


@pytest.fixture
def make_source(servers: SSHServers, tmp_path: Path) -> Callable[..., SSHNodeSource]:
    """``make_source(**group_overrides)``: a node source over the servers, roots in tmp_path."""

    def make(hosts: list[dict[str, Any]] | None = None, **overrides: Any) -> SSHNodeSource:
        if hosts is None:
            hosts = [s.host_config(root=str(tmp_path / s.address)) for s in servers]
        config = servers.group_config(hosts=hosts, **overrides)
        return SSHNodeSource(config)

    return make


@pytest.fixture
def start_node() -> Iterator[Callable[..., Node]]:
    """``start_node(source, node_id, host_id=None)``: start an agent; all killed at the end.

    Without ``host_id`` the node takes the group's first host that no running node this fixture
    started from the same source holds (as the source's ``place`` would).
    """
    nodes: list[tuple[SSHNodeSource, Node]] = []

    def start(source: SSHNodeSource, node_id: str = "node-1", host_id: str | None = None) -> Node:
        events = Events()
        if host_id is None:
            held = {n.conn.host.id for s, n in nodes if s is source and not n.conn.closed}
            free = [h.id for h in source.hosts if h.id not in held]
            assert free, "every host of the group runs a node of this test"
            host_id = free[0]
        conn = source.start_agent_on(host_id, node_id, events)
        node = Node(conn, events)
        nodes.append((source, node))
        return node

    yield start
    for _, node in nodes:
        if not node.conn.closed:
            node.conn.kill(tasks=True, grace_seconds=5)
            node.conn.wait(10)
