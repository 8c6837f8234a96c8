"""Certificates inside a caller's transaction: parsing what a client adds, sealing it, checking a
pool's references, and the files a node gets.

A certificate is parsed with ``cryptography`` when it is added (a PFX with its password, or a CER
in DER or PEM), its SHA-1 thumbprint computed and compared with the one given, and what a node
needs — the certificate (DER), its private key (PKCS #8) and, for a PFX, the file as given — is
kept sealed in the ``certificates`` table with the store's sealing key (Fernet, as sealed
environment settings are: :mod:`~prefect_batch.service.rows.sealing`). The password is never
kept, and no answer returns the key.

What a node has installed is recorded per node and boot in ``node_certificates``: the pool's
references when the node booted. As in Azure, a change to a pool's references reaches a node
when it joins, reboots or is reimaged, and a certificate installed on a node cannot be deleted.

What this module does not do: send anything to nodes (the engine does) or answer requests.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select

from prefect_batch.exceptions import BatchConflictError, invalid_property
from prefect_batch.models.certificate import CERTIFICATE_DATA_MAX_BYTES
from prefect_batch.service.rows.sealing import fernet
from prefect_batch.store.schema import certificates, node_certificates, nodes, pools

__all__ = [
    "ALL_VISIBILITY",
    "ParsedCertificate",
    "certificate_row",
    "check_references",
    "install_request",
    "node_references",
    "normalize_thumbprint",
    "parse_certificate",
    "users_of",
]

ALL_VISIBILITY = ("starttask", "task", "remoteuser")
"""Who may use a certificate on a node when its reference names nobody (Azure: everyone)."""
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class ParsedCertificate:
    """A certificate as the service keeps it."""

    thumbprint: str
    format: str
    public_data: str  # the certificate, DER, base64
    sealed: str  # Fernet token of the node's files


def normalize_thumbprint(value: str, field: str = "thumbprint") -> str:
    """``value`` without spaces, lower case; refused unless it is 40 hex digits (SHA-1)."""
    tp = "".join(str(value).split()).lower()
    if not _HEX40.match(tp):
        raise invalid_property(field, value, "a SHA-1 thumbprint is 40 hexadecimal digits")
    return tp


def parse_certificate(
    conn: Any, *, thumbprint: str, data: str, fmt: str | None, password: str | None
) -> ParsedCertificate:
    """Parse, check and seal an added certificate.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``thumbprint``, ``data``,
            ``certificateFormat`` or ``password`` (never showing the password or the data).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.serialization import pkcs12

    tp = normalize_thumbprint(thumbprint)
    fmt = fmt or "pfx"
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_property("data", "(not shown)", "not base64") from None
    if not raw:
        raise invalid_property("data", "(not shown)", "empty")
    if len(raw) > CERTIFICATE_DATA_MAX_BYTES:
        raise invalid_property(
            "data", "(not shown)", f"more than {CERTIFICATE_DATA_MAX_BYTES} bytes decoded"
        )
    key_pem: bytes | None = None
    if fmt == "pfx":
        try:
            key, cert, _extra = pkcs12.load_key_and_certificates(
                raw, password.encode("utf-8") if password else None
            )
        except ValueError as exc:
            # cryptography does not tell a wrong password from a damaged file.
            if _is_pkcs12(raw):
                reason = (
                    "the PFX file cannot be opened with this password"
                    if password
                    else "the PFX file is protected by a password; give it"
                )
                raise invalid_property("password", "(not shown)", reason) from exc
            raise invalid_property(
                "data", "(not shown)", "not a PFX (PKCS #12) file, or it needs a password"
            ) from exc
        if cert is None:
            raise invalid_property("data", "(not shown)", "the PFX file holds no certificate")
        if key is not None:
            key_pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    else:
        if password:
            raise invalid_property("password", "(not shown)", "only a pfx certificate has one")
        try:
            if raw.lstrip().startswith(b"-----BEGIN"):
                cert = x509.load_pem_x509_certificate(raw)
            else:
                cert = x509.load_der_x509_certificate(raw)
        except ValueError as exc:
            raise invalid_property(
                "data", "(not shown)", "not a CER file (an X.509 certificate, DER or PEM)"
            ) from exc
    der = cert.public_bytes(serialization.Encoding.DER)
    actual = cert.fingerprint(hashes.SHA1()).hex()  # noqa: S303 - Azure's thumbprint is SHA-1
    if actual != tp:
        raise invalid_property(
            "thumbprint", thumbprint, f"the certificate's SHA-1 thumbprint is {actual}"
        )
    files = {
        "der": base64.b64encode(der).decode("ascii"),
        "key_pem": key_pem.decode("ascii") if key_pem else None,
        "pfx": base64.b64encode(raw).decode("ascii") if fmt == "pfx" else None,
    }
    token = fernet(conn).encrypt(json.dumps(files).encode("utf-8")).decode("ascii")
    return ParsedCertificate(
        thumbprint=tp, format=fmt, public_data=files["der"] or "", sealed=token
    )


