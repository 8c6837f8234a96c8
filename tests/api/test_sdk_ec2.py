"""An EC2 pool through the official azure-batch SDK against a real server and engine.

The operator lets the account use the server's cloud (``cloud_accounts``); the account
registers an EC2 template (moto's EC2 server on 127.0.0.1) with the Python client over REST,
then the SDK creates a pool of one on-demand and one spot node, runs a job on it and reads the
nodes. Instances are mapped to private sshd servers on 127.0.0.2-3; nothing connects elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from azure.batch import models

from prefect_batch import BatchClient
from prefect_batch.testing.ec2 import REGION, ec2_template, loopback_only, moto_ec2
from prefect_batch.testing.sshd import SSHServers
from tests.api.conftest import Server, running_server, wait_for


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, SSHServers]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with loopback_only() as refused, moto_ec2() as url:
        with SSHServers(tmp_path / "sshd", count=2, extra_config=["SetEnv SHLVL=1"]) as servers:
            yield url, servers
    assert refused == []


@pytest.fixture
def ec2_server(store_url: str, tmp_path: Path, cloud: tuple[str, SSHServers]) -> Iterator[Server]:
    with running_server(store_url, tmp_path / "home", cloud_accounts=["acct"]) as server:
        yield server


def test_an_ec2_pool_of_dedicated_and_spot_nodes_runs_a_job_through_the_sdk(
    ec2_server: Server, cloud: tuple[str, SSHServers], tmp_path: Path
) -> None:
    url, servers = cloud
    ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    account = ec2_server.account
    with BatchClient(account.name, url=ec2_server.url, account_key=account.primary) as client:
        client.create_node_source(
            ec2_template(
                "burst",
                servers,
                url,
                ami,
                tmp_path / "known_hosts",
                tmp_path / "instances",
                pollSeconds=0.5,
            )
        )
    sdk = ec2_server.sdk()
    try:
        sdk.create_pool(
            models.BatchPoolCreateOptions(
                id="burst",
                vm_size="t3.micro",
                target_dedicated_nodes=1,
                target_low_priority_nodes=1,
                virtual_machine_configuration=models.VirtualMachineConfiguration(
                    image_reference=models.BatchVmImageReference(
                        publisher="prefect-batch", offer="ec2", sku=ami
                    ),
                    node_agent_sku_id="batch.node.ec2.burst",
                ),
            )
        )

        def idle() -> list[Any] | None:
            nodes = list(sdk.list_nodes("burst"))
            return nodes if len(nodes) == 2 and all(n.state == "idle" for n in nodes) else None

        nodes = wait_for(idle, timeout=120)
        assert sorted(n.is_dedicated for n in nodes) == [False, True]
        # Each instance logs in at its own SSH endpoint (here the servers stand in for them).
        logins = [sdk.get_node_remote_login_settings("burst", n.id) for n in nodes]
        found = {(s.remote_login_ip_address, s.remote_login_port) for s in logins}
        assert len(found) == 2
        assert found <= {(s.address, s.port) for s in servers}
        pool = sdk.get_pool("burst")
        assert (pool.current_dedicated_nodes, pool.current_low_priority_nodes) == (1, 1)
        sdk.create_job(
            models.BatchJobCreateOptions(id="j", pool_info=models.BatchPoolInfo(pool_id="burst"))
        )
        for i in range(4):
            sdk.create_task(
                "j",
                models.BatchTaskCreateOptions(
                    id=f"t{i}", command_line="/bin/sh -c 'echo $AZ_BATCH_NODE_IS_DEDICATED'"
                ),
            )
        for i in range(4):
            task = wait_for(
                lambda i=i: (t := sdk.get_task("j", f"t{i}")).state == "completed" and t,
                timeout=60,
            )
            assert task.execution_info.exit_code == 0
        tagged = ec2.describe_instances(
            Filters=[{"Name": "tag:prefect-batch:pool", "Values": ["burst"]}]
        )["Reservations"]
        lifecycles = sorted(str(i.get("InstanceLifecycle")) for r in tagged for i in r["Instances"])
        assert lifecycles == ["None", "spot"]
    finally:
        sdk.close()
