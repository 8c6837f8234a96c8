"""``prefect-batch node ...``: list the nodes of a pool, show one node.

Nodes are made and removed by an engine; these commands only read what it recorded.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from prefect_batch.cli._common import (
    JsonOption,
    batch_client,
    list_table,
    print_json,
    resource_table,
    stdout_console,
)
from prefect_batch.models import BatchNode

__all__ = ["app", "list_nodes", "show_node"]

app = typer.Typer(help="Compute nodes of a pool.", no_args_is_help=True)

NODE_COLUMNS = [
    "ID",
    "State",
    "Scheduling",
    "Running tasks",
    "Running slots",
    "Tasks run",
    "Succeeded",
    "IP",
    "Last boot",
    "Errors",
]


def node_row(node: BatchNode) -> list[Any]:
    """The columns of ``node list``."""
    return [
        node.id,
        node.state,
        node.scheduling_state,
        node.running_tasks_count,
        node.running_task_slots_count,
        node.total_tasks_run,
        node.total_tasks_succeeded,
        node.ip_address,
        node.last_boot_time,
        ", ".join(e.code or "" for e in node.errors or []),
    ]


@app.command("list")
def list_nodes(
    ctx: typer.Context,
    pool_id: Annotated[
        str, typer.Argument(metavar="POOL", help="The pool id.", show_default=False)
    ],
    json_out: JsonOption = False,
) -> None:
    """List the nodes of a pool."""
    with batch_client(ctx) as client:
        nodes = client.list_nodes(pool_id)
    if json_out:
        print_json([n.to_wire() for n in nodes])
    else:
        stdout_console().print(
            list_table(f"Nodes of pool {pool_id}", NODE_COLUMNS, [node_row(n) for n in nodes])
        )


@app.command("show")
def show_node(
    ctx: typer.Context,
    pool_id: Annotated[
        str, typer.Argument(metavar="POOL", help="The pool id.", show_default=False)
    ],
    node_id: Annotated[
        str, typer.Argument(metavar="NODE", help="The node id.", show_default=False)
    ],
    json_out: JsonOption = False,
) -> None:
    """Show one node."""
    with batch_client(ctx) as client:
        node = client.get_node(pool_id, node_id)
    if json_out:
        print_json(node.to_wire())
    else:
        stdout_console().print(resource_table(f"Node {node.id} of pool {pool_id}", node.to_wire()))
