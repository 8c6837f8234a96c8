"""Access to a node for debugging: its remote login settings and its login users.

A node's remote login settings are its machine's SSH address and port, as its provider knows
them (an SSH host's, an instance's); a node on the service's own machine (``local``) has none.

Node users are made by the node's agent, which may do so only as root on a machine of the
node's own (SSH hosts, EC2 instances): ``useradd``/``userdel``/``chpasswd`` from argument lists,
never a shell, ``~user/.ssh/authorized_keys`` written without following links. The service
checks every value before anything reaches the node: the name against a strict pattern, the key
by parsing it as an OpenSSH public key (and sending it on re-encoded, without comment or
options), the password as one line. Users go when they expire (the agent checks on every
heartbeat), when the node leaves the pool or is reimaged (its root is wiped), or on delete.

This module keeps no record of users: the node's agent does (``.agent/users.json``).
"""

from __future__ import annotations

import re
from typing import Any

from prefect_batch.core.states import NodeState
from prefect_batch.exceptions import (
    AgentError,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    invalid_property,
)
from prefect_batch.models import (
    BatchNodeRemoteLoginSettings,
    BatchNodeUserCreateOptions,
    BatchNodeUserReplaceOptions,
)
from prefect_batch.providers.agentcalls import AgentCallError
from prefect_batch.providers.kinds import sku_traits
from prefect_batch.service.ops.agentfiles import agent_session, unreachable
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.rows.common import node_source_of
from prefect_batch.service.rows.providers import directory_of, node_ref

__all__ = ["NodeUserOperations", "canonical_ssh_key"]

USER_NAME_RE = re.compile(r"\A[a-z_][a-z0-9_-]{0,30}\Z")
"""A node user's name: what ``useradd`` takes everywhere, and nothing a shell would read."""

DEFAULT_EXPIRY_SECONDS = 86400.0
"""A user's expiry when its request names none: one day, as Azure's."""

# A node that is up: Azure takes user requests on idle and running nodes (and offline ones
# are up too, only taking no new task).
_UP = {NodeState.IDLE.value, NodeState.RUNNING.value, NodeState.OFFLINE.value}

_AGENT_CODES = {
    "NodeUserExists": BatchConflictError,
    "NodeUserNotFound": BatchNotFoundError,
    "InvalidPropertyValue": BatchInvalidRequestError,
}


def canonical_ssh_key(value: str) -> str:
    """``value`` as an OpenSSH public key line ``<type> <base64>``, without comment.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``sshPublicKey``: not one
            OpenSSH public key (options such as ``command="..."``, several lines, other
            formats are all refused).
    """
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    text = value.strip()
    if not text or any(c in text for c in "\r\n\0"):
        raise invalid_property("sshPublicKey", "<key>", "must be one OpenSSH public key line")
    try:
        key = serialization.load_ssh_public_key(text.encode())
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise invalid_property(
            "sshPublicKey", "<key>", f"is not an OpenSSH public key ({exc})"
        ) from None
    return key.public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


