"""``prefect-batch account create|list|keys|rotate|set-quota|delete``: a batch server's accounts.

An account is a name (3-24 lower-case letters and digits, as Azure's) and two base64 keys; a
client signs its requests with either (SharedKey), so one key can be rotated while clients use
the other. These commands work on the store itself (``--home`` / ``PREFECT_BATCH_HOME`` or
``PREFECT_BATCH_DATABASE_URL``), so they run where the server's database is; a running server
sees a new or rotated key at once and stops accepting a replaced one within seconds.

Keys are printed only by ``create``, ``keys`` and ``rotate`` (on stdout), and never logged.
``list`` shows each account's node quotas; ``set-quota`` changes them (a running server applies
them at its next resize step).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated

import typer

from prefect_batch.cli._common import JsonOption, fail, list_table, print_json, stdout_console
from prefect_batch.exceptions import PrefectBatchError
from prefect_batch.service.ops.accounts import Account, AccountOperations
from prefect_batch.settings import get_settings
from prefect_batch.store import Store

__all__ = ["app"]

app = typer.Typer(help="Accounts of a batch server and their keys.", no_args_is_help=True)

Name = Annotated[str, typer.Argument(help="The account name (3-24 lower-case letters, digits).")]


class KeyChoice(str, Enum):
    """Which key to replace."""

    primary = "primary"
    secondary = "secondary"


@contextmanager
def accounts(ctx: typer.Context) -> Iterator[AccountOperations]:
    """Account operations on the store the global options name; errors exit 1."""
    home = ctx.find_root().obj.home if ctx.find_root().obj else None
    settings = get_settings()
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    try:
        store = Store(settings.effective_database_url)
    except PrefectBatchError as exc:
        fail(exc)
    try:
        yield AccountOperations(store)
    except PrefectBatchError as exc:
        fail(exc)
    finally:
        store.dispose()


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def _keys_json(account: Account) -> dict[str, str]:
    return {"accountName": account.name, "primary": account.primary, "secondary": account.secondary}


def _print_keys(account: Account, json_out: bool) -> None:
    if json_out:
        print_json(_keys_json(account))
        return
    stdout_console().print(
        list_table(
            f"Account {account.name}",
            ["key", "value"],
            [("primary", account.primary), ("secondary", account.secondary)],
        )
    )


@app.command("create")
def create(
    ctx: typer.Context,
    name: Name,
    primary: Annotated[
        str | None, typer.Option("--primary-key", help="Use this base64 key (default: random).")
    ] = None,
    secondary: Annotated[
        str | None, typer.Option("--secondary-key", help="Use this base64 key (default: random).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create an account and print its two keys."""
    with accounts(ctx) as ops:
        _print_keys(ops.create(name, primary=primary, secondary=secondary), json_out)


@app.command("list")
def list_accounts(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the accounts (names only; `account keys NAME` shows keys)."""
    with accounts(ctx) as ops:
        found = [(a, ops.quota(a.name)) for a in ops.list()]
    if json_out:
        print_json(
            [
                {"accountName": a.name, "creationTime": _when(a.creation_time), **q.to_wire()}
                for a, q in found
            ]
        )
        return
    stdout_console().print(
        list_table(
            "Accounts",
            ["name", "created", "dedicated node quota", "low-priority node quota"],
            [
                (a.name, _when(a.creation_time), str(q.dedicated_nodes), str(q.low_priority_nodes))
                for a, q in found
            ],
        )
    )


@app.command("set-quota")
def set_quota(
    ctx: typer.Context,
    name: Name,
    dedicated: Annotated[
        int | None,
        typer.Option("--dedicated-nodes", min=0, help="Most dedicated nodes over all its pools."),
    ] = None,
    low_priority: Annotated[
        int | None,
        typer.Option("--low-priority-nodes", min=0, help="Most low-priority (spot) nodes."),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Set an account's node quotas (the one not given is kept); print both."""
    if dedicated is None and low_priority is None:
        raise typer.BadParameter("give --dedicated-nodes and/or --low-priority-nodes")
    with accounts(ctx) as ops:
        quota = ops.set_quota(name, dedicated_nodes=dedicated, low_priority_nodes=low_priority)
    if json_out:
        print_json({"accountName": name, **quota.to_wire()})
        return
    stdout_console().print(
        list_table(
            f"Account {name}",
            ["quota", "nodes"],
            [
                ("dedicated", str(quota.dedicated_nodes)),
                ("low-priority", str(quota.low_priority_nodes)),
            ],
        )
    )


@app.command("keys")
def keys(ctx: typer.Context, name: Name, json_out: JsonOption = False) -> None:
    """Print an account's primary and secondary keys."""
    with accounts(ctx) as ops:
        _print_keys(ops.get(name), json_out)


@app.command("rotate")
def rotate(
    ctx: typer.Context,
    name: Name,
    key: Annotated[
        KeyChoice, typer.Option("--key", help="Which key to replace with a fresh random one.")
    ] = KeyChoice.primary,
    json_out: JsonOption = False,
) -> None:
    """Replace one key with a fresh random key (the other keeps working); print both."""
    with accounts(ctx) as ops:
        _print_keys(ops.rotate(name, key.value), json_out)


@app.command("delete")
def delete(ctx: typer.Context, name: Name) -> None:
    """Remove an account's keys (its pools and jobs stay in the store, unreachable)."""
    with accounts(ctx) as ops:
        ops.delete(name)
    typer.echo(f"Deleted account {name}.", err=True)
