"""``prefect-batch pool ...``: create, list, show, resize, stop-resize, delete; nodes; images;
``pool autoscale enable|disable|evaluate``.

Pool commands only change the database: nodes come up (or go) when an engine runs — in
``prefect-batch engine run``, ``prefect-batch job wait`` or any process with a ``BatchClient``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from prefect_batch.cli import nodes as node_commands
from prefect_batch.cli._common import (
    JsonOption,
    batch_client,
    command_prefix,
    list_table,
    parse_duration,
    parse_pairs,
    print_json,
    print_resources,
    read_body,
    resource_table,
    stdout_console,
)
from prefect_batch.core.states import NodeDeallocationOption, NodeFillType
from prefect_batch.models import BatchPool

__all__ = ["app"]

app = typer.Typer(help="Pools of compute nodes.", no_args_is_help=True)

PoolId = Annotated[str, typer.Argument(metavar="POOL", help="The pool id.", show_default=False)]


def pool_row(pool: BatchPool) -> list[Any]:
    """The columns of ``pool list``."""
    policy = pool.task_scheduling_policy
    return [
        pool.id,
        pool.state,
        pool.allocation_state,
        pool.vm_size,
        f"{pool.current_dedicated_nodes or 0}/{pool.target_dedicated_nodes or 0}",
        pool.task_slots_per_node,
        policy.node_fill_type if policy else None,
        pool.creation_time,
    ]


POOL_COLUMNS = ["ID", "State", "Allocation", "VM size", "Nodes", "Slots/node", "Fill", "Created"]


def _show(pool: BatchPool, json_out: bool) -> None:
    if json_out:
        print_json(pool.to_wire())
    else:
        stdout_console().print(resource_table(f"Pool {pool.id}", pool.to_wire()))


@app.command("create")
def create_pool(
    ctx: typer.Context,
    pool_id: Annotated[
        str | None,
        typer.Argument(
            metavar="POOL", help="The pool id (overrides the id in --file).", show_default=False
        ),
    ] = None,
    vm_size: Annotated[
        str | None, typer.Option("--vm-size", help="Node size; 'local' nodes are processes here.")
    ] = None,
    nodes: Annotated[
        int | None,
        typer.Option("--nodes", min=0, help="Dedicated nodes wanted (default 1 without --file)."),
    ] = None,
    slots_per_node: Annotated[
        int | None, typer.Option("--slots-per-node", min=1, help="Tasks one node runs at once.")
    ] = None,
    fill: Annotated[
        NodeFillType | None,
        typer.Option("--fill", help="Spread tasks over nodes, or pack a node first."),
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", help="NAME=VALUE; repeat for more.")
    ] = None,
    display_name: Annotated[str | None, typer.Option("--display-name")] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="A pool body in Azure's wire JSON; options given on the line override it.",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Create a pool (from options, or from Azure wire JSON with --file)."""
    body = read_body(file, pool_id, "pool")
    if vm_size is not None or "vmSize" not in body:
        body["vmSize"] = vm_size or "local"
    if nodes is not None:
        body["targetDedicatedNodes"] = nodes
    elif file is None:
        body["targetDedicatedNodes"] = 1
    if slots_per_node is not None:
        body["taskSlotsPerNode"] = slots_per_node
    if fill is not None:
        body["taskSchedulingPolicy"] = {
            **(body.get("taskSchedulingPolicy") or {}),
            "nodeFillType": fill.value,
        }
    if metadata:
        body["metadata"] = list(body.get("metadata") or []) + [
            {"name": k, "value": v} for k, v in parse_pairs(metadata, "--metadata")
        ]
    if display_name is not None:
        body["displayName"] = display_name
    with batch_client(ctx) as client:
        client.create_pool(body)
        pool = client.get_pool(body["id"])
    if json_out:
        print_json(pool.to_wire())
        return
    console = stdout_console()
    console.print(f"Created pool [bold]{pool.id}[/bold].", highlight=False)
    console.print(list_table("", POOL_COLUMNS, [pool_row(pool)]))
    if pool.target_dedicated_nodes:
        console.print(
            f"Nodes start when an engine runs: [bold]{command_prefix(ctx)} engine run[/bold] "
            f"(or [bold]job wait[/bold]).",
            highlight=False,
        )


