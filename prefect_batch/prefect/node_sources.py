"""Node-source blocks: where a pool's nodes come from — local processes, SSH hosts, EC2.

A node source is what Azure Batch calls an image: a pool names one (its
``virtualMachineConfiguration.nodeAgentSKUId``) and the service's provider for it makes the
nodes. Each block here turns itself into that part of a pool spec
(:meth:`NodeSourceBlock.virtual_machine_configuration`) and describes itself, without secrets,
for the service (:meth:`NodeSourceBlock.node_source_spec`).

* :class:`LocalNodeSource` — node agents as processes on the service's machine (offered now).
* :class:`SSHHostGroup` — hosts reached over SSH, keys from a Prefect ``Secret`` block, pinned
  host keys. :meth:`SSHHostGroup.ensure_registered` registers it with the service (what
  ``BatchPool.ensure`` does first), which then offers ``batch.node.ssh.<group name>``: the
  registration holds the Secret block's *name*, never the key, and the engine that connects
  resolves it.
* :class:`EC2Template` — instances from an AMI, with prefect-aws ``AwsCredentials``; a typed
  slot for the EC2 provider, same as above.

This module does not connect to hosts or clouds: it holds configuration and resolves secrets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import prefect_aws.credentials as _aws  # module import: keeps AwsCredentials out of registration
from prefect.blocks.core import Block
from pydantic import BaseModel, Field, SecretStr, model_validator

__all__ = [
    "EC2_NODE_AGENT_SKU",
    "EC2Template",
    "LOCAL_NODE_AGENT_SKU",
    "LocalNodeSource",
    "NodeSourceBlock",
    "SSH_NODE_AGENT_SKU",
    "SSHHost",
    "SSHHostGroup",
]

LOCAL_NODE_AGENT_SKU = "batch.node.local"
"""Node agents as local processes (``prefect_batch.service.ops.pools.LOCAL_NODE_AGENT_SKU``)."""
SSH_NODE_AGENT_SKU = "batch.node.ssh"
"""Node agents on SSH hosts; a group's id is ``batch.node.ssh.<group name>``."""
EC2_NODE_AGENT_SKU = "batch.node.ec2"
"""Node agents on EC2 instances; a template's id is ``batch.node.ec2.<template name>``."""

_LOGO = "https://raw.githubusercontent.com/PrefectHQ/prefect/{commit}/assets/block-logos/{name}.png"
_POOLS_DOC = "https://learn.microsoft.com/azure/batch/nodes-and-pools"


def _load_secret(name: str | None) -> SecretStr | None:
    """The value of a Prefect ``Secret`` block, by name."""
    if not name:
        return None
    from prefect.blocks.system import Secret

    value = Secret.load(name, _sync=True).get()  # type: ignore[call-arg]
    return SecretStr(value if isinstance(value, str) else str(value))


class NodeSourceBlock(Block, ABC):
    """What every node-source block gives a pool (an interface: never registered itself)."""

    @abstractmethod
    def node_agent_sku(self) -> str:
        """The ``nodeAgentSKUId`` pools on this source name."""

    @model_validator(mode="before")
    @classmethod
    def _only_own_fields(cls, values: Any) -> Any:
        # Blocks accept unknown keys, so in ``LocalNodeSource | SSHHostGroup | EC2Template`` the
        # field-less LocalNodeSource would take any node source's data (nested blocks loaded
        # from the server come without their slug). Refusing foreign keys makes the union pick.
        if isinstance(values, dict):
            unknown = {k for k in values if k not in cls.model_fields and not k.startswith("_")} - {
                "block_type_slug"
            }
            if unknown:
                raise ValueError(f"not fields of {cls.__name__}: {', '.join(sorted(unknown))}")
        return values

    def image_reference(self) -> dict[str, str]:
        """The ``imageReference`` of the pools using this source."""
        return {
            "publisher": "prefect-batch",
            "offer": self.node_agent_sku().split(".")[2],
            "sku": self._image_sku(),
            "version": "latest",
        }

    def virtual_machine_configuration(self) -> dict[str, Any]:
        """The pool spec's ``virtualMachineConfiguration`` (wire names)."""
        return {"imageReference": self.image_reference(), "nodeAgentSKUId": self.node_agent_sku()}

    @abstractmethod
    def default_vm_size(self) -> str:
        """The ``vmSize`` of a pool that does not set one."""

    @abstractmethod
    def node_source_spec(self) -> dict[str, Any]:
        """Everything the service's provider needs, except secrets."""

    def _image_sku(self) -> str:
        return "default"


