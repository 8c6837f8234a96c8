"""Account and pool blocks: where the batch service is, and what a pool should look like.

* :class:`BatchAccount` — the service (a server URL, or empty for the embedded service in the
  calling process), the account name and key; :meth:`BatchAccount.get_client` builds the
  :class:`~prefect_batch.BatchClient`.
* :class:`BatchPool` — a pool spec (id, vm size, node count, slots per node, fill type, start
  task, node source, metadata) with :meth:`BatchPool.ensure`, which creates the pool or brings an
  existing one to the spec: it resizes when the node count differs and patches the start task and
  metadata, and refuses (naming the property) what Azure Batch cannot change on a live pool.

The block ``BatchPool`` is the *spec* kept in Prefect; the service's resource is the model
``prefect_batch.models.BatchPool`` that :meth:`BatchPool.ensure` returns.

This module does not run jobs (see :mod:`prefect_batch.prefect.driver`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prefect.blocks.core import Block
from prefect_aws import S3Bucket
from pydantic import Field, SecretStr, field_validator

from prefect_batch.exceptions import (
    BatchAuthenticationError,
    BatchConflictError,
    BatchInvalidRequestError,
    PrefectBatchError,
)
from prefect_batch.models import ID_PATTERN, BatchPoolCreateOptions, BatchStartTask
from prefect_batch.models import BatchPool as BatchPoolModel
from prefect_batch.prefect import events
from prefect_batch.prefect.node_sources import (
    _LOGO,
    LOCAL_NODE_AGENT_SKU,
    EC2Template,
    LocalNodeSource,
    SSHHostGroup,
)
from prefect_batch.settings import BatchSettings, get_settings

if TYPE_CHECKING:
    from prefect_batch.client import BatchClient

__all__ = ["BatchAccount", "BatchPool", "BatchPoolSpecError"]

logger = logging.getLogger(__name__)

_AZURE_LOGO = _LOGO.format(
    commit="0fcc1f1c65b776813818d71f3540e97a529bd0e7", name="microsoft-azure"
)


class BatchPoolSpecError(PrefectBatchError, ValueError):
    """A pool exists with a property the block asks otherwise, and Azure cannot change it live.

    Attributes:
        pool_id: The pool.
        property_name: The wire name of the property (``vmSize``, ``taskSlotsPerNode``...).
    """

    def __init__(self, pool_id: str, property_name: str, message: str) -> None:
        self.pool_id = pool_id
        self.property_name = property_name
        super().__init__(message)


class BatchAccount(Block):
    """A prefect-batch account: the service to talk to and the credentials to use.

    An empty ``service_url`` means the embedded service: state in SQLite under ``home`` (or
    ``PREFECT_BATCH_HOME``) and, in a flow, an engine in the flow's own process that runs the
    pools' local nodes while the flow follows its job.
    """

    _block_type_name = "Batch Account"
    _block_type_slug = "batch-account"
    _logo_url = _AZURE_LOGO
    _documentation_url = "https://learn.microsoft.com/azure/batch/accounts"
    _description = (
        "A prefect-batch account: the URL of a batch server (empty for the embedded service), "
        "the account name and its key."
    )
    _code_example = """
