"""Which batch client a flow uses, and which pool it runs on.

A flow opens its own client from an account (a :class:`BatchAccount` block, a block name, or the
embedded default) and closes it at the end; in embedded mode that client runs the engine that
drives the pool while the flow follows its job. Code that already holds an open client (a test,
a benchmark, a long-lived process) lends it to the flows it calls with :func:`using_client`, so
the flows neither start a second engine nor pay for node start-up.

This module does not follow jobs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from prefect_batch.prefect.blocks import BatchAccount, BatchPool

if TYPE_CHECKING:
    from prefect_batch.client import BatchClient

__all__ = ["current_client", "load_pool", "open_client", "using_client"]

_lent: ContextVar[BatchClient | None] = ContextVar("prefect_batch_lent_client", default=None)


@contextmanager
def using_client(client: BatchClient) -> Iterator[BatchClient]:
    """Flows called inside this block use ``client`` (and never close it) unless given an account.

    Example::

        with BatchClient(home=tmp) as client, using_client(client):
            run_batch_job(pool=pool, tasks=["echo hi"])
    """
    token = _lent.set(client)
    try:
        yield client
    finally:
        _lent.reset(token)


def current_client() -> BatchClient | None:
    """The client lent with :func:`using_client`, if any."""
    return _lent.get()


def open_client(account: BatchAccount | str | None) -> tuple[BatchClient, bool]:
    """The client for a flow, and whether the flow owns it (and so must close it).

    Args:
        account: A block, a block name, or None: the lent client, else the embedded default.
    """
    if account is None:
        lent = _lent.get()
        if lent is not None:
            return lent, False
        account = BatchAccount()
    elif isinstance(account, str):
        account = BatchAccount.load(account, _sync=True)  # type: ignore[call-arg]
    return account.get_client(engine=True), True


def load_pool(pool: BatchPool | str | Mapping[str, Any] | None) -> BatchPool | None:
    """A pool block from a block, a block name, or the block's fields as a mapping."""
    if pool is None or isinstance(pool, BatchPool):
        return pool
    if isinstance(pool, str):
        return BatchPool.load(pool, _sync=True)  # type: ignore[call-arg]
    return BatchPool.model_validate(dict(pool))
