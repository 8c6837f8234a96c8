"""SSH host key verification: pinned keys, known_hosts files, opt-in trust on first use.

A host's key is checked before anything is sent to it (authentication included). The key must
match the key pinned for that host, or (without a pin) an entry in the group's known_hosts
file. A key that matches neither is refused with :class:`~prefect_batch.exceptions.HostKeyError`
naming the host and the key's SHA256 fingerprint (the form ``ssh-keygen -lf`` prints), so an
operator can compare it out of band. Trust on first use is an explicit opt-in: the first key a
host shows is then recorded in the known_hosts file (and checked on every later connection); a
*changed* key is refused even then.

This module never accepts an unknown key silently and does not look
at ``~/.ssh/known_hosts`` unless a group names it. It does not open connections.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

import paramiko
from paramiko.hostkeys import InvalidHostKey

from prefect_batch.exceptions import HostKeyError

__all__ = [
    "HostKeyPolicy",
    "fingerprint",
    "known_hosts_name",
    "load_known_hosts",
    "parse_public_key",
]

log = logging.getLogger(__name__)

_RECORD_LOCK = threading.Lock()


def parse_public_key(text: str) -> paramiko.PKey:
    """A public key from its OpenSSH one-line form (``ssh-ed25519 AAAA… [comment]``).

    Raises:
        ValueError: The text is not a public key paramiko knows.
    """
    parts = text.strip().split()
    if len(parts) < 2:
        raise ValueError("expected '<type> <base64> [comment]', e.g. 'ssh-ed25519 AAAA…'")
    key_type, data = parts[0], parts[1]
    try:
        blob = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"the key data is not base64: {exc}") from exc
    try:
        key = paramiko.PKey.from_type_string(key_type, blob)
    except (paramiko.SSHException, ValueError, TypeError) as exc:
        raise ValueError(f"not a valid {key_type} public key: {exc}") from exc
    if key.get_name() != key_type and not key_type.startswith(key.get_name()):
        raise ValueError(f"the key data is a {key.get_name()} key, not {key_type}")
    return key


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint of a key: ``SHA256:`` + unpadded base64 of the digest."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """The name known_hosts files use: ``address`` on port 22, else ``[address]:port``."""
    return address if port == 22 else f"[{address}]:{port}"


def load_known_hosts(path: Path) -> paramiko.HostKeys:
    """The entries of a known_hosts file (hashed names included); empty if it does not exist.

    Raises:
        HostKeyError: The file exists but cannot be read or parsed.
    """
    keys = paramiko.HostKeys()
    try:
        keys.load(os.fspath(path))
    except FileNotFoundError:
        pass
    except (OSError, paramiko.SSHException, InvalidHostKey, ValueError, binascii.Error) as exc:
        raise HostKeyError(
            f"cannot read the known_hosts file {path}: {exc}", host=str(path), fingerprint=""
        ) from exc
    return keys


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Called by paramiko for a host with no known key: refuse, or record it when opted in.

    Args:
        trust_on_first_use: Record an unknown host's key in ``known_hosts`` and accept it.
            Off by default: unknown keys are refused.
        known_hosts: The file to record into (and the one named in error messages).
    """

    def __init__(self, *, trust_on_first_use: bool = False, known_hosts: Path | None = None):
        if trust_on_first_use and known_hosts is None:
            raise ValueError("trust on first use needs a known_hosts file to record keys in")
        self.trust_on_first_use = trust_on_first_use
        self.known_hosts = known_hosts

    def missing_host_key(self, client: Any, hostname: str, key: paramiko.PKey) -> None:
        """Raise :class:`HostKeyError`, or record ``key`` for ``hostname`` (opt-in only)."""
        fp = fingerprint(key)
        if not self.trust_on_first_use or self.known_hosts is None:
            where = f"known_hosts file {self.known_hosts}" if self.known_hosts else "no known_hosts"
            raise HostKeyError(
                f"host key of {hostname} is unknown: it offered {key.get_name()} {fp}, which is "
                f"not pinned for this host ({where}). Check the fingerprint out of band "
                f"(ssh-keygen -lf /etc/ssh/ssh_host_{_short(key)}_key.pub on the host), then pin "
                f"it as host_key or add it to known_hosts; trust_on_first_use records it instead",
                host=hostname,
                fingerprint=fp,
                reason="unknown",
            )
        self._record(client, hostname, key, fp)

    def _record(self, client: Any, hostname: str, key: paramiko.PKey, fp: str) -> None:
        assert self.known_hosts is not None
        with _RECORD_LOCK:
            # Another connection may have recorded this host meanwhile: check again.
            current = load_known_hosts(self.known_hosts).lookup(hostname)
            if current:
                same = current.get(key.get_name())
                if same is not None and same.asbytes() == key.asbytes():
                    client.get_host_keys().add(hostname, key.get_name(), key)
                    return
                raise HostKeyError(
                    f"host key of {hostname} CHANGED while connecting: it offered "
                    f"{key.get_name()} {fp} but {self.known_hosts} now holds "
                    + ", ".join(f"{k.get_name()} {fingerprint(k)}" for k in current.values()),
                    host=hostname,
                    fingerprint=fp,
                    reason="changed",
                    expected=[fingerprint(k) for k in current.values()],
                )
            line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
            self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("ascii"))
            finally:
                os.close(fd)
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "trust on first use: recorded host key %s %s for %s in %s",
            key.get_name(),
            fp,
            hostname,
            self.known_hosts,
        )


def _short(key: paramiko.PKey) -> str:
    name = str(key.get_name())
    if name.startswith("ssh-"):
        return name[4:]
    if name.startswith("ecdsa"):
        return "ecdsa"
    return name
