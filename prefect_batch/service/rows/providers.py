"""The node providers of a store's accounts, by ``nodeAgentSKUId``.

A pool's node source is either one the engine brings (``batch.node.local``, handed to it by the
client) or one an account registered (a row of ``node_sources``), built from its stored spec by
its kind (:mod:`prefect_batch.providers.kinds`) the first time it is needed and again whenever
the row changes. :class:`ProviderDirectory` answers both for an engine; the file operations use
the directory of their store (:func:`directory_of`), and the live connection an engine of this
process holds to a node (:func:`live_calls`; the engine's agent starts register with
:func:`hold_connections`). What a kind is like (where node files are,
how a lost node is handled) comes from :meth:`ProviderDirectory.traits`, without building.

Private keys are never stored or logged: a spec names a key file, or a Prefect ``Secret`` block
that :func:`resolve_secret` loads here, in the process that connects.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from sqlalchemy import delete, insert, select, update

from prefect_batch.exceptions import AgentError
from prefect_batch.providers.agentcalls import AgentCalls
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    ProviderTraits,
    ReportCallback,
)
from prefect_batch.providers.kinds import BuildContext, ProviderKind, kind_of_sku, sku_traits
from prefect_batch.store.schema import node_sources, nodes, provider_records

__all__ = [
    "ProviderDirectory",
    "StoreRecords",
    "directory_of",
    "drop_connections",
    "hold_connections",
    "live_calls",
    "machines_in_use",
    "node_ref",
    "resolve_secret",
    "source_row",
]


def resolve_secret(name: str) -> str:
    """The value of the Prefect ``Secret`` block ``name`` (never logged)."""
    try:
        from prefect.blocks.system import Secret  # Prefect loads only for a source that asks

        value = Secret.load(name, _sync=True).get()  # type: ignore[call-arg,union-attr]
    except Exception as exc:  # noqa: BLE001 - any failure to load it is one clear error
        raise AgentError(
            f"cannot load the private key from the Prefect Secret block {name!r}: "
            f"{type(exc).__name__}"
        ) from None
    return value if isinstance(value, str) else str(value)


def source_row(conn: Any, account: str, kind: ProviderKind, name: str) -> Any:
    """The account's registered node source ``name`` of ``kind``, or None."""
    return conn.execute(
        select(node_sources).where(
            node_sources.c.account == account,
            node_sources.c.name == name,
            node_sources.c.kind == kind.name,
        )
    ).one_or_none()


def machines_in_use(conn: Any, account: str) -> dict[str, str]:
    """Machine id -> node id of every node of the account that holds a machine."""
    return {
        r.host_id: r.node_id
        for r in conn.execute(
            select(nodes.c.host_id, nodes.c.node_id).where(
                nodes.c.account == account, nodes.c.host_id.is_not(None)
            )
        ).all()
    }


def node_ref(row: Any, pool_id: str) -> NodeRef:
    """A ``nodes`` row as its provider is told of it."""
    return NodeRef(
        account=row.account,
        pool_id=pool_id,
        node_id=row.node_id,
        root=str(row.root_dir),
        machine_id=row.host_id,
        address=row.ip_address,
        dedicated=bool(row.dedicated) if row.dedicated is not None else True,
    )


class StoreRecords:
    """A provider's durable records in the store (a ``RecordStore``).

    Every call is its own transaction: a record is durable when ``put`` returns.
    """

    def __init__(self, store: Any, account: str, sku: str) -> None:
        self.store = store
        self.account = account
        self.sku = sku

    def _where(self, key: str) -> Any:
        c = provider_records.c
        return (c.account == self.account) & (c.sku == self.sku) & (c.key == key)

    def get(self, key: str) -> Any | None:
        with self.store.read() as conn:
            row = conn.execute(
                select(provider_records.c.value).where(self._where(key))
            ).one_or_none()
        return None if row is None else row.value

    def put(self, key: str, value: Any) -> None:
        with self.store.begin() as conn:
            done = conn.execute(
                update(provider_records).where(self._where(key)).values(value=value)
            ).rowcount
            if not done:
                conn.execute(
                    insert(provider_records).values(
                        account=self.account, sku=self.sku, key=key, value=value
                    )
                )

    def delete(self, key: str) -> None:
        with self.store.begin() as conn:
            conn.execute(delete(provider_records).where(self._where(key)))

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        c = provider_records.c
        with self.store.read() as conn:
            rows = conn.execute(
                select(c.key, c.value)
                .where(c.account == self.account, c.sku == self.sku, c.key.startswith(prefix))
                .order_by(c.key)
            ).all()
        return iter([(r.key, r.value) for r in rows])


