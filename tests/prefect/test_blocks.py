"""Blocks: Prefect's block standards, the pool spec, ensure() against a real embedded service,
save/load through the Prefect server, and the block documents under ``blocks/``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flowtest_helpers import events_named
from prefect.testing.standard_test_suites import BlockStandardTestSuite
from pydantic import ValidationError

from prefect_batch import BatchClient
from prefect_batch.blocks import (
    BatchAccount,
    BatchPool,
    BatchPoolSpecError,
    EC2Template,
    LocalNodeSource,
    SSHHost,
    SSHHostGroup,
)
from prefect_batch.testing import wait_for_nodes, wait_until
from prefect_batch.testing.sshd import ssh_servers

REPO = Path(__file__).resolve().parents[2]
ALL_BLOCKS = [BatchAccount, BatchPool, LocalNodeSource, SSHHostGroup, EC2Template]


@pytest.mark.parametrize("block_class", ALL_BLOCKS, ids=lambda c: c.__name__)
class TestBlockStandards(BlockStandardTestSuite):
    """Prefect's own block standards, on every block class."""

    @pytest.fixture
    def block(self, block_class: type) -> type:
        return block_class

    def test_has_a_valid_image(self, block: type) -> None:
        """Offline stand-in for the suite's logo check (which downloads the image)."""
        url = str(block._logo_url)
        assert url.startswith("https://raw.githubusercontent.com/PrefectHQ/prefect/")
        assert url.endswith(".png")

    def test_slug_and_name_are_set(self, block: type) -> None:
        assert block.get_block_type_slug().startswith("batch-")
        assert block.get_block_type_name().startswith("Batch ")


# -- the pool spec -----------------------------------------------------------------------------


def test_pool_spec_defaults_to_local_nodes() -> None:
    spec = BatchPool(pool_id="p", target_dedicated_nodes=3).to_pool_spec().to_wire()
    assert spec["vmSize"] == "local"
    assert spec["virtualMachineConfiguration"]["nodeAgentSKUId"] == "batch.node.local"
    assert spec["targetDedicatedNodes"] == 3
    assert spec["taskSchedulingPolicy"] == {"nodeFillType": "spread"}


def test_pool_spec_takes_vm_size_from_its_node_source() -> None:
    hosts = SSHHostGroup(group_name="lab", hosts=[SSHHost(address="127.0.0.5")], vm_size="lab")
    spec = BatchPool(pool_id="p", node_source=hosts).to_pool_spec().to_wire()
    assert spec["vmSize"] == "lab"
    assert spec["virtualMachineConfiguration"]["nodeAgentSKUId"] == "batch.node.ssh.lab"
    ec2 = EC2Template(ami_id="ami-1", instance_type="c7g.large")
    spec = BatchPool(pool_id="p", node_source=ec2).to_pool_spec().to_wire()
    assert spec["vmSize"] == "c7g.large"
    assert spec["virtualMachineConfiguration"]["imageReference"]["sku"] == "ami-1"


def test_pool_block_rejects_bad_ids_and_start_tasks() -> None:
    with pytest.raises(ValidationError):
        BatchPool(pool_id="no spaces")
    with pytest.raises(ValidationError):
        BatchPool(pool_id="p", start_task={"waitForSuccess": True})  # no commandLine
    with pytest.raises(ValidationError):
        BatchPool(pool_id="p", task_slots_per_node=257)


HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKyzPT4LP9jZP9quaIxhS/hlKii9nXoijEGaKBnxWcIH"


def test_node_source_specs_carry_no_secret() -> None:
    hosts = SSHHostGroup(
        hosts=[SSHHost(address="127.0.0.5", host_key=HOST_KEY)],
        user="batch",
        private_key_secret_name="lab-key",
    )
    spec = hosts.node_source_spec()
    assert spec["hosts"] == [{"address": "127.0.0.5", "port": 22, "host_key": HOST_KEY}]
    assert spec["private_key_secret_name"] == "lab-key"
    assert "PRIVATE KEY" not in repr(spec)


