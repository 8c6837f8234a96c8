"""The SSH node source: hosts you own, reached over SSH (paramiko), one node agent per host.

An :class:`~prefect_batch.providers.hostgroup.SSHHostGroup` lists hosts (address, port, user, a
pinned host key), the client key, a known_hosts file, each host's node root and the size to
declare. :class:`SSHNodeSource` turns a host into a node: it opens **one SSH connection per
node**, verifies the host key before authenticating (:mod:`prefect_batch.providers.hostkeys`),
and runs **one long-lived agent** on it in a single exec channel that also ships the agent:

1. The exec'd command is a short POSIX ``sh`` script (every argument ``shlex.quote``\\ d; the
   script is a constant) that makes ``<root>/.agent``, says whether
   ``<root>/.agent/agent-<version>-<sha256[:16]>.py`` is there, and if not receives exactly its
   size in bytes on stdin (``head -c``), checks the size and renames it into place. The name
   carries the hash, so a changed agent is a new file (older ones are left: another service
   version may be starting one of them on the same root right now).
2. It prints ``@pb start <pid> <root>`` and ``exec``\\ s ``python3 -I agent.py --root <root>``,
   whose stdin/stdout are the channel from then on (stderr appends to
   ``<root>/.agent/agent.log``). The channel then speaks the agent's JSON-lines protocol
   through :class:`~prefect_batch.providers.base.AgentChannel`, exactly as a local node.

One exec per connection matters: sshd runs every command through the user's login shell, and
Debian's bash sources ``~/.bashrc`` for SSH commands even when not interactive (measured here:
~110 ms per exec with a ``pyenv init`` in it); a node pays that once, not per task. Nothing
uses SFTP (a subsystem also goes through the login shell, and rc-file output breaks it) and no
pty is requested (no interactive shell, no job control).

Disconnects lose nothing (at least once, never twice at once): the agent treats stdin EOF as
*drain* — sshd closes the agent's stdin when the connection drops — so its tasks, which run in
their own sessions, keep running; it waits for them, writes each result next to the task's run
record, and exits. Reconnecting starts a new agent on the same root (same file, no upload), and
``recover`` reports each task: finished meanwhile → its recorded ``exited`` event; still
running under the old agent → ``adopted``, then ``exited`` when the old one records it; its
agent killed (no result can be known) → ``lost``, which the service requeues, so such a task
runs again (``requeueCount`` + 1) — only after its first process has ended.

What this module does not do: decide how many nodes a pool has (the engine does, and asks
:meth:`SSHNodeSource.place` for hosts), reconnect by itself (a dropped session ends the connection
with a ``closed`` event; the service starts the agent again with backoff), install Python on
hosts, or isolate tasks from one another beyond their directories (they run as the SSH user).
Host keys are never accepted silently.

Confinement: with the group's ``confineTasks`` (the default) the agent runs with ``--confine``
(:func:`remote_confinement_args`): each task runs
under Landlock without capabilities, reaching its own directories, the node's shared and
startup directories, the system's read-only trees, the agent's interpreter and the
directories of the agent's ``PATH``, and neither the rest of the SSH user's home (``~/.ssh``)
nor the node root's other contents (``<root>/.agent``, other tasks) nor any ``/proc`` entry.
On a kernel without Landlock the agent still starts, runs tasks unconfined and says so in
``hello``; the node then carries a ``TasksUnconfined`` error.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import shlex
import socket
import threading
import time
from collections.abc import Collection, Sequence
from typing import Any

import paramiko

from prefect_batch.agent import AGENT_PATH, AGENT_VERSION
from prefect_batch.exceptions import AgentError, HostKeyError
from prefect_batch.providers.agentcalls import AgentCalls, wipe_node_root
from prefect_batch.providers.base import AgentChannel, AgentConnection, EventCallback
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    NodeSlot,
    Placement,
    PoolRef,
    ProviderTraits,
    ResizeError,
)
from prefect_batch.providers.hostgroup import (
    DEFAULT_NODE_ROOT,
    SSHHost,
    SSHHostGroup,
    check_root,
    load_private_key,
)
from prefect_batch.providers.hostkeys import (
    HostKeyPolicy,
    fingerprint,
    load_known_hosts,
    parse_public_key,
)

__all__ = [
    "DEFAULT_NODE_ROOT",
    "TRAITS",
    "SSHAgentConnection",
    "SSHAgentProcess",
    "SSHHost",
    "SSHHostGroup",
    "SSHNodeSource",
]

log = logging.getLogger(__name__)

TRAITS = ProviderTraits(unreachable_grace=True, wipe_fresh_nodes=True)
"""SSH nodes: hosts that outlive their nodes, whose agents run tasks on across a lost link."""

_MARK = "@pb "
_MAX_PREAMBLE_LINES = 1000

# The remote launcher. A constant: every value reaches it as a quoted positional argument.
# $1 root ("~" / "~/..." means under $HOME), $2 python, $3 agent file name, $4 its size in bytes,
# then extra agent arguments.
_LAUNCHER = r"""
R=$1; PY=$2; N=$3; SIZE=$4; shift 4
case $R in "~") R=$HOME ;; "~/"*) R=$HOME/${R#"~/"} ;; esac
D=$R/.agent; A=$D/$N
mkdir -p "$D" || { echo "@pb fail cannot create $D"; exit 70; }
if [ -f "$A" ]; then echo "@pb have"; else
  echo "@pb need"; T=$A.$$.tmp
  head -c "$SIZE" > "$T" || { rm -f "$T"; echo "@pb fail cannot write $T"; exit 71; }
  [ "$(wc -c < "$T")" -eq "$SIZE" ] || { rm -f "$T"; echo "@pb fail short agent upload"; exit 71; }
  mv -f "$T" "$A" || { rm -f "$T"; echo "@pb fail cannot install $A"; exit 71; }
fi
command -v "$PY" >/dev/null 2>&1 || { echo "@pb fail no $PY on this host"; exit 127; }
printf '@pb start %s %s\n' "$$" "$R"
exec "$PY" -I "$A" --root "$R" "$@" 2>>"$D/agent.log"
""".strip()


def remote_confinement_args(*, confine: bool, root: str) -> list[str]:
    """A remote agent's options (an SSH host, an EC2 instance): ``--confine``, which it may
    go without where the kernel has no Landlock (``--confine-optional``), with the SSH user's
    home and the node root ``root`` (as configured, ``~/...`` allowed) protected. The service
    knows no path on the host: the agent expands ``~`` and adds its own interpreter's trees and
    its ``PATH``'s directories (:mod:`prefect_batch.service.engine.confinement` reads what its
    ``hello`` says)."""
    if not confine:
        return []
    return ["--confine", "--confine-optional", "--protect", "~", "--protect", root]


@functools.cache
def _agent_payload() -> tuple[str, bytes]:
    """The agent's file name on a host and its bytes (read and hashed once per process)."""
    data = AGENT_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    return f"agent-{AGENT_VERSION}-{digest}.py", data


