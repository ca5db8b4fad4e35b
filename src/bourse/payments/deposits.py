"""Deposits: a pending request, a hosted checkout, then a credit driven by the provider's event.

Money enters the ledger only here, in :func:`credit`, from the connector's
``psp_clearing`` account to the user's ``available`` account, once per deposit
(the ledger entry's idempotency key is the deposit's). Refunds and chargebacks
take it back out with :func:`reverse`, never pushing a wallet below zero: what the
user already spent becomes a debt on their ``chargeback_receivable`` account.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from bourse.assets.models import Asset
from bourse.ledger.accounts import AccountKey, account_balances, lock_accounts, system_account, user_account
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Leg, post_entry
from bourse.payments.audit import Actor, record
from bourse.payments.connectors import check_amount
from bourse.payments.models import Deposit, DepositState
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
    asset: Asset,
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


def credit(
    session: Session, deposit: Deposit, *, settled_at: datetime | None, actor: Actor, idempotency_key: str
) -> None:
    """Credit the deposit's full amount; first repay any debt the user has in that asset."""
    clearing, available, receivable_id, owed = _credit_accounts(session, deposit)
    repay = min(owed, deposit.amount)
    legs = [Leg(clearing, -deposit.amount)]
    if deposit.amount - repay > 0:
        legs.append(Leg(available, deposit.amount - repay))
    if repay > 0 and receivable_id is not None:
        legs.append(Leg(receivable_id, repay))
    posted = post_entry(
        session,
        kind="deposit",
        legs=legs,
        idempotency_key=idempotency_key,
        actor=actor.name,
        request_id=actor.request_id,
        metadata={"deposit_id": str(deposit.id), "connector": deposit.connector, "repaid_debt": repay},
    )
    deposit.credit_entry_id = posted.entry_id
    deposit.settled_at = settled_at or utcnow()
    deposit.credited_at = utcnow()
    _transition(session, deposit, DepositState.succeeded, actor, reason="debt repaid first" if repay else None)


def _keys(deposit: Deposit) -> tuple[AccountKey, AccountKey, AccountKey]:
    """The accounts a deposit's money moves between: the connector's clearing, the user's wallet and debt."""
    return (
        (AccountKind.psp_clearing, deposit.asset, deposit.connector),
        (AccountKind.available, deposit.asset, deposit.user_id),
        (AccountKind.chargeback_receivable, deposit.asset, deposit.user_id),
    )


def _credit_accounts(session: Session, deposit: Deposit) -> tuple[uuid.UUID, uuid.UUID, uuid.UUID | None, int]:
    """The clearing and available accounts a credit moves between, and any debt to repay first.

    One round trip in the usual case (both accounts exist, no debt): this is the
    hot path of every deposit.
    """
    keys = _keys(deposit)
    clearing_key, available_key, receivable_key = keys
    found = account_balances(session, keys)
    receivable = found.get(receivable_key)
    if receivable is not None and receivable.balance < 0:
        # A debt: lock all three and read it again under the lock, so two credits never both repay it.
        found = lock_accounts(session, keys)
        receivable = found[receivable_key]
        return found[clearing_key].id, found[available_key].id, receivable.id, max(0, -receivable.balance)
    clearing = found[clearing_key].id if clearing_key in found else None
    if clearing is None:
        clearing = system_account(session, AccountKind.psp_clearing, deposit.asset, ref=deposit.connector)
    available = found[available_key].id if available_key in found else None
    if available is None:
        available = user_account(session, deposit.user_id, deposit.asset)
    return clearing, available, None, 0


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
