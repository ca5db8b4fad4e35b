"""Withdrawals: checks, a hold at once, four-eyes approval, then a payout job.

The request locks the user's available and held accounts before any check, so two
concurrent withdrawals of one user are serialised: the daily limit and the
balance are read under the lock, and the hold is placed before it is released
(at commit). A withdrawal never pays more than it held: success captures the
hold into the connector's ``psp_clearing`` account, anything else releases it.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import parse_amount
from bourse.assets.service import AssetRef
from bourse.identity.service import verify_totp_if_enrolled
from bourse.ledger.accounts import AccountKey, account_balances, lock_accounts, owes_money, system_account
from bourse.ledger.errors import InsufficientFunds
from bourse.ledger.holds import capture_hold, place_hold, release_hold
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context
from bourse.payments.audit import Actor, record
from bourse.payments.connectors import check_amount
from bourse.payments.errors import (
    AlreadyApproved,
    CoolingOff,
    DailyLimitExceeded,
    InvalidState,
    SelfApproval,
    WithdrawalsBlocked,
)
from bourse.payments.models import (
    UNPAID_WITHDRAWAL_STATES,
    Deposit,
    Withdrawal,
    WithdrawalApproval,
    WithdrawalState,
)
from bourse.payments.queries import locked
from bourse.psp.connectors.base import Connector, PaymentState, PspRefused
from bourse.queue.producer import enqueue
from bourse.settings import Settings
from bourse.sqltypes import utcnow

SUBJECT = "withdrawal"
PAYOUT_JOB = "payments.payout"


def _transition(
    session: Session, withdrawal: Withdrawal, to: WithdrawalState, actor: Actor, reason: str | None = None
) -> None:
    before = withdrawal.state
    withdrawal.state = to
    record(
        session,
        subject_type=SUBJECT,
        subject_id=withdrawal.id,
        from_state=before.value,
        to_state=to.value,
        actor=actor.name,
        reason=reason,
        request_id=actor.request_id,
    )


def required_approvals(settings: Settings, asset: AssetRef, amount: int) -> int:
    """0, 1 or 2 operators, by the configured thresholds (an unlisted asset needs 1)."""
    review = settings.withdrawal_review_above.get(asset.code)
    if review is None:
        return 1
    two = settings.withdrawal_two_approvals_above.get(asset.code)
    if two is not None and amount > parse_amount(two, asset.scale, positive=False):
        return 2
    return 1 if amount > parse_amount(review, asset.scale, positive=False) else 0


def _day_start(now: datetime) -> datetime:
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


def _check_limits(session: Session, settings: Settings, user_id: uuid.UUID, asset: AssetRef, amount: int) -> None:
    now = utcnow()
    if owes_money(session, user_id):
        raise WithdrawalsBlocked("A refunded or disputed deposit left a balance owing; withdrawals are blocked")
    if settings.withdrawal_cooling_off_minutes:
        since = now - timedelta(minutes=settings.withdrawal_cooling_off_minutes)
        recent = session.scalar(
            select(func.max(Deposit.credited_at)).where(Deposit.user_id == user_id, Deposit.credited_at >= since)
        )
        if recent is not None:
            until = recent + timedelta(minutes=settings.withdrawal_cooling_off_minutes)
            raise CoolingOff(f"Withdrawals open again at {until.isoformat()} after the last deposit")
    limit_text = settings.withdrawal_daily_limits.get(asset.code)
    if limit_text is not None:
        limit = parse_amount(limit_text, asset.scale, positive=False)
        used = session.scalar(
            select(func.coalesce(func.sum(Withdrawal.amount), 0)).where(
                Withdrawal.user_id == user_id,
                Withdrawal.asset == asset.code,
                Withdrawal.created_at >= _day_start(now),
                Withdrawal.state.not_in(UNPAID_WITHDRAWAL_STATES),
            )
        )
        if (used or 0) + amount > limit:
            raise DailyLimitExceeded(f"The daily withdrawal limit for {asset.code} is {limit_text}")


def create(
    session: Session,
    *,
    settings: Settings,
    user_id: uuid.UUID,
    asset: AssetRef,
    amount: int,
    destination: str,
    connector: Connector,
    totp_code: str | None,
    actor: Actor,
    idempotency_key: str,
) -> Withdrawal:
    check_amount(connector, asset, amount, "payout")
    verify_totp_if_enrolled(session, user_id, totp_code, settings=settings)
    # The lock that serialises this user's withdrawals in this asset (see the module docstring):
    # the available account and the held one the hold moves funds to, in the ledger's order.
    available: AccountKey = (AccountKind.available, asset.code, user_id)
    if available not in account_balances(session, [available]):
        raise InsufficientFunds(f"Not enough {asset.code} available")
    lock_accounts(session, [available, (AccountKind.held, asset.code, user_id)])
    _check_limits(session, settings, user_id, asset, amount)
    withdrawal_id = uuid.uuid4()
    hold = place_hold(
        session,
        user_id=user_id,
        asset=asset.code,
        amount=amount,
        reference=f"withdrawal:{withdrawal_id}",
        context=Context(actor=actor.name, idempotency_key=idempotency_key, request_id=actor.request_id),
    )
    approvals = required_approvals(settings, asset, amount)
    withdrawal = Withdrawal(
        id=withdrawal_id,
        user_id=user_id,
        asset=asset.code,
        amount=amount,
        connector=connector.name,
        destination=destination,
        state=WithdrawalState.pending_review if approvals else WithdrawalState.approved,
        required_approvals=approvals,
        hold_id=hold.id,
    )
    session.add(withdrawal)
    record(
        session,
        subject_type=SUBJECT,
        subject_id=withdrawal.id,
        from_state=None,
        to_state=withdrawal.state.value,
        actor=actor.name,
        reason=f"needs {approvals} approval(s)" if approvals else "below the review threshold",
        request_id=actor.request_id,
    )
    session.flush()
    if not approvals:
        schedule_payout(session, withdrawal)
    return withdrawal


def schedule_payout(session: Session, withdrawal: Withdrawal) -> None:
    """Queue the payout in this transaction; at most one is pending per withdrawal."""
    enqueue(session, PAYOUT_JOB, {"withdrawal_id": str(withdrawal.id)}, unique_key=f"payout:{withdrawal.id}")


def approvals_of(session: Session, withdrawal_id: uuid.UUID) -> list[WithdrawalApproval]:
    query = select(WithdrawalApproval).where(WithdrawalApproval.withdrawal_id == withdrawal_id)
    return list(session.scalars(query.order_by(WithdrawalApproval.id)))


def approve(
    session: Session, withdrawal_id: uuid.UUID, *, operator_id: uuid.UUID, reason: str | None, actor: Actor
) -> Withdrawal:
    """One operator's approval; the last one needed queues the payout.

    The requester can never approve their own withdrawal, and one operator counts
    once, so a two-approval withdrawal needs two different people.
    """
    withdrawal = locked(session, Withdrawal, withdrawal_id)
    if withdrawal.user_id == operator_id:
        raise SelfApproval("Nobody may approve their own withdrawal")
    if withdrawal.state is not WithdrawalState.pending_review:
        raise InvalidState(f"The withdrawal is {withdrawal.state.value}, not pending review")
    given = approvals_of(session, withdrawal.id)
    if any(approval.operator_id == operator_id for approval in given):
        raise AlreadyApproved("You have already approved this withdrawal; it needs another operator")
    if owes_money(session, withdrawal.user_id):
        raise WithdrawalsBlocked("The user owes money after a refund or chargeback; reject or wait")
    session.add(WithdrawalApproval(withdrawal_id=withdrawal.id, operator_id=operator_id))
    count = len(given) + 1
    note = f"approval {count} of {withdrawal.required_approvals}" + (f": {reason}" if reason else "")
    if count >= withdrawal.required_approvals:
        _transition(session, withdrawal, WithdrawalState.approved, actor, reason=note)
        session.flush()
        schedule_payout(session, withdrawal)
    else:
        record(
            session,
            subject_type=SUBJECT,
            subject_id=withdrawal.id,
            from_state=withdrawal.state.value,
            to_state=withdrawal.state.value,
            actor=actor.name,
            reason=note,
            request_id=actor.request_id,
        )
    session.flush()
    return withdrawal


def _release(session: Session, withdrawal: Withdrawal, actor: Actor, key: str) -> None:
    release_hold(
        session,
        hold_id=withdrawal.hold_id,
        context=Context(actor=actor.name, idempotency_key=key, request_id=actor.request_id),
    )


def reject(session: Session, withdrawal_id: uuid.UUID, *, reason: str, actor: Actor) -> Withdrawal:
    withdrawal = locked(session, Withdrawal, withdrawal_id)
    if withdrawal.state is not WithdrawalState.pending_review:
        raise InvalidState(f"The withdrawal is {withdrawal.state.value}, not pending review")
    _release(session, withdrawal, actor, f"withdrawal:{withdrawal.id}:release")
    withdrawal.failure_reason = reason[:255]
    _transition(session, withdrawal, WithdrawalState.rejected, actor, reason=reason)
    session.flush()
    return withdrawal


def cancel(session: Session, withdrawal_id: uuid.UUID, *, user_id: uuid.UUID, actor: Actor) -> Withdrawal:
    withdrawal = locked(session, Withdrawal, withdrawal_id, user_id=user_id)
    if withdrawal.state is not WithdrawalState.pending_review:
        raise InvalidState(f"The withdrawal is {withdrawal.state.value}; only one pending review can be cancelled")
    _release(session, withdrawal, actor, f"withdrawal:{withdrawal.id}:release")
    _transition(session, withdrawal, WithdrawalState.cancelled, actor, reason="cancelled by the client")
    session.flush()
    return withdrawal


def mark_paid(session: Session, withdrawal: Withdrawal, *, settled_at: datetime | None, actor: Actor) -> None:
    """The provider paid: move the held funds to the connector's clearing account."""
    clearing = system_account(session, AccountKind.psp_clearing, withdrawal.asset, ref=withdrawal.connector)
    capture_hold(
        session,
        hold_id=withdrawal.hold_id,
        amount=withdrawal.amount,
        destination=clearing,
        context=Context(
            actor=actor.name, idempotency_key=f"withdrawal:{withdrawal.id}:capture", request_id=actor.request_id
        ),
    )
    withdrawal.settled_at = settled_at or utcnow()
    _transition(session, withdrawal, WithdrawalState.succeeded, actor, reason=f"paid as {withdrawal.psp_reference}")