def test_node_source_blocks_confine_tasks_unless_told_not_to() -> None:
    hosts = SSHHostGroup(hosts=[SSHHost(address="127.0.0.5", host_key=HOST_KEY)], user="b")
    assert hosts.node_source_spec()["confine_tasks"] is True
    off = SSHHostGroup(hosts=[SSHHost(address="127.0.0.5")], user="b", confine_tasks=False)
    assert off.node_source_spec()["confine_tasks"] is False
    assert EC2Template(ami_id="ami-1", instance_type="t3").node_source_spec()["confineTasks"]
    ec2_off = EC2Template(ami_id="ami-1", instance_type="t3", confine_tasks=False)
    assert ec2_off.node_source_spec()["confineTasks"] is False


def test_account_settings(tmp_path: Path) -> None:
    embedded = BatchAccount(home=str(tmp_path), account_name="acct")
    assert embedded.settings().home == tmp_path
    assert embedded.settings().service_url is None
    remote = BatchAccount(service_url="http://127.0.0.1:9", account_key="a2V5")
    settings = remote.settings()
    assert settings.service_url == "http://127.0.0.1:9"
    assert settings.account_key is not None
    assert settings.account_key.get_secret_value() == "a2V5"
    assert "a2V5" not in repr(remote)


def test_account_with_a_url_builds_a_client_of_that_server() -> None:
    account = BatchAccount(
        service_url="http://127.0.0.1:9", account_name="acct", account_key="a2V5"
    )
    client = account.get_client()
    try:
        assert client.store is None  # remote: no store, no engine in this process
        assert client.account_name == "acct"
    finally:
        client.close()


def test_account_client_is_embedded_under_its_home(tmp_path: Path) -> None:
    with BatchAccount(home=str(tmp_path)).get_client(engine=False) as client:
        assert client.list_pools() == []
    assert (tmp_path / "batch.db").exists()


# -- ensure() ----------------------------------------------------------------------------------


def test_ensure_creates_then_changes_only_what_differs(
    batch_client: BatchClient, pool_id: str, prefect_client: Any
) -> None:
    block = BatchPool(pool_id=pool_id, target_dedicated_nodes=1, metadata={"team": "a"})
    created = block.ensure(batch_client)
    assert created.target_dedicated_nodes == 1
    wait_for_nodes(batch_client, pool_id, 1)
    before = batch_client.get_pool(pool_id).etag

    block.ensure(batch_client)  # nothing differs: nothing changes
    assert batch_client.get_pool(pool_id).etag == before

    block.target_dedicated_nodes = 2
    block.metadata = {"team": "b"}
    block.start_task = {"commandLine": "/bin/true"}
    block.ensure(batch_client)
    pool = batch_client.get_pool(pool_id)
    assert pool.target_dedicated_nodes == 2
    assert {m.name: m.value for m in pool.metadata or []} == {"team": "b"}
    assert pool.start_task is not None and pool.start_task.command_line == "/bin/true"
    wait_for_nodes(batch_client, pool_id, 2)

    events = events_named(
        prefect_client, "prefect-batch.pool.resized", f"prefect-batch.pool.{pool_id}"
    )
    assert events[0].payload == {"previousTargetDedicatedNodes": 1, "targetDedicatedNodes": 2}
    events_named(prefect_client, "prefect-batch.pool.created", f"prefect-batch.pool.{pool_id}")


def test_ensure_refuses_what_azure_cannot_change(batch_client: BatchClient, pool_id: str) -> None:
    BatchPool(pool_id=pool_id, target_dedicated_nodes=0).ensure(batch_client)
    with pytest.raises(BatchPoolSpecError, match="taskSlotsPerNode") as info:
        BatchPool(pool_id=pool_id, target_dedicated_nodes=0, task_slots_per_node=4).ensure(
            batch_client
        )
    assert info.value.property_name == "taskSlotsPerNode"
    with pytest.raises(BatchPoolSpecError, match="nodeFillType"):
        BatchPool(pool_id=pool_id, target_dedicated_nodes=0, node_fill_type="pack").ensure(
            batch_client
        )


