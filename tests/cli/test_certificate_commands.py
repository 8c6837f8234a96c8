"""``prefect-batch certificate ...``: add a PFX and a CER file, list, show, delete, and a deletion
that fails while a pool references the certificate."""

from __future__ import annotations

import json
from pathlib import Path

from prefect_batch.testing.certificates import make_certificate

from .conftest import Invoke


def test_add_list_show_delete(cli: Invoke, tmp_path: Path) -> None:
    pfx = make_certificate("cli-pfx")
    cer = make_certificate("cli-cer")
    (tmp_path / "a.pfx").write_bytes(pfx.pfx)
    (tmp_path / "b.pem").write_bytes(cer.pem)

    wrong = cli("certificate", "add", str(tmp_path / "a.pfx"), "--password", "nope", expect=2)
    assert "nope" not in wrong.stdout + wrong.stderr
    added = json.loads(
        cli(
            "certificate", "add", str(tmp_path / "a.pfx"), "--password", pfx.password, "--json"
        ).stdout
    )
    assert added["thumbprint"] == pfx.thumbprint and added["state"] == "active"
    cli("certificate", "add", str(tmp_path / "b.pem"))
    again = cli("certificate", "add", str(tmp_path / "b.pem"), expect=1)
    assert "CertificateExists" in again.stderr
    bad = cli("certificate", "add", str(tmp_path / "b.pem"), "--thumbprint", "ab" * 20, expect=1)
    assert "InvalidPropertyValue" in bad.stderr and "thumbprint" in bad.stderr

    listed = cli("certificate", "list").stdout
    assert pfx.thumbprint in listed and cer.thumbprint in listed
    shown = json.loads(cli("certificate", "show", cer.thumbprint.upper(), "--json").stdout)
    assert shown["thumbprint"] == cer.thumbprint

    pool = tmp_path / "pool.json"
    ref = {"thumbprint": cer.thumbprint, "thumbprintAlgorithm": "sha1"}
    pool.write_text(json.dumps({"id": "p", "vmSize": "local", "certificateReferences": [ref]}))
    cli("pool", "create", "--file", str(pool))
    failed = cli("certificate", "delete", cer.thumbprint, expect=1)
    assert "deletefailed" in failed.stdout and "p" in failed.stdout
    restored = json.loads(cli("certificate", "cancel-delete", cer.thumbprint, "--json").stdout)
    assert restored["state"] == "active"

    cli("certificate", "delete", pfx.thumbprint)
    missing = cli("certificate", "show", pfx.thumbprint, expect=1)
    assert "CertificateNotFound" in missing.stderr
    assert pfx.thumbprint not in cli("certificate", "list").stdout
