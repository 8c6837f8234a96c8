"""``/certificates`` over signed REST requests, at today's api-version and at
``2024-07-01.20.0`` (the last Azure API with certificates), and through the remote client.

The server confines its tasks: a pool's task decrypts a secret with its installed certificate.
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Iterator

import pytest

from prefect_batch import BatchClient
from prefect_batch.api.context import LEGACY_CERTIFICATE_API_VERSION
from prefect_batch.exceptions import BatchConflictError, BatchInvalidRequestError
from prefect_batch.testing.certificates import make_certificate
from tests.api.conftest import Server, wait_for
from tests.api.test_auth import error, send

LEGACY = {"api-version": LEGACY_CERTIFICATE_API_VERSION}


def _one(tp: str) -> str:
    return f"/certificates(thumbprintAlgorithm=sha1,thumbprint={tp})"


@pytest.mark.parametrize("version", ["2025-06-01", LEGACY_CERTIFICATE_API_VERSION])
def test_certificate_lifecycle_over_rest(server: Server, version: str) -> None:
    params = {"api-version": version}
    c = make_certificate(f"rest-{version}")
    added = send(server, "POST", "/certificates", body=c.pfx_body(), params=params)
    assert added.status_code == 201, added.text
    assert added.headers["DataServiceId"].endswith(_one(c.thumbprint))

    again = send(server, "POST", "/certificates", body=c.pfx_body(), params=params)
    assert again.status_code == 409 and error(again)[0] == "CertificateExists"

    got = send(server, "GET", _one(c.thumbprint), params=params)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["thumbprint"] == c.thumbprint and body["state"] == "active"
    assert base64.b64decode(body["publicData"]) == c.der
    assert "data" not in body and "password" not in body
    assert body["odata.metadata"].endswith("$metadata#certificates/@Element")

    listed = send(server, "GET", "/certificates", params={**params, "$filter": "state eq 'active'"})
    assert listed.status_code == 200
    assert c.thumbprint in [item["thumbprint"] for item in listed.json()["value"]]

    cancel = send(server, "POST", _one(c.thumbprint) + "/canceldelete", params=params)
    assert cancel.status_code == 409 and error(cancel)[0] == "CertificateStateActive"

    gone = send(server, "DELETE", _one(c.thumbprint), params=params)
    assert gone.status_code == 202
    missing = send(server, "GET", _one(c.thumbprint), params=params)
    assert missing.status_code == 404 and error(missing)[0] == "CertificateNotFound"


def test_only_the_certificate_routes_answer_the_legacy_version(server: Server) -> None:
    response = send(server, "GET", "/pools", params=LEGACY)
    assert response.status_code == 400
    code, values = error(response)
    assert code == "InvalidQueryParameterValue" and values["QueryParameterName"] == "api-version"
    assert (
        send(server, "GET", "/certificates", params={"api-version": "2023-05-01.17.0"}).status_code
        == 400
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"password": "wrong"}, "password"),
        ({"thumbprint": "ab" * 20}, "thumbprint"),
        ({"data": base64.b64encode(b"garbage").decode()}, "data"),
        ({"data": "***"}, "data"),
        ({"certificateFormat": "pem"}, "certificateFormat"),
        ({"thumbprintAlgorithm": "sha256"}, "thumbprintAlgorithm"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    server: Server, change: dict[str, str], field: str
) -> None:
    c = make_certificate("bad-rest")
    response = send(server, "POST", "/certificates", body=c.pfx_body(**change), params=LEGACY)
    assert response.status_code == 400, response.text
    code, values = error(response)
    assert code == "InvalidPropertyValue" and values["PropertyName"] == field
    assert "wrong" not in response.text
    assert send(server, "GET", _one(c.thumbprint), params=LEGACY).status_code == 404


@pytest.fixture(scope="module")
def remote(server: Server) -> Iterator[BatchClient]:
    with BatchClient(server.account.name, url=server.url, account_key=server.account.primary) as c:
        yield c


def test_remote_client_and_a_confined_task_decrypting(server: Server, remote: BatchClient) -> None:
    c = make_certificate("remote")
    remote.create_certificate(c.cer_body(pem=True))
    remote.delete_certificate(c.thumbprint)
    assert c.thumbprint not in {x.thumbprint for x in remote.list_certificates()}
    with pytest.raises(BatchInvalidRequestError):
        remote.create_certificate(c.pfx_body(password="wrong"))

    remote.create_certificate(c.pfx_body())
    ref = {"thumbprint": c.thumbprint, "thumbprintAlgorithm": "sha1", "visibility": ["task"]}
    pool = {"id": "certpool", "vmSize": "local", "targetDedicatedNodes": 1}
    created = send(server, "POST", "/pools", body={**pool, "certificateReferences": [ref]})
    assert created.status_code == 201, created.text
    assert remote.get_pool("certpool").certificate_references[0].visibility == ["task"]

    blob = base64.b64encode(c.encrypt(b"over rest")).decode()
    script = (
        f"echo {blob} | base64 -d | openssl pkeyutl -decrypt "
        f'-inkey "$AZ_BATCH_CERTIFICATES_DIR/{c.thumbprint}.pem" '
        "-pkeyopt rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt rsa_mgf1_md:sha256"
    )
    remote.create_job({"id": "certjob", "poolInfo": {"poolId": "certpool"}})
    remote.create_task("certjob", {"id": "dec", "commandLine": "/bin/sh -c " + shlex.quote(script)})
    done = wait_for(
        lambda: (t := remote.get_task("certjob", "dec")).state == "completed" and t, timeout=90
    )
    assert done.execution_info.exit_code == 0, remote.get_task_file("certjob", "dec", "stderr.txt")
    assert remote.get_task_file("certjob", "dec", "stdout.txt") == b"over rest"

    remote.delete_certificate(c.thumbprint)
    failed = remote.get_certificate(c.thumbprint)
    assert failed.state == "deletefailed"
    names = {(v.name, v.value) for v in failed.delete_certificate_error.values or []}
    assert ("PoolId", "certpool") in names
    with pytest.raises(BatchConflictError) as exc:
        remote.update_pool("certpool", {"certificateReferences": [ref]})
    assert exc.value.code == "CertificateBeingDeleted"
    patched = send(server, "PATCH", "/pools/certpool", body={"certificateReferences": [ref]})
    assert patched.status_code == 409 and error(patched)[0] == "CertificateBeingDeleted"
    remote.cancel_certificate_deletion(c.thumbprint)
    assert remote.get_certificate(c.thumbprint).state == "active"
    replaced = send(
        server,
        "POST",
        "/pools/certpool/updateproperties",
        body={"applicationPackageReferences": [], "metadata": [], "certificateReferences": []},
    )
    assert replaced.status_code == 204, replaced.text
    assert not remote.get_pool("certpool").certificate_references
    remote.delete_job("certjob")
    remote.delete_pool("certpool")
