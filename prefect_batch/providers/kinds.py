"""The kinds of node source, in one table: adding a kind is one entry here plus its module.

A pool's ``nodeAgentSKUId`` names its node source: ``batch.node.local`` (the service's own
machine, always there) or ``batch.node.<kind>.<name>`` for a node source an account registered
(``batch.node.ssh.<group>``, ``batch.node.ec2.<template>``). Each :class:`ProviderKind` says
how a registration of that kind is validated into what is stored (never key material), what
``list_supported_images`` shows for it, which machines a stored spec names, and how a
:class:`~prefect_batch.providers.contract.NodeProvider` is built from it. Its module is
imported only when one of those is needed (an SSH kind pulls in paramiko, EC2 boto3).

A kind's module defines:

* ``TRAITS`` — the :class:`~prefect_batch.providers.contract.ProviderTraits` of its nodes;
* ``validate_registration(body) -> dict`` — the spec to store (raises
  ``BatchInvalidRequestError`` naming the field);
* ``supported_image(name, spec) -> dict`` — its ``list_supported_images`` entry;
* ``machine_ids(spec) -> set[str]`` — the machines a spec names (to refuse dropping one in use;
  none when the module has no such function);
* ``files(spec) -> list[tuple[str, str]]`` — (field, path) of files on the service's machine
  (none when the module has no such function);
* ``build_provider(sku, spec, context) -> NodeProvider``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from prefect_batch.exceptions import invalid_property
from prefect_batch.providers.contract import NodeProvider, ProviderTraits, RecordStore

__all__ = [
    "KINDS",
    "LOCAL_NODE_AGENT_SKU",
    "BuildContext",
    "ProviderKind",
    "image_entry",
    "kind_of_sku",
    "registered_kind",
    "registration",
    "registration_body",
    "register_kind",
    "sku_of",
    "sku_traits",
]

LOCAL_NODE_AGENT_SKU = "batch.node.local"
"""The node source of pools whose nodes are agent processes on the service's machine."""

SKU_PREFIX = "batch.node."


@dataclass(frozen=True)
class BuildContext:
    """What building a provider from a stored spec may use.

    Attributes:
        account: The account that registered the node source.
        records: The provider's durable records.
        resolve_secret: The value of a Prefect ``Secret`` block by name (never logged).
    """

    account: str
    records: RecordStore
    resolve_secret: Callable[[str], str]


