"""``AgentChannel`` framing over plain pipes and line-only streams, without an agent."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from typing import Any

import pytest

from prefect_batch.exceptions import AgentError
from prefect_batch.providers import AgentChannel

pytestmark = pytest.mark.timeout(30)


class Collector:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.cond = threading.Condition()

    def __call__(self, msg: dict[str, Any]) -> None:
        with self.cond:
            self.events.append(msg)
            self.cond.notify_all()

    def wait_closed(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(e.get("ev") == "closed" for e in self.events):
                left = deadline - time.monotonic()
                assert left > 0, self.events
                self.cond.wait(left)
            return list(self.events)


def pipe_pair() -> tuple[Any, Any]:
    r, w = os.pipe()
    return os.fdopen(r, "rb"), os.fdopen(w, "wb")


def test_events_are_parsed_split_across_writes_and_closed_once() -> None:
    events = Collector()
    agent_out_r, agent_out_w = pipe_pair()
    agent_in_r, agent_in_w = pipe_pair()
    channel = AgentChannel("n1", agent_in_w, agent_out_r, events)
    agent_out_w.write(b'{"ev":"hello","v":1}\n{"ev":"sta')
    agent_out_w.flush()
    agent_out_w.write(b'rted","key":"k"}\nnot json\n[1]\n\n{"ev":"last"}')  # no final newline
    agent_out_w.close()
    seen = events.wait_closed()
    assert [e["ev"] for e in seen] == ["hello", "started", "last", "closed"]
    assert seen[-1]["reason"] == "eof"
    assert channel.closed and channel.wait_closed(1)
    time.sleep(0.1)
    assert [e["ev"] for e in events.events].count("closed") == 1

    channel.send({"op": "ping"})
    channel.send_many([{"op": "a"}, {"op": "b"}])
    channel.send_many([])
    channel.close()
    channel.close()  # idempotent
    lines = agent_in_r.read().splitlines()
    assert [json.loads(line)["op"] for line in lines] == ["ping", "a", "b"]
    with pytest.raises(AgentError):
        channel.send({"op": "late"})


def test_send_many_is_one_write() -> None:
    class Recorder(io.RawIOBase):
        def __init__(self) -> None:
            self.writes: list[bytes] = []

        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            self.writes.append(bytes(data))
            return len(data)

    out_r, out_w = pipe_pair()
    sink = Recorder()
    channel = AgentChannel("n1", sink, out_r, Collector())
    channel.send_many([{"op": "run", "key": str(i)} for i in range(50)])
    assert len(sink.writes) == 1 and sink.writes[0].count(b"\n") == 50
    out_w.close()
    assert channel.wait_closed(5)


def test_concurrent_senders_never_interleave_lines() -> None:
    agent_out_r, agent_out_w = pipe_pair()
    agent_in_r, agent_in_w = pipe_pair()
    channel = AgentChannel("n1", agent_in_w, agent_out_r, Collector())
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.extend(agent_in_r.read().splitlines()))
    reader.start()

    def send(tag: str) -> None:
        for i in range(200):
            channel.send_many([{"op": "run", "key": f"{tag}{i}", "argv": ["x" * 500]}] * 3)

    threads = [threading.Thread(target=send, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    channel.close()
    reader.join(10)
    assert len(received) == 4 * 200 * 3
    assert all(json.loads(line)["op"] == "run" for line in received)
    agent_out_w.close()


def test_readline_only_streams_work() -> None:
    """Streams without ``read1`` (like a paramiko ChannelFile) are read line by line."""

    class LineStream:
        def __init__(self, data: bytes) -> None:
            self._lines = io.BytesIO(data)

        def readline(self) -> bytes:
            return self._lines.readline()

    events = Collector()
    AgentChannel("n1", io.BytesIO(), LineStream(b'{"ev":"a"}\n{"ev":"b"}\n'), events)
    assert [e["ev"] for e in events.wait_closed()] == ["a", "b", "closed"]


def test_read_errors_close_the_channel_with_a_reason() -> None:
    class Broken:
        def read1(self, n: int) -> bytes:
            raise OSError("connection reset")

    events = Collector()
    AgentChannel("n1", io.BytesIO(), Broken(), events)
    closed = events.wait_closed()[-1]
    assert "connection reset" in closed["reason"]


def test_a_failing_handler_does_not_stop_the_reader() -> None:
    seen: list[str] = []
    done = threading.Event()

    def on_event(msg: dict[str, Any]) -> None:
        seen.append(msg["ev"])
        if msg["ev"] == "closed":
            done.set()
        if msg["ev"] == "boom":
            raise RuntimeError("handler bug")

    AgentChannel(
        "n1", io.BytesIO(), io.BufferedReader(io.BytesIO(b'{"ev":"boom"}\n{"ev":"ok"}\n')), on_event
    )
    assert done.wait(5)
    assert seen == ["boom", "ok", "closed"]


def test_write_failure_raises_agent_error() -> None:
    out_r, out_w = pipe_pair()
    in_r, in_w = pipe_pair()
    channel = AgentChannel("n1", in_w, out_r, Collector())
    in_r.close()  # the agent is gone
    with pytest.raises(AgentError):
        channel.send({"op": "ping"})
    out_w.close()
    assert channel.wait_closed(5)
