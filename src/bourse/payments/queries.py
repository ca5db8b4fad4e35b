"""Finding deposits and withdrawals: one by id, one locked for a change, or a page of them.

The same three questions for both, so they are asked in one place. A user id,
where given, limits the answer to that user's own: anyone else's is "not found".
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.errors import BourseError
from bourse.payments.errors import DepositNotFound, WithdrawalNotFound
from bourse.payments.models import Deposit, Withdrawal

Payment = TypeVar("Payment", Deposit, Withdrawal)

_NOT_FOUND: dict[type[Deposit | Withdrawal], tuple[type[BourseError], str]] = {
    Deposit: (DepositNotFound, "deposit"),
    Withdrawal: (WithdrawalNotFound, "withdrawal"),
}


def _found(model: type[Payment], payment_id: uuid.UUID, row: Payment | None, user_id: uuid.UUID | None) -> Payment:
    if row is None or (user_id is not None and row.user_id != user_id):
        error, noun = _NOT_FOUND[model]
        raise error(f"There is no {noun} {payment_id}")
    return row


def get(session: Session, model: type[Payment], payment_id: uuid.UUID, *, user_id: uuid.UUID | None = None) -> Payment:
    """The deposit or withdrawal, or its not-found error."""
    return _found(model, payment_id, session.get(model, payment_id), user_id)


def locked(
    session: Session, model: type[Payment], payment_id: uuid.UUID, *, user_id: uuid.UUID | None = None
) -> Payment:
    """The deposit or withdrawal, its row locked and read afresh, or its not-found error."""
    query = select(model).where(model.id == payment_id).with_for_update().execution_options(populate_existing=True)
    return _found(model, payment_id, session.scalar(query), user_id)


def listing(
    session: Session,
    model: type[Payment],
    *,
    user_id: uuid.UUID | None = None,
    states: Sequence[str] = (),
    before: datetime | None = None,
    limit: int = 50,
) -> list[Payment]:
    """A page of deposits or withdrawals, newest first, those created before ``before``."""
    query = select(model).order_by(model.created_at.desc(), model.id.desc()).limit(limit)
    if user_id is not None:
        query = query.where(model.user_id == user_id)
    if states:
        query = query.where(model.state.in_(states))
    if before is not None:
        query = query.where(model.created_at < before)
    return list(session.scalars(query))
