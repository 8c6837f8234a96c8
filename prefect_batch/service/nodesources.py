"""Registered node sources: the SSH host groups an account's pools take their nodes from.

A pool names its node source by ``virtualMachineConfiguration.nodeAgentSKUId``:
``batch.node.local`` (agent processes on the engine's machine) is always there;
``batch.node.ssh.<name>`` is an SSH host group registered here, per account, in the
``node_sources`` table. A registered group shows up in ``list_supported_images`` and a pool may
name it; it cannot be deleted while a pool does.

Key material is never stored: a group names its client key by a file path on the engine's
machine (``private_key_path``) or by the name of a Prefect ``Secret`` block
(``private_key_secret_name``) that the process running the engine resolves when it connects.
A group given with the key text itself (``private_key``) is refused.

What this module does not do: connect to hosts (``service/remotenodes.py`` with
``providers/ssh.py`` does) or pick the host of a node (the engine does, one node per host).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError
from sqlalchemy import delete, insert, select, update

from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    invalid_property,
)
from prefect_batch.models import BatchNodeSource
from prefect_batch.service import common
from prefect_batch.service.base import ServiceBase
from prefect_batch.store.schema import node_sources, nodes, pools

__all__ = [
    "NodeSourceOperations",
    "SSH_NODE_AGENT_SKU_PREFIX",
    "group_row",
    "hosts_in_use",
    "registered_images",
    "registration_spec",
    "ssh_group_name",
    "ssh_node_agent_sku",
]

SSH_NODE_AGENT_SKU_PREFIX = "batch.node.ssh."
"""Pools on an SSH host group name ``batch.node.ssh.<group name>``."""

_SECRET_FIELD = "private_key_secret_name"
_KEY_FIELDS = ("private_key", "private_key_passphrase")


def ssh_node_agent_sku(name: str) -> str:
    """The ``nodeAgentSKUId`` of the SSH host group ``name``."""
    return SSH_NODE_AGENT_SKU_PREFIX + name


def ssh_group_name(sku: str) -> str | None:
    """The group name in ``batch.node.ssh.<name>``, or None for another node source."""
    if sku.startswith(SSH_NODE_AGENT_SKU_PREFIX) and len(sku) > len(SSH_NODE_AGENT_SKU_PREFIX):
        return sku[len(SSH_NODE_AGENT_SKU_PREFIX) :]
    return None


def registration_spec(group: Any) -> dict[str, Any]:
    """A host group as it is stored: validated like the SSH node source's own model, no key.

    Args:
        group: An :class:`~prefect_batch.providers.hostgroup.SSHHostGroup`, a dict of its
            fields (plus ``private_key_secret_name``), or a node-source block (anything with
            ``node_source_spec()``).

    Raises:
        BatchInvalidRequestError: The group is invalid, or carries key material.
    """
    from prefect_batch.providers.hostgroup import SSHHostGroup  # paramiko: only when needed

    if hasattr(group, "node_source_spec") and not isinstance(group, Mapping):
        group = group.node_source_spec()
    if isinstance(group, SSHHostGroup):
        fields: dict[str, Any] = group.model_dump(mode="python", exclude_none=True)
    elif isinstance(group, Mapping):
        fields = {k: v for k, v in group.items() if v is not None}
    else:
        raise BatchInvalidRequestError(
            "InvalidRequestBody", "A node source is an SSH host group: a JSON object."
        )
    sku = fields.pop("nodeAgentSKUId", None)
    for name in _KEY_FIELDS:
        if name in fields:
            raise invalid_property(
                name,
                "<hidden>",
                "key material is never stored: give private_key_path (a key file on the "
                "engine's machine) or private_key_secret_name (a Prefect Secret block)",
            )
    secret = fields.pop(_SECRET_FIELD, None)
    if secret is not None:
        if not isinstance(secret, str) or not secret.strip():
            raise invalid_property(_SECRET_FIELD, secret, "must be a Secret block name")
        if fields.get("private_key_path"):
            raise invalid_property(
                _SECRET_FIELD, secret, "give private_key_path or private_key_secret_name, not both"
            )
        # The key itself is resolved when connecting; validate everything else around it.
        fields["private_key"] = SecretStr("(resolved from a Secret block)")
    try:
        model = SSHHostGroup.model_validate(fields)
    except ValidationError as exc:
        raise common.validation_error(exc) from exc
    if sku is not None and sku != ssh_node_agent_sku(model.name):
        raise invalid_property("nodeAgentSKUId", sku, f"the group {model.name!r} is not {sku}")
    spec = model.model_dump(mode="json", exclude=set(_KEY_FIELDS), exclude_none=True)
    if secret is not None:
        spec[_SECRET_FIELD] = secret
    return spec


def registered_images(conn: Any, account: str) -> list[dict[str, Any]]:
    """The account's SSH host groups as Azure "supported images" (wire dicts)."""
    rows = conn.execute(
        select(node_sources.c.name)
        .where(node_sources.c.account == account)
        .order_by(node_sources.c.name)
    ).all()
    return [
        {
            "nodeAgentSKUId": ssh_node_agent_sku(r.name),
            "imageReference": {
                "publisher": "prefect-batch",
                "offer": "ssh",
                "sku": r.name,
                "version": "latest",
            },
            "osType": "linux",
            "capabilities": ["SSHHostGroup"],
            "verificationType": "unverified",
        }
        for r in rows
    ]