def _is_pkcs12(raw: bytes) -> bool:
    """Whether ``raw`` looks like a PKCS #12 file (a DER SEQUENCE starting with version 3)."""
    return len(raw) > 8 and raw[0] == 0x30 and b"\x02\x01\x03" in raw[:8]


def certificate_row(conn: Any, account: str, thumbprint: str) -> Any:
    """The account's certificate of ``thumbprint`` (normalized), or None."""
    return conn.execute(
        select(certificates).where(
            certificates.c.account == account, certificates.c.thumbprint == thumbprint
        )
    ).one_or_none()


def check_references(
    conn: Any, account: str, refs: list[dict[str, Any]] | None, field: str
) -> list[dict[str, Any]] | None:
    """A pool's ``certificateReferences`` with normalized thumbprints, each an active certificate.

    Raises:
        BatchInvalidRequestError: A thumbprint is malformed or names no certificate.
        BatchConflictError: ``CertificateBeingDeleted``.
    """
    if refs is None:
        return None
    out = []
    seen: set[str] = set()
    for i, ref in enumerate(refs):
        tp = normalize_thumbprint(ref.get("thumbprint", ""), f"{field}[{i}].thumbprint")
        if tp in seen:
            raise invalid_property(f"{field}[{i}].thumbprint", tp, "referenced twice")
        seen.add(tp)
        row = certificate_row(conn, account, tp)
        if row is None:
            raise invalid_property(
                f"{field}[{i}].thumbprint", tp, "the account has no such certificate"
            )
        if row.state != "active":
            raise BatchConflictError(
                "CertificateBeingDeleted",
                f"The certificate {tp} is being deleted ({row.state}) and cannot be referenced.",
                {"Thumbprint": tp, "ThumbprintAlgorithm": "sha1"},
            )
        out.append({**ref, "thumbprint": tp})
    return out


def users_of(conn: Any, account: str, thumbprint: str) -> list[tuple[str, str]]:
    """(``PoolId`` | ``NodeId``, id) of the pools that reference the certificate and the nodes
    that have it installed (at most 100, pools first)."""
    found: list[tuple[str, str]] = []
    for row in conn.execute(
        select(pools.c.id, pools.c.spec).where(pools.c.account == account).order_by(pools.c.pk)
    ).all():
        if any(r.get("thumbprint") == thumbprint for r in _refs(row.spec)):
            found.append(("PoolId", row.id))
    for row in conn.execute(
        select(nodes.c.node_id, node_certificates.c.refs)
        .join(node_certificates, node_certificates.c.node_pk == nodes.c.pk)
        .where(nodes.c.account == account)
        .order_by(nodes.c.pk)
    ).all():
        if any(r.get("thumbprint") == thumbprint for r in row.refs or []):
            found.append(("NodeId", row.node_id))
    return found[:100]


def _refs(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    return list((spec or {}).get("certificateReferences") or [])


def node_references(
    conn: Any, node_pk: int, boot_id: int, pool_spec: dict[str, Any] | None
) -> tuple[list[dict[str, Any]], bool]:
    """The references a node has for this boot — those recorded when it booted, or the pool's
    now (recorded) when it (re)booted since — and whether it had any before (to remove)."""
    row = conn.execute(
        select(node_certificates).where(node_certificates.c.node_pk == node_pk)
    ).one_or_none()
    had = bool(row is not None and row.refs)
    if row is not None and row.boot_id == boot_id:
        return list(row.refs or []), had
    refs = [
        {"thumbprint": r["thumbprint"], "visibility": list(r.get("visibility") or ALL_VISIBILITY)}
        for r in _refs(pool_spec)
    ]
    conn.execute(delete(node_certificates).where(node_certificates.c.node_pk == node_pk))
    conn.execute(insert(node_certificates).values(node_pk=node_pk, boot_id=boot_id, refs=refs))
    return refs, had


def install_request(conn: Any, account: str, refs: list[dict[str, Any]]) -> dict[str, Any]:
    """The agent's ``certs`` request for ``refs``: every file, by who may read it.

    A certificate deleted meanwhile (it cannot be while installed, but a store may be edited)
    is left out.
    """
    box = fernet(conn)
    out = []
    for ref in refs:
        row = certificate_row(conn, account, ref["thumbprint"])
        if row is None:
            continue
        files = json.loads(box.decrypt(row.sealed.encode("ascii")))
        tp = row.thumbprint
        pem = _pem_certificate(files["der"])
        entry: dict[str, str] = {}
        if files.get("pfx"):
            entry[f"{tp}.pfx"] = files["pfx"]
        else:
            entry[f"{tp}.cer"] = files["der"]
        text = (files.get("key_pem") or "") + pem
        entry[f"{tp}.pem"] = base64.b64encode(text.encode("ascii")).decode("ascii")
        out.append({"thumbprint": tp, "visibility": ref["visibility"], "files": entry})
    return {"op": "certs", "certificates": out}


def _pem_certificate(der_b64: str) -> str:
    body = "\n".join(der_b64[i : i + 64] for i in range(0, len(der_b64), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
