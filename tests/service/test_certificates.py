"""Certificates (Azure's deprecated ``/certificates``): adding, reading and deleting them, and a
pool's ``certificateReferences`` installing them on its nodes before the start task.

Bad certificates are refused naming the property and leave nothing stored; a certificate a pool
references or a node has installed cannot be deleted (``deletefailed``, as in Azure) until the
reference is gone and the node rebooted, or its deletion is cancelled.
"""

from __future__ import annotations

import base64
import json
import shlex
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from prefect_batch import BatchClient
from prefect_batch.exceptions import (
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
)
from prefect_batch.store.schema import certificates
from prefect_batch.testing import wait_for_nodes, wait_for_task, wait_until
from prefect_batch.testing.certificates import TestCertificate, make_certificate

from .test_confinement import PROBE, needs_landlock


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


@pytest.fixture(scope="module")
def cert() -> TestCertificate:
    return make_certificate("module-cert")


def _thumbprints(client: BatchClient) -> set[str]:
    return {c.thumbprint for c in client.list_certificates()}


@pytest.mark.parametrize("form", ["pfx", "cer-der", "cer-pem"])
def test_add_get_list_delete_each_format(client: BatchClient, form: str) -> None:
    c = make_certificate(form)
    body = c.pfx_body() if form == "pfx" else c.cer_body(pem=form == "cer-pem")
    # Azure's thumbprints are often pasted with spaces and in upper case.
    spaced = " ".join(c.thumbprint[i : i + 2] for i in range(0, 40, 2)).upper()
    client.create_certificate({**body, "thumbprint": spaced})
    got = client.get_certificate(c.thumbprint.upper())
    assert got.thumbprint == c.thumbprint
    assert got.thumbprint_algorithm == "sha1"
    assert got.state == "active" and got.previous_state is None
    assert base64.b64decode(got.public_data or "") == c.der
    assert got.url and got.url.endswith(
        f"/certificates(thumbprintAlgorithm=sha1,thumbprint={c.thumbprint})"
    )
    wire = got.to_wire()
    assert "data" not in wire and "password" not in wire
    assert c.thumbprint in _thumbprints(client)
    with pytest.raises(BatchConflictError) as exc:
        client.create_certificate(body)
    assert exc.value.code == "CertificateExists"
    client.delete_certificate(c.thumbprint)
    with pytest.raises(BatchNotFoundError) as missing:
        client.get_certificate(c.thumbprint)
    assert missing.value.code == "CertificateNotFound"
    assert c.thumbprint not in _thumbprints(client)


def test_private_parts_are_stored_sealed(client: BatchClient) -> None:
    c = make_certificate("sealed")
    client.create_certificate(c.pfx_body())
    with client.store.read() as conn:
        row = conn.execute(
            select(certificates).where(certificates.c.thumbprint == c.thumbprint)
        ).one()
    stored = repr(tuple(row))
    assert c.password not in stored
    assert base64.b64encode(c.pfx).decode() not in stored
    assert "PRIVATE KEY" not in stored
    client.delete_certificate(c.thumbprint)


def _refused(client: BatchClient, body: dict, field: str, thumbprint: str) -> str:
    before = _thumbprints(client)
    with pytest.raises(BatchInvalidRequestError) as exc:
        client.create_certificate(body)
    assert exc.value.values.get("PropertyName") == field, exc.value.values
    assert _thumbprints(client) == before
    with pytest.raises(BatchNotFoundError):
        client.get_certificate(thumbprint)
    return str(exc.value)


def test_bad_certificates_are_refused_naming_the_field(client: BatchClient) -> None:
    c = make_certificate("bad")
    tp = c.thumbprint
    message = _refused(client, c.pfx_body(password="wrong"), "password", tp)
    assert "wrong" not in message  # the password is never shown
    _refused(client, c.pfx_body(password=None), "password", tp)
    _refused(client, c.pfx_body(thumbprint="0" * 40), "thumbprint", "0" * 40)
    _refused(client, c.cer_body(thumbprint="ab" * 20), "thumbprint", "ab" * 20)
    _refused(client, c.pfx_body(thumbprint="xyz"), "thumbprint", tp)
    garbage = base64.b64encode(b"not a certificate at all").decode()
    _refused(client, c.pfx_body(data=garbage), "data", tp)
    _refused(client, c.cer_body(data=garbage), "data", tp)
    _refused(client, c.cer_body(data="%%% not base64 %%%"), "data", tp)
    _refused(client, c.cer_body(password="x"), "password", tp)
    big = base64.b64encode(b"\x30" * (10 * 1024 + 1)).decode()
    _refused(client, c.cer_body(data=big), "data", tp)
    with pytest.raises(BatchInvalidRequestError):
        client.create_certificate(c.cer_body(thumbprintAlgorithm="sha256"))
    assert tp not in _thumbprints(client)


