"""The node agent: the only code prefect-batch runs on a compute node.

:data:`AGENT_PATH` is the self-contained, stdlib-only script (``agent.py``) that node sources
ship to a node (spawned locally, or sent as text over SSH) and run as
``python3 agent.py --root DIR``. Its module docstring is the protocol specification
(:data:`PROTOCOL_VERSION`). This package does not talk to agents: ``prefect_batch.providers``
does (:class:`~prefect_batch.providers.base.AgentChannel`).
"""

from __future__ import annotations

from pathlib import Path

from prefect_batch.agent.agent import AGENT_VERSION, PROTOCOL_VERSION

__all__ = ["AGENT_PATH", "AGENT_VERSION", "PROTOCOL_VERSION"]

AGENT_PATH: Path = Path(__file__).resolve().with_name("agent.py")
"""Path of the agent script, to spawn or to ship as text."""