class SSHAgentProcess:
    """The remote agent as a :class:`~prefect_batch.providers.base.ProcessHandle`.

    ``pid`` is the agent's pid on the host. ``poll``/``wait`` give its exit status once the SSH
    channel reports it, or -1 when the session ended without one (connection lost: the agent
    may still be draining on the host). ``kill`` SIGKILLs the agent on the host through a
    second channel of the same connection (its tasks keep running in their own sessions).
    """

    def __init__(self, client: paramiko.SSHClient, channel: paramiko.Channel, pid: int, host: str):
        self._client = client
        self._channel = channel
        self._pid = pid
        self._host = host
        self._closed = threading.Event()

    @property
    def pid(self) -> int | None:
        return self._pid

    def poll(self) -> int | None:
        if self._channel.exit_status_ready():
            return int(self._channel.recv_exit_status())
        if self._closed.is_set() or not self.transport_active():
            return -1
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            code = self.poll()
            if code is not None:
                return code
            step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
            if step <= 0:
                return None
            self._channel.status_event.wait(step)

    def kill(self) -> None:
        """SIGKILL the agent on the host, then drop the connection."""
        try:
            if self.poll() is None:
                self._exec(f"kill -KILL {shlex.quote(str(self._pid))}")
        finally:
            self.close()

    def close(self) -> None:
        """Close the SSH connection (the agent, if alive, sees EOF and drains)."""
        self._closed.set()
        try:
            self._client.close()
        except Exception:  # noqa: BLE001 - closing a broken transport may raise anything
            log.debug("closing the connection to %s failed", self._host, exc_info=True)

    def transport_active(self) -> bool:
        """Whether the SSH connection is still up."""
        transport = self._client.get_transport()
        return transport is not None and transport.is_active()

    def _exec(self, command: str, timeout: float = 10.0) -> int:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise AgentError(f"the connection to {self._host} is gone")
        try:
            chan = transport.open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.exec_command(command)
            try:
                if not chan.status_event.wait(timeout):
                    raise AgentError(f"{command!r} on {self._host} did not finish in {timeout}s")
                return int(chan.recv_exit_status())
            finally:
                chan.close()
        except (paramiko.SSHException, OSError) as exc:
            raise AgentError(f"cannot run {command!r} on {self._host}: {exc}") from exc


