"""Node quotas: how many nodes an account and a node source may hold, and how fast agents start.

* **Account quotas**, as Azure's dedicated and low-priority core quotas but counted in nodes:
  every account may hold at most ``dedicatedNodes`` nodes over all its pools
  (default :data:`DEFAULT_DEDICATED_NODE_QUOTA`). The operator sets them
  (``prefect-batch account set-quota``, :func:`set_quota`); an account reads its own
  (``get_account_quotas``). Low-priority nodes are not offered by any node source yet, so that
  quota is shown and stored but has nothing to limit.
* **Node source limits**: local nodes are processes on this machine, so all accounts together
  hold at most ``PREFECT_BATCH_LOCAL_NODE_LIMIT`` of them (default
  :func:`default_local_node_limit`, from the CPU count); an SSH host group holds one node per host.
* A resize past a limit is not an error of the request (Azure accepts it too): the pool grows to
  the limit, settles ``steady`` there and carries a ``resizeErrors`` entry
  (``AccountCoreQuotaReached``, or ``AllocationFailed`` naming the local node limit).
* :class:`AgentStartLimiter` bounds how many new nodes (agents) the engine starts per second, so
  a large resize never forks hundreds of processes at once.

What this module does not do: run the resize (``service/engine/nodes.py`` asks it for room).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, insert, select

from prefect_batch.exceptions import invalid_property
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.store import Store
from prefect_batch.store.schema import account_quotas, nodes

__all__ = [
    "DEFAULT_DEDICATED_NODE_QUOTA",
    "DEFAULT_LOW_PRIORITY_NODE_QUOTA",
    "AccountQuota",
    "AgentStartLimiter",
    "QuotaOperations",
    "default_local_node_limit",
    "held_nodes",
    "node_room",
    "read_quota",
    "set_quota",
]

DEFAULT_DEDICATED_NODE_QUOTA = 100
"""Dedicated nodes an account may hold over all its pools unless the operator sets another."""
DEFAULT_LOW_PRIORITY_NODE_QUOTA = 100
"""Low-priority (spot) nodes an account may hold unless the operator sets another."""
LOCAL_NODES_PER_CPU = 8
"""Local nodes (agent processes) per CPU by default: a node mostly waits for its tasks."""


def default_local_node_limit() -> int:
    """How many local nodes this machine holds by default: 8 per CPU."""
    return LOCAL_NODES_PER_CPU * (os.cpu_count() or 1)


@dataclass(frozen=True)
class AccountQuota:
    """An account's node quotas."""

    dedicated_nodes: int
    low_priority_nodes: int

    def to_wire(self) -> dict[str, int]:
        """The quotas as the API shows them."""
        return {
            "dedicatedNodeQuota": self.dedicated_nodes,
            "lowPriorityNodeQuota": self.low_priority_nodes,
        }


DEFAULT_QUOTA = AccountQuota(DEFAULT_DEDICATED_NODE_QUOTA, DEFAULT_LOW_PRIORITY_NODE_QUOTA)


def read_quota(conn: Any, account: str) -> AccountQuota:
    """The account's quotas (the defaults when none were set)."""
    row = conn.execute(
        select(account_quotas).where(account_quotas.c.account == account)
    ).one_or_none()
    if row is None:
        return DEFAULT_QUOTA
    return AccountQuota(row.dedicated_nodes, row.low_priority_nodes)


def read_quotas(store: Store) -> dict[str, AccountQuota]:
    """Every account's quotas that differ from the defaults, by account."""
    with store.read() as conn:
        rows = conn.execute(select(account_quotas)).all()
    return {r.account: AccountQuota(r.dedicated_nodes, r.low_priority_nodes) for r in rows}


