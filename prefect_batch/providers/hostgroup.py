"""SSH host groups: the configuration of an SSH node source (hosts, keys, node roots, size).

An :class:`SSHHostGroup` is what a pool's nodes are taken from: its hosts (address, port, user,
a pinned host key, a node root), one client key (a file, or the key text as a secret), a
known_hosts file for hosts without a pinned key, trust on first use (off unless opted in), the
size to declare (``vmSize`` label, cores, memory), whether the hosts' agents confine their
tasks (``confineTasks``, also ``confine_tasks``; on by default, see
:func:`prefect_batch.providers.ssh.remote_confinement_args`) and connection
bounds. Validation makes a group whose every host key *can* be verified: a host with neither a
pinned key nor a known_hosts file is refused, as is trust on first use without a file to record
in.

This module does not connect anywhere (``prefect_batch.providers.ssh`` does); loading the
client key is the one thing it does with the outside world.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import paramiko
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from prefect_batch.exceptions import AgentError
from prefect_batch.providers.hostkeys import known_hosts_name, parse_public_key

__all__ = [
    "DEFAULT_NODE_ROOT",
    "SSHHost",
    "SSHHostGroup",
    "check_root",
    "host_id",
    "load_private_key",
]

DEFAULT_NODE_ROOT = "~/.prefect-batch-node"
_ADDRESS_RE = re.compile(r"\A[A-Za-z0-9_.:%-]{1,253}\Z")
_USER_RE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_.-]{0,63}\Z")
_NAME_RE = re.compile(r"\A[A-Za-z0-9_-]{1,64}\Z")


def host_id(user: str | None, address: str, port: int = 22) -> str:
    """``user@address:port``: how a group and the service name a host (a node's machine id)."""
    return f"{user}@{address}:{port}"


def check_root(value: str) -> str:
    """``value`` if it is a usable node root: one line, absolute or ``~``/``~/…``."""
    if not value or "\x00" in value or "\n" in value:
        raise ValueError("a node root must be a non-empty single-line path")
    if not (value.startswith("/") or value == "~" or value.startswith("~/")):
        raise ValueError("a node root must be absolute or start with '~/' (the user's home)")
    return value


class SSHHost(BaseModel):
    """One host of an SSH host group: one node at a time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(
        description="Host name or IP address to connect to.", min_length=1, max_length=253
    )
    port: int = Field(22, ge=1, le=65535, description="SSH port.")
    user: str | None = Field(
        None, description="Login user; the group's `user` when not set.", max_length=64
    )
    host_key: str | None = Field(
        None,
        description="Pinned host public key, `ssh-ed25519 AAAA…` (the host's "
        "/etc/ssh/ssh_host_*_key.pub). Without it the group's known_hosts file decides.",
    )
    root: str | None = Field(
        None,
        description="Node root directory on this host (AZ_BATCH_NODE_ROOT_DIR); the group's "
        "`node_root` when not set. Absolute, or `~/…` under the user's home.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not _ADDRESS_RE.match(value) or value.startswith("-"):
            raise ValueError(f"not a host name or IP address: {value!r}")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER_RE.match(value):
            raise ValueError(f"not a user name: {value!r}")
        return value

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parse_public_key(value)
        return " ".join(value.split()[:2])

    @field_validator("root")
    @classmethod
    def _root(cls, value: str | None) -> str | None:
        return None if value is None else check_root(value)

    @property
    def id(self) -> str:
        """``user@address:port``: how the group and the service name this host."""
        return host_id(self.user, self.address, self.port)

    @property
    def known_hosts_name(self) -> str:
        """``address`` on port 22, else ``[address]:port`` (as in known_hosts files)."""
        return known_hosts_name(self.address, self.port)


class SSHHostGroup(BaseModel):
    """A node source made of SSH hosts: what a pool's nodes are taken from.

    Exactly one of ``private_key_path`` / ``private_key``. Each host's key is verified against
    its pinned ``host_key`` or the ``known_hosts`` file; ``trust_on_first_use`` (off by default)
    records unknown keys in ``known_hosts``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_by_name=True)

    name: str = Field(
        "ssh",
        description="Name of the group; the node source id is `batch.node.ssh.<name>`.",
    )
    hosts: list[SSHHost] = Field(
        min_length=1, description="The hosts; a pool of N nodes takes N of them."
    )
    user: str | None = Field(None, description="Login user for hosts that do not name one.")
    private_key_path: Path | None = Field(
        None, description="Client private key file (OpenSSH or PEM; ed25519, ECDSA or RSA)."
    )
    private_key: SecretStr | None = Field(None, description="Client private key text.")
    private_key_passphrase: SecretStr | None = Field(
        None, description="Passphrase of an encrypted private key."
    )
    known_hosts: Path | None = Field(
        None,
        description="known_hosts file for hosts without a pinned key (hashed names work); "
        "trust on first use records keys in it.",
    )
    trust_on_first_use: bool = Field(
        False,
        description="Accept and record the key of a host seen for the first time. A changed "
        "key is refused even then.",
    )
    node_root: str = Field(
        DEFAULT_NODE_ROOT,
        description="Node root on each host unless the host sets `root`; `~/…` is under the "
        "login user's home.",
    )
    vm_size: str | None = Field(
        None, description="Declared size label of the hosts (a pool's `vmSize`).", max_length=64
    )
    cores: int | None = Field(None, ge=1, le=65536, description="Declared cores per host.")
    memory_bytes: int | None = Field(None, ge=0, description="Declared memory per host, bytes.")
    python: str = Field(
        "python3",
        description="Python 3.8+ on the hosts (a name looked up in the login shell's PATH, or "
        "an absolute path).",
        min_length=1,
        max_length=4096,
    )
    agent_args: list[str] = Field(
        default_factory=list, description="Extra node agent arguments, e.g. `--reaper sigchld`."
    )
    confine_tasks: bool = Field(
        True,
        alias="confineTasks",
        strict=True,
        description="Start each host's agent with `--confine`: tasks run under Landlock with no "
        "capabilities and reach neither the SSH user's home (`~/.ssh` included) nor the node "
        "root beyond their own directories. A host without Landlock runs tasks unconfined and "
        "its node says so (`TasksUnconfined`).",
    )
    connect_timeout_seconds: float = Field(
        10.0, gt=0, le=300, description="Bound on TCP connect, SSH banner, auth and channel open."
    )
    agent_start_timeout_seconds: float = Field(
        30.0, gt=0, le=600, description="Bound on shipping and starting the agent once connected."
    )
    keepalive_seconds: float = Field(
        10.0, gt=0, le=3600, description="SSH keepalive interval on idle connections."
    )
    dead_after_seconds: float = Field(
        30.0,
        gt=0,
        le=86400,
        description="A connection whose sent data stays unacknowledged this long is dropped "
        "(TCP_USER_TIMEOUT); the agent keeps its tasks and the service reconnects.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("a group name is 1-64 letters, digits, '-' or '_'")
        return value

    @field_validator("user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _USER_RE.match(value):
            raise ValueError(f"not a user name: {value!r}")
        return value

    @field_validator("private_key_path", "known_hosts")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return None if value is None else Path(os.path.expanduser(value))

    @field_validator("node_root")
    @classmethod
    def _node_root(cls, value: str) -> str:
        return check_root(value)

    @field_validator("python")
    @classmethod
    def _python(cls, value: str) -> str:
        if any(c in value for c in "\x00\n\r"):
            raise ValueError("python must be a single-line command name or path")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SSHHostGroup:
        if (self.private_key_path is None) == (self.private_key is None):
            raise ValueError("give exactly one of private_key_path and private_key")
        if self.trust_on_first_use and self.known_hosts is None:
            raise ValueError("trust_on_first_use needs a known_hosts file to record keys in")
        hosts = []
        for host in self.hosts:
            if host.user is None:
                if self.user is None:
                    raise ValueError(f"host {host.address}:{host.port} has no user")
                host = host.model_copy(update={"user": self.user})
            if host.host_key is None and self.known_hosts is None:
                raise ValueError(
                    f"host {host.id} has no pinned host_key and the group has no known_hosts "
                    "file: its host key could never be verified"
                )
            hosts.append(host)
        ids = [h.id for h in hosts]
        if len(set(ids)) != len(ids):
            raise ValueError("hosts must be distinct (user@address:port)")
        object.__setattr__(self, "hosts", hosts)
        return self

    def root_of(self, host: SSHHost) -> str:
        """The node root on ``host`` as configured (``~/…`` is expanded on the host)."""
        return host.root or self.node_root


def load_private_key(group: SSHHostGroup) -> paramiko.PKey:
    """The group's client key (from its file or its text), or a clear :class:`AgentError`."""
    passphrase = (
        group.private_key_passphrase.get_secret_value() if group.private_key_passphrase else None
    )
    try:
        if group.private_key_path is not None:
            # Positional: the keyword is ``passphrase`` before paramiko 5, ``password`` since.
            return paramiko.PKey.from_path(group.private_key_path, passphrase)
        assert group.private_key is not None
        text = group.private_key.get_secret_value()
        last: Exception | None = None
        for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
            try:
                return cls.from_private_key(io.StringIO(text), password=passphrase)
            except (paramiko.SSHException, ValueError) as exc:
                last = exc
        raise AgentError(f"the private key text is not a key paramiko can read: {last}")
    except AgentError:
        raise
    except paramiko.PasswordRequiredException as exc:
        raise AgentError("the private key is encrypted: set private_key_passphrase") from exc
    except (paramiko.SSHException, OSError, ValueError) as exc:
        where = group.private_key_path or "private_key"
        raise AgentError(f"cannot load the private key {where}: {exc}") from exc
