"""Certificate operations: add, list, get, delete and cancel a failed deletion (Azure's
deprecated ``/certificates``).

A certificate is checked and sealed when it is added (:mod:`~prefect_batch.service.rows.
certificates`). Deleting one that a pool references or a node has installed fails as in Azure:
the certificate goes to ``deletefailed`` with a ``deleteCertificateError`` naming the users,
and stays until it is deleted again with nothing using it or its deletion is cancelled. One
that nothing uses is gone when the delete returns.

What this module does not do: install certificates on nodes (the engine does, from the pools'
``certificateReferences``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, insert, select, update

from prefect_batch.core.states import CERTIFICATE_TRANSITIONS, CertificateState, transition
from prefect_batch.exceptions import BatchConflictError, BatchNotFoundError
from prefect_batch.models import BatchCertificate, BatchCertificateCreateOptions
from prefect_batch.service.ops.base import ServiceBase
from prefect_batch.service.rows import common
from prefect_batch.service.rows.certificates import (
    certificate_row,
    normalize_thumbprint,
    parse_certificate,
    users_of,
)
from prefect_batch.store.schema import certificates

__all__ = ["CertificateOperations"]


class CertificateOperations(ServiceBase):
    """The certificates of one account."""

    def create_certificate(self, certificate: BatchCertificateCreateOptions | dict) -> None:
        """Add a certificate (PFX with its password, or CER in DER or PEM).

        Raises:
            BatchInvalidRequestError: The data, format, password or thumbprint is wrong
                (naming the property); nothing is stored.
            BatchConflictError: ``CertificateExists``; ``CertificateBeingDeleted``.
        """
        opts = self.parse(BatchCertificateCreateOptions, certificate)
        now = self.clock()
        with self.store.begin() as conn:
            parsed = parse_certificate(
                conn,
                thumbprint=opts.thumbprint,
                data=opts.data,
                fmt=opts.certificate_format,
                password=opts.password,
            )
            row = certificate_row(conn, self.account, parsed.thumbprint)
            if row is not None:
                if row.state != CertificateState.ACTIVE.value:
                    raise BatchConflictError(
                        "CertificateBeingDeleted",
                        f"The certificate {parsed.thumbprint} is being deleted.",
                        _values(parsed.thumbprint),
                    )
                raise BatchConflictError(
                    "CertificateExists",
                    f"The specified certificate already exists: {parsed.thumbprint}",
                    _values(parsed.thumbprint),
                )
            conn.execute(
                insert(certificates).values(
                    account=self.account,
                    thumbprint=parsed.thumbprint,
                    format=parsed.format,
                    state=CertificateState.ACTIVE.value,
                    state_transition_time=now,
                    public_data=parsed.public_data,
                    sealed=parsed.sealed,
                    creation_time=now,
                )
            )

    def get_certificate(self, thumbprint_algorithm: str, thumbprint: str) -> BatchCertificate:
        """One certificate (its public part; never the private key)."""
        with self.store.read() as conn:
            return self._certificate_model(
                self._certificate(conn, thumbprint_algorithm, thumbprint)
            )

    def list_certificates(self) -> list[BatchCertificate]:
        """Every certificate of the account, in the order they were added."""
        with self.store.read() as conn:
            rows = conn.execute(
                select(certificates)
                .where(certificates.c.account == self.account)
                .order_by(certificates.c.pk)
            ).all()
            return [self._certificate_model(r) for r in rows]

    def delete_certificate(self, thumbprint_algorithm: str, thumbprint: str) -> None:
        """Delete a certificate; while a pool references it or a node has it installed the
        deletion fails (state ``deletefailed``, ``deleteCertificateError`` names them).

        Raises:
            BatchNotFoundError: ``CertificateNotFound``.
            BatchConflictError: ``CertificateBeingDeleted`` (a deletion is under way).
        """
        now = self.clock()
        with self.store.begin() as conn:
            row = self._certificate(conn, thumbprint_algorithm, thumbprint)
            state = CertificateState(row.state)
            if state == CertificateState.DELETING:
                raise BatchConflictError(
                    "CertificateBeingDeleted",
                    f"The certificate {row.thumbprint} is being deleted.",
                    _values(row.thumbprint),
                )
            users = users_of(conn, self.account, row.thumbprint)
            if not users:
                conn.execute(delete(certificates).where(certificates.c.pk == row.pk))
                return
            # active/deletefailed -> deleting -> deletefailed, in this one transaction.
            deleting = transition(
                CERTIFICATE_TRANSITIONS, state, CertificateState.DELETING, now=_utc(now)
            )
            transition(
                CERTIFICATE_TRANSITIONS,
                CertificateState.DELETING,
                CertificateState.DELETE_FAILED,
                now=_utc(now),
            )
            names = ", ".join(f"{kind[:-2].lower()} {value}" for kind, value in users[:10])
            error = {
                "code": "CertificateInUse",
                "message": f"The certificate is in use ({names}"
                + (", ..." if len(users) > 10 else "")
                + "); remove the pools' references, and reboot or reimage nodes that have it.",
                "values": [{"name": kind, "value": value} for kind, value in users],
            }
            conn.execute(
                update(certificates)
                .where(certificates.c.pk == row.pk)
                .values(
                    state=CertificateState.DELETE_FAILED.value,
                    state_transition_time=now,
                    previous_state=deleting.state,
                    previous_state_transition_time=now,
                    delete_error=error,
                )
            )

    def cancel_certificate_deletion(self, thumbprint_algorithm: str, thumbprint: str) -> None:
        """Return a certificate whose deletion failed to ``active``.

        Raises:
            BatchNotFoundError: ``CertificateNotFound``.
            BatchConflictError: ``CertificateStateActive`` (not in ``deletefailed``);
                ``CertificateBeingDeleted``.
        """
        now = self.clock()
        with self.store.begin() as conn:
            row = self._certificate(conn, thumbprint_algorithm, thumbprint)
            state = CertificateState(row.state)
            if state == CertificateState.ACTIVE:
                raise BatchConflictError(
                    "CertificateStateActive",
                    f"The certificate {row.thumbprint} is active; only a failed deletion can be "
                    "cancelled.",
                    _values(row.thumbprint),
                )
            if state == CertificateState.DELETING:
                raise BatchConflictError(
                    "CertificateBeingDeleted",
                    f"The certificate {row.thumbprint} is being deleted.",
                    _values(row.thumbprint),
                )
            change = transition(
                CERTIFICATE_TRANSITIONS, state, CertificateState.ACTIVE, now=_utc(now)
            )
            conn.execute(
                update(certificates)
                .where(certificates.c.pk == row.pk)
                .values(
                    state=change.state,
                    state_transition_time=now,
                    previous_state=change.previous_state,
                    previous_state_transition_time=row.state_transition_time,
                    delete_error=None,
                )
            )

    # -- helpers -----------------------------------------------------------------------------

    def _certificate(self, conn: Any, algorithm: str, thumbprint: str) -> Any:
        if str(algorithm).lower() != "sha1":
            raise BatchNotFoundError(
                "CertificateNotFound",
                f"The specified certificate does not exist: {algorithm}-{thumbprint}",
                _values(thumbprint, algorithm),
            )
        tp = normalize_thumbprint(thumbprint)
        row = certificate_row(conn, self.account, tp)
        if row is None:
            raise BatchNotFoundError(
                "CertificateNotFound",
                f"The specified certificate does not exist: sha1-{tp}",
                _values(tp),
            )
        return row

    def _certificate_model(self, row: Any) -> BatchCertificate:
        url = f"{self.base_url}/certificates(thumbprintAlgorithm=sha1,thumbprint={row.thumbprint})"
        body: dict[str, Any] = {
            "thumbprint": row.thumbprint,
            "thumbprintAlgorithm": "sha1",
            "url": url,
            "state": row.state,
            "stateTransitionTime": common.iso(row.state_transition_time),
            "publicData": row.public_data,
        }
        if row.previous_state:
            body["previousState"] = row.previous_state
            body["previousStateTransitionTime"] = common.iso(row.previous_state_transition_time)
        if row.delete_error and row.state == CertificateState.DELETE_FAILED.value:
            body["deleteCertificateError"] = row.delete_error
        return BatchCertificate.model_validate(body)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _values(thumbprint: str, algorithm: str = "sha1") -> dict[str, str]:
    return {"Thumbprint": thumbprint, "ThumbprintAlgorithm": algorithm}
