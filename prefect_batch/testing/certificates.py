"""Self-signed certificates for tests of certificate handling, in every form Azure takes.

:func:`make_certificate` builds an RSA key and a certificate for it and gives the bodies an
add-certificate request needs: a PFX with a password, the CER as DER and as PEM, and the SHA-1
thumbprint. Nothing here touches a service.
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any

__all__ = ["TestCertificate", "make_certificate"]


@dataclass(frozen=True)
class TestCertificate:
    """A certificate and its private key, in the forms a client sends."""

    __test__ = False  # not a pytest test class

    thumbprint: str
    password: str
    pfx: bytes
    der: bytes
    pem: bytes
    key: Any  # the RSA private key (cryptography)

    def pfx_body(self, **overrides: Any) -> dict[str, Any]:
        """An add-certificate body for the PFX (with its password)."""
        body = {
            "thumbprint": self.thumbprint,
            "thumbprintAlgorithm": "sha1",
            "data": base64.b64encode(self.pfx).decode(),
            "certificateFormat": "pfx",
            "password": self.password,
        }
        return {**body, **overrides}

    def cer_body(self, *, pem: bool = False, **overrides: Any) -> dict[str, Any]:
        """An add-certificate body for the CER (DER, or PEM with ``pem``)."""
        body = {
            "thumbprint": self.thumbprint,
            "thumbprintAlgorithm": "sha1",
            "data": base64.b64encode(self.pem if pem else self.der).decode(),
            "certificateFormat": "cer",
        }
        return {**body, **overrides}

    def encrypt(self, secret: bytes) -> bytes:
        """``secret`` encrypted with the certificate's public key (RSA-OAEP, SHA-256)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        return self.key.public_key().encrypt(
            secret,
            padding.OAEP(
                mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
            ),
        )


def make_certificate(
    name: str = "prefect-batch-test", password: str = "p@ss w0rd"
) -> TestCertificate:
    """A fresh self-signed RSA-2048 certificate valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pfx = pkcs12.serialize_key_and_certificates(
        name.encode(), key, cert, None, serialization.BestAvailableEncryption(password.encode())
    )
    return TestCertificate(
        thumbprint=cert.fingerprint(hashes.SHA1()).hex(),  # noqa: S303 - Azure's thumbprint
        password=password,
        pfx=pfx,
        der=cert.public_bytes(serialization.Encoding.DER),
        pem=cert.public_bytes(serialization.Encoding.PEM),
        key=key,
    )
