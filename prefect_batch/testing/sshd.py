"""Private OpenSSH servers on loopback addresses, for tests and benchmarks of SSH nodes.

:class:`SSHServers` starts ``count`` real ``sshd`` processes (Debian's ``openssh-server``,
``/usr/sbin/sshd``) on 127.0.0.2, 127.0.0.3, … each with its own ed25519 host key, config file
(``-f``), authorized_keys, pid file and log in a directory of its own, running as the current
user (root included: ``PermitRootLogin prohibit-password``), with public-key authentication only.
One client key pair is made for all of them. Every server can be killed (sessions drop at once,
as when a host's sshd crashes) and restarted on the same address, port and host key.

It never reads or changes the system sshd's configuration, never listens on an address outside
127.0.0.0/8 (it refuses to), and waits a bounded time for a server to listen. The only thing it
may create outside its directory is sshd's compiled-in privilege-separation directory
(``/run/sshd``, empty, as Debian's own service start does) when running as root and it is
missing: sshd refuses to start without it.

It does not run a client, does not touch ``~/.ssh``, and is not a security boundary.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SSHD_PATH",
    "SSHServer",
    "SSHServers",
    "generate_key",
    "ssh_servers",
    "sshd_available",
]

SSHD_PATH = "/usr/sbin/sshd"
SSH_KEYGEN = "ssh-keygen"
START_TIMEOUT_SECONDS = 10.0
_PRIVSEP_DIR = "/run/sshd"

_CONFIG = """\
# Written by prefect_batch.testing.sshd for one test server; not the system's sshd_config.
Port {port}
ListenAddress {address}
AddressFamily inet
HostKey {host_key}
PidFile {pid_file}
AuthorizedKeysFile {authorized_keys}
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
MaxSessions {max_sessions}
MaxStartups 64:30:128
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTunnel no
PermitUserEnvironment no
UseDNS no
LogLevel {log_level}
Subsystem sftp internal-sftp
"""


def sshd_available() -> bool:
    """Whether an ``sshd`` and ``ssh-keygen`` this module can use are installed."""
    return os.access(SSHD_PATH, os.X_OK) and shutil.which(SSH_KEYGEN) is not None


def generate_key(path: Path, comment: str = "prefect-batch-test") -> str:
    """Make an ed25519 key pair at ``path`` (private, mode 0600) and ``path.pub``.

    Returns:
        The public key line (``ssh-ed25519 AAAA… comment``).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=30,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