class ProviderDirectory:
    """The providers an engine drives: its own, and those its store's accounts registered.

    Args:
        store: The store holding the registered node sources.
        own: Providers the engine brings, by ``nodeAgentSKUId`` (``batch.node.local``).
        report: Where every provider here reports the losses and preemptions it finds
            (:meth:`~prefect_batch.providers.contract.NodeProvider.watch`); None for a
            directory that only reads files.
    """

    def __init__(
        self,
        store: Any,
        own: Mapping[str, NodeProvider] | None = None,
        *,
        report: ReportCallback | None = None,
    ) -> None:
        self.store = store
        self.own = dict(own or {})
        self._report = report
        self._lock = threading.Lock()
        self._built: dict[tuple[str, str], tuple[int, NodeProvider]] = {}
        for provider in self.own.values():
            self._watch(provider)

    def _watch(self, provider: NodeProvider) -> NodeProvider:
        if self._report is not None:
            provider.watch(self._report)
        return provider

    def traits(self, sku: str) -> ProviderTraits:
        """What nodes of this node source are like (default traits for an unknown one)."""
        provider = self.own.get(sku)
        return provider.traits if provider is not None else sku_traits(sku)

    def get(self, account: str, sku: str) -> NodeProvider | None:
        """The provider of ``sku`` for ``account``, or None when there is none.

        Built once per version of its registration; a changed registration gets a new one
        (the old one is closed).

        Raises:
            AgentError: It cannot be built now (e.g. its Secret block cannot be loaded).
        """
        provider = self.own.get(sku)
        if provider is not None:
            return provider
        found = kind_of_sku(sku)
        if found is None:
            return None
        kind, name = found
        if not kind.registered:  # a kind the service brings: nothing stored to build from
            return self._unregistered(account, kind, sku)
        with self.store.read() as conn:
            row = source_row(conn, account, kind, name)
        key = (account, sku)
        with self._lock:
            cached = self._built.get(key)
            if row is None:
                self._built.pop(key, None)
            elif cached is not None and cached[0] == row.version:
                return cached[1]
        if row is None:
            if cached is not None:
                cached[1].close()
            return None
        context = BuildContext(
            account=account,
            records=StoreRecords(self.store, account, sku),
            resolve_secret=resolve_secret,
        )
        built = self._watch(kind.build(sku, row.spec, context))
        with self._lock:
            old = self._built.get(key)
            self._built[key] = (row.version, built)
        if old is not None and old[1] is not built:
            old[1].close()
        return built

    def _unregistered(self, account: str, kind: ProviderKind, sku: str) -> NodeProvider:
        key = ("", sku)
        with self._lock:
            cached = self._built.get(key)
            if cached is None:
                context = BuildContext(
                    account=account,
                    records=StoreRecords(self.store, account, sku),
                    resolve_secret=resolve_secret,
                )
                cached = self._built[key] = (0, self._watch(kind.build(sku, {}, context)))
            return cached[1]

    def close(self) -> None:
        """Close every provider built here (the engine's own are the client's to close)."""
        with self._lock:
            built, self._built = self._built, {}
        for _version, provider in built.values():
            provider.close()


_DIRECTORIES: dict[str, ProviderDirectory] = {}
_DIRECTORIES_LOCK = threading.Lock()


def directory_of(store: Any) -> ProviderDirectory:
    """The directory of registered providers of a store, shared by this process's requests."""
    with _DIRECTORIES_LOCK:
        found = _DIRECTORIES.get(store.url)
        if found is None:
            found = _DIRECTORIES[store.url] = ProviderDirectory(store)
        return found


class ConnectionHolder(Protocol):
    """What holds node connections for this process: an engine's agent starts."""

    store: Any

    def live(self, node_pk: int) -> AgentCalls | None: ...


_HOLDERS: weakref.WeakSet[Any] = weakref.WeakSet()
"""Every holder of node connections in this process, for :func:`live_calls`."""


def hold_connections(holder: ConnectionHolder) -> None:
    """Make ``holder``'s connections visible to :func:`live_calls` (idempotent)."""
    _HOLDERS.add(holder)


def drop_connections(holder: ConnectionHolder) -> None:
    """Stop answering :func:`live_calls` from ``holder`` (a stopped engine)."""
    _HOLDERS.discard(holder)


def live_calls(store_url: str, node_pk: int) -> AgentCalls | None:
    """The connection an engine of this process holds to a node of the store at ``store_url``."""
    for holder in list(_HOLDERS):
        if holder.store.url == store_url:
            calls = holder.live(node_pk)
            if calls is not None:
                return calls
    return None