def mark_failed(session: Session, withdrawal: Withdrawal, *, reason: str, actor: Actor) -> None:
    """The provider refused or failed the payout: give the funds back."""
    _release(session, withdrawal, actor, f"withdrawal:{withdrawal.id}:release")
    withdrawal.failure_reason = reason[:255]
    _transition(session, withdrawal, WithdrawalState.failed, actor, reason=reason)


def pay_out(session: Session, withdrawal_id: uuid.UUID, *, connector: Connector, actor: Actor) -> str:
    """Ask the provider to pay an approved withdrawal; returns what happened.

    The provider's idempotency key is the withdrawal's id, so a retry after a
    timeout, a 500 or a killed worker finds the payout the first attempt made
    instead of making a second one. A transient failure raises and the queue
    retries; a refusal releases the hold.
    """
    withdrawal = locked(session, Withdrawal, withdrawal_id)
    if withdrawal.state is not WithdrawalState.approved:
        return f"skipped: {withdrawal.state.value}"
    try:
        payout = connector.create_payout(
            reference=str(withdrawal.id),
            amount=withdrawal.amount,
            currency=withdrawal.asset,
            destination=withdrawal.destination,
            idempotency_key=f"withdrawal:{withdrawal.id}",
        )
    except PspRefused as exc:
        mark_failed(session, withdrawal, reason=f"refused by the provider: {exc.detail}", actor=actor)
        return "refused"
    withdrawal.psp_reference = payout.psp_reference
    if payout.state is PaymentState.succeeded:
        mark_paid(session, withdrawal, settled_at=None, actor=actor)
    elif payout.state is PaymentState.failed:
        mark_failed(session, withdrawal, reason=payout.failure_reason or "payout failed", actor=actor)
    else:
        _transition(
            session, withdrawal, WithdrawalState.processing, actor, reason=f"accepted as {payout.psp_reference}"
        )
    session.flush()
    return withdrawal.state.value