def test_pool_references_must_name_active_certificates(client: BatchClient) -> None:
    unknown = "12" * 20
    with pytest.raises(BatchInvalidRequestError) as exc:
        client.create_pool(
            {
                "id": "cert-unknown",
                "vmSize": "local",
                "certificateReferences": [{"thumbprint": unknown, "thumbprintAlgorithm": "sha1"}],
            }
        )
    assert exc.value.values["PropertyName"] == "certificateReferences[0].thumbprint"
    assert not client.pool_exists("cert-unknown")


def test_delete_while_referenced_fails_then_cancel(client: BatchClient) -> None:
    c = make_certificate("in-use")
    client.create_certificate(c.cer_body())
    ref = {"thumbprint": c.thumbprint, "thumbprintAlgorithm": "sha1"}
    client.create_pool({"id": "cert-ref", "vmSize": "local", "certificateReferences": [ref]})
    assert client.get_pool("cert-ref").certificate_references[0].thumbprint == c.thumbprint

    client.delete_certificate(c.thumbprint)
    got = client.get_certificate(c.thumbprint)
    assert got.state == "deletefailed" and got.previous_state == "deleting"
    error = got.delete_certificate_error
    assert error is not None and error.code
    assert {(v.name, v.value) for v in error.values or []} == {("PoolId", "cert-ref")}

    # While its deletion failed it cannot be referenced anew, nor added again.
    with pytest.raises(BatchConflictError) as exc:
        client.create_pool({"id": "cert-ref2", "vmSize": "local", "certificateReferences": [ref]})
    assert exc.value.code == "CertificateBeingDeleted"
    assert not client.pool_exists("cert-ref2")
    with pytest.raises(BatchConflictError) as again:
        client.create_certificate(c.cer_body())
    assert again.value.code == "CertificateBeingDeleted"

    client.cancel_certificate_deletion(c.thumbprint)
    got = client.get_certificate(c.thumbprint)
    assert got.state == "active" and got.previous_state == "deletefailed"
    assert got.delete_certificate_error is None
    with pytest.raises(BatchConflictError) as active:
        client.cancel_certificate_deletion(c.thumbprint)
    assert active.value.code == "CertificateStateActive"

    # The reference goes (PATCH with an empty list): now it can be deleted.
    client.update_pool("cert-ref", {"certificateReferences": []})
    assert not client.get_pool("cert-ref").certificate_references
    client.delete_certificate(c.thumbprint)
    with pytest.raises(BatchNotFoundError):
        client.get_certificate(c.thumbprint)
    client.delete_pool("cert-ref")


def _check_certs(tp: str, *, present: bool) -> str:
    """A shell script that exits 0 when the node's certificate files are (not) there."""
    d = '"$AZ_BATCH_CERTIFICATES_DIR"'
    if not present:
        return f'test -n "$AZ_BATCH_CERTIFICATES_DIR" && test ! -e {d}/{tp}.pem'
    return (
        f"test -f {d}/{tp}.pfx && test -f {d}/{tp}.pem && "
        f'test "$(stat -c %a {d}/{tp}.pem)" = 600 && test "$(stat -c %a {d})" = 700 && '
        f"grep -q 'PRIVATE KEY' {d}/{tp}.pem"
    )


def test_certificates_installed_before_the_start_task_and_on_new_nodes(
    client: BatchClient, make_job: Callable[..., str], cert: TestCertificate, tmp_path: Path
) -> None:
    client.create_certificate(cert.pfx_body())
    pool = "cert-nodes"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "certificateReferences": [
                {"thumbprint": cert.thumbprint, "thumbprintAlgorithm": "sha1"}
            ],
            # Fails (node starttaskfailed) unless the files are there when it runs.
            "startTask": {"commandLine": _sh(_check_certs(cert.thumbprint, present=True))},
        }
    )
    (first,) = wait_for_nodes(client, pool, 1, timeout=60)
    assert first.start_task_info.exit_code == 0

    # The use case: a secret encrypted with the certificate's public key travels on the
    # command line; the task decrypts it with the installed private key.
    secret = b"the launch code is 0000"
    blob = base64.b64encode(cert.encrypt(secret)).decode()
    decrypt = (
        f"echo {blob} | base64 -d | openssl pkeyutl -decrypt "
        f'-inkey "$AZ_BATCH_CERTIFICATES_DIR/{cert.thumbprint}.pem" '
        "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256"
    )
    job = make_job(pool)
    client.create_task(job, {"id": "decrypt", "commandLine": _sh(decrypt)})
    task = wait_for_task(client, job, "decrypt", timeout=60)
    err = client.get_task_file(job, "decrypt", "stderr.txt").decode()
    assert task.execution_info.exit_code == 0, err
    assert client.get_task_file(job, "decrypt", "stdout.txt") == secret

    # A node that joins later gets them too (before its start task).
    client.resize_pool(pool, {"targetDedicatedNodes": 2})
    nodes = wait_for_nodes(client, pool, 2, timeout=60)
    assert all(n.start_task_info.exit_code == 0 for n in nodes)

    # Installed on nodes: its deletion fails, naming the pool and the nodes.
    client.delete_certificate(cert.thumbprint)
    error = client.get_certificate(cert.thumbprint).delete_certificate_error
    users = {(v.name, v.value) for v in error.values or []}
    assert ("PoolId", pool) in users
    assert {n.id for n in nodes} <= {v for k, v in users if k == "NodeId"}
    client.cancel_certificate_deletion(cert.thumbprint)

    # Azure: a removed reference leaves existing nodes until they reboot.
    client.update_pool(pool, {"certificateReferences": [], "startTask": {}})
    client.delete_certificate(cert.thumbprint)
    still = client.get_certificate(cert.thumbprint).delete_certificate_error
    assert {v.name for v in still.values or []} == {"NodeId"}
    client.cancel_certificate_deletion(cert.thumbprint)
    for n in nodes:
        client.reboot_node(pool, n.id)
    wait_until(
        lambda: (
            len(
                [
                    n
                    for n in client.list_nodes(pool)
                    if n.state == "idle"
                    and n.last_boot_time
                    and n.last_boot_time > first.last_boot_time
                ]
            )
            == 2
        ),
        timeout=60,
        message="both nodes rebooted",
    )
    client.delete_certificate(cert.thumbprint)
    with pytest.raises(BatchNotFoundError):
        client.get_certificate(cert.thumbprint)
    client.delete_pool(pool)


