"""``prefect-batch server start --tls-certfile/--tls-keyfile`` serves HTTPS itself.

A CA and a server certificate for 127.0.0.1 are made with ``cryptography``; the official
azure-batch SDK trusts the CA through ``connection_verify`` (its CA bundle) and works end to end,
while a client that does not trust the CA is refused during the handshake, and plain HTTP on the
port gets no answer.
"""

from __future__ import annotations

import ipaddress
import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from azure.batch import BatchClient as SdkClient
from azure.batch import models
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ServiceRequestError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prefect_batch.core.sharedkey import new_key
from tests.api.conftest import free_port
from tests.api.test_restart import ACCOUNT, server_process

pytestmark = pytest.mark.slow


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A self-signed CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    now = datetime.now(timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("prefect-batch test CA"))
        .issuer_name(_name("prefect-batch test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        directory / "ca.pem",
        directory / "cert.pem",
        directory / "key.pem",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_file.chmod(0o600)
    return ca_file, cert_file, key_file


def test_https_with_the_sdk_and_a_private_ca(tmp_path: Path) -> None:
    ca_file, cert_file, key_file = make_ca_and_server_cert(tmp_path)
    key, port = new_key(), free_port()
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(ca_file))

    def up(base: str) -> bool:
        try:
            return httpx.get(f"{base}/openapi.json", verify=trust, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    args = ("--tls-certfile", str(cert_file), "--tls-keyfile", str(key_file))
    with server_process(
        tmp_path / "home",
        port,
        key,
        f"sqlite:///{tmp_path / 'batch.db'}",
        tmp_path / "server.log",
        extra_args=args,
        up=up,
        scheme="https",
    ):
        credential = AzureNamedKeyCredential(ACCOUNT, key)
        sdk = SdkClient(url, credential, connection_verify=str(ca_file), connection_timeout=10)
        sdk.create_pool(models.BatchPoolCreateOptions(id="tls-pool", vm_size="local"))
        assert [p.id for p in sdk.list_pools()] == ["tls-pool"]
        pool = sdk.get_pool("tls-pool")
        assert pool.url.startswith(f"{url}/pools/")  # answers name the HTTPS address
        sdk.close()
        # A client that does not trust the CA fails the handshake: the certificate is checked.
        untrusting = SdkClient(url, credential, connection_timeout=10)
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.get_pool("tls-pool")
        untrusting.close()
        # Plain HTTP on the TLS port gets no Batch answer.
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/pools", timeout=5)


def test_tls_needs_both_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from prefect_batch.cli import app

    _, cert_file, _ = make_ca_and_server_cert(tmp_path)
    result = CliRunner().invoke(
        app, ["--home", str(tmp_path / "home"), "server", "start", "--tls-certfile", str(cert_file)]
    )
    assert result.exit_code != 0
    assert "--tls-keyfile" in result.output
