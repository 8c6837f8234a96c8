"""Certificate models: adding a certificate to an account, the certificate as returned, and a
pool's reference to one.

Azure deprecated certificates in 2024 (its REST API has them up to api-version
``2024-07-01.20.0``, the legacy ``azure-batch`` 14.x SDK among the clients); the names here are
that API's. The certificate's data and password are write-only: no model the service returns
carries them.

This module does not parse certificates or check thumbprints (the service does, with
``cryptography``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from prefect_batch.core.states import CertificateState
from prefect_batch.models.base import NonEmptyStr, RequestModel, ResponseModel, UtcDateTime
from prefect_batch.models.common import NameValuePair

__all__ = [
    "CERTIFICATE_DATA_MAX_BYTES",
    "BatchCertificate",
    "BatchCertificateCreateOptions",
    "BatchCertificateReference",
    "DeleteCertificateError",
]

CERTIFICATE_DATA_MAX_BYTES = 10 * 1024
"""Largest certificate Azure accepts (its ``data``, decoded)."""

Thumbprint = NonEmptyStr
ThumbprintAlgorithm = Literal["sha1"]


class BatchCertificateCreateOptions(RequestModel):
    """The body of an add-certificate request."""

    thumbprint: Thumbprint = Field(
        max_length=64,
        description="The SHA-1 thumbprint as hex (up to 40 digits; spaces are removed); it must "
        "match the certificate's.",
    )
    thumbprint_algorithm: ThumbprintAlgorithm = Field(
        alias="thumbprintAlgorithm", description="How the thumbprint is derived: sha1."
    )
    data: NonEmptyStr = Field(
        description="The certificate, base64: a PFX (PKCS #12) file or a CER (DER or PEM) file; "
        "at most 10 KB decoded."
    )
    certificate_format: Literal["pfx", "cer"] | None = Field(
        default=None,
        alias="certificateFormat",
        description="pfx (the default) or cer.",
    )
    password: str | None = Field(
        default=None, description="The PFX file's password; only with the pfx format."
    )


class DeleteCertificateError(ResponseModel):
    """Why the last delete of a certificate failed."""

    code: str | None = Field(default=None, description="An identifier for the error.")
    message: str | None = Field(default=None, description="What went wrong.")
    values: list[NameValuePair] | None = Field(
        default=None, description="The pools and nodes that use the certificate (up to 100)."
    )


class BatchCertificate(ResponseModel):
    """A certificate of the account, as returned (never its private key or password)."""

    thumbprint: str | None = Field(default=None, description="The SHA-1 thumbprint, lower hex.")
    thumbprint_algorithm: str | None = Field(
        default=None, alias="thumbprintAlgorithm", description="sha1."
    )
    url: str | None = Field(default=None, description="The URL of the certificate.")
    state: CertificateState | None = Field(
        default=None, description="active, deleting or deletefailed."
    )
    state_transition_time: UtcDateTime | None = Field(
        default=None, alias="stateTransitionTime", description="When it entered its state."
    )
    previous_state: CertificateState | None = Field(
        default=None, alias="previousState", description="Its state before (not when active)."
    )
    previous_state_transition_time: UtcDateTime | None = Field(
        default=None,
        alias="previousStateTransitionTime",
        description="When it entered its previous state.",
    )
    public_data: str | None = Field(
        default=None, alias="publicData", description="The public part (DER), base64."
    )
    delete_certificate_error: DeleteCertificateError | None = Field(
        default=None,
        alias="deleteCertificateError",
        description="Why the last delete failed (in deletefailed).",
    )


class BatchCertificateReference(RequestModel):
    """A certificate a pool installs on its nodes."""

    thumbprint: Thumbprint = Field(max_length=64, description="The certificate's thumbprint.")
    thumbprint_algorithm: ThumbprintAlgorithm = Field(
        alias="thumbprintAlgorithm", description="sha1."
    )
    store_location: Literal["currentuser", "localmachine"] | None = Field(
        default=None,
        alias="storeLocation",
        description="Windows only in Azure; accepted and ignored (on Linux nodes the "
        "certificate goes to AZ_BATCH_CERTIFICATES_DIR).",
    )
    store_name: str | None = Field(
        default=None, alias="storeName", description="Windows only in Azure (My); ignored."
    )
    visibility: list[Literal["starttask", "task", "remoteuser"]] | None = Field(
        default=None,
        description="Which users of the node get the private key: starttask, task, remoteuser "
        "(all when omitted). remoteuser is accepted; nodes here have no remote users.",
    )
