"""What deposits, withdrawals and event processing share: connectors, audit, accounts."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.ledger.models import Account, AccountKind
from bourse.payments.errors import UnknownConnector
from bourse.payments.models import PaymentAudit
from bourse.psp.connectors.base import Capability, Connector
from bourse.psp.registry import connectors
from bourse.settings import Settings


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused a change, for the audit trail and the journal."""

    name: str
    request_id: str | None = None


def connector_named(settings: Settings, name: str | None, capability: Capability | None = None) -> Connector:
    """The active connector called ``name`` (the first configured one when None)."""
    active = connectors(settings)
    if name is None:
        name = (
            next(iter(active), None)
            if capability is None
            else next((n for n, c in active.items() if c.supports(capability)), None)
        )
    connector = active.get(name) if name is not None else None
    if connector is None:
        raise UnknownConnector(f"There is no active payment connector {name!r}")
    if capability is not None:
        connector.require(capability)
    return connector


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


def audit_trail(session: Session, subject_type: str, subject_id: uuid.UUID) -> list[PaymentAudit]:
    query = (
        select(PaymentAudit)
        .where(PaymentAudit.subject_type == subject_type, PaymentAudit.subject_id == subject_id)
        .order_by(PaymentAudit.id)
    )
    return list(session.scalars(query))


def owes_money(session: Session, user_id: uuid.UUID) -> bool:
    """Any debt, in any asset, blocks the user's withdrawals."""
    query = select(Account.id).where(
        Account.kind == AccountKind.chargeback_receivable, Account.ref == str(user_id), Account.balance < 0
    )
    return session.scalar(query.limit(1)) is not None
