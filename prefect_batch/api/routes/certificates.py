"""Certificate paths: ``/certificates`` and
``/certificates(thumbprintAlgorithm=sha1,thumbprint=<tp>)`` (Azure's deprecated certificates).

Azure's API has them up to api-version ``2024-07-01.20.0``; these routes answer that version as
well as today's (every other route answers today's only), so the legacy ``azure-batch`` 14.x SDK
and plain REST clients of that API can use them.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from prefect_batch.api.context import (
    accepted,
    certificate_service,
    created,
    list_response,
    no_content,
    object_body,
    resource_response,
)
from prefect_batch.api.routes._spec import Body, Opts, Select, call, filtered_page, spec
from prefect_batch.models import BatchCertificate, BatchCertificateCreateOptions
from prefect_batch.service import BatchService

__all__ = ["router"]

router = APIRouter(tags=["certificates"])

CertSvc = Annotated[BatchService, Depends(certificate_service)]
Algorithm = Annotated[
    str, Path(alias="thumbprintAlgorithm", description="How the thumbprint is derived: sha1.")
]
Thumbprint = Annotated[str, Path(alias="thumbprint", description="The certificate's thumbprint.")]
_ONE = "/certificates(thumbprintAlgorithm={thumbprintAlgorithm},thumbprint={thumbprint})"
_DEPRECATED = "Deprecated by Azure (use the Key Vault VM extension there). "


def _by_thumbprint(item: dict[str, Any]) -> tuple[str]:
    return (item.get("thumbprint") or "",)


def _url(svc: BatchService, thumbprint: str) -> str:
    tp = "".join(thumbprint.split()).lower()
    return f"{svc.base_url}/certificates(thumbprintAlgorithm=sha1,thumbprint={tp})"


@router.post(
    "/certificates",
    **spec(
        "create_certificate",
        "Add a certificate to the account",
        status=201,
        body=BatchCertificateCreateOptions,
        description=_DEPRECATED + "PFX (with its password) or CER (DER or PEM), base64 in "
        "`data`; the SHA-1 thumbprint is checked.",
    ),
)
def create_certificate(svc: CertSvc, body: Body) -> Response:
    cert = object_body(body)
    call(svc, "create_certificate", cert)
    return created(_url(svc, str(cert.get("thumbprint", ""))))


@router.get(
    "/certificates",
    **spec(
        "list_certificates",
        "List the account's certificates",
        returns=list[BatchCertificate],
        description=_DEPRECATED,
    ),
)
def list_certificates(request: Request, svc: CertSvc, opts: Opts) -> Response:
    items, marker = filtered_page(call(svc, "list_certificates"), opts, _by_thumbprint)
    return list_response(items, opts.select, request, "certificates", marker)


@router.get(
    _ONE,
    **spec(
        "get_certificate",
        "Get a certificate (its public part)",
        returns=BatchCertificate,
        description=_DEPRECATED,
    ),
)
def get_certificate(
    request: Request, svc: CertSvc, names: Select, algorithm: Algorithm, thumbprint: Thumbprint
) -> Response:
    found = call(svc, "get_certificate", algorithm, thumbprint)
    return resource_response(found, names, request, "certificates")


@router.delete(
    _ONE,
    **spec(
        "delete_certificate",
        "Delete a certificate",
        status=202,
        description=_DEPRECATED + "While a pool references it or a node has it installed the "
        "deletion fails: the certificate goes to deletefailed.",
    ),
)
def delete_certificate(svc: CertSvc, algorithm: Algorithm, thumbprint: Thumbprint) -> Response:
    call(svc, "delete_certificate", algorithm, thumbprint)
    return accepted()


@router.post(
    _ONE + "/canceldelete",
    **spec(
        "cancel_certificate_deletion",
        "Cancel a failed deletion of a certificate",
        status=204,
        description=_DEPRECATED + "Only in deletefailed; the certificate becomes active again.",
    ),
)
def cancel_certificate_deletion(
    svc: CertSvc, algorithm: Algorithm, thumbprint: Thumbprint
) -> Response:
    call(svc, "cancel_certificate_deletion", algorithm, thumbprint)
    return no_content()