@dataclass(frozen=True)
class ProviderKind:
    """One kind of node source.

    Attributes:
        name: The kind (``local``, ``ssh``, ...); pools name ``batch.node.<name>.<source>``.
        module: The module that implements it (imported on first use).
        registered: Accounts register node sources of this kind (stored in ``node_sources``);
            ``local`` is not registered: the service brings it.
        registration_field: The field of the REST resource that holds the registered spec.
        service_credentials: Its providers act with the service's own cloud credentials and
            connect to the endpoint a registration names: behind a server only the accounts
            the operator lists (``PREFECT_BATCH_CLOUD_ACCOUNTS``) may register one.
    """

    name: str
    module: str
    registered: bool = True
    registration_field: str = "spec"
    service_credentials: bool = False
    _loaded: list[ModuleType] = field(default_factory=list, compare=False, repr=False)

    @property
    def sku_prefix(self) -> str:
        return f"{SKU_PREFIX}{self.name}."

    def impl(self) -> ModuleType:
        """The kind's module."""
        if not self._loaded:
            self._loaded.append(importlib.import_module(self.module))
        return self._loaded[0]

    @property
    def traits(self) -> ProviderTraits:
        traits: ProviderTraits = self.impl().TRAITS
        return traits

    def sku(self, name: str) -> str:
        """The ``nodeAgentSKUId`` of the node source ``name`` of this kind."""
        return self.sku_prefix + name

    def validate(self, body: Any) -> dict[str, Any]:
        spec: dict[str, Any] = self.impl().validate_registration(body)
        return spec

    def image(self, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        image: dict[str, Any] = self.impl().supported_image(name, spec)
        return image

    def machine_ids(self, spec: Mapping[str, Any]) -> set[str]:
        named = getattr(self.impl(), "machine_ids", None)
        return set(named(spec)) if named is not None else set()

    def files(self, spec: Mapping[str, Any]) -> list[tuple[str, str]]:
        named = getattr(self.impl(), "files", None)
        return list(named(spec)) if named is not None else []

    def build(self, sku: str, spec: Mapping[str, Any], context: BuildContext) -> NodeProvider:
        provider: NodeProvider = self.impl().build_provider(sku, spec, context)
        return provider


KINDS: dict[str, ProviderKind] = {
    kind.name: kind
    for kind in (
        ProviderKind("local", "prefect_batch.providers.local", registered=False),
        ProviderKind("ssh", "prefect_batch.providers.sshkind", registration_field="hostGroup"),
        ProviderKind("ec2", "prefect_batch.providers.ec2", service_credentials=True),
    )
}
"""Every kind of node source, by name."""


def image_entry(
    sku: str, offer: str, image_sku: str, capability: str, *, verified: bool = False
) -> dict[str, Any]:
    """A node source as an Azure "supported image" (``list_supported_images``)."""
    return {
        "nodeAgentSKUId": sku,
        "imageReference": {
            "publisher": "prefect-batch",
            "offer": offer,
            "sku": image_sku,
            "version": "latest",
        },
        "osType": "linux",
        "capabilities": [capability],
        "verificationType": "verified" if verified else "unverified",
    }


def kind_of_sku(sku: str) -> tuple[ProviderKind, str] | None:
    """The kind and source name a ``nodeAgentSKUId`` names, or None for no known kind.

    ``batch.node.local`` is the ``local`` kind with the name ``""``.
    """
    if sku == LOCAL_NODE_AGENT_SKU:
        return KINDS["local"], ""
    if not sku.startswith(SKU_PREFIX):
        return None
    kind_name, dot, name = sku[len(SKU_PREFIX) :].partition(".")
    kind = KINDS.get(kind_name)
    if kind is None or not kind.registered or not dot or not name:
        return None
    return kind, name


def sku_traits(sku: str) -> ProviderTraits:
    """The traits of the kind a ``nodeAgentSKUId`` names (defaults for an unknown one)."""
    found = kind_of_sku(sku)
    return found[0].traits if found is not None else ProviderTraits()


def register_kind(kind: ProviderKind) -> None:
    """Add a kind to :data:`KINDS` (a kind this package does not ship, e.g. a test double)."""
    if kind.name in KINDS and KINDS[kind.name].module != kind.module:
        raise ValueError(f"a different node source kind {kind.name!r} is registered")
    KINDS[kind.name] = kind


def registered_kind(name: str) -> ProviderKind | None:
    """The kind ``name`` if accounts register node sources of it."""
    kind = KINDS.get(name)
    return kind if kind is not None and kind.registered else None


def sku_of(kind: str, name: str) -> str:
    """The ``nodeAgentSKUId`` of the registered node source ``name`` of ``kind``."""
    return KINDS[kind].sku(name)


def registration(
    body: Any, *, before_checks: Callable[[ProviderKind], None] | None = None
) -> tuple[ProviderKind, dict[str, Any]]:
    """The kind a registration is of (its ``kind``, ``ssh`` when it names none) and its spec.

    ``body`` is a dict of the kind's fields, a block with ``node_source_spec()``, or the
    kind's own model. ``before_checks(kind)`` runs before the kind checks the body (which may
    ask the cloud): a caller's chance to refuse the kind first.

    Raises:
        BatchInvalidRequestError: An unknown kind, or the kind refuses the body.
    """
    kind, fields = _kind_of(body)
    if before_checks is not None:
        before_checks(kind)
    return kind, kind.validate(fields)


def _kind_of(body: Any) -> tuple[ProviderKind, Any]:
    fields = body.node_source_spec() if hasattr(body, "node_source_spec") else body
    name = fields.get("kind") if isinstance(fields, Mapping) else None
    kind = registered_kind(str(name or "ssh"))
    if kind is None:
        known = ", ".join(k.name for k in KINDS.values() if k.registered)
        raise invalid_property("kind", name, f"must be one of: {known}")
    return kind, fields


def registration_body(body: Any) -> dict[str, Any]:
    """A registration as a client sends it: validated by its kind, without key material.

    An SSH host group goes as its fields; another kind's spec carries ``kind`` too. A kind
    with ``service_credentials`` is checked by the server alone (against the cloud it can
    reach, with its own credentials), so it goes as given.

    Raises:
        BatchInvalidRequestError: The kind is unknown or refuses the body.
    """
    kind, fields = _kind_of(body)
    if kind.service_credentials and isinstance(fields, Mapping):
        return {**{k: v for k, v in fields.items() if k != "kind"}, "kind": kind.name}
    spec = kind.validate(fields)
    return spec if kind.name == "ssh" else {"kind": kind.name, **spec}