def test_ensure_names_a_node_source_the_service_does_not_offer(
    batch_client: BatchClient, pool_id: str
) -> None:
    # A host group with no key and no way to verify its host: the service will not take it.
    block = BatchPool(pool_id=pool_id, node_source=SSHHostGroup(hosts=[SSHHost(address="h")]))
    with pytest.raises(BatchPoolSpecError, match="'ssh' cannot be registered") as info:
        block.ensure(batch_client)
    assert info.value.property_name == "virtualMachineConfiguration.nodeAgentSKUId"
    assert not batch_client.pool_exists(pool_id)


def test_ensure_registers_an_ec2_template_checked_against_ec2(
    batch_client: BatchClient, pool_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():  # EC2 in this process: nothing leaves it
        # An AMI EC2 does not have: refused by the service, named, nothing made.
        bad = EC2Template(
            template_name=f"t{pool_id}",
            ami_id="ami-1",
            region_name="us-east-1",
            private_key_secret_name="ec2-key",
        )
        with pytest.raises(BatchPoolSpecError, match="amiId") as info:
            BatchPool(pool_id=pool_id, node_source=bad).ensure(batch_client)
        assert info.value.property_name == "virtualMachineConfiguration.nodeAgentSKUId"
        assert not batch_client.pool_exists(pool_id)
        names = {s.name for s in batch_client.list_node_sources()}
        assert bad.template_name not in names
        good = EC2Template(
            template_name=f"t{pool_id}",
            ami_id="ami-12c6146b",
            region_name="us-east-1",
            subnet_id=None,
            private_key_secret_name="ec2-key",
            spot=True,
        )
        block = BatchPool(pool_id=pool_id, node_source=good, target_dedicated_nodes=0)
        pool = block.ensure(batch_client)
        assert pool.virtual_machine_configuration.node_agent_sku_id == good.node_agent_sku()
        source = batch_client.get_node_source(good.template_name)
        assert source.kind == "ec2" and source.spec["amiId"] == "ami-12c6146b"
        block.ensure(batch_client)  # the same again: registration and pool unchanged
        assert batch_client.get_node_source(good.template_name).etag == source.etag
        wire = BatchPool(pool_id=pool_id, node_source=good, target_dedicated_nodes=3)
        assert wire.to_pool_spec().to_wire()["targetLowPriorityNodes"] == 3
        batch_client.delete_pool(pool_id)


def test_ensure_registers_an_ssh_group_whose_key_is_a_secret_block(
    batch_client: BatchClient, pool_id: str, tmp_path: Path
) -> None:
    from prefect.blocks.system import Secret

    with ssh_servers(1, directory=tmp_path / "sshd") as servers:
        server = servers[0]
        Secret(value=servers.client_key_path.read_text()).save("test-lab-key", overwrite=True)
        hosts = SSHHostGroup(
            group_name=f"lab-{pool_id}",
            user=server.user,
            private_key_secret_name="test-lab-key",
            hosts=[
                SSHHost(
                    address=server.address,
                    port=server.port,
                    host_key=server.host_public_key,
                    root=str(tmp_path / "node"),
                )
            ],
        )
        block = BatchPool(pool_id=pool_id, target_dedicated_nodes=1, node_source=hosts)
        block.ensure(batch_client)
        registered = batch_client.get_node_source(hosts.group_name)
        assert registered.host_group["private_key_secret_name"] == "test-lab-key"
        assert "PRIVATE KEY" not in repr(registered)
        # The engine resolves the Secret block when it connects.
        (node,) = wait_for_nodes(batch_client, pool_id, 1, timeout=60)
        assert node.ip_address == server.address

        hosts.cores = 2  # a changed group: its registration follows
        block.ensure(batch_client)
        assert batch_client.get_node_source(hosts.group_name).host_group["cores"] == 2
        batch_client.delete_pool(pool_id)
        wait_until(lambda: not batch_client.pool_exists(pool_id), timeout=60)


def test_ensure_with_an_account_block_opens_and_closes_its_own_client(tmp_path: Path) -> None:
    account = BatchAccount(home=str(tmp_path))
    pool = BatchPool(pool_id="acct-pool", target_dedicated_nodes=0, account=account).ensure()
    assert pool.id == "acct-pool"
    with account.get_client(engine=False) as client:
        assert client.pool_exists("acct-pool")


# -- through the Prefect server ----------------------------------------------------------------


PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
)


