"""The node-provider contract: what the engine asks of every kind of node source.

A pool names its node source by ``nodeAgentSKUId`` (``batch.node.local``,
``batch.node.ssh.<group>``, ``batch.node.ec2.<template>``); behind each is a
:class:`NodeProvider`. The engine drives every provider the same way:

1. :meth:`NodeProvider.place` (on the engine thread, inside its transaction, so fast and
   without I/O): where the new nodes of a pool go. It places what it can and says why not for
   the rest as a :class:`ResizeError` (an Azure resize error code and message), which becomes the
   pool's ``resizeErrors``; nothing is retried until the next resize or autoscale evaluation.
2. :meth:`NodeProvider.connect` (on a start worker, never the engine thread; may block for as
   long as a machine takes to boot): start the node's agent and connect to it. Its failure is
   the node's error; the engine retries with backoff.
3. :meth:`NodeProvider.release` (on a start worker): the node left the pool (removed, shrunk,
   pool deleted) or its machine must be emptied (``wipe``): remove its directories, wipe its
   root through an agent, or give the machine back. Called once per departure and idempotent on
   its ``request_id``: calling it again with the same id does nothing more.
4. :meth:`NodeProvider.watch`: a provider that learns of losses on its own (a machine that went
   away, a preemption notice, a recommendation to move off a machine) reports them as
   :class:`ProviderEvent` from any thread.

What differs between kinds is declared, not branched on: :attr:`NodeProvider.traits`
(:class:`ProviderTraits`) say where node files are read from, how long a node that cannot be
reached keeps its running tasks, whether a fresh node's root must be emptied, and whether the
nodes count against this machine's node limit.

What a provider keeps across restarts of the service (launch requests, client tokens) goes in
its :class:`RecordStore`, written before the call it protects.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefect_batch.providers.base import AgentConnection, EventCallback

__all__ = [
    "MemoryRecords",
    "NodeProvider",
    "NodeRef",
    "NodeSlot",
    "Placement",
    "PoolRef",
    "ProviderEvent",
    "ProviderTraits",
    "RecordStore",
    "ReportCallback",
    "ResizeError",
]


@dataclass(frozen=True)
class ResizeError:
    """Why a pool did not get all the nodes it asked for, as its ``resizeErrors`` show it.

    Attributes:
        code: Azure's resize error code (``AllocationFailed``, ``AllocationTimedOut``,
            ``AccountCoreQuotaReached``, ``AccountLowPriorityCoreQuotaReached``, ...).
        message: What happened, for a person.
        values: Details (name → value), e.g. the cloud's own error code and message.
    """

    code: str
    message: str
    values: Mapping[str, str] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """The error as a pool's ``resizeErrors`` entry."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.values:
            out["values"] = [{"name": k, "value": str(v)} for k, v in self.values.items()]
        return out


@dataclass(frozen=True)
class PoolRef:
    """The pool a placement is for."""

    account: str
    pool_id: str
    vm_size: str
    task_slots_per_node: int
    inter_node_communication: bool = False


@dataclass(frozen=True)
class NodeSlot:
    """Where one new node goes.

    Attributes:
        node_id: The node's id (the engine's; a provider may tag a machine with it).
        machine_id: The machine the node runs on, unique in the account (an SSH host id
            ``user@address:port``, an instance id); None when the node gets no machine of its
            own (a local node) or it is not known yet (an instance still launching).
        address: The node's IP address as the service shows it, if known.
        root: The node root on the machine; None for the service's default (a local node's
            directory under the service's node root).
        vm_size: The node's size, when the provider knows better than the pool.
        dedicated: False for a low-priority (spot) node.
    """

    node_id: str
    machine_id: str | None = None
    address: str | None = None
    root: str | None = None
    vm_size: str | None = None
    dedicated: bool = True


@dataclass(frozen=True)
class Placement:
    """What :meth:`NodeProvider.place` could do: the slots it placed and, if short, why."""

    slots: Sequence[NodeSlot]
    error: ResizeError | None = None


@dataclass(frozen=True)
class NodeRef:
    """One node as its provider is told of it (from the node's row)."""

    account: str
    pool_id: str
    node_id: str
    root: str
    machine_id: str | None = None
    address: str | None = None
    dedicated: bool = True


@dataclass(frozen=True)
class ProviderEvent:
    """Something a provider learned about a node on its own.

    Attributes:
        node_id: The node.
        kind: ``lost`` (the machine is gone: the node's tasks are requeued and the node
            leaves), ``preempted`` (a spot reclaim: the node becomes ``preempted``, its
            tasks are requeued without charging their retry count, a replacement is placed)
            or ``failed`` (a node placed at once whose machine could then not be had, e.g. a
            launch refused for capacity or quota: the node leaves, ``error`` becomes the
            pool's resize error, and the pool is not grown again until its next resize)
            or ``draining`` (the machine will probably be reclaimed soon, e.g. a spot rebalance
            recommendation: the node's ``schedulingState`` becomes ``disabled``, so it takes no
            new task while its running tasks go on)
            or ``unusable`` (a placed node whose machine never became ready within the
            provider's bound of launches: the node stays ``unusable`` with the failed start
            as its error, ``error`` becomes the pool's resize error, and the pool is not grown
            again until its next resize).
        code: An error code for the node's errors (``NodeMachineLost``, ...).
        message: What happened.
        error: For ``failed`` and ``unusable``: the pool's resize error (default
            ``AllocationFailed`` with ``message``).
    """

    node_id: str
    kind: str
    code: str
    message: str
    error: ResizeError | None = None


