"""EC2 pools: instances launched on moto's EC2 server, joined over SSH to private sshd servers.

moto runs as a real HTTP endpoint on 127.0.0.1 (``ThreadedMotoServer``); the template's
``sshEndpoints`` map the instances, in launch order, to the sshd servers on 127.0.0.2-4. A guard
fails any test that connects anywhere but loopback (moto hands out 10.x and 54.x addresses).
Faults are injected into moto's backend: it has no capacity errors and no spot reclaims.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.core.models import DEFAULT_ACCOUNT_ID
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.instances import InstanceBackend, StateReason

from prefect_batch import BatchClient, BatchInvalidRequestError
from prefect_batch.testing import (
    embedded_client,
    gate_command,
    wait_for_nodes,
    wait_for_task,
    wait_until,
)
from prefect_batch.testing.ec2 import (
    REGION,
    create_ec2_pool,
    lab_template,
    source_instances,
)
from prefect_batch.testing.sshd import SSHServers


@pytest.fixture
def client(tmp_path: Path, loopback_only: list[str], moto_url: str) -> Iterator[BatchClient]:
    # After moto_url: the engine (and its EC2 watcher) stops before the endpoint does.
    with embedded_client(tmp_path / "home", node_unreachable_grace_seconds=300) as c:
        yield c
    assert loopback_only == []


def _template(
    servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path, **extra: Any
) -> dict[str, Any]:
    return lab_template(
        "lab", servers, ec2, moto_url, tmp_path, **{"tags": {"team": "batch"}, **extra}
    )


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags") or []}


def test_a_bad_template_names_its_field_and_registers_nothing(
    client: BatchClient, servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path
) -> None:
    good = _template(servers, ec2, moto_url, tmp_path)
    for field, value in [
        ("instanceType", "x9.nonesuch"),
        ("amiId", "ami-00000000"),
        ("subnetIds", ["subnet-00000000"]),
        ("sshEndpoints", ["no-port"]),
        ("tags", {"prefect-batch:node": "x"}),
    ]:
        with pytest.raises(BatchInvalidRequestError) as err:
            client.create_node_source({**good, field: value})
        assert err.value.values["PropertyName"] == field, (field, err.value)
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_node_source({**good, "privateKey": "-----BEGIN"})
    assert err.value.values["PropertyName"] == "privateKey"
    assert client.list_node_sources() == []
    assert source_instances(ec2, good["name"], ("pending", "running", "terminated")) == []


def test_an_ec2_pool_launches_on_demand_and_spot_instances_and_runs_tasks(
    client: BatchClient, servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path
) -> None:
    template = _template(servers, ec2, moto_url, tmp_path)
    client.create_node_source(template)
    name = template["name"]
    assert f"batch.node.ec2.{name}" in [i.node_agent_sku_id for i in client.list_supported_images()]
    create_ec2_pool(client, "ec2pool", name, 1, low=1)
    nodes = wait_for_nodes(client, "ec2pool", 2, timeout=90)
    assert sorted(n.is_dedicated for n in nodes) == [False, True]
    assert {n.ip_address for n in nodes} <= {s.address for s in servers}
    running = source_instances(ec2, name)
    assert len(running) == 2
    by_node = {_tags(i)["prefect-batch:node"]: i for i in running}
    assert set(by_node) == {n.id for n in nodes}
    for node in nodes:
        instance = by_node[node.id]
        tags = _tags(instance)
        assert tags["prefect-batch:pool"] == "ec2pool" and tags["team"] == "batch"
        assert tags["prefect-batch:account"] == client.account_name
        assert instance.get("InstanceLifecycle") == (None if node.is_dedicated else "spot")
        assert instance["ClientToken"].startswith(tags["prefect-batch:launch"])
    client.create_job({"id": "j", "poolInfo": {"poolId": "ec2pool"}})
    client.create_tasks(
        "j",
        [
            {"id": f"t{i}", "commandLine": "/bin/sh -c 'echo $AZ_BATCH_NODE_IS_DEDICATED'"}
            for i in range(4)
        ],
    )
    for i in range(4):
        task = wait_for_task(client, "j", f"t{i}", timeout=60)
        assert task.execution_info.exit_code == 0
        dedicated = {n.id: n.is_dedicated for n in nodes}[task.node_info.node_id]
        out = client.get_task_file("j", f"t{i}", "stdout.txt").decode().strip()
        assert out == ("true" if dedicated else "false")
    client.delete_pool("ec2pool")
    wait_until(lambda: not client.pool_exists("ec2pool"), timeout=60, message="pool deleted")
    wait_until(
        lambda: source_instances(ec2, name) == [], timeout=30, message="instances terminated"
    )
    assert len(source_instances(ec2, name, ("terminated",))) == 2


def test_no_capacity_in_any_subnet_is_allocation_failed_with_the_aws_code(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"][:2]]
    template = _template(servers, ec2, moto_url, tmp_path, subnetIds=subnets)
    client.create_node_source(template)
    tried: list[str | None] = []

    def no_capacity(self: Any, *args: Any, **kwargs: Any) -> Any:
        tried.append(kwargs.get("subnet_id"))
        raise EC2ClientError("InsufficientInstanceCapacity", "no t3.micro capacity here")

    monkeypatch.setattr(InstanceBackend, "run_instances", no_capacity)
    create_ec2_pool(client, "full", template["name"], 1)
    pool = wait_until(
        lambda: (p := client.get_pool("full")).resize_errors and p, timeout=60, message="error"
    )
    (error,) = pool.resize_errors
    assert error.code == "AllocationFailed"
    values = {v.name: v.value for v in error.error_values or []}
    assert values["awsCode"] == "InsufficientInstanceCapacity"
    wait_until(lambda: client.list_nodes("full") == [], timeout=30, message="node gone")
    assert tried == subnets  # each subnet once, in order, then no retry
    client.service.wake(pools=True)
    wait_until(lambda: client.get_pool("full").allocation_state == "steady", timeout=30)
    assert len(tried) == len(subnets)


def test_a_spot_reclaim_preempts_the_node_and_requeues_its_task_without_a_retry(
    client: BatchClient, servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path
) -> None:
    template = _template(servers, ec2, moto_url, tmp_path)
    client.create_node_source(template)
    create_ec2_pool(client, "spot", template["name"], 0, low=1)
    (node,) = wait_for_nodes(client, "spot", 1, timeout=90)
    gate = tmp_path / "gate"
    client.create_job({"id": "sj", "poolInfo": {"poolId": "spot"}})
    client.create_task(
        "sj",
        {
            "id": "t",
            "commandLine": gate_command(gate, limit_seconds=300),
            "constraints": {"maxTaskRetryCount": 0},
        },
    )
    wait_for_task(client, "sj", "t", "running", timeout=60)
    (instance,) = source_instances(ec2, template["name"])
    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    reclaimed = backend.get_instance(instance["InstanceId"])
    reclaimed.terminate()
    reclaimed.state_reason = StateReason(
        "Server.SpotInstanceTermination: Spot instance termination",
        "Server.SpotInstanceTermination",
    )
    wait_until(
        lambda: client.get_node("spot", node.id).state == "preempted",
        timeout=30,
        message="node preempted",
    )
    task = wait_until(
        lambda: (t := client.get_task("sj", "t")).execution_info.requeue_count == 1 and t,
        timeout=30,
        message="task requeued",
    )
    assert task.execution_info.retry_count == 0
    replacement = wait_until(
        lambda: [n for n in client.list_nodes("spot") if n.state in ("idle", "running")],
        timeout=90,
        message="a replacement node",
    )
    assert replacement[0].id != node.id and replacement[0].is_dedicated is False
    gate.touch()
    task = wait_for_task(client, "sj", "t", timeout=60)
    assert task.node_info.node_id == replacement[0].id
    assert (task.execution_info.requeue_count, task.execution_info.retry_count) == (1, 0)
    client.delete_pool("spot")
    wait_until(
        lambda: source_instances(ec2, template["name"]) == [], timeout=60, message="cleaned up"
    )


def _provider(
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    records: Any = None,
    **extra: Any,
) -> Any:
    from prefect_batch.providers.contract import MemoryRecords
    from prefect_batch.providers.ec2 import EC2Provider, EC2Template

    spec = _template(servers, ec2, moto_url, tmp_path, **extra)
    spec.pop("kind")
    spec = {k: v for k, v in spec.items() if v is not None}
    template = EC2Template.model_validate(spec)
    records = MemoryRecords() if records is None else records
    return EC2Provider(f"batch.node.ec2.{template.name}", template, "acct", records)


def test_an_instance_launched_before_its_record_is_adopted_not_launched_again(
    servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path, loopback_only: list[str]
) -> None:
    from prefect_batch.providers.contract import NodeRef

    provider = _provider(servers, ec2, moto_url, tmp_path)
    name = provider.template.name
    # The service stopped after run_instances answered and before it recorded the instance.
    ec2.run_instances(
        ImageId=provider.template.ami_id,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[
            {
                "ResourceType": "instance",
                "Tags": [
                    {"Key": "prefect-batch:account", "Value": "acct"},
                    {"Key": "prefect-batch:source", "Value": name},
                    {"Key": "prefect-batch:node", "Value": "n1"},
                ],
            }
        ],
    )
    node = NodeRef(account="acct", pool_id="p", node_id="n1", root=str(tmp_path / "n1"))
    events: list[dict[str, Any]] = []
    conn = provider.connect(node, events.append)
    try:
        assert len(source_instances(ec2, name)) == 1
        assert (
            provider.records.get("node/n1")["instanceId"]
            == source_instances(ec2, name)[0]["InstanceId"]
        )
    finally:
        conn.kill(tasks=True, grace_seconds=5)
    terminated: list[list[str]] = []
    real_terminate = provider._ec2.terminate_instances

    def counting(**kwargs: Any) -> Any:
        terminated.append(kwargs["InstanceIds"])
        return real_terminate(**kwargs)

    provider._ec2.terminate_instances = counting
    provider.release("r1", node)
    provider.release("r1", node)  # the same request again: nothing more
    assert source_instances(ec2, name) == []
    assert len(terminated) == 1
    assert loopback_only == []


def test_the_watcher_terminates_strays_of_its_source_only(
    servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path
) -> None:
    provider = _provider(servers, ec2, moto_url, tmp_path)
    name = provider.template.name

    def launch(tags: dict[str, str]) -> str:
        spec = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
        answer = ec2.run_instances(
            ImageId=provider.template.ami_id,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            **({"TagSpecifications": spec} if tags else {}),
        )
        return str(answer["Instances"][0]["InstanceId"])

    stray = launch(
        {"prefect-batch:account": "acct", "prefect-batch:source": name, "prefect-batch:node": "x"}
    )
    other_account = launch(
        {"prefect-batch:account": "other", "prefect-batch:source": name, "prefect-batch:node": "y"}
    )
    untagged = launch({})
    provider.poll()
    states = {
        i["InstanceId"]: i["State"]["Name"]
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
    }
    assert states[stray] == "terminated"
    assert states[other_account] == "running" and states[untagged] == "running"


def test_a_file_read_never_launches_an_instance(
    servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path, loopback_only: list[str]
) -> None:
    from prefect_batch.exceptions import AgentError
    from prefect_batch.providers.contract import NodeRef

    provider = _provider(servers, ec2, moto_url, tmp_path)
    node = NodeRef(account="acct", pool_id="p", node_id="gone", root=str(tmp_path / "gone"))
    with pytest.raises(AgentError, match="has no instance"):
        provider.attach(node, lambda msg: None)
    assert source_instances(ec2, provider.template.name, ("pending", "running", "terminated")) == []


def test_inter_node_communication_gets_a_security_group_of_the_pools_own(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from moto.ec2.models.security_groups import SecurityGroupBackend

    template = _template(servers, ec2, moto_url, tmp_path, sshCidrs=["127.0.0.0/8"])
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_node_source({**template, "name": "open", "sshCidrs": ["0.0.0.0/0"]})
    assert err.value.values["PropertyName"] == "sshCidrs"
    client.create_node_source(template)
    name = template["name"]
    client.create_pool(
        {
            "id": "mpi",
            "vmSize": "t3.micro",
            "targetDedicatedNodes": 2,
            "enableInterNodeCommunication": True,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "ec2", "sku": name},
                "nodeAgentSKUId": f"batch.node.ec2.{name}",
            },
        }
    )
    wait_for_nodes(client, "mpi", 2, timeout=90)
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "tag:prefect-batch:pool", "Values": ["mpi"]}]
    )["SecurityGroups"]
    rules = sorted(
        (
            p["IpProtocol"],
            p["FromPort"],
            p["ToPort"],
            tuple(g["GroupId"] for g in p.get("UserIdGroupPairs", [])),
            tuple(r["CidrIp"] for r in p.get("IpRanges", [])),
        )
        for p in group["IpPermissions"]
    )
    gid = group["GroupId"]
    assert rules == [
        ("tcp", 22, 22, (), ("127.0.0.0/8",)),
        ("tcp", 1101, 65535, (gid,), ()),
        ("udp", 1101, 65535, (gid,), ()),
    ]
    members = [{g["GroupId"] for g in i["SecurityGroups"]} for i in source_instances(ec2, name)]
    assert members == [{gid}, {gid}]
    # EC2 refuses to delete a group while it still counts a member: once here.
    real_delete = SecurityGroupBackend.delete_security_group
    refusals: list[str] = []

    def busy_once(self: Any, name: str | None = None, group_id: str | None = None) -> None:
        if not refusals:
            refusals.append(str(group_id))
            raise EC2ClientError("DependencyViolation", "resource sg has a dependent object")
        real_delete(self, name=name, group_id=group_id)

    monkeypatch.setattr(SecurityGroupBackend, "delete_security_group", busy_once)
    client.delete_pool("mpi")
    wait_until(
        lambda: (
            not ec2.describe_security_groups(
                Filters=[{"Name": "tag:prefect-batch:pool", "Values": ["mpi"]}]
            )["SecurityGroups"]
        ),
        timeout=60,
        message="the pool's group deleted",
    )
    assert refusals == [gid]
    assert source_instances(ec2, name) == []


# -- per-pool key pairs ---------------------------------------------------------------------


def _keyless(template: dict[str, Any]) -> dict[str, Any]:
    """The template without a key: each pool gets a key pair of its own."""
    return {k: v for k, v in template.items() if k not in ("privateKeyPath", "keyPairName")}


@pytest.fixture
def authorize_launch_keys(servers: SSHServers, monkeypatch: pytest.MonkeyPatch) -> Iterator[list]:
    """Do what EC2 does for a ``KeyName`` at launch: the instance (here every sshd) accepts the
    key pair's public key. Yields the key names instances were launched with."""
    from cryptography.hazmat.primitives import serialization

    backend = ec2_backends[DEFAULT_ACCOUNT_ID][REGION]
    real_run = InstanceBackend.run_instances
    before = servers.authorized_keys.read_text()
    names: list[str] = []

    def run_instances(self: Any, *args: Any, **kwargs: Any) -> Any:
        name = kwargs.get("key_name")
        names.append(name)
        if name:
            private = serialization.load_ssh_private_key(backend.key_pairs[name].material, None)
            public = private.public_key().public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            with servers.authorized_keys.open("a") as out:
                out.write(public.decode() + f" {name}\n")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", run_instances)
    try:
        yield names
    finally:
        servers.authorized_keys.write_text(before)


