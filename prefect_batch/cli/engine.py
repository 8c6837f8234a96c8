"""``prefect-batch engine run``: run the engine in the foreground.

While it runs, the pools it can lease get their nodes (local node agents, started by this
process) and queued tasks flow to them, so the other CLI commands — which only change the
database — see their pools and jobs make progress. Stopping it (Ctrl-C, or ``--duration``) lets
running tasks finish on their nodes; a later engine picks the nodes up again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Annotated

import typer

from prefect_batch.cli._common import batch_client, stderr_console
from prefect_batch.client import BatchClient
from prefect_batch.exceptions import BatchNotFoundError
from prefect_batch.models import BatchPool

__all__ = ["app"]

app = typer.Typer(help="The engine that runs pools' nodes and tasks.", no_args_is_help=True)

POLL_SECONDS = 1.0


def pool_line(pool: BatchPool, node_states: Counter[str]) -> str:
    """One line about a pool: nodes current/target, their states, slots, allocation."""
    states = ", ".join(f"{n} {s}" for s, n in sorted(node_states.items())) or "no nodes"
    alloc = pool.allocation_state.value if pool.allocation_state else "?"
    state = pool.state.value if pool.state else "?"
    return (
        f"pool {pool.id}: {pool.current_dedicated_nodes or 0}/{pool.target_dedicated_nodes or 0}"
        f" nodes ({states}), {pool.task_slots_per_node or 1} slots/node, {state}, {alloc}"
    )


def _snapshot(client: BatchClient) -> dict[str, tuple[BatchPool, Counter[str]]]:
    out = {}
    for pool in client.list_pools():
        try:
            nodes = client.list_nodes(pool.id)
        except BatchNotFoundError:  # deleted between the two reads
            continue
        out[pool.id] = (
            pool,
            Counter(n.state.value if n.state else "unknown" for n in nodes),
        )
    return out


@app.command("run")
def run_engine(
    ctx: typer.Context,
    duration: Annotated[
        float | None,
        typer.Option("--duration", min=0, help="Stop after this many seconds (default: Ctrl-C)."),
    ] = None,
    json_out: Annotated[
        bool,
        typer.Option(
            "--json",
            help="Print each pool's wire JSON (one line) when it changes, instead of text.",
        ),
    ] = False,
    prefect_events: Annotated[
        bool,
        typer.Option(
            "--prefect-events",
            help="Emit Prefect events for node, task, job and pool changes (PREFECT_API_URL).",
        ),
    ] = False,
) -> None:
    """Run the engine here until Ctrl-C (or --duration); print a line per pool as it changes."""
    err = stderr_console()
    deadline = None if duration is None else time.monotonic() + duration
    with batch_client(ctx, engine=True) as client:
        watcher = None
        if prefect_events and client.store is not None:
            from prefect_batch.cli.server import start_watcher

            watcher = start_watcher(client.store)
        err.print(
            "Engine running"
            + (f" for {duration:g} s" if duration is not None else "")
            + "; Ctrl-C to stop.",
            highlight=False,
        )
        last: dict[str, str] = {}
        try:
            while True:
                snapshot = _snapshot(client)
                for pool_id, (pool, states) in snapshot.items():
                    if json_out:
                        line = json.dumps(pool.to_wire(), ensure_ascii=False)
                    else:
                        line = pool_line(pool, states)
                    if last.get(pool_id) != line:
                        last[pool_id] = line
                        typer.echo(line)
                for gone in set(last) - set(snapshot):
                    del last[gone]
                    if json_out:
                        typer.echo(json.dumps({"id": gone, "deleted": True}))
                    else:
                        typer.echo(f"pool {gone}: deleted")
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    time.sleep(min(POLL_SECONDS, remaining))
                else:
                    time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            pass
        if watcher is not None:
            watcher.stop()
        err.print("Stopping the engine; running tasks finish on their nodes.", highlight=False)
