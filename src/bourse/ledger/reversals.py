"""Reversals: a mistaken entry is undone by a new entry that mirrors it; the journal is never edited."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.ledger.errors import EntryAlreadyReversed, EntryNotFound, EntryNotReversible
from bourse.ledger.models import Account, AccountKind, JournalEntry, Posting
from bourse.ledger.posting import Context, Leg, Posted, post_entry

# Entries that move money between a user's own available and held accounts;
# reversing one would break the hold it belongs to, so holds are undone by
# release, not by reversal.
HOLD_ENTRY_KINDS = frozenset({"hold", "hold_release", "hold_capture"})


def reverse_entry(session: Session, *, entry_id: uuid.UUID, reason: str, context: Context) -> Posted:
    """Undo an entry with a new one that mirrors it. The original is never edited."""
    original = session.get(JournalEntry, entry_id)
    if original is None:
        raise EntryNotFound(f"There is no entry {entry_id}")
    if original.kind in HOLD_ENTRY_KINDS or original.reverses_id is not None:
        raise EntryNotReversible(f"A {original.kind} entry cannot be reversed")
    legs = [
        Leg(account_id, -amount)
        for account_id, amount in session.execute(
            select(Posting.account_id, Posting.amount).where(Posting.entry_id == entry_id)
        )
    ]
    already = session.scalar(select(JournalEntry.idempotency_key).where(JournalEntry.reverses_id == entry_id))
    if already is not None and already != context.idempotency_key:
        raise EntryAlreadyReversed(f"The entry {entry_id} has already been reversed")
    return post_entry(
        session,
        kind="reversal",
        legs=legs,
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"reason": reason, "reverses": str(entry_id)},
        reverses_id=entry_id,
    )


@dataclass(frozen=True, slots=True)
class HeldCredit:
    """What an entry credited to a user's held account."""

    user_id: uuid.UUID
    asset: str
    held_account_id: uuid.UUID
    amount: int


def held_credits(session: Session, entry_id: uuid.UUID) -> list[HeldCredit]:
    """The entry's credits to held accounts, by account id.

    Reversing a capture of held funds (a busted trade) gives them back to the
    ``held`` accounts they came from; this says how much went where, so that the
    caller can release them on to the users' ``available`` accounts.
    """
    credited = session.execute(
        select(Account.user_id, Account.asset, Account.id, Posting.amount)
        .join(Account, Account.id == Posting.account_id)
        .where(Posting.entry_id == entry_id, Account.kind == AccountKind.held, Posting.amount > 0)
        .order_by(Account.id)
    ).all()
    lines = []
    for user_id, asset, held_id, amount in credited:
        if user_id is None:
            raise RuntimeError(f"held account {held_id} has no user")
        lines.append(HeldCredit(user_id=user_id, asset=asset, held_account_id=held_id, amount=amount))
    return lines
