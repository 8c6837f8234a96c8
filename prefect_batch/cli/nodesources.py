"""``prefect-batch nodesource ...``: register, list, show and delete node sources.

A registered source is one pools can name (``batch.node.ssh.<name>``,
``batch.node.ec2.<name>``; see ``pool images``). ``nodesource ssh add --file group.yaml`` reads
a YAML (or JSON) document with the fields of an SSH host group::

    name: lab
    user: batch
    private_key_path: ~/.ssh/batch_ed25519     # or private_key_secret_name: <Secret block>
    vm_size: lab-8core
    hosts:
      - {address: 10.0.0.11, host_key: "ssh-ed25519 AAAA..."}
      - {address: 10.0.0.12, host_key: "ssh-ed25519 AAAA..."}

``nodesource ec2 add --file template.yaml`` reads an EC2 template (camelCase fields, as the
REST resource)::

    name: burst
    amiId: ami-0123456789abcdef0
    instanceType: c6i.large
    regionName: eu-west-1
    subnetIds: [subnet-a, subnet-b]
    keyPairName: batch
    privateKeyPath: ~/.ssh/batch.pem          # or privateKeySecretName: <Secret block>
    knownHosts: ~/.ssh/known_hosts

Key text is refused: a source names a key file on the engine's machine or a Prefect Secret
block. Like every command here these only change the database (an EC2 template is checked
against EC2 first); an engine connects to the hosts and launches the instances.
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

app = typer.Typer(
    help="Node sources pools take nodes from: SSH host groups, EC2 templates.",
    no_args_is_help=True,
)
ssh_app = typer.Typer(help="SSH host groups.", no_args_is_help=True)
app.add_typer(ssh_app, name="ssh")
ec2_app = typer.Typer(help="EC2 templates.", no_args_is_help=True)
app.add_typer(ec2_app, name="ec2")

Name = Annotated[str, typer.Argument(metavar="NAME", help="The source's name.", show_default=False)]
FileOption = Annotated[
    Path,
    typer.Option("--file", exists=True, dir_okay=False, help="The source: YAML or JSON."),
]
NameOption = Annotated[
    str | None, typer.Option("--name", help="The source's name (overrides the file's).")
]
ReplaceOption = Annotated[
    bool, typer.Option("--replace", help="Replace the source if it is registered already.")
]


def read_group(path: Path) -> dict[str, Any]:
    """The node source document in ``path`` (YAML or JSON)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc}", param_hint="--file") from exc
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path} is not YAML: {exc}", param_hint="--file") from exc
    if not isinstance(doc, dict):
        raise typer.BadParameter(
            "the file must hold a mapping of the source's fields", param_hint="--file"
        )
    return doc


def _show(source: BatchNodeSource, json_out: bool) -> None:
    if json_out:
        print_json(source.to_wire())
    else:
        stdout_console().print(resource_table(f"Node source {source.name}", source.to_wire()))


def _register(
    ctx: typer.Context, doc: dict[str, Any], name: str | None, replace: bool, json_out: bool
) -> None:
    if name is not None:
        doc["name"] = name
    source_name = str(doc.get("name") or "")
    with batch_client(ctx) as client:
        if replace and source_name in {s.name for s in client.list_node_sources()}:
            client.update_node_source(source_name, doc)
        else:
            client.create_node_source(doc)
        source = client.get_node_source(source_name)
    _show(source, json_out)


@ssh_app.command("add")
def add_ssh_group(
    ctx: typer.Context,
    file: FileOption,
    name: NameOption = None,
    replace: ReplaceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Register an SSH host group (pools then name batch.node.ssh.<name>)."""
    _register(ctx, read_group(file), name, replace, json_out)


@ec2_app.command("add")
def add_ec2_template(
    ctx: typer.Context,
    file: FileOption,
    name: NameOption = None,
    replace: ReplaceOption = False,
    json_out: JsonOption = False,
) -> None:
    """Register an EC2 template (pools then name batch.node.ec2.<name>)."""
    _register(ctx, {**read_group(file), "kind": "ec2"}, name, replace, json_out)


@app.command("list")
def list_sources(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the registered node sources."""
    with batch_client(ctx) as client:
        sources = client.list_node_sources()
    if json_out:
        print_json([s.to_wire() for s in sources])
        return
    rows = []
    for s in sources:
        fields = s.host_group or s.spec or {}
        hosts = fields.get("hosts")
        rows.append(
            [
                s.name,
                s.kind,
                s.node_agent_sku_id,
                len(hosts) if hosts is not None else "-",
                len(s.hosts_in_use),
                fields.get("vm_size") or fields.get("instanceType"),
                s.last_modified,
            ]
        )
    stdout_console().print(
        list_table(
            "Node sources",
            ["Name", "Kind", "Node agent SKU", "Hosts", "In use", "VM size", "Last modified"],
            rows,
        )
    )


@app.command("show")
def show_source(ctx: typer.Context, name: Name, json_out: JsonOption = False) -> None:
    """Show one registered node source (and, for a host group, which hosts its nodes use)."""
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
