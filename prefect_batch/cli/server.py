"""``prefect-batch server start``: serve the Azure Batch REST API, with the engine, in one process.

The server holds no state of its own: everything is in the store (``--home`` /
``PREFECT_BATCH_HOME`` for SQLite, or ``PREFECT_BATCH_DATABASE_URL`` for PostgreSQL), and its
engine runs every account's pools. Stop it (Ctrl-C, SIGTERM) and start it again: accepted
requests and results are kept, and tasks left running are recovered or rerun (README).

One line for a script::

    PREFECT_BATCH_ACCOUNT_NAME=acct PREFECT_BATCH_ACCOUNT_KEY=<base64> \\
        prefect-batch server start --host 127.0.0.1 --port 8765

makes sure account ``acct`` exists with that primary key before serving. The server binds to
loopback by default. With ``--tls-certfile`` and ``--tls-keyfile`` it serves HTTPS itself (the
certificate file may hold the chain); without them it speaks plain HTTP and warns when bound to
any other address (put a TLS-terminating proxy in front, README "Security model").
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_batch.cli._common import fail
from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.settings import BatchSettings, get_settings

__all__ = ["app"]

app = typer.Typer(help="The batch server (Azure Batch REST API).", no_args_is_help=True)

DEFAULT_PORT = 8765


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    settings: BatchSettings,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    public_url: str | None = None,
    log_level: str = "info",
    prefect_events: bool = False,
    tls_certfile: Path | None = None,
    tls_keyfile: Path | None = None,
    allow_unconfined: bool = False,
) -> None:
    """Run the server until it is stopped (what ``server start`` does, callable from Python).

    With ``prefect_events``, an :class:`~prefect_batch.prefect.watcher.EventWatcher` emits
    Prefect events for every account's nodes, tasks, jobs and pools (needs ``PREFECT_API_URL``).
    With ``tls_certfile`` and ``tls_keyfile`` (PEM), it serves HTTPS. Where tasks cannot be
    confined (or ``confine_tasks`` is off) it warns, and refuses more than one account unless
    ``allow_unconfined``.
    """
    import uvicorn

    from prefect_batch.api import create_app
    from prefect_batch.client import build_engine
    from prefect_batch.service.engine.confinement import set_not_dumpable
    from prefect_batch.service.ops.accounts import AccountOperations
    from prefect_batch.store import Store

    set_not_dumpable()  # its environ may hold PREFECT_BATCH_ACCOUNT_KEY: not readable by tasks
    _private_home(settings.home)
    tls = _tls_files(tls_certfile, tls_keyfile)
    scheme = "https" if tls else "http"
    url = (public_url or f"{scheme}://{host}:{port}").rstrip("/")
    store = Store(settings.effective_database_url)
    ops = AccountOperations(store)
    if settings.account_key is not None:
        ops.ensure(settings.account_name, settings.account_key.get_secret_value())
        typer.echo(
            f"Account {settings.account_name}: primary key from PREFECT_BATCH_ACCOUNT_KEY.",
            err=True,
        )
    names = [a.name for a in ops.list()]
    _check_confinement(settings, len(names), allow_unconfined)
    if not names:
        typer.echo(
            "No accounts yet: create one with `prefect-batch account create NAME` "
            "(the server sees it at once).",
            err=True,
        )
    if not tls and not _is_loopback(host):
        typer.echo(
            f"Warning: serving plain HTTP on {host}; put a TLS-terminating proxy in front.",
            err=True,
        )
    engine = build_engine(store, settings, {name: url for name in names}, server=True)
    app_ = create_app(
        store,
        engine,
        account_url=url,
        ssh_files_dir=settings.effective_ssh_files_dir,
        cloud_accounts=settings.cloud_accounts,
    )
    where = store.engine.url.render_as_string(hide_password=True)
    typer.echo(
        f"Serving the Azure Batch REST API (2025-06-01) at {url} for {len(names)} account(s); "
        f"state in {where}",
        err=True,
    )
    logging.getLogger("prefect_batch").setLevel(log_level.upper())
    watcher = start_watcher(store) if prefect_events else None
    try:
        uvicorn.run(
            app_,
            host=host,
            port=port,
            log_level=log_level,
            proxy_headers=True,
            ssl_certfile=str(tls[0]) if tls else None,
            ssl_keyfile=str(tls[1]) if tls else None,
        )
    finally:
        if watcher is not None:
            watcher.stop()
        store.dispose()


def _check_confinement(settings: BatchSettings, accounts: int, allow_unconfined: bool) -> None:
    """Warn where tasks run unconfined; refuse several accounts there unless allowed."""
    from prefect_batch.service.engine.confinement import confinement_unavailable

    reason = (
        "PREFECT_BATCH_CONFINE_TASKS=false"
        if settings.confine_tasks is False
        else confinement_unavailable()
    )
    if reason is None:
        return
    typer.echo(
        f"Warning: tasks on local nodes run unconfined ({reason}): a task can read the "
        "service's store, keys and every other account's files.",
        err=True,
    )
    if accounts > 1 and not allow_unconfined:
        raise PrefectBatchError(
            f"refusing to serve {accounts} accounts with unconfined tasks: one account's tasks "
            "could take over the others; pass --allow-unconfined-tasks if every task is trusted"
        )


def _private_home(home: Path) -> None:
    """The home (store, keys, node roots) readable by its owner only (0700)."""
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        if home.stat().st_uid == os.geteuid():
            home.chmod(0o700)
    except OSError as exc:
        typer.echo(f"Warning: cannot make {home} private: {exc}", err=True)


def _tls_files(certfile: Path | None, keyfile: Path | None) -> tuple[Path, Path] | None:
    """Both TLS files, checked readable, or None; one without the other is an error."""
    if certfile is None and keyfile is None:
        return None
    if certfile is None or keyfile is None:
        raise typer.BadParameter("give both --tls-certfile and --tls-keyfile, or neither")
    import ssl

    try:  # fail at start with a clear message, not on the first connection
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise typer.BadParameter(f"cannot load the TLS certificate and key: {exc}") from exc
    return certfile, keyfile


def start_watcher(store: Any) -> Any:
    """Start an ``EventWatcher`` on ``store`` (warn when no Prefect API is configured)."""
    from prefect.settings import PREFECT_API_URL

    from prefect_batch.prefect.watcher import EventWatcher

    if not PREFECT_API_URL.value():
        typer.echo(
            "Warning: --prefect-events without PREFECT_API_URL: no events are sent.", err=True
        )
    return EventWatcher(store).start()


@app.command("start")
def start(
    ctx: typer.Context,
    host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to bind.")] = (
        DEFAULT_PORT
    ),
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            help="The URL clients and tasks use (AZ_BATCH_ACCOUNT_URL), e.g. behind a proxy; "
            "default http(s)://HOST:PORT.",
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="critical|error|warning|info|debug.")
    ] = "info",
    prefect_events: Annotated[
        bool,
        typer.Option(
            "--prefect-events",
            help="Emit Prefect events for node, task, job and pool changes (PREFECT_API_URL).",
        ),
    ] = False,
    tls_certfile: Annotated[
        Path | None,
        typer.Option(
            "--tls-certfile", help="PEM certificate (and chain): serve HTTPS with --tls-keyfile."
        ),
    ] = None,
    tls_keyfile: Annotated[
        Path | None, typer.Option("--tls-keyfile", help="PEM private key of --tls-certfile.")
    ] = None,
    allow_unconfined_tasks: Annotated[
        bool,
        typer.Option(
            "--allow-unconfined-tasks",
            help="Serve several accounts even where tasks cannot be confined (trusted tasks).",
        ),
    ] = False,
) -> None:
    """Serve the Azure Batch REST API and run every account's pools until stopped."""
    settings = get_settings()
    root = ctx.find_root().obj
    if root is not None and root.home is not None:
        settings = settings.model_copy(update={"home": root.home})
    try:
        serve(
            settings,
            host=host,
            port=port,
            public_url=public_url,
            log_level=log_level,
            prefect_events=prefect_events,
            tls_certfile=tls_certfile,
            tls_keyfile=tls_keyfile,
            allow_unconfined=allow_unconfined_tasks,
        )
    except PrefectBatchError as exc:
        fail(exc)
