"""The agent's spot notices (IMDSv2, a fake on loopback) and its orphan timeout.

No test reaches 169.254.169.254: every poller and agent here is given a fake IMDS's loopback
URL, and every orphan command writes a marker file (none shuts anything down).
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_batch.agent.agent import ImdsError, ImdsPoller
from prefect_batch.providers import LocalNodeSource
from prefect_batch.testing.imds import INSTANCE_ACTION, REBALANCE, FakeIMDS

from .driver import AgentDriver, wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN_PUT = ("PUT", "/latest/api/token")


@pytest.fixture
def imds() -> Iterator[FakeIMDS]:
    with FakeIMDS() as fake:
        yield fake


# --------------------------------------------------------------------------- the poller


def test_the_poller_uses_a_token_and_a_404_is_no_notice(imds: FakeIMDS) -> None:
    poller = ImdsPoller(imds.url, timeout=5)
    assert poller.poll() == []
    assert poller.poll() == []
    assert imds.count(*TOKEN_PUT) == 1  # one token for every request while it is valid
    put = imds.requests[0]
    assert put[:2] == TOKEN_PUT
    assert put[2]["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"
    gets = [r for r in imds.requests if r[0] == "GET"]
    assert {p for _, p, _ in gets} == {INSTANCE_ACTION, REBALANCE}
    assert {h["x-aws-ec2-metadata-token"] for _, _, h in gets} == {imds.tokens[0]}


def test_a_notice_is_reported_once_while_it_stays_the_same(imds: FakeIMDS) -> None:
    poller = ImdsPoller(imds.url, timeout=5)
    assert poller.poll() == []
    imds.interrupt("terminate", "2026-05-01T10:02:00Z")
    (notice,) = poller.poll()
    assert notice == {
        "ev": "spot_notice",
        "notice": "interruption",
        "detail": {"action": "terminate", "time": "2026-05-01T10:02:00Z"},
        "action": "terminate",
        "at": "2026-05-01T10:02:00Z",
    }
    assert poller.poll() == []
    imds.rebalance("2026-05-01T10:00:00Z")
    (rebalance,) = poller.poll()
    assert (rebalance["notice"], rebalance["at"]) == ("rebalance", "2026-05-01T10:00:00Z")
    imds.interrupt("stop", "2026-05-01T10:05:00Z")  # changed: reported again
    (changed,) = poller.poll()
    assert (changed["notice"], changed["action"]) == ("interruption", "stop")


def test_a_refused_token_is_fetched_again_once(imds: FakeIMDS) -> None:
    poller = ImdsPoller(imds.url, timeout=5)
    poller.poll()
    imds.revoke_tokens()
    assert poller.poll() == []
    assert imds.count(*TOKEN_PUT) == 2
    assert poller.token == imds.tokens[1]
    imds.set_notice(INSTANCE_ACTION, {"action": "terminate", "time": "t"})
    assert [n["notice"] for n in poller.poll()] == ["interruption"]


def test_an_error_status_raises_and_the_next_poll_recovers(imds: FakeIMDS) -> None:
    poller = ImdsPoller(imds.url + "/nowhere", timeout=5)  # the token path is a 404 there
    with pytest.raises(ImdsError, match="HTTP 404"):
        poller.poll()
    poller.base = imds.url
    assert poller.poll() == []


def test_a_server_that_never_answers_is_bounded_by_the_timeout() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connects are accepted by the kernel; nothing ever answers
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(silent.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        poller = ImdsPoller(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.3)
        outcome: list[BaseException] = []

        def poll() -> None:
            try:
                poller.poll()
            except BaseException as exc:  # noqa: BLE001 - kept for the assertion below
                outcome.append(exc)

        worker = threading.Thread(target=poll, daemon=True)
        worker.start()
        worker.join(30)  # generous: the poller's own timeout is 0.3 s
        assert not worker.is_alive(), "the poll did not give up"
        assert len(outcome) == 1 and isinstance(outcome[0], ImdsError), outcome
        assert "timed out" in str(outcome[0])
    finally:
        stop.set()
        thread.join(5)
        for conn in accepted:
            conn.close()
        silent.close()


def test_a_refused_connection_is_an_imds_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ImdsError):
        ImdsPoller(f"http://127.0.0.1:{port}", timeout=2).poll()


# --------------------------------------------------------------------------- in the agent


def test_the_agent_emits_a_spot_notice_unsolicited(
    imds: FakeIMDS, start_agent: Callable[..., AgentDriver]
) -> None:
    args = ["--imds-url", imds.url, "--imds-poll-seconds", "0.1"]
    agent = start_agent(LocalNodeSource(agent_args=args))
    assert wait_until(lambda: imds.count("GET", INSTANCE_ACTION) >= 2)
    assert agent.matching("spot_notice") == []
    imds.interrupt()
    notice = agent.event("spot_notice", notice="interruption")
    assert notice["action"] == "terminate"
    imds.rebalance()
    agent.event("spot_notice", notice="rebalance")
    gets = imds.count("GET", INSTANCE_ACTION)
    assert wait_until(lambda: imds.count("GET", INSTANCE_ACTION) >= gets + 3)
    assert len(agent.matching("spot_notice")) == 2  # each once
    agent.ping()  # the loop still answers


def test_without_an_imds_url_the_agent_asks_nothing(
    imds: FakeIMDS, start_agent: Callable[..., AgentDriver]
) -> None:
    agent = start_agent()
    agent.ping()
    assert imds.requests == []


# --------------------------------------------------------------------------- orphan timeout


def _orphan_source(marker: Path, timeout: float) -> LocalNodeSource:
    command = f"{sys.executable} -c \"open('{marker}', 'a').write('x')\""
    return LocalNodeSource(
        agent_args=["--orphan-timeout-seconds", str(timeout), "--orphan-command", command]
    )


class Pinger:
    """Pings an agent every ``interval`` seconds on a thread, until stopped."""

    def __init__(self, agent: AgentDriver, interval: float = 0.1) -> None:
        self.agent = agent
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.agent.send(op="ping")
            except Exception:  # noqa: BLE001 - the agent went away; the test says why
                return

    def pongs(self) -> int:
        return len(self.agent.matching("pong"))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def test_a_silent_service_orphans_the_agent_and_one_that_pings_does_not(
    start_agent: Callable[..., AgentDriver], tmp_path: Path
) -> None:
    silent_marker, pinged_marker = tmp_path / "silent", tmp_path / "pinged"
    silent_root, pinged_root = tmp_path / "a", tmp_path / "b"
    silent = start_agent(_orphan_source(silent_marker, 1.5), silent_root)
    pinged = start_agent(_orphan_source(pinged_marker, 1.5), pinged_root)
    pinger = Pinger(pinged)
    try:
        silent.run("long", ["sleep", "600"])
        silent.event("started", "long")
        # The silent one: its task killed, then the command, then it exits.
        assert silent.event("exited", "long")["killed"] is True
        assert silent.event("bye")["reason"] == "orphan"
        assert silent.conn.wait(30) == 0
        assert silent_marker.read_text() == "x"
        # The pinged one, started at the same time with the same timeout, lives on: for
        # twice the timeout again (counted in pongs, 0.1 s apart).
        seen = pinger.pongs()
        assert wait_until(lambda: pinger.pongs() >= seen + 30, timeout=60)
        assert not pinged_marker.exists()
        assert pinged.conn.process.poll() is None
        assert pinged.matching("bye") == []
    finally:
        pinger.close()


def test_a_draining_agent_counts_the_contact_of_the_next_agent_on_its_root(
    start_agent: Callable[..., AgentDriver], tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    old = start_agent(_orphan_source(marker, 1.5))
    old.run("long", ["sleep", "600"])
    old.event("started", "long")
    old.conn.channel.close()  # the session dropped: the old agent drains, supervising "long"
    new = start_agent(_orphan_source(marker, 1.5))
    pinger = Pinger(new)
    try:
        assert wait_until(lambda: pinger.pongs() >= 40, timeout=60)  # 4 s, over twice 1.5 s
        assert not marker.exists()
        assert old.conn.process.poll() is None  # still supervising its task
        pinger.close()
        # Nobody hears from the service any more: both give up, the old one killing its task.
        assert wait_until(lambda: old.conn.process.poll() is not None, timeout=60)
        assert wait_until(lambda: new.conn.process.poll() is not None, timeout=60)
        assert marker.read_text() == "xx"
        assert new.event("bye")["reason"] == "orphan"
    finally:
        pinger.close()
    records = (old.root / ".agent" / "runs" / "long.json").read_text()
    assert '"killed": true' in records or '"killed":true' in records
