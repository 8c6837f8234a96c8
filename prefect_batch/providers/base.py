"""Talking to node agents: the JSON-lines channel and agent connections.

A node provider (:mod:`prefect_batch.providers.contract`) starts one node agent
(:mod:`prefect_batch.agent`) per node and hands back an :class:`AgentConnection`. The connection
frames messages over whatever byte streams reach the agent (a subprocess's pipes, a paramiko
channel's files) through an :class:`AgentChannel`, and delivers every event the agent emits to a
callback, on the channel's reader thread.

This module does not interpret events (the service does), does not retry, and does not keep
state about tasks: it moves dicts in both directions and reports when the stream ends.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from prefect_batch.agent import PROTOCOL_VERSION
from prefect_batch.exceptions import AgentError

__all__ = [
    "AgentChannel",
    "AgentConnection",
    "EventCallback",
    "ProcessHandle",
    "hello",
]

logger = logging.getLogger(__name__)

EventCallback = Callable[[dict[str, Any]], None]
"""Receives each event from an agent (on the channel's reader thread); must not block long."""

_READ_CHUNK = 1 << 16


def hello(node_id: str, pool_id: str) -> dict[str, Any]:
    """The ``hello`` request that tells a new agent which node it is (protocol v1)."""
    return {"op": "hello", "v": PROTOCOL_VERSION, "node_id": node_id, "pool_id": pool_id}


def _encode(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class AgentChannel:
    """JSON-lines framing over a pair of binary streams, with a reader thread.

    Generic over binary file-like objects: the write side needs ``write``, ``flush`` and
    ``close``; the read side needs ``read1`` (buffered readers) or ``readline`` (e.g. a paramiko
    ``ChannelFile``). Each line read is parsed and passed to ``on_event``; lines that are not JSON
    objects are logged and skipped. When the read side ends (EOF or an error) ``on_event`` gets
    ``{"ev": "closed", "reason": ...}`` exactly once and the reader thread stops.

    Args:
        name: Label for logs and the reader thread (e.g. the node id).
        write_stream: Where requests go (the agent's stdin).
        read_stream: Where events come from (the agent's stdout).
        on_event: Called with each event dict, on the reader thread.
    """

    def __init__(
        self,
        name: str,
        write_stream: BinaryIO | Any,
        read_stream: BinaryIO | Any,
        on_event: EventCallback,
    ) -> None:
        self.name = name
        self._write = write_stream
        self._read = read_stream
        self._on_event = on_event
        self._lock = threading.Lock()
        self._write_closed = False
        self._done = threading.Event()
        self._reader = threading.Thread(
            target=self._read_loop, name=f"agent-channel-{name}", daemon=True
        )
        self._reader.start()

    @property
    def closed(self) -> bool:
        """True once the read side has ended (the agent exited or the stream broke)."""
        return self._done.is_set()

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Block until the read side has ended; returns whether it did within ``timeout``."""
        return self._done.wait(timeout)

    def send(self, msg: dict[str, Any]) -> None:
        """Send one request."""
        self._write_bytes(_encode(msg))

    def send_many(self, msgs: Iterable[dict[str, Any]]) -> None:
        """Send several requests with one write and one flush."""
        data = b"".join(_encode(m) for m in msgs)
        if data:
            self._write_bytes(data)

    def _write_bytes(self, data: bytes) -> None:
        with self._lock:
            if self._write_closed:
                raise AgentError(f"agent channel {self.name!r} is closed for writing")
            try:
                self._write.write(data)
                self._write.flush()
            except (OSError, ValueError, EOFError) as exc:
                raise AgentError(f"cannot write to agent {self.name!r}: {exc}") from exc

    def close(self) -> None:
        """Close the write side: the agent sees EOF, drains its tasks and exits."""
        with self._lock:
            if self._write_closed:
                return
            self._write_closed = True
            try:
                self._write.close()
            except (OSError, ValueError, EOFError):
                pass

    def _read_loop(self) -> None:
        reason = "eof"
        try:
            read1 = getattr(self._read, "read1", None)
            if read1 is not None:
                pending = b""
                while True:
                    chunk = read1(_READ_CHUNK)
                    if not chunk:
                        break
                    lines = (pending + chunk).split(b"\n") if pending else chunk.split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        self._deliver_line(line)
                if pending:
                    self._deliver_line(pending)
            else:
                while True:
                    line = self._read.readline()
                    if not line:
                        break
                    self._deliver_line(line)
        except Exception as exc:  # a broken stream ends the channel, it never escapes
            reason = f"error: {type(exc).__name__}: {exc}"
        finally:
            self._done.set()
            self._deliver({"ev": "closed", "reason": reason})

    def _deliver_line(self, line: bytes | str) -> None:
        if isinstance(line, str):
            line = line.encode()
        if not line.strip():
            return
        try:
            msg = json.loads(line)
        except ValueError:
            logger.warning("agent %s sent a line that is not JSON: %.200r", self.name, line)
            return
        if not isinstance(msg, dict):
            logger.warning("agent %s sent a JSON value that is not an object", self.name)
            return
        self._deliver(msg)

    def _deliver(self, msg: dict[str, Any]) -> None:
        try:
            self._on_event(msg)
        except Exception:
            logger.exception("event handler for agent %s failed on %.200r", self.name, msg)


class ProcessHandle(Protocol):
    """What :class:`AgentConnection` needs from the agent's process (``subprocess.Popen`` fits).

    A remote node source wraps its session (e.g. an SSH channel) in an object with these.
    """

    @property
    def pid(self) -> int | None: ...

    def kill(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...

    def poll(self) -> int | None: ...


class AgentConnection:
    """One running agent: its channel plus a handle on its process.

    Args:
        node_id: The node this agent serves.
        root: The node root directory on the node.
        channel: The JSON-lines channel to the agent.
        process: The agent's process (local) or session (remote).
    """

    def __init__(
        self, node_id: str, root: Path | str, channel: AgentChannel, process: ProcessHandle
    ) -> None:
        self.node_id = node_id
        self.root = root
        self.channel = channel
        self.process = process

    @property
    def pid(self) -> int | None:
        """Process id of the agent where the node source knows it."""
        return self.process.pid

    @property
    def closed(self) -> bool:
        """True once the agent's event stream has ended."""
        return self.channel.closed

    def send(self, msg: dict[str, Any]) -> None:
        """Send one request to the agent (raises :class:`AgentError` once closed)."""
        self.channel.send(msg)

    def send_many(self, msgs: Iterable[dict[str, Any]]) -> None:
        """Send several requests in one write."""
        self.channel.send_many(msgs)

    def close(self) -> None:
        """Close the request stream: the agent drains (tasks finish and are recorded) and exits."""
        self.channel.close()

    def kill(self, *, tasks: bool = False, grace_seconds: float = 5.0) -> None:
        """Stop the agent now.

        Args:
            tasks: Also kill every task it runs (``shutdown kill``, recorded as killed) before
                killing the agent. Without it, tasks keep running in their own sessions and a
                new agent can ``recover`` them.
            grace_seconds: How long to let the agent record the killed tasks and exit.
        """
        if tasks and not self.channel.closed:
            try:
                self.channel.send({"op": "shutdown", "mode": "kill"})
                self.channel.close()
            except AgentError:
                pass
            else:
                try:
                    if self.process.wait(timeout=grace_seconds) is not None:
                        return
                except Exception:  # subprocess.TimeoutExpired or a remote handle's error
                    pass
        try:
            self.process.kill()
        except (OSError, AgentError):
            pass
        self.channel.close()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the agent to exit; its exit status, or None if still running at ``timeout``."""
        try:
            code = self.process.wait(timeout=timeout)
        except Exception:  # subprocess.TimeoutExpired and remote equivalents
            return None
        # Let the reader deliver the agent's last events before reporting it gone.
        self.channel.wait_closed(timeout=1.0 if timeout is None else max(timeout, 0.1))
        return code