def _check_count(value: int | None, prop: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_property(prop, value, "a whole number of nodes, 0 or more")


def set_quota(
    store: Store,
    account: str,
    *,
    dedicated_nodes: int | None = None,
    low_priority_nodes: int | None = None,
) -> AccountQuota:
    """Set one or both of an account's quotas (the other keeps its value); returns both.

    Lowering a quota below the nodes an account holds removes none of them: it stops growth.
    """
    _check_count(dedicated_nodes, "dedicatedNodeQuota")
    _check_count(low_priority_nodes, "lowPriorityNodeQuota")
    with store.begin() as conn:
        current = read_quota(conn, account)
        new = AccountQuota(
            current.dedicated_nodes if dedicated_nodes is None else dedicated_nodes,
            current.low_priority_nodes if low_priority_nodes is None else low_priority_nodes,
        )
        conn.execute(delete(account_quotas).where(account_quotas.c.account == account))
        conn.execute(
            insert(account_quotas).values(
                account=account,
                dedicated_nodes=new.dedicated_nodes,
                low_priority_nodes=new.low_priority_nodes,
            )
        )
    return new


def held_nodes(conn: Any, account: str, *, dedicated: bool = True) -> int:
    """The account's dedicated (or low-priority) nodes over all its pools, leaving ones not
    counted."""
    market = nodes.c.dedicated.is_not(False) if dedicated else nodes.c.dedicated.is_(False)
    return int(
        conn.execute(
            select(func.count())
            .select_from(nodes)
            .where(nodes.c.account == account, nodes.c.leaving.is_(False), market)
        ).scalar_one()
    )


def node_room(
    conn: Any, account: str, *, local: bool, local_limit: int, dedicated: bool = True
) -> tuple[int, dict[str, str] | None]:
    """How many more nodes the account may get now, and the resize error when that is the cap.

    Counts every node not on its way out: the account's over all its pools (its quota), and,
    for a local pool, every account's local nodes (this machine's limit).
    """
    quota = read_quota(conn, account)
    held = held_nodes(conn, account, dedicated=dedicated)
    limit = quota.dedicated_nodes if dedicated else quota.low_priority_nodes
    room = limit - held
    error = {
        "code": "AccountCoreQuotaReached" if dedicated else "AccountLowPriorityCoreQuotaReached",
        "message": f"The account's {'dedicated' if dedicated else 'low-priority'} node quota "
        f"({limit}) is reached: it holds {held} node(s); the pool keeps the nodes it got "
        "(the operator raises it with `prefect-batch account set-quota`)",
    }
    if local:
        local_held = conn.execute(
            select(func.count())
            .select_from(nodes)
            .where(nodes.c.host_id.is_(None), nodes.c.leaving.is_(False))
        ).scalar_one()
        if local_limit - local_held < room:
            room = local_limit - local_held
            error = {
                "code": "AllocationFailed",
                "message": f"This machine's local node limit ({local_limit}, "
                "PREFECT_BATCH_LOCAL_NODE_LIMIT) is reached; the pool keeps the nodes it got",
            }
    return max(room, 0), error


class AgentStartLimiter:
    """A token bucket: at most ``rate`` agent starts per second, ``burst`` at once (thread-safe).

    Args:
        rate: Starts per second, refilled continuously.
        burst: Starts available at once (and the bucket's size).
        monotonic: The clock (tests pass their own).
    """

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = max(1, int(burst if burst is not None else max(rate, 1)))
        self._monotonic = monotonic
        self._tokens = float(self.burst)
        self._last = monotonic()
        self._lock = threading.Lock()

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` starts now; returns how many were granted."""
        with self._lock:
            now = self._monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
            self._last = now
            granted = min(max(wanted, 0), int(self._tokens))
            self._tokens -= granted
            return granted


class QuotaOperations(ServiceBase):
    """What an account may read about its own limits."""

    def get_account_quotas(self) -> dict[str, int]:
        """The account's node quotas and the nodes it holds now."""
        with self.store.read() as conn:
            quota = read_quota(conn, self.account)
            held = held_nodes(conn, self.account)
            low = held_nodes(conn, self.account, dedicated=False)
        return {**quota.to_wire(), "dedicatedNodes": held, "lowPriorityNodes": low}
