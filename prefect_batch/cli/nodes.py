"""``prefect-batch node ...``: list and show nodes; reboot, reimage, remove, disable and enable
scheduling.

Nodes are made and removed by an engine. The operations here only record the request and return
at once (Azure's operations are asynchronous too): the engine that holds the pool carries it out
when the ``--option`` allows — running tasks requeued or ended now, or awaited
(``taskcompletion``), or awaited and their files' retention passed (``retaineddata``).
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any

import typer

from prefect_batch.cli._common import (
    JsonOption,
    batch_client,
    list_table,
    parse_duration,
    print_json,
    print_resources,
    resource_table,
    stdout_console,
)
from prefect_batch.core.states import NodeDeallocationOption
from prefect_batch.models import BatchNode

__all__ = [
    "app",
    "disable_scheduling",
    "enable_scheduling",
    "list_nodes",
    "reboot_node",
    "reimage_node",
    "remove_nodes",
    "show_node",
]

app = typer.Typer(help="Compute nodes of a pool.", no_args_is_help=True)

PoolId = Annotated[str, typer.Argument(metavar="POOL", help="The pool id.", show_default=False)]
NodeId = Annotated[str, typer.Argument(metavar="NODE", help="The node id.", show_default=False)]
DeallocationOption = Annotated[
    NodeDeallocationOption,
    typer.Option(
        "--option",
        help="Running tasks: requeue them now, terminate them (they fail), wait for them "
        "(taskcompletion), or wait for them and their files' retention (retaineddata).",
    ),
]


class DisableSchedulingOption(str, Enum):
    """What disabling scheduling does to a node's running tasks (Azure offers three)."""

    REQUEUE = "requeue"
    TERMINATE = "terminate"
    TASK_COMPLETION = "taskcompletion"


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
    pool_id: PoolId,
    json_out: JsonOption = False,
) -> None:
    """List the nodes of a pool."""
    with batch_client(ctx) as client:
        nodes = client.list_nodes(pool_id)
    print_resources(nodes, f"Nodes of pool {pool_id}", NODE_COLUMNS, node_row, json_out)


@app.command("show")
def show_node(
    ctx: typer.Context,
    pool_id: PoolId,
    node_id: NodeId,
    json_out: JsonOption = False,
) -> None:
    """Show one node."""
    with batch_client(ctx) as client:
        node = client.get_node(pool_id, node_id)
    if json_out:
        print_json(node.to_wire())
    else:
        stdout_console().print(resource_table(f"Node {node.id} of pool {pool_id}", node.to_wire()))


@app.command("metrics")
def node_metrics(
    ctx: typer.Context,
    pool_id: PoolId,
    node_id: NodeId,
    json_out: JsonOption = False,
) -> None:
    """Show a node's last heartbeat and its latest CPU, memory, disk and network readings."""
    with batch_client(ctx) as client:
        metrics = client.get_node_metrics(pool_id, node_id)
    if json_out:
        print_json(metrics)
    else:
        stdout_console().print(resource_table(f"Metrics of node {node_id}", metrics))


def _show(node: BatchNode, json_out: bool, note: str) -> None:
    if json_out:
        print_json(node.to_wire())
        return
    console = stdout_console()
    console.print(note, highlight=False)
    console.print(list_table("", NODE_COLUMNS, [node_row(node)]))


@app.command("reboot")
def reboot_node(
    ctx: typer.Context,
    pool_id: PoolId,
    node_id: NodeId,
    option: DeallocationOption = NodeDeallocationOption.REQUEUE,
    json_out: JsonOption = False,
) -> None:
    """Reboot a node: its agent restarts and its start task runs again."""
    with batch_client(ctx) as client:
        client.reboot_node(pool_id, node_id, {"nodeRebootOption": option.value})
        node = client.get_node(pool_id, node_id)
    _show(node, json_out, f"Reboot of node [bold]{node_id}[/bold] requested ({option.value}).")


@app.command("reimage")
def reimage_node(
    ctx: typer.Context,
    pool_id: PoolId,
    node_id: NodeId,
    option: DeallocationOption = NodeDeallocationOption.REQUEUE,
    json_out: JsonOption = False,
) -> None:
    """Reimage a node: its batch directories are wiped and its start task runs again."""
    with batch_client(ctx) as client:
        client.reimage_node(pool_id, node_id, {"nodeReimageOption": option.value})
        node = client.get_node(pool_id, node_id)
    _show(node, json_out, f"Reimage of node [bold]{node_id}[/bold] requested ({option.value}).")


@app.command("remove")
def remove_nodes(
    ctx: typer.Context,
    pool_id: PoolId,
    node_ids: Annotated[
        list[str],
        typer.Argument(metavar="NODE", help="Node ids (1 to 100).", show_default=False),
    ],
    option: DeallocationOption = NodeDeallocationOption.REQUEUE,
    resize_timeout: Annotated[
        str | None,
        typer.Option(
            "--resize-timeout", help="How long the removal may take: seconds or ISO-8601 (PT15M)."
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Remove nodes from a pool; its target size goes down by as many (--json prints the pool)."""
    body: dict[str, Any] = {"nodeList": node_ids, "nodeDeallocationOption": option.value}
    timeout = parse_duration(resize_timeout, "--resize-timeout")
    if timeout is not None:
        body["resizeTimeout"] = timeout
    with batch_client(ctx) as client:
        client.remove_nodes(pool_id, body)
        pool = client.get_pool(pool_id)
    if json_out:
        print_json(pool.to_wire())
        return
    stdout_console().print(
        f"Removing {len(node_ids)} node(s) from pool [bold]{pool_id}[/bold] ({option.value}); "
        f"target now {pool.target_dedicated_nodes}.",
        highlight=False,
    )


@app.command("disable-scheduling")
def disable_scheduling(
    ctx: typer.Context,
    pool_id: PoolId,
    node_id: NodeId,
    option: Annotated[
        DisableSchedulingOption,
        typer.Option(
            "--option",
            help="Running tasks: requeue them now, terminate them, or let "
            "them finish (taskcompletion).",
        ),
    ] = DisableSchedulingOption.REQUEUE,
    json_out: JsonOption = False,
) -> None:
    """Stop scheduling tasks on a node; it shows 'offline' once idle."""
    with batch_client(ctx) as client:
        client.disable_node_scheduling(
            pool_id, node_id, {"nodeDisableSchedulingOption": option.value}
        )
        node = client.get_node(pool_id, node_id)
    _show(node, json_out, f"Scheduling disabled on node [bold]{node_id}[/bold] ({option.value}).")


@app.command("enable-scheduling")
def enable_scheduling(
    ctx: typer.Context,
    pool_id: PoolId,
    node_id: NodeId,
    json_out: JsonOption = False,
) -> None:
    """Schedule tasks on a node again."""
    with batch_client(ctx) as client:
        client.enable_node_scheduling(pool_id, node_id)
        node = client.get_node(pool_id, node_id)
    _show(node, json_out, f"Scheduling enabled on node [bold]{node_id}[/bold].")
