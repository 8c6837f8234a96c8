"""What every CLI command shares: the client factory, error reporting, input parsing, output.

* :func:`batch_client` opens a :class:`~prefect_batch.BatchClient` from the global options
  (``--home``, ``--account``) — without an engine unless asked — closes it afterwards, and turns
  a :class:`~prefect_batch.PrefectBatchError` into ``Error <code>: <message>`` on stderr and exit
  code 1 (no traceback).
* ``--json`` output is the Azure wire JSON and nothing else on stdout (:func:`print_json`);
  otherwise rich tables (:func:`resource_table`, :func:`list_table`).

This module does not define commands; the resource modules (``pools.py``, ``jobs.py``...) do.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from prefect_batch.client import BatchClient
from prefect_batch.exceptions import BatchServiceError, PrefectBatchError
from prefect_batch.models import duration_to_iso

__all__ = [
    "AutoPoolOptions",
    "CliState",
    "JsonOption",
    "batch_client",
    "cell",
    "command_prefix",
    "fail",
    "list_table",
    "pool_info_option",
    "parse_duration",
    "parse_pairs",
    "print_json",
    "read_json",
    "read_json_records",
    "resource_table",
    "stderr_console",
    "stdout_console",
]

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the Azure wire JSON (and nothing else) on stdout.")
]
"""The ``--json`` flag every command takes."""

# Width used when output is not a terminal (pipes, files, tests): wide enough that ids and
# paths are not folded, which rich would do at its 80-column default.
_PIPE_WIDTH = 200


@dataclass(frozen=True)
class CliState:
    """Global options, kept on the click context by the app callback."""

    home: Path | None = None
    account: str | None = None


@dataclass
class AutoPoolOptions:
    """``--auto-pool N`` and its companions: a pool of N local nodes made for the job(s)."""

    nodes: int | None
    prefix: str | None = None
    keep_alive: bool = False
    lifetime: str = "job"
    slots: int | None = None


def pool_info_option(pool: str | None, auto: AutoPoolOptions) -> dict[str, Any] | None:
    """The wire ``poolInfo`` of ``--pool`` or ``--auto-pool`` (None: neither given).

    Raises:
        typer.BadParameter: Both were given.
    """
    if pool is not None and auto.nodes is not None:
        raise typer.BadParameter("give --pool or --auto-pool, not both", param_hint="--auto-pool")
    if pool is not None:
        return {"poolId": pool}
    if auto.nodes is None:
        return None
    spec: dict[str, Any] = {"vmSize": "local", "targetDedicatedNodes": auto.nodes}
    if auto.slots is not None:
        spec["taskSlotsPerNode"] = auto.slots
    body: dict[str, Any] = {"poolLifetimeOption": auto.lifetime, "pool": spec}
    if auto.prefix:
        body["autoPoolIdPrefix"] = auto.prefix
    if auto.keep_alive:
        body["keepAlive"] = True
    return {"autoPoolSpecification": body}


def _state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    return obj if isinstance(obj, CliState) else CliState()


def command_prefix(ctx: typer.Context) -> str:
    """``prefect-batch`` plus the global options in effect, for "try next" hints."""
    st = _state(ctx)
    words = ["prefect-batch"]
    if st.home is not None:
        words += ["--home", str(st.home)]
    if st.account is not None:
        words += ["--account", st.account]
    return shlex.join(words)


@contextmanager
def batch_client(ctx: typer.Context, *, engine: bool = False) -> Iterator[BatchClient]:
    """A client for the global options; errors inside the block are reported and exit 1.

    Args:
        ctx: The command's context (carries ``--home`` and ``--account``).
        engine: Run an engine in this process. Only commands that must make tasks progress
            (``job wait``, ``engine run``, ``quickstart``) do: the engine starts node agents.
    """
    st = _state(ctx)
    try:
        client = BatchClient(st.account, home=st.home, engine=engine)
    except PrefectBatchError as exc:
        fail(exc)
    try:
        yield client
    except PrefectBatchError as exc:
        fail(exc)
    finally:
        client.close()


def fail(exc: BaseException, code: str | None = None) -> NoReturn:
    """Print ``Error <code>: <message>`` (and the error's values) to stderr; exit 1.

    ``code`` names errors that carry none (e.g. ``Timeout``).
    """
    if isinstance(exc, BatchServiceError):
        typer.echo(f"Error {exc.code}: {exc.message}", err=True)
        for key, value in exc.values.items():
            typer.echo(f"  {key}: {value}", err=True)
    else:
        typer.echo(f"Error {code}: {exc}" if code else f"Error: {exc}", err=True)
    raise typer.Exit(1)


# -- input -------------------------------------------------------------------------------------


def parse_pairs(values: Sequence[str] | None, option: str) -> list[tuple[str, str]]:
    """``["K=V", ...]`` -> ``[(K, V), ...]``; the value may contain ``=``."""
    out = []
    for item in values or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint=option)
        out.append((name, value))
    return out


def parse_duration(value: str | None, option: str) -> str | None:
    """An ISO-8601 duration (``PT1H``) as given, or a number of seconds made into one."""
    if value is None:
        return None
    text = value.strip()
    try:
        secs = float(text)
    except ValueError:
        if text.upper().startswith(("P", "-P")):
            return text  # the service validates it and names the property if it is wrong
        raise typer.BadParameter(
            f"expected seconds or an ISO-8601 duration like PT1H30M, got {value!r}",
            param_hint=option,
        ) from None
    if secs < 0:
        raise typer.BadParameter("must not be negative", param_hint=option)
    return duration_to_iso(timedelta(seconds=secs))


def read_json(path: Path, option: str = "--file") -> Any:
    """The JSON document in ``path``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint=option) from exc
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(
            f"{path} is not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            param_hint=option,
        ) from exc