def check_payout(session: Session, withdrawal_id: uuid.UUID, *, connector: Connector, actor: Actor) -> str:
    """Settle a payout whose webhook never came, from the provider's own status."""
    withdrawal = locked(session, Withdrawal, withdrawal_id)
    if withdrawal.state is WithdrawalState.approved:
        schedule_payout(session, withdrawal)
        return "payout requeued"
    if withdrawal.state is not WithdrawalState.processing or withdrawal.psp_reference is None:
        return f"skipped: {withdrawal.state.value}"
    status = connector.payment_status(withdrawal.psp_reference)
    if status.state is PaymentState.succeeded:
        mark_paid(session, withdrawal, settled_at=None, actor=actor)
    elif status.state is PaymentState.failed:
        mark_failed(session, withdrawal, reason="failed at the provider (status check)", actor=actor)
    return withdrawal.state.value


def stuck(session: Session, *, older_than: timedelta, limit: int = 200) -> list[uuid.UUID]:
    """Approved or processing withdrawals untouched for ``older_than``."""
    cutoff = utcnow() - older_than
    query = (
        select(Withdrawal.id)
        .where(
            Withdrawal.state.in_([WithdrawalState.approved, WithdrawalState.processing]),
            Withdrawal.updated_at < cutoff,
        )
        .order_by(Withdrawal.updated_at)
        .limit(limit)
    )
    return list(session.scalars(query))