@pytest.fixture
def cleaned_up(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pools whose provider cleanup (``pool_deleted``) has finished, so a test can wait for
    it before moto stops."""
    from prefect_batch.providers.ec2 import EC2Provider

    done: list[str] = []
    real = EC2Provider.pool_deleted

    def recording(self: Any, pool: Any, **kwargs: Any) -> None:
        try:
            real(self, pool, **kwargs)
        finally:
            done.append(pool.pool_id)

    monkeypatch.setattr(EC2Provider, "pool_deleted", recording)
    return done


def _pool_key_pairs(ec2: Any, pool_id: str) -> list[dict[str, Any]]:
    return ec2.describe_key_pairs(
        Filters=[{"Name": "tag:prefect-batch:pool", "Values": [pool_id]}]
    )["KeyPairs"]


def test_a_template_without_a_key_gives_each_pool_a_key_pair_deleted_with_it(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    authorize_launch_keys: list[str],
    cleaned_up: list[str],
) -> None:
    template = _keyless(_template(servers, ec2, moto_url, tmp_path))
    client.create_node_source(template)
    name = template["name"]
    (source,) = client.list_node_sources()
    assert not {"privateKeyPath", "privateKeySecretName", "keyPairName"} & set(source.spec)
    create_ec2_pool(client, "keyed", name, 2)
    nodes = wait_for_nodes(client, "keyed", 2, timeout=90)
    key_name = f"prefect-batch-{client.account_name}-{name}-keyed"
    (pair,) = _pool_key_pairs(ec2, "keyed")
    assert pair["KeyName"] == key_name and pair["KeyType"] == "ed25519"
    assert {t["Key"]: t["Value"] for t in pair["Tags"]} == {
        "prefect-batch:account": client.account_name,
        "prefect-batch:source": name,
        "prefect-batch:pool": "keyed",
    }
    assert authorize_launch_keys == [key_name, key_name]  # one key pair for the pool's nodes
    assert [i["KeyName"] for i in source_instances(ec2, name)] == [key_name, key_name]
    client.create_job({"id": "kj", "poolInfo": {"poolId": "keyed"}})
    client.create_tasks("kj", [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(2)])
    for i in range(2):
        task = wait_for_task(client, "kj", f"t{i}", timeout=60)
        assert task.execution_info.exit_code == 0
        assert task.node_info.node_id in {n.id for n in nodes}
    client.delete_pool("keyed")
    wait_until(lambda: not client.pool_exists("keyed"), timeout=60, message="pool deleted")
    wait_until(
        lambda: _pool_key_pairs(ec2, "keyed") == [], timeout=60, message="the pool's key deleted"
    )
    assert (
        ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [key_name]}])["KeyPairs"]
        == []
    )
    wait_until(
        lambda: source_instances(ec2, name) == [], timeout=30, message="instances terminated"
    )
    wait_until(lambda: "keyed" in cleaned_up, timeout=60, message="the pool cleaned up")


def test_a_pool_key_is_made_once_survives_a_restart_and_is_remade_if_its_key_was_lost(
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    loopback_only: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging
    import threading

    from prefect_batch.exceptions import AgentError
    from prefect_batch.providers.contract import MemoryRecords, PoolRef

    caplog.set_level(logging.DEBUG, logger="prefect_batch")
    records = MemoryRecords()
    first = _provider(servers, ec2, moto_url, tmp_path, records, privateKeyPath=None)
    assert first.template.pool_keys
    made: list[str] = []
    real_create = first._ec2.create_key_pair

    def counting(**kwargs: Any) -> Any:
        made.append(kwargs["KeyName"])
        return real_create(**kwargs)

    first._ec2.create_key_pair = counting
    # Concurrent starts of the same pool's nodes: one key pair.
    go = threading.Barrier(4)
    got: list[tuple[str, str]] = []

    def start() -> None:
        go.wait()
        got.append(first._pool_key("p"))

    threads = [threading.Thread(target=start) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(made) == 1 and len(set(got)) == 1
    name, material = got[0]
    assert material.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert records.get("pool-key/p") == {
        "name": name,
        "keyPairId": _pool_key_pairs(ec2, "p")[0]["KeyPairId"],
        "privateKey": material,
    }
    # A restarted service (a new provider on the same records) reaches the instances with it.
    restarted = _restarted(first)
    restarted._ec2.create_key_pair = counting
    assert restarted._pool_key("p", make=False) == (name, material)
    assert len(made) == 1
    # A key pair we tagged whose private key we never recorded is deleted and made again.
    records.delete("pool-key/p")
    again = _restarted(first)
    with pytest.raises(AgentError, match="is gone"):
        again._pool_key("p", make=False)
    remade_name, remade = again._pool_key("p")
    assert remade_name == name and remade != material
    (pair,) = _pool_key_pairs(ec2, "p")
    assert records.get("pool-key/p")["keyPairId"] == pair["KeyPairId"]
    # One of that name that this source did not make is left alone.
    foreign = again._key_name("q")
    ec2.create_key_pair(KeyName=foreign, KeyType="ed25519")
    with pytest.raises(AgentError, match="did not make"):
        again._pool_key("q")
    assert [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]].count(foreign) == 1
    # Deleting the pool deletes its key pair; deleting it again is harmless.
    pool = PoolRef(account="acct", pool_id="p", vm_size="t3.micro", task_slots_per_node=1)
    again.pool_deleted(pool, wait_seconds=5)
    assert _pool_key_pairs(ec2, "p") == [] and records.get("pool-key/p") is None
    again.pool_deleted(pool, wait_seconds=5)
    restarted.pool_deleted(pool, wait_seconds=5)  # one that still has it in memory, too
    assert _pool_key_pairs(ec2, "p") == []
    # A key made by a call whose answer was lost is found by its tags and deleted too.
    ec2.create_key_pair(KeyName=again._key_name("p"), TagSpecifications=_key_tags(again, "p"))
    again.pool_deleted(pool, wait_seconds=5)
    assert _pool_key_pairs(ec2, "p") == []
    body = material.splitlines()[1]
    assert body not in caplog.text and remade.splitlines()[1] not in caplog.text
    assert loopback_only == []


def _restarted(provider: Any) -> Any:
    """The provider a restarted service builds: the same template, account and records."""
    return type(provider)(provider.sku, provider.template, provider.account, provider.records)


def _key_tags(provider: Any, pool_id: str) -> list[dict[str, Any]]:
    return [{"ResourceType": "key-pair", "Tags": provider._key_tags(pool_id)}]


def test_pool_key_names_are_bounded_and_in_the_characters_ec2_takes(
    servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path
) -> None:
    import re

    provider = _provider(servers, ec2, moto_url, tmp_path, privateKeyPath=None)
    provider.account = "a" * 200
    long_names = {provider._key_name(p) for p in ("p" * 64, "p" * 63 + "q")}
    assert len(long_names) == 2
    for name in long_names | {provider._key_name("odd pool/ü")}:
        assert len(name) <= 255 and re.fullmatch(r"[A-Za-z0-9._-]+", name), name


def test_key_fields_that_do_not_agree_are_refused_naming_the_field(
    client: BatchClient, servers: SSHServers, ec2: Any, moto_url: str, tmp_path: Path
) -> None:
    good = _template(servers, ec2, moto_url, tmp_path)
    keyless = _keyless(good)
    for body, field in [
        ({**keyless, "keyPairName": "batch"}, "privateKeyPath"),
        ({**good, "privateKeySecretName": "ec2-key"}, "privateKeySecretName"),
        ({**keyless, "maxLaunchAttempts": 0}, "maxLaunchAttempts"),
    ]:
        with pytest.raises(BatchInvalidRequestError) as err:
            client.create_node_source(body)
        assert err.value.values["PropertyName"] == field, (field, err.value)
    assert client.list_node_sources() == []
    client.create_node_source(keyless)  # no key at all: the pools get their own
    client.create_node_source({**good, "name": good["name"] + "k", "keyPairName": "batch"})
    assert len(client.list_node_sources()) == 2
    assert source_instances(ec2, good["name"], ("pending", "running", "terminated")) == []
    assert ec2.describe_key_pairs()["KeyPairs"] == []  # nothing made before a pool needs it


# -- bounded replacement of instances that never answer ---------------------------------------


@pytest.fixture
def dead_endpoint() -> Iterator[str]:
    """host:port on loopback where a connect is refused: bound, never listening."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_an_instance_that_never_answers_is_replaced_at_most_max_launch_attempts_times(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    dead_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    cleaned_up: list[str],
) -> None:
    template = _template(
        servers,
        ec2,
        moto_url,
        tmp_path,
        sshEndpoints=[dead_endpoint],
        readyTimeoutSeconds=1,
        connectTimeoutSeconds=1,
        maxLaunchAttempts=3,
    )
    client.create_node_source(template)
    name = template["name"]
    real_run = InstanceBackend.run_instances
    launches: list[str | None] = []

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        launches.append(kwargs.get("client_token"))
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", counting)
    create_ec2_pool(client, "silent", name, 1)
    pool = wait_until(
        lambda: (p := client.get_pool("silent")).resize_errors and p, timeout=90, message="error"
    )
    (error,) = pool.resize_errors
    assert error.code == "AllocationTimedOut"
    values = {v.name: v.value for v in error.error_values or []}
    every = source_instances(ec2, name, ("pending", "running", "shutting-down", "terminated"))
    assert len(launches) == 3 == len(every) == len(set(launches))
    assert sorted(values["instanceIds"].split(",")) == sorted(i["InstanceId"] for i in every)
    (node,) = client.list_nodes("silent")
    assert values["nodeId"] == node.id and node.id in error.message
    # A later start of the node launches nothing: it stays unusable, saying why.
    node = wait_until(
        lambda: (
            (n := client.get_node("silent", node.id)).errors
            and "gave up after" in n.errors[0].message
            and n
        ),
        timeout=60,
        message="a later start refused",
    )
    assert node.state == "unusable"
    assert "AllocationTimedOut" in node.errors[0].message
    assert len(launches) == 3
    assert source_instances(ec2, name) == []  # each one terminated
    assert client.get_pool("silent").allocation_state == "steady"
    client.delete_pool("silent")
    wait_until(lambda: "silent" in cleaned_up, timeout=60, message="the pool cleaned up")
    assert len(launches) == 3


