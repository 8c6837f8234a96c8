"""Registering SSH host groups as node sources: validation, no key material, pools naming them.

No host is contacted here (the engine is off); ``tests/providers/ssh/test_ssh_pool.py`` runs
pools of real sshd hosts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
)
from prefect_batch.providers.hostgroup import SSHHostGroup
from prefect_batch.store.schema import node_sources
from prefect_batch.testing import embedded_client

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKyzPT4LP9jZP9quaIxhS/hlKii9nXoijEGaKBnxWcIH"
KEY_TEXT = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
)


def group(name: str = "lab", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "user": "batch",
        "private_key_path": "/etc/prefect-batch/key",
        "hosts": [
            {"address": "127.0.0.2", "port": 2222, "host_key": HOST_KEY},
            {"address": "127.0.0.3", "port": 2222, "host_key": HOST_KEY},
        ],
        "vm_size": "lab-8core",
        **extra,
    }


def ssh_pool(pool_id: str, group_name: str = "lab", nodes: int = 0) -> dict[str, Any]:
    return {
        "id": pool_id,
        "vmSize": "lab-8core",
        "targetDedicatedNodes": nodes,
        "virtualMachineConfiguration": {
            "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": group_name},
            "nodeAgentSKUId": f"batch.node.ssh.{group_name}",
        },
    }


@pytest.fixture
def client(tmp_path: Path) -> Any:
    with embedded_client(tmp_path / "home", engine=False) as c:
        yield c


def test_a_registered_group_is_a_supported_image_pools_can_name(client: BatchClient) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        client.create_pool(ssh_pool("early"))
    assert info.value.values["PropertyName"] == "virtualMachineConfiguration.nodeAgentSKUId"

    client.create_node_source(group())
    skus = [i.node_agent_sku_id for i in client.list_supported_images()]
    assert skus == ["batch.node.local", "batch.node.ssh.lab"]
    client.create_pool(ssh_pool("p"))

    source = client.get_node_source("lab")
    assert source.node_agent_sku_id == "batch.node.ssh.lab"
    assert source.host_group["hosts"][0]["user"] == "batch"  # the group's user, filled in
    assert source.hosts_in_use == {}
    assert [s.name for s in client.list_node_sources()] == ["lab"]
    with pytest.raises(BatchConflictError) as exists:
        client.create_node_source(group())
    assert exists.value.code == "NodeSourceExists"

    with pytest.raises(BatchConflictError) as in_use:
        client.delete_node_source("lab")
    assert in_use.value.code == "NodeSourceInUse" and "p" in in_use.value.message
    client.delete_pool("p")
    client.delete_node_source("lab")
    with pytest.raises(BatchNotFoundError):
        client.get_node_source("lab")


def test_key_material_is_refused_and_never_stored(client: BatchClient) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        client.create_node_source(group(private_key_path=None, private_key=KEY_TEXT))
    assert info.value.values["PropertyName"] == "private_key"
    assert "not-a-real-key" not in str(info.value)
    provider_model = SSHHostGroup(**group(private_key_path=None, private_key=KEY_TEXT))
    with pytest.raises(BatchInvalidRequestError):
        client.create_node_source(provider_model)

    client.create_node_source(group("vault", private_key_path=None, private_key_secret_name="k"))
    assert client.get_node_source("vault").host_group["private_key_secret_name"] == "k"
    with pytest.raises(BatchInvalidRequestError):  # a path and a Secret block: which one?
        client.create_node_source(group("both", private_key_secret_name="k"))
    assert client.store is not None
    with client.store.read() as conn:
        stored = conn.execute(select(node_sources.c.spec)).scalars().all()
    assert "PRIVATE KEY" not in repr(stored)


def test_invalid_groups_are_refused_naming_the_field(client: BatchClient) -> None:
    unverifiable = group(hosts=[{"address": "127.0.0.2"}])  # no pinned key, no known_hosts
    with pytest.raises(BatchInvalidRequestError):
        client.create_node_source(unverifiable)
    with pytest.raises(BatchInvalidRequestError) as info:
        client.create_node_source(group(name="no spaces"))
    assert "name" in info.value.values["PropertyName"]
    with pytest.raises(BatchInvalidRequestError):
        client.create_node_source(group(hosts=[]))
    assert client.list_node_sources() == []


def test_a_group_can_be_replaced_but_not_renamed(client: BatchClient) -> None:
    client.create_node_source(group())
    first = client.get_node_source("lab")
    client.update_node_source("lab", group(vm_size="lab-16core"))
    second = client.get_node_source("lab")
    assert second.host_group["vm_size"] == "lab-16core"
    assert second.etag != first.etag
    with pytest.raises(BatchInvalidRequestError):
        client.update_node_source("lab", group(name="other"))
    with pytest.raises(BatchNotFoundError):
        client.update_node_source("missing", group(name="missing"))