def test_visibility_task_only_hides_them_from_the_start_task(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    c = make_certificate("task-only")
    client.create_certificate(c.pfx_body())
    pool = "cert-vis"
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "certificateReferences": [
                {"thumbprint": c.thumbprint, "thumbprintAlgorithm": "sha1", "visibility": ["task"]}
            ],
            "startTask": {"commandLine": _sh(_check_certs(c.thumbprint, present=False))},
        }
    )
    (node,) = wait_for_nodes(client, pool, 1, timeout=60)
    assert node.start_task_info.exit_code == 0
    job = make_job(pool)
    client.create_task(
        job, {"id": "sees", "commandLine": _sh(_check_certs(c.thumbprint, present=True))}
    )
    task = wait_for_task(client, job, "sees", timeout=60)
    assert task.execution_info.exit_code == 0, client.get_task_file(job, "sees", "stderr.txt")
    # Each task has its own copy, in its own directory.
    props = client.get_task_file_properties(job, "sees", f"certs/{c.thumbprint}.pem")
    assert stat.S_IMODE(int(props.properties.file_mode, 0)) == 0o600
    client.delete_pool(pool)


@needs_landlock
def test_confined_tasks_read_their_pools_certificates_and_no_other(
    client_factory: Callable[..., BatchClient], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    a = client_factory(home, confine_tasks=True)
    c = make_certificate("confined")
    a.create_certificate(c.pfx_body())
    ref = {"thumbprint": c.thumbprint, "thumbprintAlgorithm": "sha1"}
    a.create_pool(
        {
            "id": "holder",
            "vmSize": "local",
            "targetDedicatedNodes": 1,
            "certificateReferences": [ref],
        }
    )
    a.create_pool({"id": "other", "vmSize": "local", "targetDedicatedNodes": 1})
    blob = base64.b64encode(c.encrypt(b"confined secret")).decode()
    a.create_job({"id": "hj", "poolInfo": {"poolId": "holder"}})
    decrypt = (
        f"echo {blob} | base64 -d | openssl pkeyutl -decrypt "
        f'-inkey "$AZ_BATCH_CERTIFICATES_DIR/{c.thumbprint}.pem" '
        "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256"
    )
    a.create_task("hj", {"id": "dec", "commandLine": _sh(decrypt)})
    done = wait_for_task(a, "hj", "dec", timeout=60)
    assert done.execution_info.exit_code == 0, a.get_task_file("hj", "dec", "stderr.txt")
    assert a.get_task_file("hj", "dec", "stdout.txt") == b"confined secret"

    root = home / "nodes" / done.node_info.node_id
    targets = {
        "node_set": str(root / ".agent" / "certs" / "task" / f"{c.thumbprint}.pem"),
        "task_copy": str(root / "hj" / "dec" / "certs" / f"{c.thumbprint}.pem"),
    }
    assert all(Path(p).is_file() for p in targets.values())
    probe = {"commandLine": f"{sys.executable} -c '{PROBE}' '{json.dumps(targets)}'"}
    # A task of another pool of the account, and one of another account: neither reads them.
    a.create_job({"id": "oj", "poolInfo": {"poolId": "other"}})
    a.create_task("oj", {"id": "probe", **probe})
    b = BatchClient("accountb", home=home, engine=False, settings=a.settings)
    try:
        b.create_pool({"id": "bpool", "vmSize": "local", "targetDedicatedNodes": 1})
        b.create_job({"id": "bj", "poolInfo": {"poolId": "bpool"}})
        b.create_task("bj", {"id": "probe", **probe})
        for client, job in ((a, "oj"), (b, "bj")):
            ended = wait_for_task(client, job, "probe", timeout=60)
            assert ended.execution_info.exit_code == 0, ended.execution_info
            found = json.loads(client.get_task_file(job, "probe", "stdout.txt"))
            assert found == {"node_set": "PermissionError", "task_copy": "PermissionError"}
    finally:
        b.close()