class SSHAgentConnection(AgentConnection):
    """An agent on an SSH host; :attr:`root` is the node root's absolute path on the host.

    Attributes:
        host: The host it runs on.
        address: The host's address (the node's IP address as the service shows it).
    """

    process: SSHAgentProcess

    def __init__(
        self,
        node_id: str,
        root: str,
        channel: AgentChannel,
        process: SSHAgentProcess,
        host: SSHHost,
    ) -> None:
        super().__init__(node_id, root, channel, process)
        self.host = host
        self.address = host.address


class SSHNodeSource(NodeProvider):
    """Nodes on the hosts of an :class:`SSHHostGroup`, one node per host at a time.

    :meth:`place` gives new nodes hosts that no node of the account holds; :meth:`connect`
    starts a node's agent on its host (:meth:`start_agent_on`); :meth:`release` empties the
    node's root through an agent of its own, and the host is free for the next node.

    Args:
        group: The host group (a dict is validated into one).
        sku: The ``nodeAgentSKUId`` pools name it by (default ``batch.node.ssh.<name>``).
    """

    kind = "ssh"
    name = "ssh"
    traits = TRAITS

    def __init__(self, group: SSHHostGroup | dict[str, Any], *, sku: str | None = None) -> None:
        self.group = group if isinstance(group, SSHHostGroup) else SSHHostGroup(**group)
        super().__init__(sku or f"batch.node.ssh.{self.group.name}")
        self._hosts = {h.id: h for h in self.group.hosts}
        self._lock = threading.Lock()
        self._released: set[str] = set()
        self._pkey: paramiko.PKey | None = None
        self._policy = HostKeyPolicy(
            trust_on_first_use=self.group.trust_on_first_use, known_hosts=self.group.known_hosts
        )
        self._agent_name, self._agent_data = _agent_payload()

    # -- hosts -----------------------------------------------------------------------------

    @property
    def node_agent_sku_id(self) -> str:
        """The id pools name this source by (``nodeAgentSKUId``): ``batch.node.ssh.<name>``."""
        return self.sku

    @property
    def hosts(self) -> list[SSHHost]:
        """The group's hosts, in order."""
        return list(self.group.hosts)

    def host(self, host_id: str) -> SSHHost:
        """The host with this id (``user@address:port``)."""
        try:
            return self._hosts[host_id]
        except KeyError:
            raise AgentError(f"no host {host_id!r} in SSH host group {self.group.name!r}") from None

    def node_root(self, host_id: str) -> str:
        """The node root on a host as configured (``~/…`` until an agent reports its path)."""
        return self.group.root_of(self.host(host_id))

    # -- the provider contract ---------------------------------------------------------------

    def place(
        self,
        pool: PoolRef,
        node_ids: Sequence[str],
        in_use: Collection[str],
        *,
        dedicated: bool = True,
    ) -> Placement:
        """A free host for each node, in the group's order; AllocationFailed for the rest."""
        taken = set(in_use)
        free = [h for h in self.group.hosts if h.id not in taken]
        slots = [
            NodeSlot(
                node_id=node_id,
                machine_id=host.id,
                address=host.address,
                root=self.group.root_of(host),
                vm_size=self.group.vm_size,
            )
            for node_id, host in zip(node_ids, free, strict=False)
        ]
        if len(slots) == len(node_ids):
            return Placement(slots)
        total = len(self.group.hosts)
        return Placement(
            slots,
            ResizeError(
                "AllocationFailed",
                f"The SSH host group {self.group.name!r} has {len(free)} free host(s) of {total} "
                f"for the {len(node_ids)} more node(s) pool {pool.pool_id} asked for (a host runs "
                "one node at a time); the pool keeps the nodes it got",
            ),
        )

    def connect(self, node: NodeRef, on_event: EventCallback) -> SSHAgentConnection:
        """Start the node's agent on its host, with the node's root."""
        if node.machine_id is None:
            raise AgentError(f"node {node.node_id} has no host of group {self.group.name!r}")
        return self.start_agent_on(node.machine_id, node.node_id, on_event, root=node.root)

    def remote_login(self, node: NodeRef) -> tuple[str, int]:
        """The host's SSH address and port."""
        if node.machine_id is None:
            raise AgentError(f"node {node.node_id} has no host of group {self.group.name!r}")
        host = self.host(node.machine_id)
        return host.address, host.port

    def release(self, request_id: str, node: NodeRef, *, wipe_only: bool = False) -> None:
        """Empty the node's root on its host through an agent of its own (the host stays)."""
        with self._lock:
            if request_id in self._released:
                return
        if node.machine_id is None:
            return
        box: list[AgentCalls] = []

        def deliver(msg: dict[str, Any]) -> None:
            if box:
                box[0].deliver(msg)

        conn = self.start_agent_on(node.machine_id, f"{node.node_id}-wipe", deliver, root=node.root)
        try:
            box.append(AgentCalls(conn, f"host {node.machine_id}"))
            wipe_node_root(box[0])
        finally:
            conn.close()
        with self._lock:
            self._released.add(request_id)

    # -- agents ----------------------------------------------------------------------------

    def start_agent_on(
        self,
        host_id: str,
        node_id: str,
        on_event: EventCallback,
        *,
        root: str | None = None,
    ) -> SSHAgentConnection:
        """Connect to ``host_id``, ship the agent if it is missing, start it, and connect.

        Args:
            host_id: The host (``user@address:port``).
            node_id: The node's id (logs, thread names).
            on_event: Receives every event, then ``{"ev": "closed", "reason": ...}``.
            root: Node root on the host instead of the configured one.

        Raises:
            HostKeyError: The host's key is unknown or changed.
            AgentError: The host cannot be reached or authenticated in time, or the agent
                cannot be installed or started.
        """
        host = self.host(host_id)
        root = check_root(root) if root is not None else self.group.root_of(host)
        client = self.open_client(host_id)
        try:
            channel, pid, abs_root, stdin, stdout = self._launch(client, host, root)
        except BaseException:
            client.close()
            raise
        process = SSHAgentProcess(client, channel, pid, host.id)

        def deliver(msg: dict[str, Any]) -> None:
            if msg.get("ev") == "closed":
                # Let the exit status arrive (it follows EOF), then drop the connection.
                if process.transport_active():
                    channel.status_event.wait(1.0)
                status = channel.exit_status if channel.exit_status_ready() else None
                process.close()
                msg = {
                    "ev": "closed",
                    "reason": f"ssh session to {host.id} ended ({msg.get('reason')}; "
                    + (
                        f"agent exit status {status})"
                        if status is not None
                        else "connection lost; the agent drains on the host)"
                    ),
                }
            on_event(msg)

        agent_channel = AgentChannel(node_id, stdin, stdout, deliver)
        return SSHAgentConnection(node_id, abs_root, agent_channel, process, host)

    def open_client(self, host_id: str) -> paramiko.SSHClient:
        """A connected, host-key-verified, authenticated SSH client for ``host_id``.

        Raises:
            HostKeyError: The host's key is unknown or changed.
            AgentError: Anything else (unreachable, refused, timed out, authentication).
        """
        host = self.host(host_id)
        group = self.group
        timeout = group.connect_timeout_seconds
        client = paramiko.SSHClient()
        keys = client.get_host_keys()
        if host.host_key is not None:
            pinned = parse_public_key(host.host_key)
            keys.add(host.known_hosts_name, pinned.get_name(), pinned)
            where = "the pinned host_key"
        else:
            assert group.known_hosts is not None  # the group validator guarantees it
            known = load_known_hosts(group.known_hosts).lookup(host.known_hosts_name)
            for key_type, key in (known or {}).items():
                keys.add(host.known_hosts_name, key_type, key)
            where = f"known_hosts file {group.known_hosts}"
        client.set_missing_host_key_policy(self._policy)
        pkey = self._private_key()
        sock = None
        try:
            sock = self._socket(host, timeout)
            client.connect(
                host.address,
                port=host.port,
                username=host.user,
                pkey=pkey,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=False,
                look_for_keys=False,
            )
        except HostKeyError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyError(
                f"host key of {host.known_hosts_name} CHANGED: it offered "
                f"{exc.key.get_name()} {fingerprint(exc.key)} but {where} has "
                f"{exc.expected_key.get_name()} {fingerprint(exc.expected_key)}. Someone may be "
                "intercepting the connection, or the host was reinstalled: check the new "
                "fingerprint out of band before trusting it",
                host=host.known_hosts_name,
                fingerprint=fingerprint(exc.key),
                reason="changed",
                expected=[fingerprint(exc.expected_key)],
            ) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            raise AgentError(
                f"authentication as {host.user} on {host.address}:{host.port} failed with key "
                f"{pkey.get_name()} {fingerprint(pkey)}: {exc}"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            if sock is not None:
                sock.close()
            raise AgentError(
                f"cannot connect to {host.id}: {type(exc).__name__}: {exc or 'timed out'}"
            ) from exc
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(max(1, int(group.keepalive_seconds)))
        return client

    # -- internals -------------------------------------------------------------------------

    def _private_key(self) -> paramiko.PKey:
        if self._pkey is None:
            self._pkey = load_private_key(self.group)
        return self._pkey

    def _socket(self, host: SSHHost, timeout: float) -> socket.socket:
        try:
            sock = socket.create_connection((host.address, host.port), timeout=timeout)
        except OSError as exc:
            raise AgentError(
                f"cannot connect to {host.id}: {type(exc).__name__}: {exc or 'timed out'}"
            ) from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        idle = max(1, int(self.group.keepalive_seconds))
        for name, value in (
            ("TCP_KEEPIDLE", idle),
            ("TCP_KEEPINTVL", max(1, idle // 3)),
            ("TCP_KEEPCNT", 3),
            ("TCP_USER_TIMEOUT", int(self.group.dead_after_seconds * 1000)),
        ):
            option = getattr(socket, name, None)
            if option is not None:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
                except OSError:
                    pass
        return sock

    def launcher_command(self, root: str) -> str:
        """The command line sent to the host: the constant launcher, every value quoted."""
        args = [root, self.group.python, self._agent_name, str(len(self._agent_data))]
        args += remote_confinement_args(confine=self.group.confine_tasks, root=root)
        return " ".join(
            ["exec", "/bin/sh", "-c", shlex.quote(_LAUNCHER), "prefect-batch-agent"]
            + [shlex.quote(a) for a in [*args, *self.group.agent_args]]
        )

    def _launch(
        self, client: paramiko.SSHClient, host: SSHHost, root: str
    ) -> tuple[paramiko.Channel, int, str, _ChannelWriter, _ChannelReader]:
        """Run the launcher; returns (channel, agent pid, absolute root, stdin, stdout)."""
        group = self.group
        command = self.launcher_command(root)
        transport = client.get_transport()
        if transport is None:
            raise AgentError(f"the connection to {host.id} is gone")
        try:
            channel = transport.open_session(timeout=group.connect_timeout_seconds)
            channel.settimeout(group.agent_start_timeout_seconds)
            channel.exec_command(command)
            stdin = _ChannelWriter(channel)
            stdout = _ChannelReader(channel)
            deadline = time.monotonic() + group.agent_start_timeout_seconds
            for _ in range(_MAX_PREAMBLE_LINES):
                if time.monotonic() > deadline:
                    break
                raw = stdout.readline()
                if not raw:
                    raise AgentError(self._launch_failed(channel, host, "the session ended"))
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                at = line.find(_MARK)
                if at < 0:
                    continue  # the login shell's rc files may print; it is not ours
                line = line[at:]  # rc-file output without a final newline precedes ours
                word, _, rest = line[len(_MARK) :].partition(" ")
                if word == "need":
                    stdin.write(self._agent_data)
                    log.info("shipped the node agent to %s (%s)", host.id, self._agent_name)
                elif word == "start":
                    pid_text, _, abs_root = rest.partition(" ")
                    channel.settimeout(None)
                    return channel, int(pid_text), abs_root, stdin, stdout
                elif word == "fail":
                    raise AgentError(self._launch_failed(channel, host, rest))
            raise AgentError(
                f"the node agent did not start on {host.id} within "
                f"{group.agent_start_timeout_seconds}s"
            )
        except TimeoutError as exc:
            raise AgentError(
                f"the node agent did not start on {host.id} within "
                f"{group.agent_start_timeout_seconds}s"
            ) from exc
        except (paramiko.SSHException, OSError, EOFError, ValueError) as exc:
            raise AgentError(f"cannot start the node agent on {host.id}: {exc}") from exc

    @staticmethod
    def _launch_failed(channel: paramiko.Channel, host: SSHHost, why: str) -> str:
        status = None
        if channel.status_event.wait(2.0):
            status = channel.recv_exit_status()
        err = b""
        try:
            channel.settimeout(1.0)
            while channel.recv_stderr_ready() and len(err) < 4096:
                err += channel.recv_stderr(4096)
        except (OSError, paramiko.SSHException):
            pass
        text = err.decode("utf-8", "replace").strip()
        return (
            f"cannot start the node agent on {host.id}: {why}"
            + (f" (exit status {status})" if status is not None else "")
            + (f": {text[-1000:]}" if text else "")
        )


class _ChannelWriter:
    """The agent's stdin: ``sendall`` on the channel; ``close`` sends EOF (the agent drains).

    Not paramiko's ``ChannelStdinFile``: that one sends EOF even after the server closed the
    channel (e.g. when it is garbage-collected late), and OpenSSH drops the whole connection
    on a packet for a channel it has freed.
    """

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel

    def write(self, data: bytes) -> int:
        if self._channel.closed:
            raise EOFError("the SSH channel is closed")
        self._channel.sendall(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        if not self._channel.closed:
            self._channel.shutdown_write()


class _ChannelReader:
    """The agent's stdout: ``read1`` (what is there, blocking for at least a byte), ``readline``."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._pending = b""

    def read1(self, size: int = 1 << 16) -> bytes:
        if self._pending:
            data, self._pending = self._pending, b""
            return data
        return bytes(self._channel.recv(size))

    def readline(self, limit: int = 1 << 16) -> bytes:
        """One line (with its newline), or what is left at EOF; used before the agent runs."""
        while b"\n" not in self._pending and len(self._pending) < limit:
            chunk = self._channel.recv(1 << 16)
            if not chunk:
                break
            self._pending += chunk
        line, sep, rest = self._pending.partition(b"\n")
        self._pending = rest
        return line + sep
