"""The payments audit trail: who moved a deposit or a withdrawal from which state to which, and why."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from bourse.payments.models import PaymentAudit

_AUDIT = cast("Table", PaymentAudit.__table__)
_INSERT = insert(_AUDIT)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused a change, for the audit trail and the journal."""

    name: str
    request_id: str | None = None


def record(
    session: Session,
    *,
    subject_type: str,
    subject_id: uuid.UUID,
    from_state: str | None,
    to_state: str,
    actor: str,
    reason: str | None = None,
    request_id: str | None = None,
) -> None:
    """Append one line to the audit trail, in the caller's transaction."""
    session.add(
        PaymentAudit(
            subject_type=subject_type,
            subject_id=subject_id,
            from_state=from_state,
            to_state=to_state,
            actor=actor,
            reason=reason,
            request_id=request_id,
        )
    )


def record_now(
    session: Session,
    *,
    subject_type: str,
    subject_id: uuid.UUID,
    from_state: str | None,
    to_state: str,
    actor: str,
    created_at: datetime,
    reason: str | None = None,
    request_id: str | None = None,
) -> None:
    """Append one line to the audit trail now, in Core (the hot paths: no ORM unit of work)."""
    session.connection().execute(
        _INSERT,
        {
            "subject_type": subject_type,
            "subject_id": subject_id,
            "from_state": from_state,
            "to_state": to_state,
            "actor": actor,
            "reason": reason,
            "request_id": request_id,
            "created_at": created_at,
        },
    )


def audit_trail(session: Session, subject_type: str, subject_id: uuid.UUID) -> list[PaymentAudit]:
    query = (
        select(PaymentAudit)
        .where(PaymentAudit.subject_type == subject_type, PaymentAudit.subject_id == subject_id)
        .order_by(PaymentAudit.id)
    )
    return list(session.scalars(query))