class LocalNodeSource(NodeSourceBlock):
    """Nodes that are node-agent processes on the machine running the batch service.

    Not to be confused with ``prefect_batch.providers.local.LocalNodeSource``, the provider that
    makes those processes: this block is how a pool asks for them.
    """

    _block_type_name = "Batch Local Node Source"
    _block_type_slug = "batch-local-node-source"
    _logo_url = _LOGO.format(commit="54f20a72d18d53ba98d975c8702c1de45820afc3", name="process")
    _documentation_url = _POOLS_DOC
    _description = (
        "Nodes of a prefect-batch pool that run as local processes on the machine of the batch "
        "service (the embedded default)."
    )
    _code_example = """
```python
from prefect_batch.blocks import LocalNodeSource
from prefect_batch.blocks import BatchPool

local = LocalNodeSource.load("BLOCK_NAME")
pool = BatchPool(pool_id="render", target_dedicated_nodes=2, node_source=local)
```
"""

    def node_agent_sku(self) -> str:
        return LOCAL_NODE_AGENT_SKU

    def _image_sku(self) -> str:
        return "process"

    def default_vm_size(self) -> str:
        return "local"

    def node_source_spec(self) -> dict[str, Any]:
        return {"nodeAgentSKUId": self.node_agent_sku()}


class SSHHost(BaseModel):
    """One host of an SSH host group (as ``prefect_batch.providers.hostgroup.SSHHost``)."""

    address: str = Field(description="Host name or IP address.")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port.")
    user: str | None = Field(default=None, description="Login user; the group's user when empty.")
    host_key: str | None = Field(
        default=None,
        description=(
            "The host's public key, pinned ('ssh-ed25519 AAAA...'); the group's known_hosts "
            "file decides when empty."
        ),
    )
    root: str | None = Field(
        default=None,
        description="Node root directory on the host; the group's node_root when empty.",
    )


