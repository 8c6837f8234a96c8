"""``prefect-batch certificate ...``: add, list, show, delete certificates (Azure's deprecated
certificates) and cancel a failed deletion.

``certificate add FILE`` reads a PFX (``.pfx``/``.p12``, with ``--password`` or
``PREFECT_BATCH_CERTIFICATE_PASSWORD``) or a CER (DER or PEM); the thumbprint is computed from
the file unless ``--thumbprint`` gives it (the service checks it either way). Pools install a
certificate on their nodes through ``certificateReferences`` (see ``pool create --file``).
"""

from __future__ import annotations

import base64
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
from prefect_batch.models import BatchCertificate

__all__ = ["app"]

app = typer.Typer(
    help="Certificates pools install on their nodes (deprecated by Azure).",
    no_args_is_help=True,
)

Thumbprint = Annotated[
    str, typer.Argument(metavar="THUMBPRINT", help="The SHA-1 thumbprint.", show_default=False)
]


def _thumbprint_of(raw: bytes, fmt: str, password: str | None) -> str:
    """The SHA-1 thumbprint of a certificate file (the service checks it again)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.serialization import pkcs12

    try:
        if fmt == "pfx":
            _key, cert, _ = pkcs12.load_key_and_certificates(
                raw, password.encode() if password else None
            )
        elif raw.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(raw)
        else:
            cert = x509.load_der_x509_certificate(raw)
    except ValueError as exc:
        raise typer.BadParameter(
            f"cannot read the {fmt} file (a wrong password?)", param_hint="FILE"
        ) from exc
    if cert is None:
        raise typer.BadParameter("the PFX file holds no certificate", param_hint="FILE")
    return cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - Azure's thumbprint is SHA-1


def _show(cert: BatchCertificate, json_out: bool) -> None:
    wire = cert.to_wire()
    if json_out:
        print_json(wire)
    else:
        wire.pop("publicData", None)
        stdout_console().print(resource_table(f"Certificate {cert.thumbprint}", wire))


@app.command("add")
def add_certificate(
    ctx: typer.Context,
    file: Annotated[
        Path,
        typer.Argument(exists=True, dir_okay=False, help="A .pfx/.p12 or .cer/.pem file."),
    ],
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="pfx or cer (default: from the file's extension)."),
    ] = None,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            envvar="PREFECT_BATCH_CERTIFICATE_PASSWORD",
            help="The PFX file's password (or PREFECT_BATCH_CERTIFICATE_PASSWORD).",
            show_default=False,
        ),
    ] = None,
    thumbprint: Annotated[
        str | None, typer.Option("--thumbprint", help="The SHA-1 thumbprint (default: computed).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Add a certificate to the account."""
    if fmt is None:
        fmt = "pfx" if file.suffix.lower() in (".pfx", ".p12") else "cer"
    if fmt not in ("pfx", "cer"):
        raise typer.BadParameter("pfx or cer", param_hint="--format")
    raw = file.read_bytes()
    tp = thumbprint or _thumbprint_of(raw, fmt, password)
    body: dict[str, Any] = {
        "thumbprint": tp,
        "thumbprintAlgorithm": "sha1",
        "data": base64.b64encode(raw).decode("ascii"),
        "certificateFormat": fmt,
    }
    if password and fmt == "pfx":
        body["password"] = password
    with batch_client(ctx) as client:
        client.create_certificate(body)
        cert = client.get_certificate(tp)
    _show(cert, json_out)


@app.command("list")
def list_certificates(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """List the account's certificates."""
    with batch_client(ctx) as client:
        certs = client.list_certificates()
    if json_out:
        print_json([c.to_wire() for c in certs])
        return
    rows = [
        [
            c.thumbprint,
            c.state.value if c.state else None,
            c.state_transition_time,
            c.delete_certificate_error.message if c.delete_certificate_error else None,
        ]
        for c in certs
    ]
    stdout_console().print(
        list_table("Certificates", ["Thumbprint", "State", "Since", "Delete error"], rows)
    )


@app.command("show")
def show_certificate(
    ctx: typer.Context, thumbprint: Thumbprint, json_out: JsonOption = False
) -> None:
    """Show one certificate (its public part)."""
    with batch_client(ctx) as client:
        cert = client.get_certificate(thumbprint)
    _show(cert, json_out)


@app.command("delete")
def delete_certificate(
    ctx: typer.Context, thumbprint: Thumbprint, json_out: JsonOption = False
) -> None:
    """Delete a certificate (while pools or nodes use it the deletion fails: deletefailed)."""
    with batch_client(ctx) as client:
        client.delete_certificate(thumbprint)
        remaining = {c.thumbprint: c for c in client.list_certificates()}
    tp = "".join(thumbprint.split()).lower()
    left = remaining.get(tp)
    if json_out:
        print_json(left.to_wire() if left else {"thumbprint": tp, "deleted": True})
    elif left is None:
        stdout_console().print(f"Deleted certificate [bold]{tp}[/bold].", highlight=False)
    else:
        message = left.delete_certificate_error.message if left.delete_certificate_error else ""
        stdout_console().print(
            f"Certificate {tp} is {left.state.value}: {message}", highlight=False
        )
        raise typer.Exit(1)


@app.command("cancel-delete")
def cancel_delete(ctx: typer.Context, thumbprint: Thumbprint, json_out: JsonOption = False) -> None:
    """Return a certificate whose deletion failed to active."""
    with batch_client(ctx) as client:
        client.cancel_certificate_deletion(thumbprint)
        cert = client.get_certificate(thumbprint)
    _show(cert, json_out)