def group_row(conn: Any, account: str, name: str) -> Any:
    """The stored group ``name`` of ``account``, or None."""
    return conn.execute(
        select(node_sources).where(node_sources.c.account == account, node_sources.c.name == name)
    ).one_or_none()


def hosts_in_use(conn: Any, account: str) -> dict[str, str]:
    """Host id -> node id of every node of the account that runs on an SSH host."""
    return {
        r.host_id: r.node_id
        for r in conn.execute(
            select(nodes.c.host_id, nodes.c.node_id).where(
                nodes.c.account == account, nodes.c.host_id.is_not(None)
            )
        ).all()
    }


def check_files_inside(spec: Mapping[str, Any], sandbox: Path) -> None:
    """Refuse a group whose key or known_hosts file lies outside ``sandbox``.

    A server reads the key file and may write the known_hosts file on its own machine; the
    clients that register groups must not make it read or write anything else there.
    """
    top = Path(sandbox).expanduser().resolve()
    for field in ("private_key_path", "known_hosts"):
        value = spec.get(field)
        if not value:
            continue
        real = Path(str(value)).expanduser().resolve()
        if real != top and top not in real.parents:
            raise invalid_property(
                field,
                str(value),
                f"must be a file in the server's SSH directory {top} "
                "(PREFECT_BATCH_SSH_FILES_DIR)",
            )


