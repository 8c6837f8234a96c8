"""Fixtures that start real node agents through ``LocalNodeSource``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from prefect_batch.providers import LocalNodeSource

from .driver import AgentDriver


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "node"
    path.mkdir()
    return path


@pytest.fixture
def start_agent(root: Path) -> Iterator[Callable[..., AgentDriver]]:
    """Start agents on ``root`` (or another root); all are killed with their tasks at the end."""
    drivers: list[AgentDriver] = []

    def start(source: LocalNodeSource | None = None, node_root: Path | None = None) -> AgentDriver:
        driver = AgentDriver(node_root or root, source)
        drivers.append(driver)
        driver.ping()  # the agent is up and has made the node layout
        return driver

    yield start
    for driver in drivers:
        driver.conn.kill(tasks=True, grace_seconds=5)
        driver.conn.wait(10)


@pytest.fixture
def agent(start_agent: Callable[..., AgentDriver]) -> AgentDriver:
    return start_agent()