```python
from prefect_batch.blocks import BatchAccount

account = BatchAccount.load("BLOCK_NAME")
with account.get_client() as client:
    print([pool.id for pool in client.list_pools()])
```
"""

    service_url: str | None = Field(
        default=None,
        description="URL of a prefect-batch server; empty means the embedded service.",
    )
    account_name: str = Field(default="local", description="The batch account name.")
    account_key: SecretStr | None = Field(
        default=None, description="The account key (base64) for SharedKey authentication."
    )
    home: str | None = Field(
        default=None,
        description="State directory of the embedded service; PREFECT_BATCH_HOME when empty.",
    )
    storage: S3Bucket | None = Field(
        default=None,
        description="The S3 bucket block (prefect-aws) whose credentials and endpoint the "
        "embedded service signs resource and output file URLs with; a server uses its own.",
    )

    def settings(self) -> BatchSettings:
        """The client settings this account stands for (the environment's, overridden)."""
        update: dict[str, Any] = {"account_name": self.account_name}
        if self.home:
            update["home"] = Path(self.home).expanduser()
        if self.service_url:
            update["service_url"] = self.service_url
            update["account_key"] = self.account_key
        return get_settings().model_copy(update=update)

    def get_client(self, *, engine: bool = True) -> BatchClient:
        """A client of this account; close it (or use it as a context manager) when done.

        Args:
            engine: In embedded mode, run an engine in this process so pools get nodes and
                tasks run (a flow following a job wants this; a quick look does not).
        """
        from prefect_batch.client import BatchClient
        from prefect_batch.providers.storage import ObjectStorage

        storage = ObjectStorage.from_block(self.storage) if self.storage is not None else None
        return BatchClient(
            self.account_name, engine=engine, settings=self.settings(), storage=storage
        )


def _metadata_dict(items: list[Any] | None) -> dict[str, str]:
    return {m.name: m.value for m in items or []}


class BatchPool(Block):
    """A pool spec kept in Prefect, made real (or brought up to date) by :meth:`ensure`.

    ``target_dedicated_nodes`` is the node count; the node source is a nested block (local
    processes when empty).
    """

    _block_type_name = "Batch Pool"
    _block_type_slug = "batch-pool"
    _logo_url = _AZURE_LOGO
    _documentation_url = "https://learn.microsoft.com/azure/batch/nodes-and-pools"
    _description = (
        "A prefect-batch pool spec (size, task slots per node, fill type, start task, node "
        "source, metadata) that ensure() creates or updates in the batch service."
    )
    _code_example = """
```python
from prefect_batch.blocks import BatchPool
from prefect_batch.flows import run_batch_job

pool = BatchPool.load("BLOCK_NAME")
pool.ensure()  # create it, or resize / update it to this spec
result = run_batch_job(pool=pool, tasks=["echo one", "echo two"])
```
"""

    pool_id: str = Field(
        description="The pool id: 1-64 letters, digits, hyphens, underscores.",
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
    )
    vm_size: str | None = Field(
        default=None, description="The node size; the node source's default when empty."
    )
    target_dedicated_nodes: int = Field(default=1, ge=0, description="How many nodes the pool has.")
    task_slots_per_node: int = Field(
        default=1, ge=1, le=256, description="Tasks one node runs at once (1 to 256)."
    )
    node_fill_type: Literal["spread", "pack"] = Field(
        default="spread", description="Spread tasks over nodes, or pack each node first."
    )
    start_task: dict[str, Any] | None = Field(
        default=None,
        description="The start task every node runs when it joins (Azure startTask JSON).",
    )
    node_source: LocalNodeSource | SSHHostGroup | EC2Template | None = Field(
        default=None, description="Where the nodes come from; local processes when empty."
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Name-value pairs kept with the pool."
    )
    display_name: str | None = Field(default=None, description="A display name for the pool.")
    node_deallocation_option: Literal["requeue", "terminate", "taskcompletion", "retaineddata"] = (
        Field(
            default="requeue",
            description="What happens to running tasks on nodes removed by a shrinking resize.",
        )
    )
    account: BatchAccount | None = Field(
        default=None, description="The account of the pool; the embedded default when empty."
    )

    @field_validator("start_task")
    @classmethod
    def _valid_start_task(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            BatchStartTask.model_validate(value)
        return value

    # -- the spec ------------------------------------------------------------------------------

    def effective_node_source(self) -> LocalNodeSource | SSHHostGroup | EC2Template:
        """The node source, local processes by default."""
        return self.node_source or LocalNodeSource()

    def to_pool_spec(self) -> BatchPoolCreateOptions:
        """The create-pool body this block stands for."""
        source = self.effective_node_source()
        body: dict[str, Any] = {
            "id": self.pool_id,
            "vmSize": self.vm_size or source.default_vm_size(),
            "virtualMachineConfiguration": source.virtual_machine_configuration(),
            **self._targets(self.target_dedicated_nodes),
            "taskSlotsPerNode": self.task_slots_per_node,
            "taskSchedulingPolicy": {"nodeFillType": self.node_fill_type},
        }
        if self.display_name:
            body["displayName"] = self.display_name
        if self.start_task is not None:
            body["startTask"] = self.start_task
        if self.metadata:
            body["metadata"] = [{"name": k, "value": v} for k, v in self.metadata.items()]
        return BatchPoolCreateOptions.model_validate(body)

    # -- making it real ------------------------------------------------------------------------

    def ensure(self, account: BatchAccount | BatchClient | None = None) -> BatchPoolModel:
        """Create the pool, or bring the existing one to this spec; idempotent.

        An existing pool is resized when its node count differs (a resize in progress toward
        another count is stopped first), and its start task and metadata are patched when they
        differ. Emits ``prefect-batch.pool.created`` / ``.resized`` / ``.updated`` events.

        Args:
            account: The account (block) or an open client; the block's own account, or the
                embedded default, when empty.

        Returns:
            The pool as the service returns it after the changes.

        Raises:
            BatchPoolSpecError: The pool exists with another ``vmSize``, ``taskSlotsPerNode``,
                fill type or node source (Azure cannot change these on a live pool), or the
                service does not offer the node source. An SSH host group node source is
                registered with the service first (or its registration brought up to date).
        """
        from prefect_batch.client import BatchClient

        if isinstance(account, BatchClient):
            return self._ensure(account)
        client = (account or self.account or BatchAccount()).get_client(engine=False)
        try:
            return self._ensure(client)
        finally:
            client.close()

    def _ensure(self, client: BatchClient) -> BatchPoolModel:
        spec = self.to_pool_spec()
        wire = spec.to_wire()
        sku = wire["virtualMachineConfiguration"]["nodeAgentSKUId"]
        if isinstance(self.node_source, SSHHostGroup | EC2Template):
            try:
                self.node_source.ensure_registered(client)
            except (BatchInvalidRequestError, BatchAuthenticationError) as exc:
                what = (
                    f"the SSH host group {self.node_source.group_name!r}"
                    if isinstance(self.node_source, SSHHostGroup)
                    else f"the EC2 template {self.node_source.template_name!r}"
                )
                raise BatchPoolSpecError(
                    self.pool_id,
                    "virtualMachineConfiguration.nodeAgentSKUId",
                    f"pool {self.pool_id!r}: {what} cannot be registered with the batch "
                    f"service: {exc.message}",
                ) from exc
        offered = {i.node_agent_sku_id for i in client.list_supported_images()}
        if sku not in offered:
            raise BatchPoolSpecError(
                self.pool_id,
                "virtualMachineConfiguration.nodeAgentSKUId",
                f"pool {self.pool_id!r}: this batch service does not offer the node source "
                f"{sku!r} (it offers {', '.join(sorted(offered))})",
            )
        if not client.pool_exists(self.pool_id):
            try:
                client.create_pool(spec)
            except BatchConflictError as exc:
                if exc.code != "PoolExists":  # another flow may have created it just now
                    raise
            else:
                events.pool_created(self.pool_id, wire)
                return client.get_pool(self.pool_id)
        current = client.get_pool(self.pool_id)
        self._check_immutable(current, wire)
        self._patch(client, current, spec)
        self._resize(client, current)
        return client.get_pool(self.pool_id)

    def _check_immutable(self, current: BatchPoolModel, wire: dict[str, Any]) -> None:
        current_sku = (
            current.virtual_machine_configuration.node_agent_sku_id
            if current.virtual_machine_configuration is not None
            else LOCAL_NODE_AGENT_SKU
        )
        fill = (
            current.task_scheduling_policy.node_fill_type
            if current.task_scheduling_policy
            else None
        )
        checks = [
            ("vmSize", current.vm_size, wire["vmSize"]),
            ("taskSlotsPerNode", current.task_slots_per_node or 1, wire["taskSlotsPerNode"]),
            (
                "taskSchedulingPolicy.nodeFillType",
                getattr(fill, "value", fill) or "spread",
                wire["taskSchedulingPolicy"]["nodeFillType"],
            ),
            (
                "virtualMachineConfiguration.nodeAgentSKUId",
                current_sku,
                wire["virtualMachineConfiguration"]["nodeAgentSKUId"],
            ),
        ]
        for name, have, want in checks:
            if have != want:
                raise BatchPoolSpecError(
                    self.pool_id,
                    name,
                    f"pool {self.pool_id!r} exists with {name}={have!r} but the block asks for "
                    f"{want!r}; Azure Batch cannot change it on a live pool: delete the pool or "
                    "use another pool id",
                )

    def _patch(
        self, client: BatchClient, current: BatchPoolModel, spec: BatchPoolCreateOptions
    ) -> None:
        patch: dict[str, Any] = {}
        changed: list[str] = []
        if spec.start_task is not None:
            have = current.start_task.to_wire() if current.start_task is not None else None
            if have != spec.start_task.to_wire():
                patch["startTask"] = spec.start_task.to_wire()
                changed.append("startTask")
        elif current.start_task is not None:
            logger.warning(
                "pool %s has a start task the block does not; a PATCH cannot remove it, "
                "so it stays",
                self.pool_id,
            )
        if _metadata_dict(current.metadata) != self.metadata:
            patch["metadata"] = [{"name": k, "value": v} for k, v in self.metadata.items()]
            changed.append("metadata")
        if patch:
            client.update_pool(self.pool_id, patch)
            events.pool_updated(self.pool_id, changed)

    def _targets(self, count: int) -> dict[str, int]:
        """The node count as the pool's targets: low-priority on a spot EC2 template."""
        source = self.effective_node_source()
        if isinstance(source, EC2Template) and source.spot:
            return {"targetDedicatedNodes": 0, "targetLowPriorityNodes": count}
        return {"targetDedicatedNodes": count}

    def _resize(self, client: BatchClient, current: BatchPoolModel) -> None:
        target = self.target_dedicated_nodes
        wanted = self._targets(target)
        have = {
            "targetDedicatedNodes": current.target_dedicated_nodes or 0,
            "targetLowPriorityNodes": current.target_low_priority_nodes or 0,
        }
        if all(have[k] == v for k, v in wanted.items()) and sum(have.values()) == target:
            return
        if getattr(current.allocation_state, "value", current.allocation_state) != "steady":
            client.stop_pool_resize(self.pool_id)
        client.resize_pool(
            self.pool_id,
            {**wanted, "nodeDeallocationOption": self.node_deallocation_option},
        )
        events.pool_resized(self.pool_id, sum(have.values()), target)