def read_body(file: Path | None, resource_id: str | None, noun: str) -> dict[str, Any]:
    """A create body: the JSON object in ``--file`` (if any) with the id from the line on top.

    Raises:
        typer.BadParameter: The file is not a JSON object, or no id was given either way.
    """
    body: dict[str, Any] = {}
    if file is not None:
        doc = read_json(file)
        if not isinstance(doc, dict):
            raise typer.BadParameter("the file must hold a JSON object", param_hint="--file")
        body = doc
    if resource_id is not None:
        body["id"] = resource_id
    if not body.get("id"):
        raise typer.BadParameter(f"give a {noun} ID, or --file with an id", param_hint=noun.upper())
    return body


def read_json_records(path: Path, option: str = "--file") -> list[Any]:
    """Records from a JSON list, Azure's ``{"value": [...]}`` body, or JSON lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint=option) from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        doc = None
    else:
        if isinstance(doc, list):
            return doc
        if isinstance(doc, dict) and isinstance(doc.get("value"), list):
            return doc["value"]
        if isinstance(doc, dict):
            return [doc]  # a JSON-lines file of one line
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(
                f"{path} line {lineno} is not JSON: {exc.msg} (column {exc.colno})",
                param_hint=option,
            ) from exc
    return records


# -- output ------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def _console(stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return console


def stdout_console() -> Console:
    """A rich console on stdout (made per call, so test runners that swap stdout see it)."""
    return _console(stderr=False)


def stderr_console() -> Console:
    """A rich console on stderr, for progress bars and notes that must not mix with data."""
    return _console(stderr=True)


def cell(value: Any) -> Text:
    """A table cell: enums by value, datetimes shortened, ``None`` empty; never rich markup."""
    if value is None:
        return Text("")
    if isinstance(value, Enum):
        value = value.value
    if isinstance(value, datetime):
        value = value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        value = duration_to_iso(value)
    if isinstance(value, bool):
        value = "yes" if value else "no"
    if isinstance(value, (list, dict)):
        value = json.dumps(value, ensure_ascii=False)
    return Text(str(value))


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def resource_table(title: str, wire: dict[str, Any]) -> Table:
    """One resource as a two-column table of its wire properties (nested ones dotted)."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("property", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in _flatten(wire):
        table.add_row(key, cell(value))
    return table


def print_resources(
    items: Sequence[Any],
    title: str,
    columns: Sequence[str],
    row: Callable[[Any], Sequence[Any]],
    json_out: bool,
) -> None:
    """Print resources as their wire JSON (``--json``) or as a table of ``row(item)`` rows."""
    if json_out:
        print_json([item.to_wire() for item in items])
    else:
        stdout_console().print(list_table(title, columns, [row(item) for item in items]))


def list_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A table with a header row."""
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    return table
