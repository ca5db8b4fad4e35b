"""Holds: funds reserved out of a user's available balance, then captured or released.

A hold moves the amount from the user's ``available`` account to their ``held``
one; a capture moves held funds on to a destination, a release gives what is
left back. Every hold operation locks the hold row first, then (inside
:func:`bourse.ledger.posting.post_entry`) the accounts, so they never deadlock
with each other.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.ledger.accounts import AccountKey, lock_to_post
from bourse.ledger.errors import (
    AccountNotFound,
    AssetMismatch,
    CaptureExceedsHold,
    EntryKeyConflict,
    HoldAlreadyCaptured,
    HoldNotFound,
    HoldReleased,
    InsufficientFunds,
)
from bourse.ledger.models import Account, AccountKind, Hold, HoldState, JournalEntry
from bourse.ledger.posting import Context, Leg, Posted, key_taken, post_entry, post_locked, replay
from bourse.sqltypes import utcnow


def place_hold(
    session: Session,
    *,
    user_id: uuid.UUID,
    asset: str,
    amount: int,
    reference: str | None,
    context: Context,
) -> Hold:
    """Reserve ``amount`` of the user's available funds; refused if they are not there.

    One statement locks both accounts (opening the ``held`` one on first use) and reads
    what the entry needs; one more writes the entry; one inserts the hold.
    """
    held_key: AccountKey = (AccountKind.held, asset, user_id)
    available_key: AccountKey = (AccountKind.available, asset, user_id)
    locked = lock_to_post(session, [held_key, available_key], required=1)
    if available_key not in locked:
        raise InsufficientFunds(f"Not enough {asset} available")
    available, held = locked[available_key].id, locked[held_key].id
    posted = post_locked(
        session,
        sorted(locked.values(), key=lambda row: row.id),
        [Leg(available, -amount), Leg(held, amount)],
        kind="hold",
        context=context,
        metadata={"reference": reference} if reference else None,
    )
    if posted.replayed:
        existing = session.scalar(select(Hold).where(Hold.entry_id == posted.entry_id))
        if existing is None:
            raise RuntimeError(f"hold entry {posted.entry_id} has no hold")
        return existing
    hold = Hold(
        user_id=user_id,
        asset=asset,
        available_account_id=available,
        held_account_id=held,
        amount=amount,
        captured=0,
        released=0,
        state=HoldState.open,
        reference=reference,
        entry_id=posted.entry_id,
    )
    session.add(hold)
    session.flush()
    return hold


def still_reserved(session: Session, hold_id: uuid.UUID) -> int:
    """What the hold still reserves: 0 once it is captured in full or released, or if there is no such hold.

    Read without a lock: a hint for whether to release, which locks the hold.
    """
    hold = session.get(Hold, hold_id)
    if hold is None or hold.state is not HoldState.open:
        return 0
    return hold.remaining


def _locked_hold(session: Session, hold_id: uuid.UUID, user_id: uuid.UUID | None) -> Hold:
    query = select(Hold).where(Hold.id == hold_id).with_for_update().execution_options(populate_existing=True)
    hold = session.scalar(query)
    if hold is None or (user_id is not None and hold.user_id != user_id):
        raise HoldNotFound(f"There is no hold {hold_id}")
    return hold


def capture_hold(
    session: Session,
    *,
    hold_id: uuid.UUID,
    amount: int,
    destination: uuid.UUID,
    context: Context,
    user_id: uuid.UUID | None = None,
) -> Hold:
    """Move ``amount`` of the held funds to ``destination``; the rest stays held.

    The hold row is locked first, then (inside :func:`post_entry`) the accounts.
    Every hold operation takes the locks in that order.
    """
    hold = _locked_hold(session, hold_id, user_id)
    if key_taken(session, context.idempotency_key):
        # A retry: it must be this very capture, or it is a misused key.
        legs = [Leg(hold.held_account_id, -amount), Leg(destination, amount)]
        replay(session, "hold_capture", legs, context.idempotency_key)
        return hold
    if hold.state is HoldState.released:
        raise HoldReleased("The hold was released; nothing is left to capture")
    if hold.state is HoldState.captured:
        raise HoldAlreadyCaptured("The hold has already been captured in full")
    if amount > hold.remaining:
        raise CaptureExceedsHold(f"Only {hold.remaining} minor units remain on the hold")
    target_asset = session.scalar(select(Account.asset).where(Account.id == destination))
    if target_asset is None:
        raise AccountNotFound("The capture destination does not exist")
    if target_asset != hold.asset:
        raise AssetMismatch(f"The hold is in {hold.asset}; the destination holds {target_asset}")
    post_entry(
        session,
        kind="hold_capture",
        legs=[Leg(hold.held_account_id, -amount), Leg(destination, amount)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"hold_id": str(hold.id)},
    )
    hold.captured += amount
    if hold.remaining == 0:
        hold.state = HoldState.captured
    session.flush()
    return hold


def release_hold(session: Session, *, hold_id: uuid.UUID, context: Context, user_id: uuid.UUID | None = None) -> Hold:
    """Give what remains of the hold back to the user's available account."""
    hold = _locked_hold(session, hold_id, user_id)
    if key_taken(session, context.idempotency_key):
        entry_kind = session.scalar(
            select(JournalEntry.kind).where(JournalEntry.idempotency_key == context.idempotency_key)
        )
        if entry_kind != "hold_release":
            raise EntryKeyConflict(f"The key {context.idempotency_key!r} was already used for a different movement")
        return hold
    if hold.state is HoldState.released:
        raise HoldReleased("The hold was already released")
    if hold.state is HoldState.captured:
        raise HoldAlreadyCaptured("The hold has been captured in full; nothing is left to release")
    remaining = hold.remaining
    post_entry(
        session,
        kind="hold_release",
        legs=[Leg(hold.held_account_id, -remaining), Leg(hold.available_account_id, remaining)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"hold_id": str(hold.id)},
    )
    hold.released += remaining
    hold.state = HoldState.released
    session.flush()
    return hold


