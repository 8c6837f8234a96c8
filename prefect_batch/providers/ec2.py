"""The ``ec2`` kind of node source: EC2 instances, on-demand and spot, as the nodes of a pool.

An account registers an EC2 template (:class:`EC2Template`: AMI, instance type, subnets tried
in order, security groups, key, SSH login, region, ``endpointUrl`` for any EC2-compatible
endpoint) and pools name it ``batch.node.ec2.<name>``. Each node is one instance:
``targetDedicatedNodes`` are on-demand, ``targetLowPriorityNodes`` spot. The instance's agent is
started over SSH exactly as on an SSH host (:class:`~prefect_batch.providers.ssh.SSHNodeSource`,
host keys verified), so everything after the launch is the SSH kind's.

Keys. A template either names its private key (``privateKeyPath``, a file on the service's
machine, or ``privateKeySecretName``, a Prefect ``Secret`` block resolved when the provider is
built; with ``keyPairName`` when EC2 is to install it, without when the AMI or user data does),
or names no key at all: then each pool gets an ed25519 key pair of its own,
``prefect-batch-<account>-<source>-<pool>`` (in the characters EC2 takes, at most 255), tagged
with the account, source and pool, made on the pool's first launch under a lock and recorded
before any instance is launched with it. Its private key is kept in the provider's records
(the store's ``provider_records`` table, as plain JSON: providers are given no sealing key),
never logged, and is what the SSH join uses, so a restarted service still reaches the pool's
instances. A key pair of that name that this source tagged but whose private key is not
recorded (a create whose answer was lost) is deleted and made again; an untagged one is refused.
Deleting the pool deletes its key pair by name, then any left with its tags, then the record;
doing so again is harmless. ``keyPairName`` without a private key, or both a path and a Secret,
is refused at registration, naming the field.

Launches (:meth:`EC2Provider.connect`, on a start worker):

* every instance carries, in ``TagSpecifications`` at launch (never added later), the account,
  the source, the pool, the node id and its launch token (``prefect-batch:*`` tags);
* the ``ClientToken`` is derived from the node, the number of its launches so far and the
  subnet, and recorded in the provider's records **before** the call, so a call retried after a
  timeout or a throttle launches nothing twice; an instance already tagged with the node is
  adopted instead of launching again (a service that stopped between ``run_instances`` and its
  record);
* a capacity error moves to the next subnet; after the last, or on a quota error, the node is
  reported ``failed`` with Azure's resize error (``AllocationFailed``,
  ``AccountCoreQuotaReached``, ``AccountLowPriorityCoreQuotaReached``; the AWS code and message
  in its values) and the pool is not grown again until its next resize;
* launches use a client that sends each call once; describe, terminate and the key pair and
  security group calls retry (throttling, 5xx) with botocore's standard jittered backoff, up to
  8 attempts;
* a throttled ``run_instances`` (``RequestLimitExceeded``, ``Throttling``, ...) is not retried
  by the client and is not a resize error: the start fails (the node is ``unusable`` for the
  moment, its error says throttled), nothing counts as launched, and the engine's next start,
  after its backoff, sends the same call with the same client token. Other unknown AWS errors
  are handled the same way;
* an instance whose SSH does not answer within ``readyTimeoutSeconds`` is terminated and the
  start fails; the engine's next start launches a replacement, at most ``maxLaunchAttempts``
  instances per node in all (counted in the node's record). When the last of them never
  answered, the node is reported ``unusable`` (it stays, unusable, and every later start fails
  at once, launching nothing) and its pool gets ``AllocationTimedOut`` naming the node and the
  instances, and is not grown again until its next resize. Removing the node (or the pool)
  clears the count.

A watcher thread (every ``pollSeconds``) describes the source's instances by tag: an instance
of a node that EC2 terminated with ``Server.SpotInstanceTermination`` is reported
``preempted``, any other that went away ``lost`` (not one the provider itself terminated for
not being ready); a running instance tagged for this source whose node the provider does not
know is terminated. Releasing a node terminates its instance (idempotent on the request id).

A pool with ``enableInterNodeCommunication`` gets a security group of its own (members reach
each other on 1101-65535, SSH only from ``sshCidrs``), deleted with the pool after a last sweep.

Spot notices come sooner from the instance itself: a spot node's agent is started with
``--imds-url`` (``imdsUrl``, default ``http://169.254.169.254``) and polls the instance metadata
service (IMDSv2) every ``imdsPollSeconds``. Its ``spot_notice`` events become provider events,
each once per node: an interruption notice (``spot/instance-action``) is ``preempted`` (the
node becomes ``preempted``, its tasks are requeued without charging a retry, a replacement is
launched, and the watcher's later sight of the terminated instance reports nothing more); a
rebalance recommendation (``events/recommendations/rebalance``) is ``draining`` (the node's
``schedulingState`` becomes ``disabled``: it takes no new task, its running tasks go on).

Every instance's agent is started with an orphan timeout (``orphanTimeoutSeconds``, default
1800 s; 0: none): with no request from the service for that long (the engine pings every node
every ``heartbeat_seconds``) it kills its tasks and runs ``orphanCommand`` (default ``shutdown
-h now``, through ``sudo -n`` unless it runs as root); instances are launched with
``InstanceInitiatedShutdownBehavior=terminate``, so a service that is gone does not leave them
running for ever.

Tasks on an instance are confined unless the template says ``confineTasks: false``: its agent
is started with ``--confine`` like an SSH host's (see :mod:`prefect_batch.providers.ssh`), so a
task reaches neither the login user's home (``~/.ssh``, where the pool's key is authorized) nor
the node root's agent state; an AMI whose kernel has no Landlock runs them unconfined and the
node says so (``TasksUnconfined``).

Not done here: EventBridge interruption events (the agent's polling is the only early
warning), and stop or hibernate interruption behaviours (spot instances are launched to
terminate).

``sshEndpoints`` (``host:port``) stand in for the instances' addresses, the first one free for
each launch: a lab behind a bastion, and the tests, which map instances to private sshd servers
on loopback. AWS credentials come from the prefect-aws ``AwsCredentials`` block the template
names (``awsCredentialsBlockName``, loaded from the service's Prefect API when the provider is
built and at registration), else from boto3's chain (environment, profile, instance role).

What this module does not do: batches of several instances per ``run_instances`` call (each
instance carries its own node's tags from launch); rotating a pool's key pair while the pool
lives; encrypting the pool key at rest beyond what the store's database gives (a reader of
``provider_records`` can read it); a retry budget for throttled launches other than the
engine's start backoff.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from prefect_batch.core.ids import validate_id
from prefect_batch.exceptions import (
    AgentError,
    BatchInvalidRequestError,
    HostKeyError,
    invalid_property,
    validation_error,
)
from prefect_batch.providers.base import AgentConnection, EventCallback
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    NodeSlot,
    Placement,
    PoolRef,
    ProviderEvent,
    ProviderTraits,
    RecordStore,
    ReportCallback,
    ResizeError,
)
from prefect_batch.providers.hostgroup import DEFAULT_NODE_ROOT, check_root
from prefect_batch.providers.kinds import KINDS, BuildContext, image_entry
from prefect_batch.providers.ssh import SSHNodeSource

__all__ = [
    "TRAITS",
    "EC2Provider",
    "EC2Template",
    "build_provider",
    "files",
    "supported_image",
    "validate_registration",
]

log = logging.getLogger("prefect_batch.providers.ec2")

TRAITS = ProviderTraits(unreachable_grace=True, low_priority=True)
"""Instances: remote machines, fresh at launch, on-demand or spot."""

TAG = "prefect-batch:"
CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacity",
        "UnfulfillableCapacity",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)
"""AWS codes after which the next subnet is tried."""
QUOTA_CODES = frozenset({"InstanceLimitExceeded", "VcpuLimitExceeded"})
SPOT_QUOTA_CODES = frozenset({"MaxSpotInstanceCountExceeded"})
THROTTLE_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "EC2ThrottledException",
        "TooManyRequestsException",
        "SlowDown",
    }
)
"""AWS codes of a call refused for its rate: a launch so refused fails the start, retryably."""
_LIVE_STATES = ("pending", "running")
IMDS_URL = "http://169.254.169.254"
_NOTICE_KINDS = {"interruption": "preempted", "rebalance": "draining"}
"""An agent's spot_notice -> the ProviderEvent kind it becomes."""
_KEY_FIELDS = ("privateKey", "private_key", "privateKeyPassphrase")


