"""Node quotas: an account's dedicated node quota, this machine's local node limit, and the rate
at which agents start.

A resize past a limit is accepted (as on Azure), the pool grows to the limit, settles ``steady``
there with a ``resizeErrors`` entry, and no more agent processes run than the limit allows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, BatchInvalidRequestError
from prefect_batch.service.ops.quotas import (
    DEFAULT_DEDICATED_NODE_QUOTA,
    AgentStartLimiter,
    default_local_node_limit,
)
from prefect_batch.testing import wait_until


def _agents_under(home: Path) -> int:
    """Agent processes of this test process whose node root is under ``home``."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if (
            ppid == os.getpid()
            and b"--root" in cmdline
            and str(home).encode() in b" ".join(cmdline)
        ):
            count += 1
    return count


def _settled(client: BatchClient, pool_id: str) -> object:
    pool = client.get_pool(pool_id)
    state = getattr(pool.allocation_state, "value", pool.allocation_state)
    return pool if state == "steady" else None


def test_a_huge_resize_settles_at_the_account_quota(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    client = client_factory(home)
    assert client.get_account_quotas()["dedicatedNodeQuota"] == DEFAULT_DEDICATED_NODE_QUOTA
    client.set_account_quota(dedicated_nodes=3)
    client.create_pool({"id": "other", "vmSize": "local", "targetDedicatedNodes": 1})
    client.create_pool({"id": "huge", "vmSize": "local", "targetDedicatedNodes": 0})
    client.resize_pool("huge", {"targetDedicatedNodes": 100_000})
    pool = wait_until(lambda: _settled(client, "huge"), timeout=60, message="huge pool steady")
    # The quota counts the account's nodes over all its pools: 1 in "other", 2 here.
    assert pool.target_dedicated_nodes == 100_000
    assert [e.code for e in pool.resize_errors or []] == ["AccountCoreQuotaReached"]
    assert "quota (3)" in pool.resize_errors[0].message

    def all_idle() -> bool:
        found = client.list_nodes("huge") + client.list_nodes("other")
        return len(found) == 3 and all(n.state == "idle" for n in found)

    wait_until(all_idle, timeout=60, message="3 idle nodes")
    client.service.wake(pools=True)  # more reconcile passes change nothing
    wait_until(all_idle, timeout=30)
    assert len(client.list_nodes("huge")) == 2
    assert client.get_pool("huge").current_dedicated_nodes == 2
    assert _agents_under(home) == 3
    quotas = client.get_account_quotas()
    assert (quotas["dedicatedNodeQuota"], quotas["dedicatedNodes"]) == (3, 3)


def test_the_local_node_limit_holds_over_accounts(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    first = client_factory(home, local_node_limit=3)
    first.create_pool({"id": "a", "vmSize": "local", "targetDedicatedNodes": 2})
    wait_until(lambda: _settled(first, "a"), timeout=60)
    second = BatchClient("second", home=home, engine=False, settings=first.settings)
    try:
        second.create_pool({"id": "b", "vmSize": "local", "targetDedicatedNodes": 5})
        first.service.wake(pools=True)
        pool = wait_until(lambda: _settled(second, "b"), timeout=60, message="pool b steady")
        assert [e.code for e in pool.resize_errors or []] == ["AllocationFailed"]
        assert "local node limit (3" in pool.resize_errors[0].message
        assert len(second.list_nodes("b")) == 1
        wait_until(
            lambda: [n.state for n in second.list_nodes("b")] == ["idle"],
            timeout=60,
            message="b's node idle",
        )
    finally:
        second.close()
    assert _agents_under(home) == 3


def test_default_local_limit_follows_the_cpu_count() -> None:
    assert default_local_node_limit() == 8 * (os.cpu_count() or 1)


def test_quota_must_be_a_count(client_factory: Callable[..., BatchClient]) -> None:
    client = client_factory(engine=False)
    with pytest.raises(BatchInvalidRequestError, match="dedicatedNodeQuota"):
        client.set_account_quota(dedicated_nodes=-1)
    assert client.set_account_quota(low_priority_nodes=7)["lowPriorityNodeQuota"] == 7
    assert client.get_account_quotas()["dedicatedNodeQuota"] == DEFAULT_DEDICATED_NODE_QUOTA


def test_agent_starts_are_rate_limited() -> None:
    now = [100.0]
    limiter = AgentStartLimiter(4.0, monotonic=lambda: now[0])
    assert limiter.take(100_000) == 4  # the burst
    assert limiter.take(10) == 0
    now[0] += 0.5
    assert limiter.take(10) == 2  # 4 per second
    now[0] += 60
    assert limiter.take(10) == 4  # never more than the burst, however long it waited
    assert limiter.take(-3) == 0


def test_an_account_reads_its_quota_through_the_server(tmp_path: Path) -> None:
    from prefect_batch import PrefectBatchError
    from prefect_batch.service.ops.accounts import AccountOperations
    from tests.api.conftest import running_server

    with running_server(f"sqlite:///{tmp_path / 'batch.db'}", tmp_path / "home") as server:
        AccountOperations(server.store).set_quota(server.account.name, dedicated_nodes=9)
        remote = BatchClient(
            server.account.name, url=server.url, account_key=server.account.primary
        )
        try:
            assert remote.get_account_quotas() == {
                "dedicatedNodeQuota": 9,
                "lowPriorityNodeQuota": 100,
                "dedicatedNodes": 0,
                "lowPriorityNodes": 0,
            }
            with pytest.raises(PrefectBatchError, match="set-quota"):
                remote.set_account_quota(dedicated_nodes=1000)
        finally:
            remote.close()