# -- throttling --------------------------------------------------------------------------------


def test_a_throttled_launch_fails_the_start_and_the_next_start_launches_with_its_token(
    client: BatchClient,
    servers: SSHServers,
    ec2: Any,
    moto_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cleaned_up: list[str],
) -> None:
    template = _template(servers, ec2, moto_url, tmp_path)
    client.create_node_source(template)
    real_run = InstanceBackend.run_instances
    tokens: list[str | None] = []

    def throttled_once(self: Any, *args: Any, **kwargs: Any) -> Any:
        tokens.append(kwargs.get("client_token"))
        if len(tokens) == 1:
            raise EC2ClientError("RequestLimitExceeded", "Request limit exceeded.")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(InstanceBackend, "run_instances", throttled_once)
    create_ec2_pool(client, "busy", template["name"], 1)
    (node,) = wait_for_nodes(client, "busy", 1, timeout=90)
    assert len(tokens) == 2 and tokens[0] == tokens[1]  # the next start, with the same token
    pool = client.get_pool("busy")
    assert not pool.resize_errors and pool.current_dedicated_nodes == 1
    assert len(source_instances(ec2, template["name"])) == 1
    client.delete_pool("busy")
    wait_until(lambda: "busy" in cleaned_up, timeout=60, message="the pool cleaned up")
    assert source_instances(ec2, template["name"]) == []