class EC2Template(BaseModel):
    """What an EC2 node source launches (camelCase on the wire, as the REST resource)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    name: str = Field(description="The source's name; pools name batch.node.ec2.<name>.")
    ami_id: str = Field(min_length=1, description="The AMI (needs python3 and sshd).")
    instance_type: str = Field(min_length=1, description="The instance type (the pools' vmSize).")
    region_name: str = Field("us-east-1", min_length=1, description="The AWS region.")
    endpoint_url: str | None = Field(None, description="An EC2-compatible endpoint instead.")
    subnet_ids: list[str] = Field(default_factory=list, description="Subnets, tried in order.")
    security_group_ids: list[str] = Field(default_factory=list)
    key_pair_name: str | None = Field(
        None,
        description="The EC2 key pair of the instances; with no key named at all, each pool "
        "gets a key pair of its own.",
    )
    private_key_path: Path | None = Field(None, description="Its private key, on this machine.")
    private_key_secret_name: str | None = Field(None, description="Or a Prefect Secret block.")
    aws_credentials_block_name: str | None = Field(
        None,
        min_length=1,
        description="A prefect-aws AwsCredentials block whose keys (or profile) the service "
        "uses for this template; unset: boto3's chain (environment, profile, instance role).",
    )
    ssh_user: str = Field("ec2-user", min_length=1)
    ssh_port: int = Field(22, ge=1, le=65535)
    ssh_endpoints: list[str] = Field(
        default_factory=list, description="host:port used instead of instance addresses."
    )
    ssh_cidrs: list[str] = Field(
        default_factory=list,
        description="Where the service connects from: SSH is opened to these ranges only in a "
        "pool's own security group (enableInterNodeCommunication). Never 0.0.0.0/0.",
    )
    known_hosts: Path | None = Field(None, description="known_hosts for the instances' keys.")
    trust_on_first_use: bool = Field(False, description="Record an unknown host key once.")
    node_root: str = Field(DEFAULT_NODE_ROOT, description="The node root on an instance.")
    python: str = Field("python3", min_length=1)
    confine_tasks: bool = Field(
        True,
        strict=True,
        description="Confine tasks on the instances (as an SSH host group's `confineTasks`).",
    )
    tags: dict[str, str] = Field(default_factory=dict, description="Tags on every instance.")
    user_data: str | None = Field(None, max_length=16384)
    iam_instance_profile: str | None = Field(None, description="An instance profile name.")
    ready_timeout_seconds: float = Field(600.0, gt=0, le=3600)
    max_launch_attempts: int = Field(
        3,
        ge=1,
        le=20,
        description="Instances launched for one node whose SSH never answers before the node "
        "is given up on (unusable, AllocationTimedOut on its pool).",
    )
    poll_seconds: float = Field(15.0, ge=0.2, le=3600)
    connect_timeout_seconds: float = Field(10.0, gt=0, le=300)
    imds_url: str = Field(
        IMDS_URL,
        min_length=1,
        description="The instance metadata service spot nodes' agents poll for notices.",
    )
    imds_poll_seconds: float = Field(5.0, ge=0.1, le=300)
    orphan_timeout_seconds: float = Field(
        1800.0,
        ge=0,
        le=7 * 86400,
        description="An agent that hears nothing from the service for this long kills its "
        "tasks and runs orphanCommand (0: never). Keep it well above the engine's heartbeat.",
    )
    orphan_command: str | None = Field(
        None,
        max_length=4096,
        description="What an orphaned agent runs (default shutdown -h now, through sudo -n "
        "unless the agent runs as root); instances terminate when they shut down.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_id(value, "name")

    @field_validator("node_root")
    @classmethod
    def _root(cls, value: str) -> str:
        return check_root(value)

    @field_validator("ssh_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            _host, sep, port = endpoint.rpartition(":")
            if not sep or not _host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"not host:port: {endpoint!r}")
        return value

    @field_validator("ssh_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            network = ipaddress.ip_network(cidr, strict=False)
            if network.prefixlen == 0:
                raise ValueError(f"{cidr} opens SSH to every address")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if key.startswith(TAG) or key.lower().startswith("aws:"):
                raise ValueError(f"tag {key!r} is reserved")
        return value

    @property
    def pool_keys(self) -> bool:
        """No key named: each pool gets a key pair of its own, made by the provider."""
        return (
            self.key_pair_name is None
            and self.private_key_path is None
            and self.private_key_secret_name is None
        )

    def endpoint(self, index: int) -> tuple[str, int]:
        host, _, port = self.ssh_endpoints[index].rpartition(":")
        return host, int(port)


def aws_session(template: EC2Template) -> Any:
    """The boto3 session the template's calls use: its ``awsCredentialsBlockName`` block's, else
    boto3's own chain (the clients are made in the template's region either way).

    Raises:
        AgentError: The block cannot be loaded (prefect-aws missing, no such block, no API).
    """
    import boto3  # the kind's module is imported only for EC2 sources

    name = template.aws_credentials_block_name
    if name is None:
        return boto3.session.Session(region_name=template.region_name)
    try:
        from prefect_aws import AwsCredentials

        credentials = AwsCredentials.load(name, _sync=True)  # type: ignore[call-arg]
        session = credentials.get_boto3_session()  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - ImportError, ValueError, the API unreachable...
        raise AgentError(
            f"cannot load the AwsCredentials block {name!r}: {type(exc).__name__}: {exc}"
        ) from None
    return session


def _clients(template: EC2Template) -> tuple[Any, Any]:
    """(a client that retries with backoff, a fail-fast one for launches)."""
    from botocore.config import Config

    session = aws_session(template)
    common = {"endpoint_url": template.endpoint_url, "region_name": template.region_name}
    # ``total_max_attempts`` counts the first call; ``max_attempts`` in ``retries`` would count
    # retries only (1 would send a launch twice).
    patient = Config(retries={"mode": "standard", "total_max_attempts": 8}, connect_timeout=10)
    hasty = Config(retries={"mode": "standard", "total_max_attempts": 1}, connect_timeout=10)
    return (
        session.client("ec2", config=patient, **common),
        session.client("ec2", config=hasty, **common),
    )


def _aws_error(exc: BaseException) -> tuple[str, str]:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    return str(error.get("Code") or type(exc).__name__), str(error.get("Message") or exc)


class EC2Provider(NodeProvider):
    """The provider of one EC2 template: launches, joins, watches and terminates instances.

    Args:
        sku: ``batch.node.ec2.<name>``.
        template: The template.
        account: The account that registered it (its instances are tagged with it).
        records: Durable records: each node's launch (token, instance, endpoint).
        private_key: The key text from a Secret block, if the template names one.
    """

    kind = "ec2"
    traits = TRAITS

    def __init__(
        self,
        sku: str,
        template: EC2Template,
        account: str,
        records: RecordStore,
        private_key: str | None = None,
    ) -> None:
        super().__init__(sku)
        self.template = template
        self.account = account
        self.records = records
        self._private_key = private_key
        self._ec2, self._launcher = _clients(template)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._missing: dict[str, int] = {}
        self._inter_node: set[str] = set()
        # Guards _inter_node and _watcher; never held over I/O (place() takes it on the
        # engine thread).
        self._light_lock = threading.Lock()
        self._groups: dict[str, str] = {}
        self._group_lock = threading.Lock()
        self._noticed: set[tuple[str, str]] = set()
        """(node, kind) reported from a spot notice (under _light_lock)."""
        self._keys: dict[str, tuple[str, str]] = {}  # pool -> (key pair name, private key)
        self._given_up: set[str] = set()  # nodes reported unusable (never ready)
        self._key_lock = threading.Lock()

    # -- placement ---------------------------------------------------------------------------

    def place(
        self,
        pool: PoolRef,
        node_ids: Sequence[str],
        in_use: Collection[str],
        *,
        dedicated: bool = True,
    ) -> Placement:
        """Every node asked for: EC2 says at launch whether it has the capacity."""
        if pool.inter_node_communication:  # its instances get a security group of their own
            with self._light_lock:
                self._inter_node.add(pool.pool_id)
        return Placement(
            [
                NodeSlot(
                    node_id=n,
                    root=f"{self.template.node_root.rstrip('/')}/{n}",
                    vm_size=self.template.instance_type,
                    dedicated=dedicated,
                )
                for n in node_ids
            ]
        )

    # -- launch and join -----------------------------------------------------------------------

    def connect(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        """Launch the node's instance (or find it), wait for SSH, start the agent there.

        At most ``maxLaunchAttempts`` instances are launched for one node: once that many
        never answered, the node is reported ``unusable`` (``AllocationTimedOut`` on its pool)
        and every later start fails at once, launching nothing.
        """
        record = self.records.get(_key(node.node_id)) or {}
        if not record.get("instanceId"):
            launched = list(record.get("launched") or [])
            if len(launched) >= self.template.max_launch_attempts:
                if node.node_id not in self._given_up:  # e.g. a restarted service: tell once
                    self._report_never_ready(node, launched, "no instance answered SSH")
                raise AgentError(
                    f"AllocationTimedOut: node {node.node_id}: gave up after {len(launched)} "
                    f"instances ({', '.join(launched)}) that never answered SSH; no more are "
                    "launched for it (remove the node, or resize the pool)"
                )
            record = self._launch(node, record)
        instance_id = str(record["instanceId"])
        deadline = time.monotonic() + self.template.ready_timeout_seconds
        while True:
            try:
                return self._join_instance(node, record, on_event)
            except HostKeyError:
                raise
            except AgentError as exc:
                if time.monotonic() > deadline or self._stop.is_set():
                    launched = self._give_up(node, instance_id, str(exc))
                    if (
                        len(launched) >= self.template.max_launch_attempts
                        and not self._stop.is_set()
                    ):
                        self._never_ready(node, launched, str(exc))
                    raise AgentError(
                        f"{instance_id} was not ready within "
                        f"{self.template.ready_timeout_seconds:g} s ({exc}); it is terminated"
                    ) from None
                self._stop.wait(1.0)

    def _never_ready_text(self, node: NodeRef, launched: Sequence[str]) -> str:
        return (
            f"AllocationTimedOut: node {node.node_id}: none of its {len(launched)} instances "
            f"({', '.join(launched)}) answered SSH within "
            f"{self.template.ready_timeout_seconds:g} s; each is terminated and no more are "
            "launched for it"
        )

    def _never_ready(self, node: NodeRef, launched: Sequence[str], why: str) -> NoReturn:
        """The node's last launch never answered: it stays unusable, its pool is told why."""
        raise AgentError(self._report_never_ready(node, launched, why))

    def _report_never_ready(self, node: NodeRef, launched: Sequence[str], why: str) -> str:
        text = self._never_ready_text(node, launched)
        error = ResizeError(
            "AllocationTimedOut",
            text,
            {"nodeId": node.node_id, "instanceIds": ",".join(launched), "lastError": why},
        )
        if self._report is not None:
            self._given_up.add(node.node_id)
            self._report(ProviderEvent(node.node_id, "unusable", "AllocationTimedOut", text, error))
        return text

    def attach(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        """An agent session on the node's running instance (file reads); never launches."""
        record = self.records.get(_key(node.node_id)) or {}
        if not record.get("instanceId"):
            raise AgentError(f"node {node.node_id} has no instance")
        return self._join_instance(node, record, on_event)

    def remote_login(self, node: NodeRef) -> tuple[str, int]:
        """The instance's SSH address (public, else private, or its ``sshEndpoints`` one)."""
        record = self.records.get(_key(node.node_id)) or {}
        if not record.get("instanceId"):
            raise AgentError(f"node {node.node_id} has no instance")
        return self._address(str(record["instanceId"]), record)

    def _launch(self, node: NodeRef, record: dict[str, Any]) -> dict[str, Any]:
        """Launch (or adopt) the node's instance; its record, ``instanceId`` included."""
        launched = list(record.get("launched") or [])
        found = self._tagged(Filters=[_tag("node", node.node_id), _states(_LIVE_STATES)])
        if found:  # launched before its record was written: adopt it
            instance_id = str(found[0]["InstanceId"])
            if instance_id not in launched:
                launched.append(instance_id)
            adopted = self._put(
                node.node_id,
                {"pool": node.pool_id, **record, "instanceId": instance_id, "launched": launched},
            )
            log.info("adopted %s for node %s", instance_id, node.node_id)
            return adopted
        # The n-th launch of the node: a call retried after a timeout or a throttle keeps its
        # client tokens (EC2 answers with the instance if the first call did launch one).
        attempt = len(launched) + 1
        token = hashlib.sha256(
            f"{self.account}/{self.sku}/{node.pool_id}/{node.node_id}".encode()
        ).hexdigest()[:40]
        # Recorded before the call it protects.
        record = self._put(
            node.node_id, {"pool": node.pool_id, "token": token, "launched": launched}
        )
        subnets: list[str | None] = list(self.template.subnet_ids) or [None]
        last = ("", "")
        for index, subnet in enumerate(subnets):
            params = self._launch_params(node, token, subnet)
            params["ClientToken"] = f"{token}-{attempt}-{index}"
            try:
                response = self._launcher.run_instances(**params)
            except Exception as exc:  # noqa: BLE001 - sorted by its AWS code below
                code, message = _aws_error(exc)
                last = (code, message)
                if code in CAPACITY_CODES:
                    log.info("no capacity for %s in %s: %s", node.node_id, subnet, message)
                    continue
                if code in THROTTLE_CODES:  # not a quota: the engine's next start retries
                    raise AgentError(
                        f"run_instances for {node.node_id} was throttled ({code}: {message}); "
                        "the next start launches again"
                    ) from None
                if code in QUOTA_CODES or code in SPOT_QUOTA_CODES:
                    azure = (
                        "AccountCoreQuotaReached"
                        if node.dedicated and code not in SPOT_QUOTA_CODES
                        else "AccountLowPriorityCoreQuotaReached"
                    )
                    self._fail(node, azure, code, message)
                raise AgentError(f"run_instances for {node.node_id}: {code}: {message}") from None
            instance_id = str(response["Instances"][0]["InstanceId"])
            done = {**record, "instanceId": instance_id, "launched": [*launched, instance_id]}
            self.records.put(_key(node.node_id), done)
            log.info("launched %s for node %s", instance_id, node.node_id)
            return done
        self._fail(node, "AllocationFailed", *last)

    def _launch_params(self, node: NodeRef, token: str, subnet: str | None) -> dict[str, Any]:
        t = self.template
        tags = {
            **t.tags,
            "Name": f"prefect-batch {node.pool_id}/{node.node_id}",
            f"{TAG}account": self.account,
            f"{TAG}source": t.name,
            f"{TAG}pool": node.pool_id,
            f"{TAG}node": node.node_id,
            f"{TAG}launch": token,
        }
        params: dict[str, Any] = {
            "ImageId": t.ami_id,
            "InstanceType": t.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        }
        if subnet is not None:
            params["SubnetId"] = subnet
        groups = list(t.security_group_ids)
        with self._light_lock:
            inter_node = node.pool_id in self._inter_node
        if inter_node:
            groups.append(self._pool_group(node.pool_id))
        if groups:
            params["SecurityGroupIds"] = groups
        if t.key_pair_name:
            params["KeyName"] = t.key_pair_name
        elif t.pool_keys:
            params["KeyName"] = self._pool_key(node.pool_id)[0]
        if t.user_data:
            params["UserData"] = t.user_data
        if t.iam_instance_profile:
            params["IamInstanceProfile"] = {"Name": t.iam_instance_profile}
        if not node.dedicated:
            params["InstanceMarketOptions"] = {
                "MarketType": "spot",
                "SpotOptions": {
                    "SpotInstanceType": "one-time",
                    "InstanceInterruptionBehavior": "terminate",
                },
            }
        return params

    def _fail(self, node: NodeRef, azure_code: str, aws_code: str, message: str) -> NoReturn:
        """The node's launch is refused: report it (the pool's resize error) and stop."""
        self.records.delete(_key(node.node_id))
        text = f"{self.template.instance_type} in {self.template.region_name}: {message}"
        error = ResizeError(azure_code, text, {"awsCode": aws_code, "awsMessage": message})
        if self._report is not None:
            self._report(ProviderEvent(node.node_id, "failed", aws_code, text, error))
        raise AgentError(f"{node.node_id}: {aws_code}: {message}")

    def _put(self, node_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """Record a node's launch, with the first free ``sshEndpoints`` entry if it has none.

        Choosing and recording happen under one lock, so two launches never share an entry.
        """
        with self._lock:
            if record.get("endpoint") is None and self.template.ssh_endpoints:
                taken = {
                    r.get("endpoint")
                    for k, r in self.records.items("node/")
                    if k != _key(node_id) and isinstance(r, dict)
                }
                free = [i for i in range(len(self.template.ssh_endpoints)) if i not in taken]
                if not free:
                    raise AgentError(f"every sshEndpoint of {self.template.name} has an instance")
                record = {**record, "endpoint": free[0]}
            self.records.put(_key(node_id), record)
        return record

    def _address(self, instance_id: str, record: Mapping[str, Any]) -> tuple[str, int]:
        if record.get("endpoint") is not None:
            return self.template.endpoint(int(record["endpoint"]))
        found = self._tagged(InstanceIds=[instance_id])
        if not found:
            raise AgentError(f"{instance_id} is not there (yet)")
        instance = found[0]
        address = instance.get("PublicIpAddress") or instance.get("PrivateIpAddress")
        if instance["State"]["Name"] != "running" or not address:
            raise AgentError(f"{instance_id} is {instance['State']['Name']}")
        return str(address), self.template.ssh_port

    def _join_instance(
        self, node: NodeRef, record: Mapping[str, Any], on_event: EventCallback
    ) -> AgentConnection:
        """Start the node's agent over SSH on its instance (at its address or endpoint)."""
        address, port = self._address(str(record["instanceId"]), record)
        source = SSHNodeSource(self._ssh_group(node, record, address, port), sku=self.sku)
        on_event = self._hear_notices(node, str(record["instanceId"]), on_event)
        return source.start_agent_on(source.hosts[0].id, node.node_id, on_event, root=node.root)

    def _ssh_group(
        self, node: NodeRef, record: Mapping[str, Any], address: str, port: int
    ) -> dict[str, Any]:
        """The SSH host group of one instance: its address, login, key and agent options."""
        t = self.template
        group: dict[str, Any] = {
            "name": t.name,
            "hosts": [{"address": address, "port": port}],
            "user": t.ssh_user,
            "trust_on_first_use": t.trust_on_first_use,
            "node_root": t.node_root,
            "python": t.python,
            "confine_tasks": t.confine_tasks,
            "connect_timeout_seconds": t.connect_timeout_seconds,
            "agent_args": self._agent_args(node),
        }
        if t.known_hosts is not None:
            group["known_hosts"] = t.known_hosts
        if self._private_key is not None:
            group["private_key"] = self._private_key
        elif t.private_key_path is not None:
            group["private_key_path"] = t.private_key_path
        elif t.pool_keys:
            pool_id = str(record.get("pool") or node.pool_id)
            group["private_key"] = self._pool_key(pool_id, make=False)[1]
        return group

    # -- what an instance's agent says of it -----------------------------------------------------

    def _agent_args(self, node: NodeRef) -> list[str]:
        """The orphan timeout for every node; the metadata service for spot nodes only."""
        t = self.template
        args: list[str] = []
        if t.orphan_timeout_seconds:
            args += ["--orphan-timeout-seconds", f"{t.orphan_timeout_seconds:g}"]
            if t.orphan_command:
                args += ["--orphan-command", t.orphan_command]
        if not node.dedicated:
            args += ["--imds-url", t.imds_url, "--imds-poll-seconds", f"{t.imds_poll_seconds:g}"]
        return args

    def _hear_notices(
        self, node: NodeRef, instance_id: str, on_event: EventCallback
    ) -> EventCallback:
        """``on_event``, with the agent's spot notices also reported as provider events."""

        def deliver(msg: dict[str, Any]) -> None:
            if msg.get("ev") == "spot_notice":
                self._spot_notice(node, instance_id, msg)
            on_event(msg)  # a service ignores an event it does not know

        return deliver

    def _spot_notice(self, node: NodeRef, instance_id: str, msg: Mapping[str, Any]) -> None:
        """An interruption notice preempts the node; a rebalance recommendation drains it.

        Each once per node: another agent of the node (a reconnect, a file read) and the
        watcher's later sight of the terminated instance report nothing more.
        """
        kind = _NOTICE_KINDS.get(str(msg.get("notice")))
        if kind is None or self._report is None:
            return
        with self._light_lock:
            if (node.node_id, kind) in self._noticed:
                return
            self._noticed.add((node.node_id, kind))
        if kind == "preempted":
            event = ProviderEvent(
                node.node_id,
                "preempted",
                "NodePreempted",
                f"{instance_id}: spot interruption notice ({msg.get('action')} at {msg.get('at')})",
            )
        else:
            event = ProviderEvent(
                node.node_id,
                "draining",
                "NodeRebalanceRecommended",
                f"{instance_id}: rebalance recommendation at {msg.get('at')}",
            )
        log.warning("%s", event.message)
        self._report(event)

    def _give_up(self, node: NodeRef, instance_id: str, why: str) -> list[str]:
        """Terminate an instance that never answered; the node's launches so far."""
        log.warning("terminating %s (node %s): not ready: %s", instance_id, node.node_id, why)
        record = self.records.get(_key(node.node_id)) or {}
        launched = list(record.get("launched") or [instance_id])
        kept = {k: record[k] for k in ("token",) if k in record}
        # The record first: the watcher then never takes this termination for a lost node.
        self.records.put(_key(node.node_id), {**kept, "pool": node.pool_id, "launched": launched})
        self._terminate([instance_id])
        return launched

    # -- a pool's own key pair ------------------------------------------------------------------

    def _key_name(self, pool_id: str) -> str:
        """``prefect-batch-<account>-<source>-<pool>``, in the characters EC2 takes, at most
        255 (a longer one ends in a hash of the whole)."""
        raw = f"prefect-batch-{self.account}-{self.template.name}-{pool_id}"
        name = re.sub(r"[^A-Za-z0-9._-]", "-", raw)
        if len(name) > 255:
            name = f"{name[:242]}-{hashlib.sha256(raw.encode()).hexdigest()[:12]}"
        return name

    def _key_tags(self, pool_id: str) -> list[dict[str, str]]:
        return [
            {"Key": f"{TAG}account", "Value": self.account},
            {"Key": f"{TAG}source", "Value": self.template.name},
            {"Key": f"{TAG}pool", "Value": pool_id},
        ]

    def _pool_key(self, pool_id: str, *, make: bool = True) -> tuple[str, str]:
        """(name, private key) of the pool's key pair: from memory, from its record, or made
        (once, under a lock; recorded before any instance is launched with it).

        A key pair of that name that we tagged but whose private key we do not have (made by a
        call whose answer was lost) is deleted and made again; one we did not tag is refused.
        """
        with self._key_lock:
            found = self._keys.get(pool_id)
            if found is not None:
                return found
            name = self._key_name(pool_id)
            record = self.records.get(_pool_key_record(pool_id)) or {}
            if record.get("name") == name and record.get("privateKey"):
                found = (name, str(record["privateKey"]))
                self._keys[pool_id] = found
                return found
            if not make:
                raise AgentError(f"the private key of pool {pool_id}'s key pair {name} is gone")
            for pair in (
                self._ec2.describe_key_pairs(Filters=[{"Name": "key-name", "Values": [name]}]).get(
                    "KeyPairs"
                )
                or []
            ):
                tags = {t.get("Key"): t.get("Value") for t in pair.get("Tags") or []}
                if {t["Key"]: t["Value"] for t in self._key_tags(pool_id)}.items() - tags.items():
                    raise AgentError(
                        f"a key pair named {name} exists that this source did not make: "
                        "delete or rename it"
                    )
                log.warning("key pair %s has no private key here: making it again", name)
                self._ec2.delete_key_pair(KeyName=name)
            try:
                made = self._ec2.create_key_pair(
                    KeyName=name,
                    KeyType="ed25519",
                    TagSpecifications=[
                        {"ResourceType": "key-pair", "Tags": self._key_tags(pool_id)}
                    ],
                )
            except Exception as exc:  # noqa: BLE001 - one clear error; the next start retries
                code, message = _aws_error(exc)
                raise AgentError(
                    f"cannot make the key pair {name} of pool {pool_id}: {code}: {message}"
                ) from None
            found = (name, str(made["KeyMaterial"]))
            self.records.put(
                _pool_key_record(pool_id),
                {"name": name, "keyPairId": made.get("KeyPairId"), "privateKey": found[1]},
            )
            self._keys[pool_id] = found
            log.info("made key pair %s for pool %s", name, pool_id)
            return found

    def _delete_pool_keys(self, pool_id: str) -> None:
        """Delete the pool's key pair (by name, then any left with its tags) and its record.
        Deleting one that is already gone is harmless."""
        with self._key_lock:
            record = self.records.get(_pool_key_record(pool_id)) or {}
            names = {str(record["name"])} if record.get("name") else set()
            tags = self._key_tags(pool_id)
            filters = [{"Name": f"tag:{t['Key']}", "Values": [t["Value"]]} for t in tags]
            pairs = self._ec2.describe_key_pairs(Filters=filters).get("KeyPairs") or []
            names.update(str(p["KeyName"]) for p in pairs)
            for name in sorted(names):
                self._ec2.delete_key_pair(KeyName=name)
                log.info("deleted key pair %s of pool %s", name, pool_id)
            self.records.delete(_pool_key_record(pool_id))
            self._keys.pop(pool_id, None)

    # -- a pool's own security group ------------------------------------------------------------

    def _group_name(self, pool_id: str) -> str:
        return f"prefect-batch-{self.account}-{self.template.name}-{pool_id}"[:255]

    def _pool_group(self, pool_id: str) -> str:
        """The pool's security group: its members reach each other on 1101-65535 (TCP and UDP);
        SSH comes only from ``sshCidrs``. Made on the pool's first launch."""
        with self._group_lock:
            found = self._groups.get(pool_id)
            if found is not None:
                return found
            name = self._group_name(pool_id)
            existing = (
                self._ec2.describe_security_groups(
                    Filters=[{"Name": "group-name", "Values": [name]}]
                ).get("SecurityGroups")
                or []
            )
            if existing:
                group_id = str(existing[0]["GroupId"])
            else:
                group_id = self._create_group(pool_id, name)
            self._groups[pool_id] = group_id
            return group_id

    def _create_group(self, pool_id: str, name: str) -> str:
        params: dict[str, Any] = {
            "GroupName": name,
            "Description": f"prefect-batch pool {pool_id}: inter-node traffic and SSH",
            "TagSpecifications": [
                {
                    "ResourceType": "security-group",
                    "Tags": [
                        {"Key": f"{TAG}account", "Value": self.account},
                        {"Key": f"{TAG}source", "Value": self.template.name},
                        {"Key": f"{TAG}pool", "Value": pool_id},
                    ],
                }
            ],
        }
        if self.template.subnet_ids:
            subnet = self._ec2.describe_subnets(SubnetIds=[self.template.subnet_ids[0]])
            params["VpcId"] = subnet["Subnets"][0]["VpcId"]
        group_id = str(self._ec2.create_security_group(**params)["GroupId"])
        members = [{"GroupId": group_id}]
        rules: list[dict[str, Any]] = [
            {"IpProtocol": proto, "FromPort": 1101, "ToPort": 65535, "UserIdGroupPairs": members}
            for proto in ("tcp", "udp")
        ]
        if self.template.ssh_cidrs:
            v4 = [{"CidrIp": c} for c in self.template.ssh_cidrs if ":" not in c]
            v6 = [{"CidrIpv6": c} for c in self.template.ssh_cidrs if ":" in c]
            rules.append(
                {
                    "IpProtocol": "tcp",
                    "FromPort": self.template.ssh_port,
                    "ToPort": self.template.ssh_port,
                    **({"IpRanges": v4} if v4 else {}),
                    **({"Ipv6Ranges": v6} if v6 else {}),
                }
            )
        self._ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=rules)
        log.info("made security group %s for pool %s", group_id, pool_id)
        return group_id

    def pool_deleted(self, pool: PoolRef, *, wait_seconds: float = 300.0) -> None:
        """Delete the pool's key pair, terminate what is left of the pool, then delete its
        security group (retried while EC2 still counts a terminating instance in it).
        Idempotent: a second call finds nothing left to delete."""
        self._delete_pool_keys(pool.pool_id)
        deadline = time.monotonic() + wait_seconds
        while True:
            live = self._tagged(Filters=[_tag("pool", pool.pool_id), _states(_LIVE_STATES)])
            self._terminate([str(i["InstanceId"]) for i in live])
            groups = (
                self._ec2.describe_security_groups(
                    Filters=[{"Name": "group-name", "Values": [self._group_name(pool.pool_id)]}]
                ).get("SecurityGroups")
                or []
            )
            try:
                for group in groups:
                    self._ec2.delete_security_group(GroupId=group["GroupId"])
            except Exception as exc:  # noqa: BLE001 - DependencyViolation until they are gone
                code, message = _aws_error(exc)
                if code != "DependencyViolation" or time.monotonic() > deadline:
                    raise AgentError(
                        f"cannot delete the group of {pool.pool_id}: {message}"
                    ) from None
                self._stop.wait(2.0)
                continue
            with self._group_lock:
                self._groups.pop(pool.pool_id, None)
            with self._light_lock:
                self._inter_node.discard(pool.pool_id)
            return

    # -- release -------------------------------------------------------------------------------

    def release(self, request_id: str, node: NodeRef, *, wipe_only: bool = False) -> None:
        """Terminate the node's instance.

        Idempotent without a record of its own: once the node's record is gone, a second call
        finds no live instance tagged with the node and terminates nothing.
        """
        if wipe_only:  # a reimage: the next agent empties the root; the instance stays
            return
        record = self.records.get(_key(node.node_id)) or {}
        ids = [record["instanceId"]] if record.get("instanceId") else []
        if not ids:
            ids = [
                str(i["InstanceId"])
                for i in self._tagged(Filters=[_tag("node", node.node_id), _states(_LIVE_STATES)])
            ]
        self._terminate(ids)
        self.records.delete(_key(node.node_id))
        self._given_up.discard(node.node_id)

    def _terminate(self, ids: list[str]) -> None:
        if ids:  # never with an empty list: that would mean every instance
            self._ec2.terminate_instances(InstanceIds=ids)

    # -- watching ------------------------------------------------------------------------------

    def watch(self, report: ReportCallback) -> None:
        super().watch(report)
        with self._light_lock:
            if self._watcher is None:
                self._watcher = threading.Thread(
                    target=self._watch_loop,
                    name=f"prefect-batch-ec2-{self.template.name}",
                    daemon=True,
                )
                self._watcher.start()

    def _watch_loop(self) -> None:
        while not self._stop.wait(self.template.poll_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the next poll tries again
                log.warning("polling EC2 for %s failed", self.template.name, exc_info=True)

    def poll(self) -> None:
        """Report instances that went away; terminate ones of this source no node knows."""
        known = {
            k[len("node/") :]: r
            for k, r in self.records.items("node/")
            if isinstance(r, dict) and r.get("instanceId")
        }
        launching = {k[len("node/") :] for k, _ in self.records.items("node/")}
        found = {str(i["InstanceId"]): i for i in self._tagged(Filters=self._source_filters())}
        for node_id, record in known.items():
            instance = found.get(record["instanceId"])
            state = instance["State"]["Name"] if instance is not None else None
            if state in _LIVE_STATES:
                self._missing.pop(node_id, None)
                continue
            if instance is None:  # describe is eventually consistent: twice before it counts
                self._missing[node_id] = self._missing.get(node_id, 0) + 1
                if self._missing[node_id] < 2:
                    continue
            current = self.records.get(_key(node_id)) or {}
            if current.get("instanceId") != record["instanceId"]:
                self._missing.pop(node_id, None)
                continue  # terminated by the provider itself (not ready) since it was read
            reason = ((instance or {}).get("StateReason") or {}).get("Code", "")
            self.records.delete(_key(node_id))
            self._missing.pop(node_id, None)
            with self._light_lock:
                noticed = (node_id, "preempted") in self._noticed
            if self._report is None or noticed:  # reported from its notice already
                continue
            if reason == "Server.SpotInstanceTermination":
                event = ProviderEvent(
                    node_id, "preempted", "NodePreempted", f"{record['instanceId']}: {reason}"
                )
            else:
                why = reason or state or "no longer there"
                event = ProviderEvent(
                    node_id, "lost", "NodeMachineLost", f"{record['instanceId']}: {why}"
                )
            self._report(event)
        strays = [
            instance_id
            for instance_id, i in found.items()
            if i["State"]["Name"] in _LIVE_STATES and _tag_of(i, "node") not in launching
        ]
        if strays:
            log.warning("terminating instances of %s no node knows: %s", self.template.name, strays)
            self._terminate(strays)

    def _source_filters(self) -> list[dict[str, Any]]:
        return [_tag("account", self.account), _tag("source", self.template.name)]

    def _tagged(self, **query: Any) -> list[dict[str, Any]]:
        if "Filters" in query:
            query["Filters"] = [*self._source_filters(), *query["Filters"]]
        return list(_instances(self._ec2, **query))

    def close(self) -> None:
        self._stop.set()


def _key(node_id: str) -> str:
    return f"node/{node_id}"


def _pool_key_record(pool_id: str) -> str:
    return f"pool-key/{pool_id}"


def _tag(name: str, value: str) -> dict[str, Any]:
    return {"Name": f"tag:{TAG}{name}", "Values": [value]}


def _states(states: Sequence[str]) -> dict[str, Any]:
    return {"Name": "instance-state-name", "Values": list(states)}


def _tag_of(instance: Mapping[str, Any], name: str) -> str | None:
    for tag in instance.get("Tags") or []:
        if tag.get("Key") == f"{TAG}{name}":
            return str(tag.get("Value"))
    return None


def _instances(ec2: Any, **query: Any) -> Iterator[dict[str, Any]]:
    for page in ec2.get_paginator("describe_instances").paginate(**query):
        for reservation in page.get("Reservations") or []:
            yield from reservation.get("Instances") or []


# -- the kind ----------------------------------------------------------------------------------


def validate_registration(body: Any) -> dict[str, Any]:
    """The stored spec of an EC2 template, checked against EC2 (nothing is launched).

    Raises:
        BatchInvalidRequestError: Naming the offending field: one the model refuses, key
            material, an instance type, AMI, subnet or security group EC2 does not have, or
            an endpoint that cannot be reached.
    """
    if not isinstance(body, Mapping):
        raise BatchInvalidRequestError("InvalidRequestBody", "An EC2 template is a JSON object.")
    fields = {k: v for k, v in body.items() if k not in ("kind", "nodeAgentSKUId")}
    for name in _KEY_FIELDS:
        if name in fields:
            raise invalid_property(
                name,
                "<hidden>",
                "key material is never stored: give privateKeyPath (a key file on the "
                "service's machine) or privateKeySecretName (a Prefect Secret block)",
            )
    try:
        template = EC2Template.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    _check_keys(template)
    _check_against_ec2(template)
    return template.model_dump(mode="json", by_alias=True, exclude_none=True)


def _check_keys(template: EC2Template) -> None:
    """No key at all (each pool gets its own key pair), or one private key: a file or a Secret
    block, with ``keyPairName`` when EC2 is to install it (an AMI or user data may)."""
    path = str(template.private_key_path) if template.private_key_path else None
    if path is not None and template.private_key_secret_name is not None:
        raise invalid_property(
            "privateKeySecretName",
            template.private_key_secret_name,
            "give privateKeyPath or privateKeySecretName, not both",
        )
    no_key = path is None and template.private_key_secret_name is None
    if template.key_pair_name is not None and no_key:
        raise invalid_property(
            "privateKeyPath",
            None,
            f"the key pair {template.key_pair_name!r} needs its private key: give "
            "privateKeyPath or privateKeySecretName, or leave keyPairName out and each "
            "pool gets a key pair of its own",
        )


def _check_against_ec2(template: EC2Template) -> None:
    try:
        ec2, _ = _clients(template)
    except AgentError as exc:
        raise invalid_property(
            "awsCredentialsBlockName", template.aws_credentials_block_name, str(exc)
        ) from None
    checks: list[tuple[str, Any, str, dict[str, Any]]] = [
        (
            "instanceType",
            template.instance_type,
            "describe_instance_types",
            {"InstanceTypes": [template.instance_type]},
        ),
        ("amiId", template.ami_id, "describe_images", {"ImageIds": [template.ami_id]}),
    ]
    if template.subnet_ids:
        checks.append(
            (
                "subnetIds",
                template.subnet_ids,
                "describe_subnets",
                {"SubnetIds": template.subnet_ids},
            )
        )
    if template.security_group_ids:
        checks.append(
            (
                "securityGroupIds",
                template.security_group_ids,
                "describe_security_groups",
                {"GroupIds": template.security_group_ids},
            )
        )
    for field, value, call, params in checks:
        try:
            answer = getattr(ec2, call)(**params)
        except Exception as exc:  # noqa: BLE001 - every failure names the field it checked
            code, message = _aws_error(exc)
            if code in ("EndpointConnectionError", "ConnectTimeoutError", "NoCredentialsError"):
                raise invalid_property(
                    "endpointUrl", template.endpoint_url, f"cannot ask EC2: {message}"
                ) from None
            raise invalid_property(field, value, f"{code}: {message}") from None
        if call == "describe_images" and not answer.get("Images"):
            raise invalid_property(field, value, "EC2 has no such image")


def supported_image(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return image_entry(KINDS["ec2"].sku(name), "ec2", str(spec.get("amiId", name)), "EC2")


def files(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Files on the service's machine the template names."""
    return [(f, str(spec[f])) for f in ("privateKeyPath", "knownHosts") if spec.get(f)]


def build_provider(sku: str, spec: Mapping[str, Any], context: BuildContext) -> EC2Provider:
    """An :class:`EC2Provider` for a stored template (its Secret block resolved).

    Raises:
        AgentError: The Secret block cannot be loaded, or the template is no longer valid.
    """
    try:
        template = EC2Template.model_validate(dict(spec))
    except ValidationError as exc:
        raise AgentError(f"the EC2 template {spec.get('name')!r} is not valid: {exc}") from None
    key = None
    if template.private_key_secret_name:
        key = context.resolve_secret(template.private_key_secret_name)
    return EC2Provider(sku, template, context.account, context.records, key)