def _require_loopback(address: str) -> None:
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"test sshd listens on loopback addresses only, not {address}")


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        pass
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        rest = data[data.rfind(b")") + 2 :].split()
        if len(rest) > 1 and int(rest[1]) == pid:
            out.append(int(name))
    return out


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class SSHServer:
    """One private sshd on a loopback address.

    Attributes:
        address: The loopback address it listens on.
        port: Its TCP port (free when first started, kept across restarts).
        directory: Its own directory: config, host key, pid file, log.
        user: The login user (the current user).
        host_public_key: Its host key as ``ssh-ed25519 AAAA…`` (for pinning).
    """

    address: str
    port: int
    directory: Path
    user: str
    authorized_keys: Path
    host_public_key: str = ""
    max_sessions: int = 64
    log_level: str = "INFO"
    extra_config: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def host_key_path(self) -> Path:
        return self.directory / "ssh_host_ed25519_key"

    @property
    def log_path(self) -> Path:
        return self.directory / "sshd.log"

    @property
    def known_hosts_name(self) -> str:
        """The name known_hosts files use for it (``[address]:port``)."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    @property
    def known_hosts_line(self) -> str:
        """A known_hosts line that trusts its host key."""
        return f"{self.known_hosts_name} {' '.join(self.host_public_key.split()[:2])}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def host_config(self, **extra: Any) -> dict[str, Any]:
        """A host entry for :class:`prefect_batch.providers.ssh.SSHHostGroup`, key pinned."""
        return {
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "host_key": " ".join(self.host_public_key.split()[:2]),
            **extra,
        }

    def prepare(self) -> None:
        """Write the host key (once) and the config file."""
        _require_loopback(self.address)
        self.directory.mkdir(parents=True, exist_ok=True)
        if not self.host_key_path.exists():
            self.host_public_key = generate_key(self.host_key_path, f"host-{self.address}")
        elif not self.host_public_key:
            self.host_public_key = (
                self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text().strip()
            )
        self.config_path.write_text(
            _CONFIG.format(
                port=self.port,
                address=self.address,
                host_key=self.host_key_path,
                pid_file=self.directory / "sshd.pid",
                authorized_keys=self.authorized_keys,
                user=self.user,
                max_sessions=self.max_sessions,
                log_level=self.log_level,
            )
            + "".join(line + "\n" for line in self.extra_config)
        )

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> SSHServer:
        """Start sshd in the foreground (``-D``) and wait until it accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.prepare()
        if os.geteuid() == 0 and not os.path.isdir(_PRIVSEP_DIR):
            os.makedirs(_PRIVSEP_DIR, mode=0o755, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [SSHD_PATH, "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise RuntimeError(
                    f"sshd on {self.address}:{self.port} exited with {code}: {self._log_tail()}"
                )
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"sshd on {self.address}:{self.port} did not listen within {timeout}s: "
                    f"{self._log_tail()}"
                )
            time.sleep(0.02)

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes below the listener (not the commands they run)."""
        if self.process is None:
            return []
        found: list[int] = []
        todo = [self.process.pid]
        for _ in range(10_000):  # bounded walk of the process tree
            if not todo:
                break
            for child in _children(todo.pop()):
                if _comm(child).startswith("sshd"):
                    found.append(child)
                    todo.append(child)
        return found

    def kill(self) -> None:
        """SIGKILL the listener and every per-connection sshd: all sessions drop at once.

        The commands sessions ran (e.g. node agents) are not signalled: they see their stdin
        close, as after a real crash of sshd or a dropped connection.
        """
        if self.process is None:
            return
        for pid in [*self.session_pids(), self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        """Stop the server and drop its sessions (SIGTERM, then SIGKILL after 5 s)."""
        if self.process is None:
            return
        sessions = self.session_pids()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        for pid in sessions:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process = None

    def restart(self, timeout: float = START_TIMEOUT_SECONDS) -> SSHServer:
        """Kill and start again on the same address, port and host key."""
        self.kill()
        return self.start(timeout)

    def _log_tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"


class SSHServers:
    """A set of private sshd servers on 127.0.0.2, 127.0.0.3, … sharing one client key.

    Args:
        directory: Where everything lives (one subdirectory per server); a temporary directory
            when None, removed on :meth:`close`.
        count: How many servers.
        first_address: The first loopback address; the others follow it.
        max_sessions: sshd's ``MaxSessions`` (sessions per connection; OpenSSH's default is 10).
        log_level: sshd's ``LogLevel``.
        extra_config: More sshd_config lines, e.g. ``SetEnv SHLVL=1`` (Debian's bash then does
            not source ``~/.bashrc`` for SSH commands: it only does so at shell level 1).

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        directory: Path | str | None = None,
        *,
        count: int = 3,
        first_address: str = "127.0.0.2",
        max_sessions: int = 64,
        log_level: str = "INFO",
        extra_config: tuple[str, ...] | list[str] = (),
    ) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self._tmp: str | None = None
        if directory is None:
            self._tmp = directory = tempfile.mkdtemp(prefix="pb-sshd-")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.user = _current_user()
        first = ipaddress.ip_address(first_address)
        addresses = [str(first + i) for i in range(count)]
        for address in addresses:
            _require_loopback(address)
        self.client_key_path = self.directory / "client_ed25519"
        self.client_public_key = ""
        self.authorized_keys = self.directory / "authorized_keys"
        self.servers = [
            SSHServer(
                address=address,
                port=0,
                directory=self.directory / address,
                user=self.user,
                authorized_keys=self.authorized_keys,
                max_sessions=max_sessions,
                log_level=log_level,
                extra_config=tuple(extra_config),
            )
            for address in addresses
        ]

    def start(self) -> SSHServers:
        """Make the keys and start every server (each waits a bounded time to listen)."""
        if not self.client_public_key:
            self.client_public_key = generate_key(self.client_key_path, "prefect-batch-client")
            self.authorized_keys.write_text(self.client_public_key + "\n")
            self.authorized_keys.chmod(0o600)
        try:
            for server in self.servers:
                if server.port == 0:
                    server.port = _free_port(server.address)
                server.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every server."""
        for server in self.servers:
            try:
                server.stop()
            except Exception:  # noqa: BLE001 - stop the others regardless
                pass

    def close(self) -> None:
        """Stop every server and remove the temporary directory this object made."""
        self.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> SSHServers:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[SSHServer]:
        return iter(self.servers)

    def __getitem__(self, index: int) -> SSHServer:
        return self.servers[index]

    def __len__(self) -> int:
        return len(self.servers)

    def known_hosts_text(self) -> str:
        """known_hosts lines for every server."""
        return "".join(s.known_hosts_line + "\n" for s in self.servers)

    def group_config(self, **extra: Any) -> dict[str, Any]:
        """Keyword arguments for an ``SSHHostGroup`` of every server, host keys pinned."""
        return {
            "hosts": [s.host_config() for s in self.servers],
            "private_key_path": str(self.client_key_path),
            **extra,
        }


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


@contextmanager
def ssh_servers(count: int = 3, **kwargs: Any) -> Iterator[SSHServers]:
    """``with ssh_servers(3) as servers:`` — started servers, stopped and removed at the end."""
    servers = SSHServers(count=count, **kwargs)
    try:
        yield servers.start()
    finally:
        servers.close()