def capture_holds(
    session: Session,
    *,
    captures: Sequence[tuple[uuid.UUID, int, uuid.UUID]],
    legs: Sequence[Leg],
    kind: str,
    context: Context,
    metadata: Mapping[str, Any] | None = None,
) -> Posted:
    """Capture from several holds, plus any extra ``legs``, in ONE balanced entry.

    Each capture is (hold id, amount, destination account id). A trade moves
    both sides' held funds at once, and one entry keeps it atomic in the journal
    too. The hold rows are locked first, in id order, then (inside
    :func:`post_entry`) the accounts: the same order as :func:`capture_hold`, so
    the two never deadlock. Over-capture is refused with the errors of
    :func:`capture_hold`; a retried key replays without touching the holds.
    Legs naming the same account are merged, so two captures may share a
    destination.
    """
    if not captures:
        raise ValueError("capture_holds needs at least one capture")
    wanted: dict[uuid.UUID, int] = defaultdict(int)
    for hold_id, amount, _ in captures:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(f"a capture amount is a positive int, not {amount!r}")
        wanted[hold_id] += amount
    query = (
        select(Hold)
        .where(Hold.id.in_(sorted(wanted)))
        .order_by(Hold.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    holds = {hold.id: hold for hold in session.scalars(query)}
    if len(holds) != len(wanted):
        raise HoldNotFound("A capture names a hold that does not exist")
    amounts: dict[uuid.UUID, int] = defaultdict(int)
    for hold_id, amount, destination in captures:
        amounts[holds[hold_id].held_account_id] -= amount
        amounts[destination] += amount
    for leg in legs:
        amounts[leg.account_id] += leg.amount
    merged = [Leg(account_id, amount) for account_id, amount in amounts.items() if amount]
    if key_taken(session, context.idempotency_key):
        replay(session, kind, merged, context.idempotency_key)
        return Posted(entry_id=_entry_id(session, context.idempotency_key), created_at=utcnow(), replayed=True)
    _check_captures(session, holds, wanted, captures)
    posted = post_entry(
        session,
        kind=kind,
        legs=merged,
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={**(metadata or {}), "hold_ids": [str(hold_id) for hold_id in sorted(wanted)]},
    )
    for hold_id, amount in wanted.items():
        hold = holds[hold_id]
        hold.captured += amount
        if hold.remaining == 0:
            hold.state = HoldState.captured
    session.flush()
    return posted


def _check_captures(
    session: Session,
    holds: Mapping[uuid.UUID, Hold],
    wanted: Mapping[uuid.UUID, int],
    captures: Sequence[tuple[uuid.UUID, int, uuid.UUID]],
) -> None:
    """The refusals of :func:`capture_hold`, for every hold and destination of :func:`capture_holds`."""
    destinations = {destination for _, _, destination in captures}
    for hold_id, amount in wanted.items():
        hold = holds[hold_id]
        if hold.state is HoldState.released:
            raise HoldReleased("The hold was released; nothing is left to capture")
        if hold.state is HoldState.captured:
            raise HoldAlreadyCaptured("The hold has already been captured in full")
        if amount > hold.remaining:
            raise CaptureExceedsHold(f"Only {hold.remaining} minor units remain on hold {hold.id}")
    assets = {
        row.id: row.asset
        for row in session.execute(select(Account.id, Account.asset).where(Account.id.in_(destinations)))
    }
    for hold_id, _, destination in captures:
        if destination not in assets:
            raise AccountNotFound("The capture destination does not exist")
        if assets[destination] != holds[hold_id].asset:
            raise AssetMismatch(f"The hold is in {holds[hold_id].asset}; the destination holds {assets[destination]}")


def _entry_id(session: Session, idempotency_key: str) -> uuid.UUID:
    found = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == idempotency_key))
    if found is None:
        raise RuntimeError(f"no entry under {idempotency_key!r}")
    return found