ReportCallback = Callable[[ProviderEvent], None]


@dataclass(frozen=True)
class ProviderTraits:
    """What the engine must know of a kind of provider instead of testing which kind it is.

    Attributes:
        same_machine: Nodes run on the service's own machine: their files are read from disk
            and removed at once, and the service's SQLite file is within their reach.
            Otherwise every file operation goes through the node's agent.
        unreachable_grace: A node whose agent is lost keeps its running tasks for the engine's
            grace period (its agent runs them on; a reconnect collects their results) before
            they are requeued. Otherwise they are requeued after a few failed restarts in a row.
        wipe_fresh_nodes: A machine may hold an earlier node's files: empty the node root
            before a new node's first agent says hello (and on reimage).
        local_node_limit: Nodes count against this machine's node limit.
        low_priority: The provider can place low-priority (spot) nodes.
    """

    same_machine: bool = False
    unreachable_grace: bool = False
    wipe_fresh_nodes: bool = False
    local_node_limit: bool = False
    low_priority: bool = False


class RecordStore(Protocol):
    """Durable key → JSON records of one provider (survive a restart of the service)."""

    def get(self, key: str) -> Any | None: ...

    def put(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]: ...


class MemoryRecords:
    """A :class:`RecordStore` in memory (tests, and providers that keep nothing)."""

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, key: str) -> Any | None:
        return self._data.get(key)

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> None:
        self._data.pop(key, None)

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        return iter([(k, v) for k, v in sorted(self._data.items()) if k.startswith(prefix)])


class NodeProvider(ABC):
    """Where a pool's nodes come from: places them, starts their agents, gives them back.

    Subclasses set :attr:`kind` and :attr:`traits` and implement :meth:`place`,
    :meth:`connect` and :meth:`release`. A provider does not decide how many nodes a pool has
    and does not schedule tasks: the engine does.

    Attributes:
        kind: The kind's name in the registry (``local``, ``ssh``, ``ec2``, ...).
        sku: The ``nodeAgentSKUId`` pools name it by.
        traits: What the engine must know of this kind.
    """

    kind: str = ""
    traits: ProviderTraits = ProviderTraits()

    def __init__(self, sku: str) -> None:
        self.sku = sku
        self._report: ReportCallback | None = None

    @abstractmethod
    def place(
        self,
        pool: PoolRef,
        node_ids: Sequence[str],
        in_use: Collection[str],
        *,
        dedicated: bool = True,
    ) -> Placement:
        """Place new nodes of ``pool``; called on the engine thread, so no blocking I/O.

        Args:
            pool: The pool.
            node_ids: Ids of the nodes wanted, in order; the placement covers a prefix of them.
            in_use: Machine ids the account's nodes hold now (and ones still being emptied).
            dedicated: False for low-priority (spot) nodes; asked only of a provider whose
                traits have ``low_priority``.
        """

    @abstractmethod
    def connect(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        """Start (or reconnect to) the node's agent; blocks as long as it takes, off the engine.

        ``on_event`` gets every event the agent emits, then ``{"ev": "closed", ...}``.

        Raises:
            AgentError: The agent cannot be started (``HostKeyError`` for a host key refused).
        """

    def attach(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        """An agent session on a node that is up, for file reads; never makes a machine.

        The default is :meth:`connect`; a provider whose ``connect`` launches machines
        refuses here when the node has none.

        Raises:
            AgentError: The node's agent cannot be reached (or the node has no machine).
        """
        return self.connect(node, on_event)

    @abstractmethod
    def release(self, request_id: str, node: NodeRef, *, wipe_only: bool = False) -> None:
        """Give back what the node held; idempotent on ``request_id``.

        Args:
            request_id: Names this release; a second call with it does nothing more.
            node: The node that left.
            wipe_only: Empty the node's root but keep the machine (a reimage, or a machine
                that will take the next node).
        """

    def remote_login(self, node: NodeRef) -> tuple[str, int] | None:
        """The address and port of the SSH server of the node's machine; None when the node
        has no machine of its own (it runs on the service's). May ask the cloud (off the
        engine thread).

        Raises:
            AgentError: The node's machine is not known or not up.
        """
        return None

    def pool_deleted(self, pool: PoolRef) -> None:  # noqa: B027 - optional: most keep nothing
        """The pool is gone and each of its nodes was given to :meth:`release`: give back what
        the pool itself held (a security group, ...). Runs on a start worker; default nothing.
        """

    def watch(self, report: ReportCallback) -> None:
        """Report losses and preemptions found on the provider's own (default: none)."""
        self._report = report

    def close(self) -> None:  # noqa: B027 - optional: most providers keep nothing running
        """The engine stops: stop background work (default: nothing to stop)."""
