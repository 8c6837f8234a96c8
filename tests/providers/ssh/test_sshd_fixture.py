"""``prefect_batch.testing.sshd``: private sshd servers on loopback only."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from prefect_batch.testing.sshd import SSHServer, SSHServers

pytestmark = pytest.mark.timeout(60)


def test_refuses_addresses_outside_loopback(tmp_path: Path) -> None:
    # The fixture validates the address before it opens any socket: nothing is contacted (and
    # the addresses are from the documentation ranges, TEST-NET-2/3, routed nowhere).
    with pytest.raises(ValueError, match="loopback"):
        SSHServers(tmp_path, first_address="198.51.100.2")
    with pytest.raises(ValueError, match="loopback"):
        SSHServers(tmp_path, count=2, first_address="127.255.255.255")  # next is 128.0.0.0
    server = SSHServer("203.0.113.1", 2222, tmp_path / "s", "root", tmp_path / "keys")
    with pytest.raises(ValueError, match="loopback"):
        server.start()
    assert not (tmp_path / "s").exists()


def test_servers_have_own_keys_configs_and_addresses(servers: SSHServers) -> None:
    assert [s.address for s in servers] == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    assert len({s.host_public_key for s in servers}) == 3
    for server in servers:
        config = server.config_path.read_text()
        assert f"ListenAddress {server.address}" in config
        assert f"HostKey {server.host_key_path}" in config
        assert server.config_path.parent == server.directory
        with socket.create_connection((server.address, server.port), timeout=5) as s:
            s.settimeout(5)
            assert s.recv(64).startswith(b"SSH-2.0-")
    assert servers.known_hosts_text().count("\n") == 3


def test_kill_and_restart_keep_address_port_and_host_key(servers: SSHServers) -> None:
    server = servers[2]
    port, key, pid = server.port, server.host_public_key, server.pid
    with socket.create_connection((server.address, server.port), timeout=5) as s:
        s.settimeout(5)
        s.recv(64)  # a session sshd exists now
        server.kill()
        assert server.process is None
        s.settimeout(5)
        assert s.recv(64) == b""  # the session was killed too
    with pytest.raises(OSError):
        socket.create_connection((server.address, port), timeout=2).close()
    server.start()
    assert (server.port, server.host_public_key) == (port, key) and server.pid != pid
    with socket.create_connection((server.address, server.port), timeout=5):
        pass
