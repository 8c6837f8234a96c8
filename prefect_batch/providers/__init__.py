"""Node providers and the channel to node agents.

:class:`NodeProvider` (:mod:`~prefect_batch.providers.contract`) is what every kind of node
source implements: it places a pool's nodes, starts one node agent per node and gives nodes
back. The kinds are listed in :mod:`~prefect_batch.providers.kinds`: ``local``
(:class:`LocalNodeSource`, agents as subprocesses here) and ``ssh`` (hosts reached over SSH).
:class:`AgentConnection` is a running agent; :class:`AgentChannel` frames the agent's
JSON-lines protocol over any pair of binary streams. This package does not schedule tasks or
interpret agent events.
"""

from __future__ import annotations

from prefect_batch.providers.base import (
    AgentChannel,
    AgentConnection,
    EventCallback,
    ProcessHandle,
)
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    NodeSlot,
    Placement,
    PoolRef,
    ProviderEvent,
    ProviderTraits,
    ResizeError,
)
from prefect_batch.providers.local import LocalNodeSource, scrub_environment

__all__ = [
    "AgentChannel",
    "AgentConnection",
    "EventCallback",
    "LocalNodeSource",
    "NodeProvider",
    "NodeRef",
    "NodeSlot",
    "Placement",
    "PoolRef",
    "ProcessHandle",
    "ProviderEvent",
    "ProviderTraits",
    "ResizeError",
    "scrub_environment",
]
