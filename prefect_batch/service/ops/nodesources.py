"""Registered node sources: what an account's pools may take their nodes from.

A pool names its node source by ``virtualMachineConfiguration.nodeAgentSKUId``:
``batch.node.local`` (agent processes on the engine's machine) is always there;
``batch.node.<kind>.<name>`` is a node source registered here, per account, in the
``node_sources`` table — an SSH host group (``batch.node.ssh.<name>``) or another kind of
:mod:`prefect_batch.providers.kinds`. A registered source shows up in ``list_supported_images``
and a pool may name it; it cannot be deleted while a pool does.

Key material is never stored: a registration names a key file on the engine's machine or the
name of a Prefect ``Secret`` block that the process running the engine resolves when it
connects. A registration given with the key text itself is refused (by its kind).

What this module does not do: validate a kind's fields (the kind does), connect to anything
(the engine's providers do) or place nodes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import delete, insert, select, update

from prefect_batch.exceptions import (
    BatchAuthenticationError,
    BatchConflictError,
    BatchNotFoundError,
    invalid_property,
)
from prefect_batch.models import BatchNodeSource
from prefect_batch.providers.kinds import KINDS, ProviderKind, kind_of_sku, registration
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.rows import common
from prefect_batch.service.rows.providers import machines_in_use
from prefect_batch.store.schema import node_sources, pools

__all__ = [
    "NodeSourceOperations",
    "check_files_inside",
    "node_source_named",
    "pool_sku_is_known",
    "registered_images",
]


def registered_images(conn: Any, account: str) -> list[dict[str, Any]]:
    """The account's registered node sources as Azure "supported images" (wire dicts)."""
    rows = conn.execute(
        select(node_sources.c.name, node_sources.c.kind, node_sources.c.spec)
        .where(node_sources.c.account == account)
        .order_by(node_sources.c.name)
    ).all()
    return [KINDS[r.kind].image(r.name, r.spec) for r in rows if r.kind in KINDS]


def node_source_named(conn: Any, account: str, name: str) -> Any:
    """The account's registered node source ``name`` (of any kind), or None."""
    return conn.execute(
        select(node_sources).where(node_sources.c.account == account, node_sources.c.name == name)
    ).one_or_none()


def check_files_inside(paths: list[tuple[str, str]], sandbox: Path) -> None:
    """Refuse a registration that names a file outside ``sandbox``.

    A server reads key files and may write known_hosts files on its own machine; the clients
    that register node sources must not make it read or write anything else there.
    """
    top = Path(sandbox).expanduser().resolve()
    for field, value in paths:
        real = Path(str(value)).expanduser().resolve()
        if real != top and top not in real.parents:
            raise invalid_property(
                field,
                str(value),
                f"must be a file in the server's SSH directory {top} (PREFECT_BATCH_SSH_FILES_DIR)",
            )


