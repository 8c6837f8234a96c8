"""The registered node source resource (an SSH host group, ...): a prefect-batch extension.

Azure Batch has no such resource: its images are fixed. Here an account registers the node
sources its pools may take nodes from, and each shows up in ``list_supported_images`` as
``batch.node.<kind>.<name>``. An SSH host group (``hostGroup``) keeps the field names of
:class:`prefect_batch.providers.hostgroup.SSHHostGroup`; another kind's registration is its
``spec``. Neither ever holds key material.

This module only describes the resource; it stores nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from prefect_batch.models.base import ResponseModel, UtcDateTime

__all__ = ["BatchNodeSource"]


class BatchNodeSource(ResponseModel):
    """A registered node source pools name as ``batch.node.<kind>.<name>``."""

    name: str = Field(description="The group's name (1-64 letters, digits, '-' or '_').")
    node_agent_sku_id: str = Field(
        alias="nodeAgentSKUId",
        description="What a pool names as virtualMachineConfiguration.nodeAgentSKUId.",
    )
    kind: str = Field("ssh", description="The kind of node source (`ssh`, ...).")
    host_group: dict[str, Any] | None = Field(
        default=None,
        alias="hostGroup",
        description="The group as registered (SSHHostGroup field names): hosts, user, key file "
        "path or Prefect Secret block name, known_hosts, node root, declared size. Never a key.",
    )
    spec: dict[str, Any] | None = Field(
        default=None,
        description="The registration of a kind other than `ssh`, as stored. Never a key.",
    )
    hosts_in_use: dict[str, str] = Field(
        default_factory=dict,
        alias="hostsInUse",
        description="Host id (user@address:port) -> id of the node on it, for hosts in use.",
    )
    etag: str | None = Field(default=None, alias="eTag", description="Changes on every update.")
    creation_time: UtcDateTime | None = Field(
        default=None, alias="creationTime", description="When it was registered."
    )
    last_modified: UtcDateTime | None = Field(
        default=None, alias="lastModified", description="When it last changed."
    )
