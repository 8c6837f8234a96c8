"""Node sources over the REST extension routes: the remote client registers, lists, reads,
replaces and deletes SSH host groups exactly as the embedded service does."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from prefect_batch import BatchClient, BatchConflictError, BatchInvalidRequestError
from prefect_batch.exceptions import BatchNotFoundError
from tests.api.conftest import Server, wait_for

HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKyzPT4LP9jZP9quaIxhS/hlKii9nXoijEGaKBnxWcIH"


def group(**extra: Any) -> dict[str, Any]:
    return {
        "name": "rlab",
        "user": "batch",
        "private_key_secret_name": "lab-key",
        "hosts": [{"address": "127.0.0.2", "port": 2222, "host_key": HOST_KEY}],
        **extra,
    }


@pytest.fixture(scope="module")
def remote(server: Server) -> Iterator[BatchClient]:
    with BatchClient(server.account.name, url=server.url, account_key=server.account.primary) as c:
        yield c


def test_node_sources_over_rest(remote: BatchClient) -> None:
    remote.create_node_source(group())
    assert "batch.node.ssh.rlab" in {i.node_agent_sku_id for i in remote.list_supported_images()}
    source = remote.get_node_source("rlab")
    assert source.host_group["private_key_secret_name"] == "lab-key"
    assert [s.name for s in remote.list_node_sources()] == ["rlab"]
    with pytest.raises(BatchConflictError) as exists:
        remote.create_node_source(group())
    assert exists.value.code == "NodeSourceExists"
    with pytest.raises(BatchInvalidRequestError):
        remote.create_node_source(group(name="keyed", private_key="-----BEGIN KEY-----"))

    remote.update_node_source("rlab", group(vm_size="big"))
    assert remote.get_node_source("rlab").host_group["vm_size"] == "big"
    remote.create_pool(
        {
            "id": "rssh",
            "vmSize": "big",
            "targetDedicatedNodes": 0,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "ssh", "sku": "rlab"},
                "nodeAgentSKUId": "batch.node.ssh.rlab",
            },
        }
    )
    with pytest.raises(BatchConflictError) as in_use:
        remote.delete_node_source("rlab")
    assert in_use.value.code == "NodeSourceInUse"
    remote.delete_pool("rssh")
    wait_for(lambda: not remote.pool_exists("rssh"))  # a pool being deleted still names it
    remote.delete_node_source("rlab")
    with pytest.raises(BatchNotFoundError):
        remote.get_node_source("rlab")


def test_a_server_takes_key_and_known_hosts_files_only_from_its_ssh_directory(
    tmp_path: Any,
) -> None:
    # A server of its own (the module's has the account already); the check is the store's
    # business on neither SQLite nor PostgreSQL.
    store_url = f"sqlite:///{tmp_path / 'batch.db'}"
    from tests.api.conftest import running_server

    ssh_dir = tmp_path / "ssh"
    allowed = ssh_dir / "acct"  # the account's own directory
    allowed.mkdir(parents=True)
    (allowed / "lab_key").write_text("not read at registration")
    (ssh_dir / "other").mkdir()
    (ssh_dir / "other" / "their_key").write_text("another account's key")
    outside = tmp_path / "elsewhere"
    with running_server(store_url, tmp_path / "home", ssh_files_dir=ssh_dir) as server:
        assert server.account.name == "acct"
        with BatchClient(
            server.account.name, url=server.url, account_key=server.account.primary
        ) as remote:
            refused = [
                ("private_key_path", {"private_key_path": "/etc/hostname"}),
                ("private_key_path", {"private_key_path": str(allowed / ".." / "x")}),
                ("private_key_path", {"private_key_path": str(ssh_dir / "other" / "their_key")}),
                (
                    "known_hosts",
                    {"private_key_path": str(allowed / "lab_key"), "known_hosts": str(outside)},
                ),
            ]
            for field, extra in refused:
                fields = {k: v for k, v in group(**extra).items() if k != "private_key_secret_name"}
                with pytest.raises(BatchInvalidRequestError) as info:
                    remote.create_node_source(fields)
                assert info.value.values.get("PropertyName") == field, extra
            assert remote.list_node_sources() == []
            fields = {k: v for k, v in group().items() if k != "private_key_secret_name"}
            remote.create_node_source(
                {
                    **fields,
                    "private_key_path": str(allowed / "lab_key"),
                    "known_hosts": str(allowed / "known_hosts"),
                }
            )
            assert [s.name for s in remote.list_node_sources()] == ["rlab"]


def test_an_ec2_template_needs_the_operator_behind_a_server(remote: BatchClient) -> None:
    """The server's cloud credentials, and its reach: an account the operator did not list
    (PREFECT_BATCH_CLOUD_ACCOUNTS) cannot register one, and the server asks no endpoint."""
    import socket

    from prefect_batch.exceptions import BatchAuthenticationError

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        with pytest.raises(BatchAuthenticationError) as refused:
            remote.create_node_source(
                {
                    "kind": "ec2",
                    "name": "cloud",
                    "amiId": "ami-1",
                    "instanceType": "t3.micro",
                    "endpointUrl": f"http://127.0.0.1:{port}",
                    "privateKeySecretName": "k",
                }
            )
        assert refused.value.code == "OperationNotPermittedForAccount"
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came: nothing was asked of the endpoint
    finally:
        listener.close()
    assert "cloud" not in {s.name for s in remote.list_node_sources()}
