"""Row-level helpers that several operations share: each runs inside the caller's transaction.

The operations (``jobs``, ``tasks``, ``files``...) import these; this module imports only the
store, the providers' traits and the lower service modules, so imports run one way:
operations -> row helpers -> store and core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from prefect_batch.exceptions import BatchNotFoundError, BatchServiceError
from prefect_batch.providers.kinds import sku_traits
from prefect_batch.service.rows.common import node_source_of
from prefect_batch.service.rows.localfiles import LocalDir
from prefect_batch.store.schema import node_commands, nodes, pools

__all__ = ["node_row", "queue_dir_deletion"]


def queue_dir_deletion(conn: Any, node_pk: int | None, rel_dir: str, now: float) -> None:
    """Remove ``rel_dir`` under a node's root: at once on this machine, else through its agent.

    A node on this machine has its directories removed now — a job deleted and created
    again under the same id must not lose its new files to a deletion that ran late.
    """
    if node_pk is None:
        return
    row = conn.execute(
        select(nodes.c.root_dir, pools.c.spec)
        .join(pools, pools.c.pk == nodes.c.pool_pk)
        .where(nodes.c.pk == node_pk)
    ).one_or_none()
    if row is None:
        return
    if sku_traits(node_source_of(row.spec)).same_machine:
        if rel_dir.strip("/"):
            try:
                LocalDir(Path(row.root_dir)).delete(rel_dir, recursive=True)
            except BatchServiceError:
                pass  # gone already, or a task made it something else: nothing to keep
        return
    conn.execute(
        insert(node_commands).values(
            node_pk=node_pk, op={"op": "delete", "dir": rel_dir}, creation_time=now
        )
    )


def node_row(conn: Any, pool: Any, node_id: str) -> Any:
    """The row of the pool's node ``node_id``.

    Raises:
        BatchNotFoundError: ``NodeNotFound``.
    """
    row = conn.execute(
        select(nodes).where(nodes.c.pool_pk == pool.pk, nodes.c.node_id == node_id)
    ).one_or_none()
    if row is None:
        raise BatchNotFoundError(
            "NodeNotFound", f"The specified node does not exist: {node_id}", {"NodeId": node_id}
        )
    return row
