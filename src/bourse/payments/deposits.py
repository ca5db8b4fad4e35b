"""Deposits: a pending request, a hosted checkout, then a credit driven by the provider's event.

Money enters the ledger only here, in :func:`credit`, from the connector's
``psp_clearing`` account to the user's ``available`` account, once per deposit
(the ledger entry's idempotency key is the deposit's). Refunds and chargebacks
take it back out with :func:`reverse`, never pushing a wallet below zero: what the
user already spent becomes a debt on their ``chargeback_receivable`` account.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from bourse.assets.service import AssetRef
from bourse.ledger.accounts import AccountKey, lock_accounts, lock_to_post
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context, Leg, post_entry, post_locked
from bourse.payments.audit import Actor, record, record_now
from bourse.payments.connectors import check_amount
from bourse.payments.errors import DepositCurrencyMismatch, InvalidState, ReceivedAmountUnknown, SelfApproval
from bourse.payments.models import Deposit, DepositState
from bourse.payments.queries import locked
from bourse.psp.connectors.base import Connector
from bourse.sqltypes import utcnow

SUBJECT = "deposit"
CREDITED = frozenset({DepositState.succeeded, DepositState.refunded, DepositState.charged_back})


def _transition(session: Session, deposit: Deposit, to: DepositState, actor: Actor, reason: str | None = None) -> None:
    before = deposit.state
    deposit.state = to
    record(
        session,
        subject_type=SUBJECT,
        subject_id=deposit.id,
        from_state=before.value,
        to_state=to.value,
        actor=actor.name,
        reason=reason,
        request_id=actor.request_id,
    )


def create(
    session: Session,
    *,
    user_id: uuid.UUID,
    asset: AssetRef,
    amount: int,
    connector: Connector,
    actor: Actor,
    return_url: str | None = None,
) -> Deposit:
    """Record a pending deposit and open the provider's checkout for it.

    The provider call happens inside the transaction: if it fails, nothing is
    kept and the client may retry with the same ``Idempotency-Key``. The outgoing
    key is derived from the deposit's id, so the provider never opens two
    checkouts for one deposit.
    """
    check_amount(connector, asset, amount, "deposit")
    deposit = Deposit(
        id=uuid.uuid4(),
        user_id=user_id,
        asset=asset.code,
        amount=amount,
        connector=connector.name,
        state=DepositState.pending,
        reversed_amount=0,
        refunded_amount=0,
    )
    session.add(deposit)
    record(
        session,
        subject_type=SUBJECT,
        subject_id=deposit.id,
        from_state=None,
        to_state=DepositState.pending.value,
        actor=actor.name,
        request_id=actor.request_id,
    )
    session.flush()
    checkout = connector.create_deposit(
        reference=str(deposit.id),
        amount=amount,
        currency=asset.code,
        idempotency_key=f"deposit:{deposit.id}",
        return_url=return_url,
    )
    deposit.psp_reference = checkout.psp_reference
    deposit.checkout_url = checkout.checkout_url
    session.flush()
    return deposit


_DEPOSITS = cast("Table", Deposit.__table__)
_D = _DEPOSITS.c
# The credit path reads and writes deposits in Core (no ORM entities, no flush):
# these statements are built once; only their parameters change.
_LOCK = (
    select(_D.id, _D.user_id, _D.asset, _D.amount, _D.connector, _D.state, _D.psp_reference)
    .where(_D.id == bindparam("d_id"))
    .with_for_update()
)
_CREDITED = (
    update(_DEPOSITS)
    .where(_D.id == bindparam("d_id"))
    .values(
        state=DepositState.succeeded,
        psp_reference=bindparam("d_psp_reference"),
        credit_entry_id=bindparam("d_entry_id"),
        settled_at=bindparam("d_settled_at"),
        credited_at=bindparam("d_now"),
        updated_at=bindparam("d_now"),
    )
)


@dataclass(frozen=True, slots=True)
class LockedDeposit:
    """What a provider event needs of a deposit, read with its row locked."""

    id: uuid.UUID
    user_id: uuid.UUID
    asset: str
    amount: int
    connector: str
    state: DepositState
    psp_reference: str | None


def lock(session: Session, deposit_id: uuid.UUID) -> LockedDeposit | None:
    """The deposit, its row locked for the rest of the transaction, or None if there is none."""
    row = session.connection().execute(_LOCK, {"d_id": deposit_id}).first()
    if row is None:
        return None
    return LockedDeposit(
        id=row.id,
        user_id=row.user_id,
        asset=row.asset,
        amount=row.amount,
        connector=row.connector,
        state=DepositState(row.state),
        psp_reference=row.psp_reference,
    )


def credit(
    session: Session,
    deposit: LockedDeposit,
    *,
    settled_at: datetime | None,
    actor: Actor,
    idempotency_key: str,
    psp_reference: str | None = None,
    reason: str | None = None,
) -> None:
    """Credit the locked deposit's full amount; first repay any debt the user has in that asset.

    The hot path of every deposit, in Core: one statement locks the connector's
    clearing account, the user's wallet and, if the user has one, their debt
    account (in the ledger's id order, read under the lock), one writes the entry,
    then the deposit moves to ``succeeded`` and its audit line is added. Two credits for
    a user with a debt queue behind each other's lock on the debt account, so a
    debt is never repaid twice. ``psp_reference``, if given, replaces the
    deposit's (Stripe names a checkout session first and its payment intent later).
    """
    keys = _keys(deposit)
    clearing_key, available_key, receivable_key = keys
    locked = lock_to_post(session, keys, required=2)
    clearing, available = locked[clearing_key], locked[available_key]
    receivable = locked.get(receivable_key)
    owed = max(0, -receivable.balance) if receivable is not None else 0
    repay = min(owed, deposit.amount)
    legs = [Leg(clearing.id, -deposit.amount)]
    accounts = [clearing]
    if deposit.amount - repay > 0:
        legs.append(Leg(available.id, deposit.amount - repay))
        accounts.append(available)
    if repay > 0 and receivable is not None:
        legs.append(Leg(receivable.id, repay))
        accounts.append(receivable)
    posted = post_locked(
        session,
        sorted(accounts, key=lambda account: account.id),
        legs,
        kind="deposit",
        context=Context(actor=actor.name, idempotency_key=idempotency_key, request_id=actor.request_id),
        metadata={
            "deposit_id": str(deposit.id),
            "connector": deposit.connector,
            "repaid_debt": repay,
            **({"reason": reason} if reason else {}),
        },
    )
    now = utcnow()
    session.connection().execute(
        _CREDITED,
        {
            "d_id": deposit.id,
            "d_psp_reference": psp_reference or deposit.psp_reference,
            "d_entry_id": posted.entry_id,
            "d_settled_at": settled_at or now,
            "d_now": now,
        },
    )
    record_now(
        session,
        subject_type=SUBJECT,
        subject_id=deposit.id,
        from_state=deposit.state.value,
        to_state=DepositState.succeeded.value,
        actor=actor.name,
        created_at=now,
        reason="; ".join(part for part in (reason, "debt repaid first" if repay else None) if part) or None,
        request_id=actor.request_id,
    )


def _keys(deposit: Deposit | LockedDeposit) -> tuple[AccountKey, AccountKey, AccountKey]:
    """The accounts a deposit's money moves between: the connector's clearing, the user's wallet and debt."""
    return (
        (AccountKind.psp_clearing, deposit.asset, deposit.connector),
        (AccountKind.available, deposit.asset, deposit.user_id),
        (AccountKind.chargeback_receivable, deposit.asset, deposit.user_id),
    )


def reverse(
    session: Session,
    deposit: Deposit,
    *,
    amount: int,
    chargeback: bool,
    actor: Actor,
    idempotency_key: str,
    reason: str,
) -> int:
    """Take ``amount`` of a credited deposit back to the provider. Returns the debt created.

    The user's available balance pays what it can; the shortfall is booked on the
    user's ``chargeback_receivable`` account, which blocks their withdrawals until
    it is repaid.
    """
    # Every account the entry may post to is locked in one statement, the ledger's order,
    # before the available balance is read, so a concurrent spend cannot make the entry
    # overdraw it. The receivable is opened (empty) if it does not exist yet.
    keys = _keys(deposit)
    locked = lock_accounts(session, keys)
    clearing, available, receivable = (locked[key] for key in keys)
    from_wallet = min(available.balance, amount)
    shortfall = amount - from_wallet
    legs = [Leg(clearing.id, amount)]
    if from_wallet > 0:
        legs.append(Leg(available.id, -from_wallet))
    if shortfall > 0:
        legs.append(Leg(receivable.id, -shortfall))
    post_entry(
        session,
        kind="chargeback" if chargeback else "deposit_refund",
        legs=legs,
        idempotency_key=idempotency_key,
        actor=actor.name,
        request_id=actor.request_id,
        metadata={"deposit_id": str(deposit.id), "reason": reason, "shortfall": shortfall},
    )
    deposit.reversed_amount += amount
    if not chargeback:
        deposit.refunded_amount += amount
    target = DepositState.charged_back if chargeback else DepositState.refunded
    detail = f"{reason}; {shortfall} minor units owed by the user" if shortfall else reason
    _transition(session, deposit, target, actor, reason=detail)
    return shortfall


def needs_review(session: Session, deposit: Deposit, *, amount: int | None, currency: str | None, actor: Actor) -> None:
    deposit.received_amount = amount
    deposit.received_currency = currency
    why = f"provider reported {amount} {currency}, expected {deposit.amount} {deposit.asset}"
    _transition(session, deposit, DepositState.needs_review, actor, reason=why)


def _under_review(session: Session, deposit_id: uuid.UUID, operator_id: uuid.UUID) -> Deposit:
    """The deposit, locked, if it is under review and not the operator's own (four eyes)."""
    deposit = locked(session, Deposit, deposit_id)
    if deposit.user_id == operator_id:
        raise SelfApproval("Nobody may resolve their own deposit")
    if deposit.state is not DepositState.needs_review:
        raise InvalidState(f"The deposit is {deposit.state.value}, not needs_review")
    return deposit


def credit_reviewed(
    session: Session, deposit_id: uuid.UUID, *, operator_id: uuid.UUID, reason: str, actor: Actor
) -> Deposit:
    """An operator credits what the provider reported as received, in the deposit's currency.

    The deposit's ``amount`` becomes that amount (the one asked for stays in the audit
    trail), so refunds, chargebacks and reconciliation all work on what was credited.
    Another currency is refused (``deposit_currency_mismatch``): reject the deposit and
    return the money through the provider. The ledger entry's key is the deposit's
    own, so it can never be credited twice.
    """
    deposit = _under_review(session, deposit_id, operator_id)
    received = deposit.received_amount
    if received is None or received <= 0:
        raise ReceivedAmountUnknown("The provider did not report an amount received; reject the deposit")
    currency = (deposit.received_currency or "").upper()
    if currency != deposit.asset:
        raise DepositCurrencyMismatch(
            f"The provider reported {deposit.received_currency or 'no currency'}, the deposit is in {deposit.asset};"
            " reject it and return the money through the provider"
        )
    asked = deposit.amount
    deposit.amount = received
    session.flush()
    credit(
        session,
        LockedDeposit(
            id=deposit.id,
            user_id=deposit.user_id,
            asset=deposit.asset,
            amount=received,
            connector=deposit.connector,
            state=deposit.state,
            psp_reference=deposit.psp_reference,
        ),
        settled_at=None,
        actor=actor,
        idempotency_key=f"deposit:{deposit.id}:review-credit",
        reason=f"credited {received} received ({asked} asked) after review: {reason}",
    )
    session.refresh(deposit)
    return deposit


def reject_reviewed(
    session: Session, deposit_id: uuid.UUID, *, operator_id: uuid.UUID, reason: str, actor: Actor
) -> Deposit:
    """An operator refuses a deposit under review: it fails with the reason, nothing is credited.

    Whatever the provider holds for it is returned through the provider, outside Bourse;
    reconciliation keeps showing it until then.
    """
    deposit = _under_review(session, deposit_id, operator_id)
    deposit.failure_reason = f"rejected after review: {reason}"[:255]
    _transition(session, deposit, DepositState.failed, actor, reason=f"rejected after review: {reason}")
    session.flush()
    return deposit


def fail(session: Session, deposit: Deposit, *, reason: str | None, actor: Actor) -> None:
    deposit.failure_reason = (reason or "failed at the provider")[:255]
    _transition(session, deposit, DepositState.failed, actor, reason=deposit.failure_reason)


def expire_stale(session: Session, *, older_than: timedelta, limit: int = 500) -> int:
    """Expire pending deposits created before ``now - older_than``; returns how many."""
    cutoff = utcnow() - older_than
    ids = list(
        session.scalars(
            select(Deposit.id)
            .where(Deposit.state == DepositState.pending, Deposit.created_at < cutoff)
            .order_by(Deposit.created_at)
            .limit(limit)
        )
    )
    expired = 0
    actor = Actor("system:deposit-expiry")
    for deposit_id in ids:
        # Conditional on still being pending: a success processed meanwhile wins.
        result = session.execute(
            update(Deposit)
            .where(Deposit.id == deposit_id, Deposit.state == DepositState.pending)
            .values(state=DepositState.expired, updated_at=utcnow())
        )
        if result.rowcount:  # type: ignore[attr-defined]
            expired += 1
            record(
                session,
                subject_type=SUBJECT,
                subject_id=deposit_id,
                from_state=DepositState.pending.value,
                to_state=DepositState.expired.value,
                actor=actor.name,
                reason=f"pending for more than {older_than}",
            )
    return expired
