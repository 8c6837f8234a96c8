"""``prefect-batch ui``: the web page over the embedded default's store (or any store).

A read-mostly server of the page alone (``prefect_batch.ui``) on the store under ``--home`` /
``PREFECT_BATCH_HOME`` (or ``PREFECT_BATCH_DATABASE_URL``), started without an engine by
default — pools run wherever an engine runs (``job wait``, a flow, ``engine run``); ``--engine``
runs one here too. Actions from the page (resize, reboot...) are recorded in the store and the
engine that runs the pool carries them out.

Signing in takes an account's name and key, as on a server: the embedded service's account
(``--account`` or ``PREFECT_BATCH_ACCOUNT_NAME``, default ``local``) is created in the store if it
has no keys yet, and ``prefect-batch account keys NAME`` prints them. The page binds to loopback
by default and speaks plain HTTP; binding elsewhere warns, as ``server start`` does.
"""

from __future__ import annotations

from typing import Annotated

import typer

from prefect_batch.cli._common import fail
from prefect_batch.cli.server import _is_loopback
from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.settings import get_settings

__all__ = ["DEFAULT_UI_PORT", "ui"]

DEFAULT_UI_PORT = 8766


def ui(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to bind.")] = (
        DEFAULT_UI_PORT
    ),
    engine: Annotated[
        bool, typer.Option("--engine/--no-engine", help="Also run the engine (the pools' nodes).")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical|error|warning|info|debug.")
    ] = "warning",
) -> None:
    """Serve the web page (pools, nodes, jobs, tasks) for the embedded default's store."""
    import uvicorn

    from prefect_batch.client import build_engine
    from prefect_batch.service.ops.accounts import AccountOperations
    from prefect_batch.store import Store
    from prefect_batch.ui import create_ui_app

    settings = get_settings()
    root = ctx.find_root().obj
    if root is not None and root.home is not None:
        settings = settings.model_copy(update={"home": root.home})
    name = (root.account if root is not None else None) or settings.account_name
    url = f"http://{host}:{port}"
    try:
        store = Store(settings.effective_database_url)
        ops = AccountOperations(store)
        if settings.account_key is not None:
            ops.ensure(name, settings.account_key.get_secret_value())
        elif ops.find(name) is None:
            ops.create(name)
            typer.echo(f"Created account {name} for signing in to the page.", err=True)
    except PrefectBatchError as exc:
        fail(exc)
    if not _is_loopback(host):
        typer.echo(
            f"Warning: serving plain HTTP on {host}; put a TLS-terminating proxy in front.",
            err=True,
        )
    runner = build_engine(store, settings, {name: url}) if engine else None
    app_ = create_ui_app(store, runner)
    typer.echo(
        f"The web page is at {url}/ui — sign in as {name} with a key from "
        f"`prefect-batch account keys {name}`"
        + ("; the engine runs here." if engine else "; no engine runs here (--engine runs one)."),
        err=True,
    )
    try:
        uvicorn.run(app_, host=host, port=port, log_level=log_level, proxy_headers=True)
    finally:
        store.dispose()
