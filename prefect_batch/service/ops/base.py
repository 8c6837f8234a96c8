"""What every service operation shares: the store, the account it acts for, and the clock.

An operation object is bound to one account: it sees and changes only that account's pools,
jobs and tasks (every query filters by ``account``).

Bodies are validated by :meth:`ServiceBase.parse`. Behind the REST API (``strict=True``) a JSON
body is validated in pydantic's strict JSON mode: ``"taskSlotsPerNode": "4"``, ``"true"`` for a
boolean or ``1`` for a string is refused (``InvalidPropertyValue`` naming the property) instead of
being quietly converted, while ISO-8601 durations and dates stay strings as on the wire. Python
callers (the embedded client) pass typed values and keep pydantic's ordinary conversions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, select

from prefect_batch.exceptions import BatchNotFoundError
from prefect_batch.service.rows import common
from prefect_batch.store import Store
from prefect_batch.store.schema import jobs, nodes, pools

__all__ = ["ServiceBase", "parse_model"]

M = TypeVar("M", bound=BaseModel)


def parse_model(model: type[M], value: Any, *, strict: bool = False) -> M:
    """Validate a request (model instance, wire dict or snake_case dict).

    ``strict``: a dict is a JSON body and is validated in pydantic's strict JSON mode.
    """
    if isinstance(value, model):
        return value
    if isinstance(value, BaseModel):
        value = value.model_dump(by_alias=True, exclude_none=True)
    try:
        if strict and isinstance(value, dict):
            # The body came as JSON: validate it as JSON, with no type coercion.
            return model.model_validate_json(json.dumps(value), strict=True)
        return model.model_validate(value)
    except ValidationError as exc:
        raise common.validation_error(exc) from exc


class ServiceBase:
    """State and helpers shared by the operation mixins."""

    def __init__(
        self,
        store: Store,
        account: str,
        *,
        base_url: str = "embedded://local",
        clock: common.Clock = common.now,
        wake: Callable[..., None] | None = None,
        file_sandbox: Path | None = None,
        strict: bool = False,
        cloud_accounts: Collection[str] | None = None,
    ) -> None:
        self.store = store
        self.strict = strict
        # Behind a server: SSH host groups may name key and known_hosts files only in
        # <file_sandbox>/<account>; None in-process, where the caller is the machine's own user.
        self.file_sandbox = file_sandbox
        # Behind a server: the accounts that may register node sources acting with the
        # server's cloud credentials (EC2 templates); None in-process, where any may.
        self.cloud_accounts = None if cloud_accounts is None else frozenset(cloud_accounts)
        self.account = account
        self.base_url = base_url.rstrip("/")
        self.clock = clock
        self._wake = wake or (lambda **_: None)
        # Checks run on the row a request addresses ("pool", "job", "task"), inside the
        # operation's transaction: the REST layer's If-Match / If-None-Match / If-(Un)Modified-
        # Since (api/context.py). A check raises to refuse the operation; empty in embedded use.
        self.preconditions: dict[str, Callable[[Any], None]] = {}

    def wake(self, *, pools: bool = False) -> None:
        """Tell an engine in this process there is new work (``pools``: a pool or node changed).

        Only a pool or node change makes the engine re-read pools and reconcile their nodes;
        new tasks and job changes are found by the next step alone.
        """
        self._wake(pools=pools)

    def parse(self, model: type[M], value: Any) -> M:
        """Validate a request (model instance, wire dict or snake_case dict); see the module."""
        return parse_model(model, value, strict=self.strict)

    def _pool_row(self, conn: Connection, pool_id: str) -> Any:
        row = conn.execute(
            select(pools).where(
                pools.c.account == self.account, pools.c.id_key == pool_id.casefold()
            )
        ).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "PoolNotFound", f"The specified pool does not exist: {pool_id}", {"PoolId": pool_id}
            )
        if "pool" in self.preconditions:  # conditional request (see __init__)
            self.preconditions["pool"](row)
        return row

    def _node_of_pool(self, pool_id: str, node_id: str) -> Any:
        """The ``nodes`` row of one of the account's nodes, with its pool's ``pool_spec`` and
        ``pool_id`` (``PoolNotFound``, ``NodeNotFound``)."""
        with self.store.read() as conn:
            pool = self._pool_row(conn, pool_id)
            row = conn.execute(
                select(nodes, pools.c.spec.label("pool_spec"), pools.c.id.label("pool_id"))
                .join(pools, pools.c.pk == nodes.c.pool_pk)
                .where(nodes.c.pool_pk == pool.pk, nodes.c.node_id == node_id)
            ).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "NodeNotFound", f"The specified node does not exist: {node_id}", {"NodeId": node_id}
            )
        return row

    def _job_row(self, conn: Connection, job_id: str) -> Any:
        row = conn.execute(
            select(jobs).where(jobs.c.account == self.account, jobs.c.id_key == job_id.casefold())
        ).one_or_none()
        if row is None:
            raise BatchNotFoundError(
                "JobNotFound", f"The specified job does not exist: {job_id}", {"JobId": job_id}
            )
        if "job" in self.preconditions:  # conditional request (see __init__)
            self.preconditions["job"](row)
        return row
