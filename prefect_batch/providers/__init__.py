"""Node sources and the channel to node agents.

:class:`NodeSource` starts one node agent per node; :class:`AgentConnection` is a running agent;
:class:`AgentChannel` frames the agent's JSON-lines protocol over any pair of binary streams.
``local`` (:class:`LocalNodeSource`) runs agents as subprocesses here; SSH and EC2 node sources
live beside it. This package does not schedule tasks or interpret agent events.
"""

from __future__ import annotations

from prefect_batch.providers.base import (
    AgentChannel,
    AgentConnection,
    EventCallback,
    NodeSource,
    ProcessHandle,
)
from prefect_batch.providers.local import LocalNodeSource, scrub_environment

__all__ = [
    "AgentChannel",
    "AgentConnection",
    "EventCallback",
    "LocalNodeSource",
    "NodeSource",
    "ProcessHandle",
    "scrub_environment",
]
