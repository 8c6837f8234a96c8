"""``SSHHostGroup`` validation, host allocation, key helpers and the launcher's quoting."""

from __future__ import annotations

import base64
import hashlib
import shlex
from pathlib import Path
from typing import Any

import paramiko
import pytest
from pydantic import ValidationError

from prefect_batch.exceptions import AgentError, HostKeyError
from prefect_batch.providers.contract import NodeRef, PoolRef
from prefect_batch.providers.hostkeys import (
    HostKeyPolicy,
    fingerprint,
    known_hosts_name,
    load_known_hosts,
    parse_public_key,
)
from prefect_batch.providers.ssh import (
    _LAUNCHER,
    DEFAULT_NODE_ROOT,
    SSHHostGroup,
    SSHNodeSource,
)

# A real ed25519 public key (any fixed one will do: nothing connects in this module).
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH2PbZoGOTv6fva1LHfv5tE55JveRrvej0A8p589pbEu"
OTHER = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C7okWi0dh2l9GvJl"


def group(**overrides: Any) -> SSHHostGroup:
    config: dict[str, Any] = {
        "hosts": [
            {"address": "127.0.0.5", "user": "batch", "host_key": ED25519},
            {"address": "127.0.0.6", "port": 2222, "user": "batch", "host_key": OTHER},
            {"address": "node3.lab", "user": "ops", "host_key": ED25519, "root": "/srv/pb"},
        ],
        "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n...",
    }
    config.update(overrides)
    return SSHHostGroup(**config)


def test_defaults_and_host_ids() -> None:
    g = group()
    assert [h.id for h in g.hosts] == [
        "batch@127.0.0.5:22",
        "batch@127.0.0.6:2222",
        "ops@node3.lab:22",
    ]
    assert g.trust_on_first_use is False
    assert g.node_root == DEFAULT_NODE_ROOT == "~/.prefect-batch-node"
    assert g.root_of(g.hosts[0]) == DEFAULT_NODE_ROOT and g.root_of(g.hosts[2]) == "/srv/pb"
    assert g.hosts[1].known_hosts_name == "[127.0.0.6]:2222"
    assert g.hosts[0].known_hosts_name == "127.0.0.5"
    assert "BEGIN" not in repr(g) and "BEGIN" not in str(g.model_dump())  # a secret stays secret


def test_group_user_fills_hosts_without_one() -> None:
    g = group(hosts=[{"address": "127.0.0.9", "host_key": ED25519}], user="svc")
    assert g.hosts[0].user == "svc"
    with pytest.raises(ValidationError, match="has no user"):
        group(hosts=[{"address": "127.0.0.9", "host_key": ED25519}])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"private_key_path": "/k"}, "exactly one of private_key_path and private_key"),
        ({"private_key": None}, "exactly one of private_key_path and private_key"),
        ({"trust_on_first_use": True}, "trust_on_first_use needs a known_hosts file"),
        (
            {"hosts": [{"address": "127.0.0.5", "user": "u"}]},
            "no pinned host_key and the group has no known_hosts",
        ),
        (
            {"hosts": [{"address": "h", "user": "u", "host_key": ED25519}] * 2},
            "hosts must be distinct",
        ),
        ({"hosts": []}, "at least 1"),
        ({"node_root": "relative/dir"}, "absolute or start with '~/'"),
        ({"python": "python3\nrm -rf /"}, "single-line"),
        ({"name": "bad name"}, "group name"),
        ({"unknown": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_groups_are_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        group(**overrides)


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ({"address": "-oProxyCommand=touch /tmp/x"}, "not a host name"),
        ({"address": "a b"}, "not a host name"),
        ({"address": "h", "user": "root; id"}, "not a user name"),
        ({"address": "h", "port": 0}, "greater than or equal to 1"),
        ({"address": "h", "host_key": "ssh-ed25519 not-base64!"}, "not base64"),
        ({"address": "h", "host_key": "ssh-ed25519"}, "expected '<type> <base64>"),
        ({"address": "h", "host_key": "ssh-rsa " + ED25519.split()[1]}, "not a valid ssh-rsa"),
        ({"address": "h", "root": "~user/x"}, "absolute or start with '~/'"),
    ],
)
def test_invalid_hosts_are_refused(host: dict[str, Any], message: str) -> None:
    host = {"user": "u", "host_key": ED25519, **host}
    with pytest.raises(ValidationError, match=message):
        group(hosts=[host])


