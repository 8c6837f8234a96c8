"""The engine through a store that cannot be reached: an agent's report that arrives meanwhile is
kept and recorded once the store answers again (an agent reports a result once per connection,
so a report dropped would leave its task running for ever).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.exc import OperationalError

from prefect_batch import BatchClient
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

REFUSED = OperationalError(
    "BEGIN", {}, psycopg.OperationalError("connection failed: Connection refused")
)


@contextmanager
def unreachable(store: Any) -> Iterator[None]:
    """Every write transaction of ``store`` fails as with PostgreSQL stopped."""

    @contextmanager
    def refuse() -> Iterator[Any]:
        raise REFUSED
        yield  # pragma: no cover

    store.begin = refuse
    try:
        yield
    finally:
        del store.begin


def test_a_result_reported_while_the_store_is_away_is_recorded_after(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    # Leases renewed every 100 s: the steps during the outage get past the lease renewal (which
    # would fail first and leave the report in the queue) to the transaction that records it.
    client = client_factory(lease_seconds=300)
    client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
    wait_for_nodes(client, "p", 1)
    client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
    gate = tmp_path / "gate"
    client.create_task("j", {"id": "t", "commandLine": gate_command(gate, then="echo done")})
    wait_for_task(client, "j", "t", "running")
    engine = client._engine
    assert engine is not None
    with unreachable(client.store):
        gate.touch()  # the task ends; its "exited" report reaches an engine that cannot write
        wait_until(
            lambda: any(msg.get("ev") == "exited" for _, _, msg in engine._held),
            timeout=30,
            message="the report kept for the next step",
        )
        assert isinstance(engine.error, OperationalError)
    task = wait_for_task(client, "j", "t", "completed", timeout=30)
    assert task.execution_info.exit_code == 0
    assert task.execution_info.requeue_count in (0, None)
    assert engine._held == []
