"""``prefect-batch nodesource ...``: register, list, show and delete SSH host groups.

A registered group is a node source pools can name (``batch.node.ssh.<name>``; see ``pool
images``). ``nodesource ssh add --file group.yaml`` reads a YAML (or JSON) document with the
fields of an SSH host group::

    name: lab
    user: batch
    private_key_path: ~/.ssh/batch_ed25519     # or private_key_secret_name: <Secret block>
    vm_size: lab-8core
    hosts:
      - {address: 10.0.0.11, host_key: "ssh-ed25519 AAAA..."}
      - {address: 10.0.0.12, host_key: "ssh-ed25519 AAAA..."}

Key text is refused: the group names a key file on the engine's machine or a Prefect Secret
block. Like every command here these only change the database; an engine connects to the hosts.
"""

from __future__ import annotations

from pathlib import Path
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
from prefect_batch.models import BatchNodeSource

__all__ = ["app"]

app = typer.Typer(help="Node sources: SSH host groups pools take nodes from.", no_args_is_help=True)
ssh_app = typer.Typer(help="SSH host groups.", no_args_is_help=True)
app.add_typer(ssh_app, name="ssh")

Name = Annotated[str, typer.Argument(metavar="NAME", help="The group's name.", show_default=False)]


def read_group(path: Path) -> dict[str, Any]:
    """The host group document in ``path`` (YAML or JSON)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--file") from exc
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path} is not YAML: {exc}", param_hint="--file") from exc
    if not isinstance(doc, dict):
        raise typer.BadParameter(
            "the file must hold a mapping of group fields", param_hint="--file"
        )
    return doc


def _show(source: BatchNodeSource, json_out: bool) -> None:
    if json_out:
        print_json(source.to_wire())
    else:
        stdout_console().print(resource_table(f"Node source {source.name}", source.to_wire()))


@ssh_app.command("add")
def add_ssh_group(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Option(
            "--file",
            exists=True,
            dir_okay=False,
            help="The group: YAML or JSON, SSHHostGroup fields.",
        ),
    ],
    name: Annotated[
        str | None, typer.Option("--name", help="The group's name (overrides the file's).")
    ] = None,
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace the group if it is registered already.")
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Register an SSH host group (pools then name batch.node.ssh.<name>)."""
    group = read_group(file)
    if name is not None:
        group["name"] = name
    group_name = str(group.get("name") or "ssh")
    with batch_client(ctx) as client:
        if replace and group_name in {s.name for s in client.list_node_sources()}:
            client.update_node_source(group_name, group)
        else:
            client.create_node_source(group)
        source = client.get_node_source(group_name)
    _show(source, json_out)


@app.command("list")
def list_sources(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the registered SSH host groups."""
    with batch_client(ctx) as client:
        sources = client.list_node_sources()
    if json_out:
        print_json([s.to_wire() for s in sources])
        return
    rows = [
        [
            s.name,
            s.node_agent_sku_id,
            len(s.host_group.get("hosts") or []),
            len(s.hosts_in_use),
            s.host_group.get("vm_size"),
            s.last_modified,
        ]
        for s in sources
    ]
    stdout_console().print(
        list_table(
            "Node sources",
            ["Name", "Node agent SKU", "Hosts", "In use", "VM size", "Last modified"],
            rows,
        )
    )


@app.command("show")
def show_source(ctx: typer.Context, name: Name, json_out: JsonOption = False) -> None:
    """Show one registered SSH host group and which hosts its nodes use."""
    with batch_client(ctx) as client:
        source = client.get_node_source(name)
    _show(source, json_out)


@app.command("delete")
def delete_source(ctx: typer.Context, name: Name, json_out: JsonOption = False) -> None:
    """Forget an SSH host group (refused while a pool uses it)."""
    with batch_client(ctx) as client:
        client.delete_node_source(name)
    if json_out:
        print_json({"name": name, "deleted": True})
    else:
        stdout_console().print(f"Deleted node source [bold]{name}[/bold].", highlight=False)