class NodeSourceOperations(ServiceBase):
    """Register, read, replace and delete the SSH host groups of one account."""

    def _check_files(self, spec: Mapping[str, Any]) -> None:
        if self.file_sandbox is not None:
            # One directory per account: an account cannot name another account's key.
            check_files_inside(spec, self.file_sandbox / self.account)

    def create_node_source(self, group: Any) -> None:
        """Register an SSH host group; pools may then name ``batch.node.ssh.<name>``.

        Raises:
            BatchInvalidRequestError: The group is invalid or carries key material.
            BatchConflictError: ``NodeSourceExists``.
        """
        spec = registration_spec(group)
        self._check_files(spec)
        now = self.clock()
        with self.store.begin() as conn:
            if group_row(conn, self.account, spec["name"]) is not None:
                raise BatchConflictError(
                    "NodeSourceExists",
                    f"The specified node source already exists: {spec['name']}",
                    {"NodeSourceName": spec["name"]},
                )
            conn.execute(
                insert(node_sources).values(
                    account=self.account,
                    name=spec["name"],
                    kind="ssh",
                    spec=spec,
                    creation_time=now,
                    last_modified=now,
                    version=1,
                )
            )
        self.wake(pools=True)

    def update_node_source(self, name: str, group: Any) -> None:
        """Replace a registered group; engines rebuild their connections' configuration.

        Hosts that nodes run on may not be dropped (remove those nodes first); the group's
        name cannot change.

        Raises:
            BatchNotFoundError: ``NodeSourceNotFound``.
            BatchConflictError: A host that is dropped still has a node.
        """
        if isinstance(group, Mapping) and "name" not in group and "group_name" not in group:
            group = {**group, "name": name}
        spec = registration_spec(group)
        self._check_files(spec)
        if spec["name"] != name:
            raise invalid_property("name", spec["name"], f"the group's name is {name}")
        now = self.clock()
        with self.store.begin() as conn:
            row = self._group(conn, name)
            kept = {_host_id(spec, h) for h in spec["hosts"]}
            dropped = {h: n for h, n in hosts_in_use(conn, self.account).items() if h not in kept}
            dropped = {h: n for h, n in dropped.items() if h in _host_ids(row.spec)}
            if dropped:
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    "Hosts that nodes run on cannot leave the group: "
                    + ", ".join(f"{h} (node {n})" for h, n in sorted(dropped.items())),
                    {"NodeSourceName": name},
                )
            conn.execute(
                update(node_sources)
                .where(node_sources.c.pk == row.pk)
                .values(spec=spec, last_modified=now, version=node_sources.c.version + 1)
            )
        self.wake(pools=True)

    def get_node_source(self, name: str) -> BatchNodeSource:
        """One registered group, with the hosts its nodes use."""
        with self.store.read() as conn:
            row = self._group(conn, name)
            return self._model(row, hosts_in_use(conn, self.account))

    def list_node_sources(self) -> list[BatchNodeSource]:
        """Every registered group of the account, by name."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(node_sources)
                .where(node_sources.c.account == self.account)
                .order_by(node_sources.c.name)
            ).all()
            used = hosts_in_use(conn, self.account) if rows else {}
            return [self._model(r, used) for r in rows]

    def delete_node_source(self, name: str) -> None:
        """Forget a registered group; refused while a pool names it.

        Raises:
            BatchNotFoundError: ``NodeSourceNotFound``.
            BatchConflictError: ``NodeSourceInUse`` (the pools are named).
        """
        from prefect_batch.service.pools import node_source_of

        sku = ssh_node_agent_sku(name)
        with self.store.begin() as conn:
            row = self._group(conn, name)
            users = [
                r.id
                for r in conn.execute(
                    select(pools.c.id, pools.c.spec).where(pools.c.account == self.account)
                ).all()
                if node_source_of(r.spec) == sku
            ]
            if users:
                raise BatchConflictError(
                    "NodeSourceInUse",
                    f"The node source {name} is used by pool(s) {', '.join(sorted(users))}; "
                    "delete them first.",
                    {"NodeSourceName": name},
                )
            conn.execute(delete(node_sources).where(node_sources.c.pk == row.pk))

    # -- helpers -----------------------------------------------------------------------------

    def _group(self, conn: Any, name: str) -> Any:
        row = group_row(conn, self.account, name)
        if row is None:
            raise BatchNotFoundError(
                "NodeSourceNotFound",
                f"The specified node source does not exist: {name}",
                {"NodeSourceName": name},
            )
        return row

    @staticmethod
    def _model(row: Any, used: Mapping[str, str]) -> BatchNodeSource:
        ids = _host_ids(row.spec)
        return BatchNodeSource.model_validate(
            {
                "name": row.name,
                "nodeAgentSKUId": ssh_node_agent_sku(row.name),
                "kind": row.kind,
                "hostGroup": row.spec,
                "hostsInUse": {h: n for h, n in used.items() if h in ids},
                "eTag": common.etag(row.pk, row.version),
                "creationTime": common.iso(row.creation_time),
                "lastModified": common.iso(row.last_modified),
            }
        )


def _host_id(spec: Mapping[str, Any], host: Mapping[str, Any]) -> str:
    user = host.get("user") or spec.get("user")
    return f"{user}@{host['address']}:{host.get('port', 22)}"


def _host_ids(spec: Mapping[str, Any]) -> set[str]:
    return {_host_id(spec, h) for h in spec.get("hosts") or []}
