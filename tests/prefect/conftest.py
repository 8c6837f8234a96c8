"""Fixtures for the Prefect integration: one Prefect test server per session, one embedded batch
service per module lent to the flows.

This directory is not a package (its name would shadow ``prefect``); helpers live in
``flowtest_helpers.py`` and are imported by that name.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from prefect_batch import BatchClient
from prefect_batch.testing import embedded_client

_pool_counter = itertools.count()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server (SQLite) for the whole session; ~10 s to start, once."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="module")
def batch_client(
    prefect_api: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BatchClient]:
    """An embedded batch service for the module, lent to every flow its tests call."""
    from prefect_batch.flows import using_client

    with embedded_client(tmp_path_factory.mktemp("batch-home")) as client:
        with using_client(client):
            yield client


@pytest.fixture
def pool_id() -> str:
    """A pool id no other test uses."""
    return f"pool{next(_pool_counter)}"


@pytest.fixture
def prefect_client(prefect_api: None) -> Iterator[Any]:
    """A synchronous client of the session's Prefect server."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        yield client
