"""``prefect-batch nodesource ...``: register SSH host groups from YAML, list, show, delete."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import Invoke

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKyzPT4LP9jZP9quaIxhS/hlKii9nXoijEGaKBnxWcIH"

GROUP_YAML = f"""\
name: lab
user: batch
private_key_path: /etc/prefect-batch/key
vm_size: lab-8core
hosts:
  - {{address: 127.0.0.2, port: 2222, host_key: "{HOST_KEY}"}}
  - {{address: 127.0.0.3, port: 2222, host_key: "{HOST_KEY}"}}
"""


def test_add_list_show_and_delete_an_ssh_group(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "group.yaml"
    path.write_text(GROUP_YAML)
    added = json.loads(cli("nodesource", "ssh", "add", "--file", str(path), "--json").stdout)
    assert added["nodeAgentSKUId"] == "batch.node.ssh.lab"
    assert len(added["hostGroup"]["hosts"]) == 2

    listed = cli("nodesource", "list").stdout
    assert "batch.node.ssh.lab" in listed and "lab-8core" in listed
    images = json.loads(cli("pool", "images", "--json").stdout)
    assert "batch.node.ssh.lab" in [i["nodeAgentSKUId"] for i in images]

    again = cli("nodesource", "ssh", "add", "--file", str(path), expect=1)
    assert "NodeSourceExists" in again.stderr
    path.write_text(GROUP_YAML.replace("lab-8core", "lab-16core"))
    cli("nodesource", "ssh", "add", "--file", str(path), "--replace")
    shown = json.loads(cli("nodesource", "show", "lab", "--json").stdout)
    assert shown["hostGroup"]["vm_size"] == "lab-16core"

    pool = tmp_path / "pool.json"
    pool.write_text(
        json.dumps(
            {
                "id": "p",
                "vmSize": "lab-16core",
                "targetDedicatedNodes": 0,
                "virtualMachineConfiguration": {
                    "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": "lab"},
                    "nodeAgentSKUId": "batch.node.ssh.lab",
                },
            }
        )
    )
    cli("pool", "create", "--file", str(pool))
    refused = cli("nodesource", "delete", "lab", expect=1)
    assert "NodeSourceInUse" in refused.stderr
    cli("pool", "delete", "p")
    cli("nodesource", "delete", "lab")
    assert json.loads(cli("nodesource", "list", "--json").stdout) == []


def test_a_group_with_key_text_is_refused(cli: Invoke, tmp_path: Path) -> None:
    path = tmp_path / "group.yaml"
    path.write_text(
        GROUP_YAML.replace(
            "private_key_path: /etc/prefect-batch/key", 'private_key: "-----BEGIN KEY-----"'
        )
    )
    result = cli("nodesource", "ssh", "add", "--file", str(path), expect=1)
    assert "private_key" in result.stderr and "BEGIN" not in result.stderr


def test_add_an_ec2_template_and_list_it_beside_a_group(
    cli: Invoke, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    key = tmp_path / "batch.pem"
    key.write_text("not read at registration\n")
    with mock_aws():  # EC2 in this process: nothing leaves it
        path = tmp_path / "template.yaml"
        path.write_text(
            "name: burst\namiId: ami-12c6146b\ninstanceType: t3.micro\n"
            f"regionName: us-east-1\nprivateKeyPath: {key}\n"
        )
        added = json.loads(cli("nodesource", "ec2", "add", "--file", str(path), "--json").stdout)
        assert added["nodeAgentSKUId"] == "batch.node.ec2.burst"
        assert added["kind"] == "ec2" and added["spec"]["instanceType"] == "t3.micro"
        path.write_text(path.read_text().replace("t3.micro", "x9.nonesuch"))
        refused = cli("nodesource", "ec2", "add", "--file", str(path), "--name", "bad", expect=1)
        assert "instanceType" in refused.stderr
    groups = tmp_path / "group.yaml"
    groups.write_text(GROUP_YAML)
    cli("nodesource", "ssh", "add", "--file", str(groups))
    listed = cli("nodesource", "list").stdout
    assert "batch.node.ec2.burst" in listed and "t3.micro" in listed and "ec2" in listed
    assert "batch.node.ssh.lab" in listed and "bad" not in listed