class SSHHostGroup(NodeSourceBlock):
    """Hosts you own, reached over SSH, as the nodes of a pool.

    The block form of ``prefect_batch.providers.hostgroup.SSHHostGroup`` (the SSH node source's
    configuration): the same fields, except that the private key is never in the block — it
    comes from the Prefect ``Secret`` block named by ``private_key_secret_name`` (or a key file
    on the service's machine). :meth:`to_host_group` builds the provider's model with the key.
    Host keys are verified: each host's ``host_key`` is pinned, or found in ``known_hosts``;
    trust on first use is an explicit opt-in.
    """

    _block_type_name = "Batch SSH Host Group"
    _block_type_slug = "batch-ssh-host-group"
    _logo_url = _LOGO.format(commit="a5fb28bddae276a16c9891160189c8cd1bfec84f", name="terminal")
    _documentation_url = _POOLS_DOC
    _description = (
        "A group of hosts reached over SSH (pinned host keys, private key from a Prefect Secret "
        "block) that become the nodes of a prefect-batch pool."
    )
    _code_example = """
```python
from prefect_batch.blocks import SSHHostGroup

hosts = SSHHostGroup.load("BLOCK_NAME")
group = hosts.to_host_group()  # the SSH node source's configuration, key included
```
"""

    group_name: str = Field(
        default="ssh",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Name of the group; pools name it as node source batch.node.ssh.<name>.",
    )
    hosts: list[SSHHost] = Field(
        default_factory=list, description="The hosts; a pool of N nodes takes N of them."
    )
    user: str | None = Field(default=None, description="Login user of hosts that name none.")
    private_key_secret_name: str | None = Field(
        default=None, description="Name of the Prefect Secret block holding the private key."
    )
    private_key_path: str | None = Field(
        default=None, description="Path of a private key file on the service's machine."
    )
    known_hosts: str | None = Field(
        default=None, description="A known_hosts file for hosts without a pinned host key."
    )
    trust_on_first_use: bool = Field(
        default=False,
        description="Accept and record an unknown host key on first contact (off: refuse it).",
    )
    node_root: str = Field(
        default="~/.prefect-batch-node",
        description="Node root on each host that sets none; '~/...' is under the user's home.",
    )
    vm_size: str | None = Field(default=None, description="The vmSize label of the hosts.")
    cores: int | None = Field(default=None, ge=1, description="Declared cores per host.")
    memory_bytes: int | None = Field(
        default=None, ge=0, description="Declared memory per host, in bytes."
    )
    python: str = Field(default="python3", description="Python 3.8+ on the hosts.")
    confine_tasks: bool = Field(
        default=True,
        description="Confine tasks on the hosts (Landlock): they reach neither the SSH user's "
        "home nor the node root beyond their own directories.",
    )

    def node_agent_sku(self) -> str:
        return f"{SSH_NODE_AGENT_SKU}.{self.group_name}"

    def _image_sku(self) -> str:
        return self.group_name

    def default_vm_size(self) -> str:
        return self.vm_size or "ssh"

    def private_key(self) -> SecretStr | None:
        """The private key from the Secret block, if one is named."""
        return _load_secret(self.private_key_secret_name)

    def _group_fields(self) -> dict[str, Any]:
        return {
            "name": self.group_name,
            "hosts": [h.model_dump(exclude_none=True) for h in self.hosts],
            "user": self.user,
            "private_key_path": self.private_key_path,
            "known_hosts": self.known_hosts,
            "trust_on_first_use": self.trust_on_first_use,
            "node_root": self.node_root,
            "vm_size": self.vm_size,
            "cores": self.cores,
            "memory_bytes": self.memory_bytes,
            "python": self.python,
            "confine_tasks": self.confine_tasks,
        }

    def to_host_group(self) -> Any:
        """The SSH node source's ``SSHHostGroup``, private key loaded from its Secret block.

        Raises:
            pydantic.ValidationError: What the provider refuses (a host whose key can never be
                verified, no key or two keys, ...).
        """
        from prefect_batch.providers.hostgroup import SSHHostGroup as HostGroup

        fields = {k: v for k, v in self._group_fields().items() if v is not None}
        key = self.private_key()
        if key is not None:
            fields["private_key"] = key
        return HostGroup.model_validate(fields)

    def node_source_spec(self) -> dict[str, Any]:
        return {
            "nodeAgentSKUId": self.node_agent_sku(),
            **self._group_fields(),
            "private_key_secret_name": self.private_key_secret_name,
        }

    def ensure_registered(self, client: Any) -> None:
        """Register this group with the service, or bring its registration up to date.

        What is registered is :meth:`node_source_spec`: the key stays in its Secret block (or
        file) and is resolved by the engine that connects to the hosts.

        Args:
            client: An open ``BatchClient``.
        """
        _ensure_registered(client, self.group_name, self, lambda s: s.host_group)


