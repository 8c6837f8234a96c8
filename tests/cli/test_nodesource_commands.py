"""``prefect-batch nodesource ...``: register SSH host groups from YAML, list, show, delete."""

from __future__ import annotations

import json
from pathlib import Path

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