def test_blocks_save_and_load_with_nested_blocks(prefect_api: None) -> None:
    from prefect.blocks.system import Secret
    from prefect_aws import AwsCredentials

    Secret(value=PRIVATE_KEY).save("test-ssh-key", overwrite=True)
    hosts = SSHHostGroup(
        group_name="lab",
        hosts=[SSHHost(address="127.0.0.5", port=2222, host_key=HOST_KEY)],
        user="batch",
        private_key_secret_name="test-ssh-key",
    )
    account = BatchAccount(service_url="http://batch:8000", account_key="c2VjcmV0")
    BatchPool(pool_id="saved", node_source=hosts, account=account, metadata={"a": "b"}).save(
        "test-saved-pool", overwrite=True
    )
    loaded = BatchPool.load("test-saved-pool")
    assert isinstance(loaded.node_source, SSHHostGroup)
    assert loaded.node_source.hosts[0].port == 2222
    assert loaded.metadata == {"a": "b"}
    assert loaded.account is not None
    assert loaded.account.account_key.get_secret_value() == "c2VjcmV0"
    group = loaded.node_source.to_host_group()  # the SSH node source's own model
    assert group.private_key.get_secret_value() == PRIVATE_KEY
    assert group.hosts[0].id == "batch@127.0.0.5:2222" and group.hosts[0].host_key == HOST_KEY
    assert loaded.to_pool_spec().to_wire()["virtualMachineConfiguration"]["nodeAgentSKUId"] == (
        "batch.node.ssh.lab"
    )

    EC2Template(ami_id="ami-1", aws_credentials=AwsCredentials(region_name="eu-west-1")).save(
        "test-ec2", overwrite=True
    )
    ec2 = EC2Template.load("test-ec2")
    assert ec2.aws_credentials is not None and ec2.aws_credentials.region_name == "eu-west-1"
    assert "awsCredentialsBlockName" not in ec2.node_source_spec()  # saved inside the template
    AwsCredentials(region_name="eu-west-1").save("test-lab-aws", overwrite=True)
    EC2Template(ami_id="ami-1", aws_credentials=AwsCredentials.load("test-lab-aws")).save(
        "test-ec2-named", overwrite=True
    )
    named = EC2Template.load("test-ec2-named").node_source_spec()
    assert named["awsCredentialsBlockName"] == "test-lab-aws"


# -- blocks/ -----------------------------------------------------------------------------------


def _register_module() -> Any:
    path = REPO / "blocks" / "register.py"
    spec = importlib.util.spec_from_file_location("blocks_register", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_every_block_document_loads_through_its_class() -> None:
    register = _register_module()
    built = register.validate_documents(REPO / "blocks")
    files = sorted((REPO / "blocks").glob("*.yaml"))
    assert len(built) == len(files) >= 5
    pool = built["batch-pool/local-pool"]
    assert isinstance(pool, BatchPool) and isinstance(pool.node_source, LocalNodeSource)
    lab = built["batch-ssh-host-group/lab-hosts"]
    lab.private_key_path = "/etc/example-key"  # the Secret block is not there offline
    lab.private_key_secret_name = None
    assert len(lab.to_host_group().hosts) == 3  # valid for the SSH node source itself
    for path in files:
        assert "PRIVATE KEY" not in path.read_text() and "account_key:" not in path.read_text()


def test_block_documents_reject_dangling_references(tmp_path: Path) -> None:
    register = _register_module()
    (tmp_path / "p.yaml").write_text(
        "block_type: batch-pool\nname: p\ndata:\n  pool_id: p\n"
        "  node_source: {$ref: batch-local-node-source/missing}\n"
    )
    with pytest.raises(ValueError, match="no document here defines"):
        register.load_documents(tmp_path)


def test_register_script_is_idempotent(prefect_api: None) -> None:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    script = [sys.executable, str(REPO / "blocks" / "register.py")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    second = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("unchanged") == len(list((REPO / "blocks").glob("*.yaml")))
    pool = BatchPool.load("local-pool")
    assert pool.pool_id == "local-pool" and pool.task_slots_per_node == 4
