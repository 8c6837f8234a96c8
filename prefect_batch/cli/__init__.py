"""The ``prefect-batch`` command line: ``pool``, ``job``, ``schedule``, ``task``, ``node``,
``nodesource``, ``file``, ``engine``, ``server``, ``account``, ``ui`` (the web page),
``quickstart``, ``doctor`` (checks of the machine and the settings).

Every command takes ``--json`` (the Azure wire JSON on stdout, nothing else) and otherwise prints
rich tables. An error answer of the service prints ``Error <code>: <message>`` on stderr and
exits 1. Global options (before the command): ``--home`` (state directory, like
``PREFECT_BATCH_HOME``) and ``--account``.

Commands change and read the state in the database and return; they start no engine, so they
never spawn node agents — except ``job wait``, ``engine run`` and ``quickstart``, which run the
engine in this process while they last.

This package only parses arguments and prints; the work is done by :class:`BatchClient`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from prefect_batch.cli import (
    accounts,
    certificates,
    doctor,
    engine,
    files,
    jobs,
    nodes,
    nodesources,
    pools,
    schedules,
    server,
    tasks,
    ui,
)
from prefect_batch.cli._common import (
    CliState,
    JsonOption,
    command_prefix,
    fail,
    print_json,
    stderr_console,
    stdout_console,
)
from prefect_batch.exceptions import PrefectBatchError

__all__ = ["app"]

app = typer.Typer(
    name="prefect-batch",
    help="Azure Batch on your own machines: pools of nodes, jobs of command-line tasks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            file_okay=False,
            help="State directory (database, node roots); default PREFECT_BATCH_HOME.",
        ),
    ] = None,
    account: Annotated[
        str | None, typer.Option("--account", help="Account to act as (default 'local').")
    ] = None,
) -> None:
    """Azure Batch on your own machines: pools of nodes, jobs of command-line tasks."""
    ctx.obj = CliState(home=home, account=account)


app.add_typer(pools.app, name="pool")
app.add_typer(jobs.app, name="job")
app.add_typer(schedules.app, name="schedule")
app.add_typer(tasks.app, name="task")
app.add_typer(nodes.app, name="node")
app.add_typer(nodesources.app, name="nodesource")  # SSH host groups
app.add_typer(files.app, name="file")
app.add_typer(certificates.app, name="certificate")
app.add_typer(engine.app, name="engine")
app.add_typer(server.app, name="server")  # the batch server
app.add_typer(accounts.app, name="account")  # its accounts and keys
app.command("ui")(ui.ui)  # the web page over the embedded default's store
app.command("doctor")(doctor.doctor)  # confinement, modes, the store, free disk


@app.command("quickstart")
def quickstart(
    ctx: typer.Context,
    tasks_: Annotated[int, typer.Option("--tasks", min=1, help="How many tasks to run.")] = 100,
    nodes_: Annotated[int, typer.Option("--nodes", min=1, help="Local nodes in the pool.")] = 2,
    slots: Annotated[
        int, typer.Option("--slots", min=1, help="Task slots per node (new pool).")
    ] = 4,
    keep: Annotated[
        bool,
        typer.Option("--keep", help="Keep the jobs of earlier quickstart runs (default: delete)."),
    ] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", min=0, help="Give up after this many seconds.")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Run ~100 prime-counting tasks on a local pool and show where everything is.

    Creates (or reuses) pool quickstart-pool and a fresh job quickstart-<timestamp>, runs the
    engine here until the tasks are done, then prints each task's node, exit code, retries,
    duration and result. Exit code 0 when every task succeeded, else 1.
    """
    from prefect_batch.quickstart import run_quickstart

    st = ctx.find_root().obj
    console = None if json_out else stdout_console()
    try:
        result = run_quickstart(
            tasks=tasks_,
            nodes=nodes_,
            slots=slots,
            keep=keep,
            home=st.home,
            account=st.account,
            timeout=timeout,
            console=console,
            progress_console=stderr_console() if json_out else console,
            command_prefix=command_prefix(ctx),
        )
    except PrefectBatchError as exc:
        fail(exc)
    except TimeoutError as exc:
        fail(exc, "Timeout")
    if json_out:
        print_json(result.to_dict())
    raise typer.Exit(0 if result.ok else 1)