class NodeUserOperations(ServiceBase):
    """Remote login settings and login users of one account's nodes."""

    @staticmethod
    def _remote_only(row: Any, what: str) -> str:
        sku = node_source_of(row.pool_spec)
        if sku_traits(sku).same_machine:
            raise BatchConflictError(
                "OperationNotValidOnNode",
                f"The node {row.node_id} runs on the batch service's own machine ({sku}): "
                f"it has no {what}; log in to that machine instead",
                {"NodeId": row.node_id, "NodeAgentSKUId": sku},
            )
        return sku

    def get_node_remote_login_settings(
        self, pool_id: str, node_id: str
    ) -> BatchNodeRemoteLoginSettings:
        """The SSH address and port of the node's machine."""
        row = self._node_of_pool(pool_id, node_id)
        sku = self._remote_only(row, "remote login of its own")
        node = node_ref(row, row.pool_id)
        provider = directory_of(self.store).get(node.account, sku)
        try:
            if provider is None:
                raise AgentError(f"the node source {sku} is not registered")
            found = provider.remote_login(node)
        except AgentError as exc:
            raise unreachable(node, exc) from exc
        if found is None:
            raise BatchConflictError(
                "OperationNotValidOnNode",
                f"The node {node_id} has no remote login",
                {"NodeId": node_id},
            )
        address, port = found
        return BatchNodeRemoteLoginSettings.model_validate(
            {"remoteLoginIPAddress": address, "remoteLoginPort": port}
        )

    def create_node_user(self, pool_id: str, node_id: str, user: Any) -> None:
        """Add a login user to the node (``NodeUserExists`` if it has one of that name)."""
        opts = self.parse(BatchNodeUserCreateOptions, user)
        if not USER_NAME_RE.match(opts.name):
            raise invalid_property(
                "name", opts.name, "must match ^[a-z_][a-z0-9_-]{0,30}$ (a Linux user name)"
            )
        request = {"op": "add_user", "name": opts.name, "admin": bool(opts.is_admin)}
        self._user_call(pool_id, node_id, {**request, **self._credentials(opts)})

    def replace_node_user(self, pool_id: str, node_id: str, user_name: str, options: Any) -> None:
        """Replace a node user's password, key and expiry (those left out are reset)."""
        opts = self.parse(BatchNodeUserReplaceOptions, options or {})
        self._check_name(user_name)
        request = {"op": "update_user", "name": user_name, **self._credentials(opts)}
        self._user_call(pool_id, node_id, request)

    def delete_node_user(self, pool_id: str, node_id: str, user_name: str) -> None:
        """Remove a node user, its home directory and its processes."""
        self._check_name(user_name)
        self._user_call(pool_id, node_id, {"op": "delete_user", "name": user_name})

    @staticmethod
    def _check_name(name: str) -> None:
        if not USER_NAME_RE.match(name):
            # No such user can exist (none is ever made with such a name).
            raise BatchNotFoundError(
                "NodeUserNotFound", "The node has no user of that name", {"UserName": name[:64]}
            )

    def _credentials(self, opts: BatchNodeUserReplaceOptions) -> dict[str, Any]:
        now = self.clock()
        if opts.expiry_time is None:
            expiry = now + DEFAULT_EXPIRY_SECONDS
        else:
            expiry = opts.expiry_time.timestamp()
            if expiry <= now:
                raise invalid_property(
                    "expiryTime", opts.expiry_time.isoformat(), "must be in the future"
                )
        password = opts.password
        if password is not None and (not password or any(c in password for c in "\r\n\0")):
            raise invalid_property("password", "<hidden>", "must be one non-empty line")
        key = None if opts.ssh_public_key is None else canonical_ssh_key(opts.ssh_public_key)
        return {"ssh_public_key": key, "password": password, "expiry": expiry}

    def _user_call(self, pool_id: str, node_id: str, request: dict[str, Any]) -> None:
        row = self._node_of_pool(pool_id, node_id)
        sku = self._remote_only(row, "users of its own")
        if row.state not in _UP:
            raise BatchConflictError(
                "OperationInvalidForCurrentState",
                f"The node is {row.state}: {node_id}; users are managed on idle or running nodes",
                {"NodeId": node_id, "NodeState": row.state},
            )
        node = node_ref(row, row.pool_id)
        with agent_session(self.store, sku, row.pk, node) as calls:
            try:
                calls.call(request)
            except AgentCallError as exc:
                error = _AGENT_CODES.get(exc.code)
                if error is not None:
                    raise error(exc.code, exc.message, {"NodeId": node_id}) from None
                raise BatchConflictError(
                    "OperationNotValidOnNode",
                    f"The node {node_id} cannot manage users: {exc.message}",
                    {"NodeId": node_id},
                ) from None
            except AgentError as exc:
                raise unreachable(node, exc) from exc