class EC2Template(NodeSourceBlock):
    """EC2 instances launched from an AMI as the nodes of a pool (on-demand or spot).

    AWS credentials come from a prefect-aws ``AwsCredentials`` block (the default boto3 chain
    when empty); the login key from a Prefect ``Secret`` block.
    """

    _block_type_name = "Batch EC2 Template"
    _block_type_slug = "batch-ec2-template"
    _logo_url = _LOGO.format(commit="cf7a341087979633ff7e260049cb1eb9aa7fdb5c", name="aws")
    _documentation_url = (
        "https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/LaunchingAndUsingInstances.html"
    )
    _description = (
        "A template of EC2 instances (AMI, instance type, subnet, key pair, spot or on-demand) "
        "that become the nodes of a prefect-batch pool."
    )
    _code_example = """
```python
from prefect_batch.blocks import EC2Template

template = EC2Template.load("BLOCK_NAME")
print(template.ami_id, template.instance_type)
```
"""

    def node_agent_sku(self) -> str:
        return f"{EC2_NODE_AGENT_SKU}.{self.template_name}"

    template_name: str = Field(
        default="ec2",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Name of the template; pools name it as node source batch.node.ec2.<name>.",
    )
    ami_id: str = Field(description="The AMI the instances boot (needs python3 and sshd).")
    instance_type: str = Field(default="t3.micro", description="The EC2 instance type.")
    region_name: str | None = Field(
        default=None, description="The AWS region; the credentials' region when empty."
    )
    subnet_id: str | None = Field(default=None, description="The subnet to launch into.")
    subnet_ids: list[str] = Field(
        default_factory=list,
        description="More subnets, tried in order (after subnet_id) on capacity errors.",
    )
    security_group_ids: list[str] = Field(
        default_factory=list, description="Security groups of the instances."
    )
    key_pair_name: str | None = Field(default=None, description="The EC2 key pair to log in with.")
    spot: bool = Field(
        default=False,
        description="The pool's nodes are spot instances: a BatchPool block on this template "
        "asks for its node count as targetLowPriorityNodes.",
    )
    ssh_user: str = Field(default="ec2-user", description="Login user of the AMI.")
    private_key_secret_name: str | None = Field(
        default=None, description="Name of the Prefect Secret block holding the key pair's key."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="Tags put on every instance (besides the request id)."
    )
    known_hosts: str | None = Field(
        default=None, description="known_hosts file (on the service's machine) for host keys."
    )
    trust_on_first_use: bool = Field(
        default=False, description="Record an instance's unknown host key on first contact."
    )
    confine_tasks: bool = Field(
        default=True,
        description="Confine tasks on the instances (Landlock): they reach neither the login "
        "user's home nor the node root beyond their own directories.",
    )
    endpoint_url: str | None = Field(
        default=None, description="An EC2-compatible endpoint instead of AWS's."
    )
    aws_credentials: _aws.AwsCredentials | None = Field(
        default=None,
        description="AWS credentials; the default boto3 chain when empty. A saved "
        "AwsCredentials block is named in the registration, so the service uses it too.",
    )

    def _image_sku(self) -> str:
        return self.ami_id

    def default_vm_size(self) -> str:
        return self.instance_type

    def private_key(self) -> SecretStr | None:
        """The login key from the Secret block, if one is named."""
        return _load_secret(self.private_key_secret_name)

    def node_source_spec(self) -> dict[str, Any]:
        """The ``ec2`` registration (without key material; the service checks it)."""
        region = self.region_name or (
            self.aws_credentials.region_name if self.aws_credentials is not None else None
        )
        subnets = [*([self.subnet_id] if self.subnet_id else []), *self.subnet_ids]
        spec: dict[str, Any] = {
            "kind": "ec2",
            "name": self.template_name,
            "amiId": self.ami_id,
            "instanceType": self.instance_type,
            "regionName": region,
            "endpointUrl": self.endpoint_url,
            "subnetIds": subnets,
            "securityGroupIds": list(self.security_group_ids),
            "keyPairName": self.key_pair_name,
            "sshUser": self.ssh_user,
            "privateKeySecretName": self.private_key_secret_name,
            "knownHosts": self.known_hosts,
            "trustOnFirstUse": self.trust_on_first_use,
            "confineTasks": self.confine_tasks,
            "tags": dict(self.tags),
            # A saved block is loaded by name where the service runs; keys never travel here.
            "awsCredentialsBlockName": _saved_name(self.aws_credentials),
        }
        return {k: v for k, v in spec.items() if v not in (None, [], {})}

    def ensure_registered(self, client: Any) -> None:
        """Register this template with the service, or bring its registration up to date.

        The service checks it against EC2 with the saved ``aws_credentials`` block it names (or,
        with none or an unsaved one, its own boto3 chain); the key stays in its Secret block.

        Args:
            client: An open ``BatchClient``.
        """
        _ensure_registered(client, self.template_name, self, lambda s: s.spec)


def _saved_name(block: Any) -> str | None:
    """The name ``block`` is saved under, or None (unset, unsaved, or saved inside another)."""
    if block is None or getattr(block, "_is_anonymous", False):
        return None
    return getattr(block, "_block_document_name", None)


def _ensure_registered(client: Any, name: str, block: NodeSourceBlock, current_of: Any) -> None:
    """Register ``block`` as the node source ``name``, or update a registration that differs."""
    from prefect_batch.exceptions import BatchNotFoundError
    from prefect_batch.providers.kinds import registration_body

    wanted = registration_body(block)
    try:
        current = client.get_node_source(name)
    except BatchNotFoundError:
        client.create_node_source(wanted)
        return
    stored = current_of(current) or {}
    if "kind" in wanted:
        # Sent unchecked (the server checks it): the stored form adds the kind's defaults, so
        # what the block sets is what must match.
        fields = {k: v for k, v in wanted.items() if k != "kind"}
        same = {k: stored.get(k) for k in fields} == fields
    else:
        same = stored == wanted
    if not same:
        client.update_node_source(name, wanted)