class NodeSourceOperations(ServiceBase):
    """Register, read, replace and delete the node sources of one account."""

    def _may_register(self, kind: ProviderKind) -> None:
        """Behind a server, a kind that uses the server's cloud credentials needs the operator."""
        if kind.service_credentials and self.cloud_accounts is not None:
            if self.account not in self.cloud_accounts:
                raise BatchAuthenticationError(
                    "OperationNotPermittedForAccount",
                    f"Node sources of kind {kind.name} launch machines with this server's "
                    "credentials; the operator lists the accounts that may register them "
                    "(PREFECT_BATCH_CLOUD_ACCOUNTS)",
                    {"Kind": kind.name},
                )

    def _validated(self, body: Any) -> tuple[ProviderKind, dict[str, Any]]:
        kind, spec = registration(body, before_checks=self._may_register)
        if self.file_sandbox is not None:
            # One directory per account: an account cannot name another account's key.
            check_files_inside(kind.files(spec), self.file_sandbox / self.account)
        return kind, spec

    def create_node_source(self, body: Any) -> None:
        """Register a node source; pools may then name ``batch.node.<kind>.<name>``.

        Raises:
            BatchInvalidRequestError: The registration is invalid or carries key material.
            BatchConflictError: ``NodeSourceExists``.
        """
        kind, spec = self._validated(body)
        now = self.clock()
        with self.store.begin() as conn:
            if node_source_named(conn, self.account, spec["name"]) is not None:
                raise BatchConflictError(
                    "NodeSourceExists",
                    f"The specified node source already exists: {spec['name']}",
                    {"NodeSourceName": spec["name"]},
                )
            conn.execute(
                insert(node_sources).values(
                    account=self.account,
                    name=spec["name"],
                    kind=kind.name,
                    spec=spec,
                    creation_time=now,
                    last_modified=now,
                    version=1,
                )
            )
        self.wake(pools=True)

    def update_node_source(self, name: str, body: Any) -> None:
        """Replace a registered node source; engines rebuild its provider.

        Machines that nodes run on may not be dropped (remove those nodes first); the name and
        the kind cannot change.

        Raises:
            BatchNotFoundError: ``NodeSourceNotFound``.
            BatchConflictError: A machine that is dropped still has a node.
        """
        if isinstance(body, Mapping) and "name" not in body and "group_name" not in body:
            body = {**body, "name": name}
        kind, spec = self._validated(body)
        if spec["name"] != name:
            raise invalid_property("name", spec["name"], f"the node source's name is {name}")
        now = self.clock()
        with self.store.begin() as conn:
            row = self._source(conn, name)
            if row.kind != kind.name:
                raise invalid_property("kind", kind.name, f"{name} is of kind {row.kind}")
            kept = kind.machine_ids(spec)
            named = kind.machine_ids(row.spec)
            dropped = {
                m: n
                for m, n in machines_in_use(conn, self.account).items()
                if m in named and m not in kept
            }
            if dropped:
                raise BatchConflictError(
                    "OperationInvalidForCurrentState",
                    "Hosts that nodes run on cannot leave the group: "
                    + ", ".join(f"{m} (node {n})" for m, n in sorted(dropped.items())),
                    {"NodeSourceName": name},
                )
            conn.execute(
                update(node_sources)
                .where(node_sources.c.pk == row.pk)
                .values(spec=spec, last_modified=now, version=node_sources.c.version + 1)
            )
        self.wake(pools=True)

    def get_node_source(self, name: str) -> BatchNodeSource:
        """One registered node source, with the machines its nodes use."""
        with self.store.read() as conn:
            row = self._source(conn, name)
            return self._model(row, machines_in_use(conn, self.account))

    def list_node_sources(self) -> list[BatchNodeSource]:
        """Every registered node source of the account, by name."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(node_sources)
                .where(node_sources.c.account == self.account)
                .order_by(node_sources.c.name)
            ).all()
            used = machines_in_use(conn, self.account) if rows else {}
            return [self._model(r, used) for r in rows]

    def delete_node_source(self, name: str) -> None:
        """Forget a registered node source; refused while a pool names it.

        Raises:
            BatchNotFoundError: ``NodeSourceNotFound``.
            BatchConflictError: ``NodeSourceInUse`` (the pools are named).
        """
        with self.store.begin() as conn:
            row = self._source(conn, name)
            sku = KINDS[row.kind].sku(name)
            users = [
                r.id
                for r in conn.execute(
                    select(pools.c.id, pools.c.spec).where(pools.c.account == self.account)
                ).all()
                if common.node_source_of(r.spec) == sku
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

    def _source(self, conn: Any, name: str) -> Any:
        row = node_source_named(conn, self.account, name)
        if row is None:
            raise BatchNotFoundError(
                "NodeSourceNotFound",
                f"The specified node source does not exist: {name}",
                {"NodeSourceName": name},
            )
        return row

    @staticmethod
    def _model(row: Any, used: Mapping[str, str]) -> BatchNodeSource:
        kind = KINDS[row.kind]
        ids = kind.machine_ids(row.spec)
        return BatchNodeSource.model_validate(
            {
                "name": row.name,
                "nodeAgentSKUId": kind.sku(row.name),
                "kind": row.kind,
                kind.registration_field: row.spec,
                "hostsInUse": {m: n for m, n in used.items() if m in ids},
                "eTag": common.etag(row.pk, row.version),
                "creationTime": common.iso(row.creation_time),
                "lastModified": common.iso(row.last_modified),
            }
        )


def pool_sku_is_known(conn: Any, account: str, sku: str) -> bool:
    """Whether ``sku`` is the local node source or one of the account's registered ones."""
    found = kind_of_sku(sku)
    if found is None:
        return False
    kind, name = found
    if not kind.registered:
        return True
    row = node_source_named(conn, account, name)
    return row is not None and row.kind == kind.name
