"""Ledger helpers for any test suite: fund a user, read balances, verify the books."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.ledger.adjustments import adjust
from bourse.ledger.models import Account, AccountKind
from bourse.ledger.posting import Context
from bourse.ledger.verify import Report, verify_ledger


def fund(database: Database, user_id: uuid.UUID, asset: str, amount: int) -> uuid.UUID:
    """Credit ``amount`` minor units to the user's available account, against the house."""
    with unit_of_work(database) as session:
        posted = adjust(
            session,
            user_id=user_id,
            asset=asset,
            amount=amount,
            credit=True,
            reason="test funding",
            context=Context(actor="system", idempotency_key=f"test-fund:{uuid.uuid4()}"),
        )
    return posted.entry_id


def balance(database: Database, user_id: uuid.UUID, asset: str, kind: AccountKind = AccountKind.available) -> int:
    with unit_of_work(database) as session:
        found = session.scalar(
            select(Account.balance).where(Account.user_id == user_id, Account.asset == asset, Account.kind == kind)
        )
    return int(found or 0)


def verify(database: Database) -> Report:
    with unit_of_work(database) as session:
        return verify_ledger(session)
