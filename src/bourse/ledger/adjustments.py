"""Adjustments: an operator credits or debits a user's available account against the house."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from bourse.ledger.accounts import system_account, user_account
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context, Leg, Posted, post_entry


def adjust(
    session: Session,
    *,
    user_id: uuid.UUID,
    asset: str,
    amount: int,
    credit: bool,
    reason: str,
    context: Context,
) -> Posted:
    """Credit (or debit) a user's available account against the house."""
    user = user_account(session, user_id, asset)
    house = system_account(session, AccountKind.house, asset)
    sign = 1 if credit else -1
    return post_entry(
        session,
        kind="adjustment",
        legs=[Leg(user, sign * amount), Leg(house, -sign * amount)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"user_id": str(user_id), "direction": "credit" if credit else "debit", "reason": reason},
    )
