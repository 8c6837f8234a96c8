"""Per-node liveness and resource readings (``get_node_metrics``), from real local agents."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefect_batch import BatchNotFoundError
from prefect_batch.testing import embedded_client, wait_for_nodes, wait_until


def test_a_node_shows_its_heartbeat_and_latest_readings(tmp_path: Path) -> None:
    with embedded_client(
        tmp_path / "home", autoscale_sample_interval_seconds=1.0, heartbeat_interval_seconds=1.0
    ) as client:
        client.create_pool({"id": "m", "vmSize": "local", "targetDedicatedNodes": 1})
        (node,) = wait_for_nodes(client, "m", 1)

        def second_reading() -> dict | None:
            metrics = client.get_node_metrics("m", node.id)
            # The second reading has counters (deltas against the first) and an interval.
            return metrics if metrics["intervalSeconds"] is not None else None

        metrics = wait_until(second_reading, timeout=30, message="a second metrics reading")
        assert metrics["poolId"] == "m" and metrics["nodeId"] == node.id
        assert metrics["state"] == "idle" and metrics["lastHeartbeat"] is not None
        assert 0.0 <= metrics["cpuPercent"] <= 100.0
        assert metrics["memoryBytes"] > 0 and metrics["diskBytes"] > 0
        assert metrics["networkInBytes"] >= 0 and metrics["time"].endswith("Z")
        with pytest.raises(BatchNotFoundError):
            client.get_node_metrics("m", "tvmps_nosuchnode")