def test_known_hosts_file_replaces_pins_and_tofu_needs_it(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    g = group(hosts=[{"address": "h", "user": "u"}], known_hosts=known, trust_on_first_use=True)
    assert g.hosts[0].host_key is None and g.known_hosts == known


def test_paths_under_home_are_expanded() -> None:
    g = group(private_key=None, private_key_path="~/.ssh/id", known_hosts="~/kh")
    assert g.private_key_path == Path.home() / ".ssh" / "id"
    assert g.known_hosts == Path.home() / "kh"


POOL = PoolRef(account="a", pool_id="p", vm_size="standard_d1", task_slots_per_node=1)


def test_place_gives_free_hosts_in_order_and_says_why_not_for_the_rest() -> None:
    source = SSHNodeSource(group())
    ids = [h.id for h in source.hosts]
    assert source.sku == source.node_agent_sku_id == "batch.node.ssh.ssh"
    placed = source.place(POOL, ["n1", "n2"], ())
    assert [(s.node_id, s.machine_id) for s in placed.slots] == [("n1", ids[0]), ("n2", ids[1])]
    assert placed.error is None
    assert placed.slots[0].address == source.hosts[0].address
    assert placed.slots[2 - 1].root == source.node_root(ids[1])
    short = source.place(POOL, ["a", "b", "c"], in_use=[ids[0]])
    assert [s.machine_id for s in short.slots] == ids[1:]
    assert short.error is not None and short.error.code == "AllocationFailed"
    assert "2 free host(s) of 3 for the 3 more node(s) pool p" in short.error.message
    assert source.place(POOL, [], ()).slots == []
    assert source.node_root(ids[2]) == "/srv/pb"
    with pytest.raises(AgentError, match="no host"):
        source.host("nobody@nowhere:22")


def test_connect_without_a_host_is_an_agent_error() -> None:
    source = SSHNodeSource(group(hosts=[{"address": "h", "user": "u", "host_key": ED25519}]))
    node = NodeRef(account="a", pool_id="p", node_id="n2", root="/srv/pb")
    with pytest.raises(AgentError, match="node n2 has no host"):
        source.connect(node, lambda m: None)


def test_unreadable_private_key_text_is_an_agent_error() -> None:
    source = SSHNodeSource(group(private_key="not a key"))
    with pytest.raises(AgentError, match="private key"):
        source._private_key()


def test_missing_private_key_file_is_an_agent_error(tmp_path: Path) -> None:
    source = SSHNodeSource(group(private_key=None, private_key_path=tmp_path / "nope"))
    with pytest.raises(AgentError, match="cannot load the private key"):
        source._private_key()


def test_fingerprint_is_openssh_sha256() -> None:
    key = parse_public_key(ED25519 + " a comment")
    blob = base64.b64decode(ED25519.split()[1])
    expected = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert fingerprint(key) == "SHA256:" + expected
    assert key.get_name() == "ssh-ed25519"
    assert known_hosts_name("h", 22) == "h" and known_hosts_name("h", 2200) == "[h]:2200"


def test_policy_refuses_unknown_keys_by_default() -> None:
    key = parse_public_key(ED25519)
    client = paramiko.SSHClient()
    with pytest.raises(HostKeyError) as info:
        HostKeyPolicy().missing_host_key(client, "[h]:2200", key)
    assert info.value.host == "[h]:2200" and info.value.reason == "unknown"
    assert fingerprint(key) in str(info.value) and "[h]:2200" in str(info.value)
    assert isinstance(info.value, AgentError)
    with pytest.raises(ValueError, match="known_hosts"):
        HostKeyPolicy(trust_on_first_use=True)


def test_policy_records_on_first_use_and_refuses_a_different_key_later(tmp_path: Path) -> None:
    known = tmp_path / "dir" / "known_hosts"
    policy = HostKeyPolicy(trust_on_first_use=True, known_hosts=known)
    key, other = parse_public_key(ED25519), parse_public_key(OTHER)
    client = paramiko.SSHClient()
    policy.missing_host_key(client, "[h]:2200", key)
    assert known.read_text() == f"[h]:2200 {ED25519}\n"
    assert (known.stat().st_mode & 0o777) == 0o600
    assert client.get_host_keys().check("[h]:2200", key)
    policy.missing_host_key(paramiko.SSHClient(), "[h]:2200", key)  # a racing connection
    assert known.read_text().count("\n") == 1
    with pytest.raises(HostKeyError, match="CHANGED") as info:
        policy.missing_host_key(paramiko.SSHClient(), "[h]:2200", other)
    assert info.value.expected == [fingerprint(key)]
    assert load_known_hosts(known).lookup("[h]:2200") is not None


def test_broken_known_hosts_file_is_a_host_key_error(tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("h ssh-ed25519 !!!notbase64\n")
    with pytest.raises(HostKeyError, match="cannot read the known_hosts file"):
        load_known_hosts(known)
    assert len(load_known_hosts(tmp_path / "missing")) == 0


def test_launcher_is_a_constant_and_values_arrive_quoted() -> None:
    evil = "/tmp/a b/$(id)/`id`/'q'/;id"
    source = SSHNodeSource(group(python="/opt/py thon/bin/python3", agent_args=["--x", "a;b"]))
    command = source.launcher_command(evil)
    # The remote login shell splits it back into exactly these words.
    words = shlex.split(command)
    assert words[:5] == ["exec", "/bin/sh", "-c", _LAUNCHER, "prefect-batch-agent"]
    assert words[5:] == [
        evil,
        "/opt/py thon/bin/python3",
        source._agent_name,
        str(len(source._agent_data)),
        *("--confine", "--confine-optional", "--protect", "~", "--protect", evil),
        "--x",
        "a;b",
    ]
