"""The ``ssh`` kind of node source: SSH host groups an account registers.

A registered group is stored as its :class:`~prefect_batch.providers.hostgroup.SSHHostGroup`
fields without key material: the client key is a file path on the service's machine
(``private_key_path``) or the name of a Prefect ``Secret`` block (``private_key_secret_name``)
resolved when a provider is built, in the process that connects. A group given with the key
text itself is refused. Pools name a group ``batch.node.ssh.<name>``; each host runs one node at
a time. ``confineTasks`` (stored as ``confine_tasks``, a strict boolean, default true) says
whether the hosts' agents confine their tasks; a value that is not a boolean is refused naming
``confineTasks``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from prefect_batch.exceptions import (
    AgentError,
    BatchInvalidRequestError,
    invalid_property,
    validation_error,
)
from prefect_batch.providers.hostgroup import DEFAULT_NODE_ROOT, SSHHostGroup, host_id
from prefect_batch.providers.kinds import KINDS, BuildContext, image_entry
from prefect_batch.providers.ssh import TRAITS, SSHNodeSource

__all__ = [
    "TRAITS",
    "build_provider",
    "files",
    "machine_ids",
    "supported_image",
    "validate_registration",
]

SECRET_FIELD = "private_key_secret_name"
_KEY_FIELDS = ("private_key", "private_key_passphrase")


def validate_registration(group: Any) -> dict[str, Any]:
    """A host group as it is stored: validated like the SSH node source's own model, no key.

    Args:
        group: An :class:`SSHHostGroup`, a dict of its fields (plus
            ``private_key_secret_name``), or a node-source block (anything with
            ``node_source_spec()``).

    Raises:
        BatchInvalidRequestError: The group is invalid, or carries key material.
    """
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
    fields.pop("kind", None)
    for name in _KEY_FIELDS:
        if name in fields:
            raise invalid_property(
                name,
                "<hidden>",
                "key material is never stored: give private_key_path (a key file on the "
                "engine's machine) or private_key_secret_name (a Prefect Secret block)",
            )
    secret = fields.pop(SECRET_FIELD, None)
    if secret is not None:
        if not isinstance(secret, str) or not secret.strip():
            raise invalid_property(SECRET_FIELD, secret, "must be a Secret block name")
        if fields.get("private_key_path"):
            raise invalid_property(
                SECRET_FIELD, secret, "give private_key_path or private_key_secret_name, not both"
            )
        # The key itself is resolved when connecting; validate everything else around it.
        fields["private_key"] = SecretStr("(resolved from a Secret block)")
    try:
        model = SSHHostGroup.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(exc) from exc
    if sku is not None and sku != KINDS["ssh"].sku(model.name):
        raise invalid_property("nodeAgentSKUId", sku, f"the group {model.name!r} is not {sku}")
    spec = model.model_dump(mode="json", exclude=set(_KEY_FIELDS), exclude_none=True)
    if secret is not None:
        spec[SECRET_FIELD] = secret
    return spec


def supported_image(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A group as an Azure "supported image"."""
    return image_entry(KINDS["ssh"].sku(name), "ssh", name, "SSHHostGroup")


def machine_ids(spec: Mapping[str, Any]) -> set[str]:
    """The host ids (``user@address:port``) of a stored group."""
    return {
        host_id(h.get("user") or spec.get("user"), str(h["address"]), int(h.get("port", 22)))
        for h in spec.get("hosts") or []
    }


def files(spec: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, path) of the group's files on the service's machine: key and known_hosts."""
    return [(f, str(spec[f])) for f in ("private_key_path", "known_hosts") if spec.get(f)]


def default_root(spec: Mapping[str, Any]) -> str:
    """The node root hosts of a stored group use unless a host names its own."""
    return str(spec.get("node_root") or DEFAULT_NODE_ROOT)


def build_provider(sku: str, spec: Mapping[str, Any], context: BuildContext) -> SSHNodeSource:
    """An ``SSHNodeSource`` for a stored group (its Secret block resolved, if it names one).

    Raises:
        AgentError: The Secret block cannot be loaded, or the group is no longer valid.
    """
    fields = dict(spec)
    secret = fields.pop(SECRET_FIELD, None)
    if secret:
        fields["private_key"] = SecretStr(context.resolve_secret(str(secret)))
    try:
        return SSHNodeSource(fields, sku=sku)
    except ValidationError as exc:
        raise AgentError(f"the SSH host group {spec.get('name')!r} is not valid: {exc}") from None