@app.command("list")
def list_pools(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the pools of the account."""
    with batch_client(ctx) as client:
        pools = client.list_pools()
    print_resources(pools, "Pools", POOL_COLUMNS, pool_row, json_out)


@app.command("show")
def show_pool(ctx: typer.Context, pool_id: PoolId, json_out: JsonOption = False) -> None:
    """Show one pool."""
    with batch_client(ctx) as client:
        pool = client.get_pool(pool_id)
    _show(pool, json_out)


@app.command("resize")
def resize_pool(
    ctx: typer.Context,
    pool_id: PoolId,
    nodes: Annotated[int, typer.Option("--nodes", min=0, help="Dedicated nodes wanted.")],
    deallocation: Annotated[
        NodeDeallocationOption | None,
        typer.Option(
            "--deallocation",
            help="What happens to running tasks of removed nodes (default requeue).",
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Change the number of nodes of a pool."""
    body: dict[str, Any] = {"targetDedicatedNodes": nodes}
    if deallocation is not None:
        body["nodeDeallocationOption"] = deallocation.value
    with batch_client(ctx) as client:
        client.resize_pool(pool_id, body)
        pool = client.get_pool(pool_id)
    _show(pool, json_out)


@app.command("stop-resize")
def stop_resize(ctx: typer.Context, pool_id: PoolId, json_out: JsonOption = False) -> None:
    """Stop a resize; the pool keeps the nodes it has now."""
    with batch_client(ctx) as client:
        client.stop_pool_resize(pool_id)
        pool = client.get_pool(pool_id)
    _show(pool, json_out)


@app.command("delete")
def delete_pool(ctx: typer.Context, pool_id: PoolId, json_out: JsonOption = False) -> None:
    """Delete a pool and its nodes (--json prints {"id": ..., "deleted": true})."""
    with batch_client(ctx) as client:
        client.delete_pool(pool_id)
    if json_out:
        print_json({"id": pool_id, "deleted": True})
    else:
        stdout_console().print(f"Deleted pool [bold]{pool_id}[/bold].", highlight=False)


# -- autoscale ---------------------------------------------------------------------------------

autoscale_app = typer.Typer(help="Size a pool by an autoscale formula.", no_args_is_help=True)
app.add_typer(autoscale_app, name="autoscale")

FormulaOption = Annotated[
    str | None, typer.Option("--formula", help="The formula text.", show_default=False)
]
FormulaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--formula-file", exists=True, dir_okay=False, help="Read the formula from a file."
    ),
]


def _formula(text: str | None, file: Path | None, required: bool) -> str | None:
    if text is not None and file is not None:
        raise typer.BadParameter("give --formula or --formula-file, not both")
    if file is not None:
        text = file.read_text(encoding="utf-8")
    if text is None and required:
        raise typer.BadParameter("give the formula with --formula or --formula-file")
    return text


@autoscale_app.command("enable")
def enable_auto_scale(
    ctx: typer.Context,
    pool_id: PoolId,
    formula: FormulaOption = None,
    formula_file: FormulaFileOption = None,
    interval: Annotated[
        str | None,
        typer.Option(
            "--interval",
            help="How often the formula runs: seconds or ISO-8601 (default 15 minutes).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Size a pool by a formula, or change its formula or interval; it runs at once."""
    body: dict[str, Any] = {}
    text = _formula(formula, formula_file, required=False)
    if text is not None:
        body["autoScaleFormula"] = text
    if interval is not None:
        body["autoScaleEvaluationInterval"] = parse_duration(interval, "--interval")
    with batch_client(ctx) as client:
        client.enable_pool_auto_scale(pool_id, body)
        pool = client.get_pool(pool_id)
    _show(pool, json_out)


@autoscale_app.command("disable")
def disable_auto_scale(ctx: typer.Context, pool_id: PoolId, json_out: JsonOption = False) -> None:
    """Stop sizing a pool by formula; it keeps its current size."""
    with batch_client(ctx) as client:
        client.disable_pool_auto_scale(pool_id)
        pool = client.get_pool(pool_id)
    _show(pool, json_out)


@autoscale_app.command("evaluate")
def evaluate_auto_scale(
    ctx: typer.Context,
    pool_id: PoolId,
    formula: FormulaOption = None,
    formula_file: FormulaFileOption = None,
    json_out: JsonOption = False,
) -> None:
    """Evaluate a formula on an autoscale pool without applying it (exit 1 if it fails)."""
    text = _formula(formula, formula_file, required=True)
    with batch_client(ctx) as client:
        run = client.evaluate_pool_auto_scale(pool_id, {"autoScaleFormula": text})
    if json_out:
        print_json(run.to_wire())
    elif run.results:
        rows = [item.partition("=")[::2] for item in run.results.split(";") if item]
        stdout_console().print(
            list_table(f"Evaluation at {run.timestamp}", ["Variable", "Value"], rows)
        )
    if run.error is not None:
        typer.echo(f"Error {run.error.code}: {run.error.message}", err=True)
        for pair in run.error.error_values or []:
            typer.echo(f"  {pair.name}: {pair.value}", err=True)
        raise typer.Exit(1)


app.command("nodes", help="List the nodes of a pool (same as 'node list').")(
    node_commands.list_nodes
)


@app.command("images")
def list_images(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the node sources ("supported images") pools can use."""
    with batch_client(ctx) as client:
        images = client.list_supported_images()
    if json_out:
        print_json([i.to_wire() for i in images])
        return
    rows = []
    for image in images:
        ref = image.image_reference
        ref_text = (
            "/".join(str(x) for x in (ref.publisher, ref.offer, ref.sku, ref.version) if x)
            if ref is not None
            else ""
        )
        rows.append(
            [
                image.node_agent_sku_id,
                ref_text,
                image.os_type,
                image.verification_type,
                ", ".join(image.capabilities or []),
            ]
        )
    stdout_console().print(
        list_table(
            "Supported images",
            ["Node agent SKU", "Image", "OS", "Verification", "Capabilities"],
            rows,
        )
    )
