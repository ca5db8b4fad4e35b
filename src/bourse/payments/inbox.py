"""The webhook inbox and what each provider event does.

:func:`receive` stores a verified event under its unique ``(connector,
event_id)`` and queues its processing job in the same transaction; a replayed
event id stores nothing and queues nothing. :func:`process` applies one stored
event exactly once: the event row is locked, ``processed_at`` is set in the
same transaction as the effect, and every ledger entry's idempotency key is
derived from the event, so a redelivered job changes nothing.

Deposit events run on the ``deposits`` queue, payout events on ``withdrawals``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Executable, Table, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from bourse.logging import get_logger
from bourse.payments import deposits, queries, withdrawals
from bourse.payments.audit import Actor, record
from bourse.payments.errors import DepositNotFound, EventNotReady, WithdrawalNotFound
from bourse.payments.models import Deposit, DepositState, PspEvent, Withdrawal, WithdrawalState
from bourse.payments.queries import Payment
from bourse.psp.connectors.base import EventKind, PaymentEvent
from bourse.queue.producer import enqueue
from bourse.sqltypes import utcnow

log = get_logger(__name__)

PROCESS_DEPOSIT_EVENT = "payments.deposit_event"
PROCESS_PAYOUT_EVENT = "payments.payout_event"
PAYOUT_KINDS = frozenset({EventKind.payout_succeeded, EventKind.payout_failed})

_EVENTS = cast("Table", PspEvent.__table__)
_E = _EVENTS.c


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """What processing reads of a stored event (its row, locked)."""

    id: int
    connector: str
    event_id: str
    kind: str
    reference: str | None
    psp_reference: str | None
    amount: int | None
    currency: str | None
    occurred_at: datetime | None
    detail: dict[str, Any]
    processed_at: datetime | None
    outcome: str | None


# Storing an event claims its (connector, event_id) and returns its row id, or nothing
# for a replay: one statement per backend, built once; each webhook only binds its values.
_STORE: dict[str, Executable] = {
    name: dialect.insert(_EVENTS).on_conflict_do_nothing(index_elements=["connector", "event_id"]).returning(_E.id)
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}
_STORED = select(_E.id).where(_E.connector == bindparam("e_connector"), _E.event_id == bindparam("e_event_id"))

# Processing reads and settles events in Core (no ORM entities): built once, bound per event.
_LOCK_EVENT = select(*(_E[name] for name in StoredEvent.__slots__)).where(_E.id == bindparam("e_id")).with_for_update()
_FINISH = (
    update(_EVENTS)
    .where(_E.id == bindparam("e_id"))
    .values(processed_at=bindparam("e_processed_at"), outcome=bindparam("e_outcome"), note=bindparam("e_note"))
)


@dataclass(frozen=True, slots=True)
class Received:
    event_row_id: int
    duplicate: bool


def receive(session: Session, connector: str, event: PaymentEvent, body: bytes) -> Received:
    """Store the event once and queue its processing; a replay is a no-op."""
    values = {
        "connector": connector,
        "event_id": event.event_id[:255],
        "kind": event.kind.value,
        "provider_type": event.provider_type[:64],
        "reference": event.reference[:128] if event.reference else None,
        "psp_reference": event.psp_reference[:128] if event.psp_reference else None,
        "amount": event.amount,
        "currency": event.currency,
        "occurred_at": event.occurred_at,
        "detail": dict(event.detail),
        "body": body.decode("utf-8", errors="replace"),
        "received_at": utcnow(),
    }
    # Core, on the session's connection: every webhook comes through here.
    connection = session.connection()
    row_id = connection.execute(_STORE[connection.dialect.name], values).scalar()
    if row_id is None:
        existing = connection.execute(_STORED, {"e_connector": connector, "e_event_id": values["event_id"]}).scalar()
        return Received(event_row_id=existing or 0, duplicate=True)
    if event.kind is EventKind.ignored:
        _finish(session, row_id, "ignored", f"{event.provider_type} is not used by Bourse")
    else:
        job = PROCESS_PAYOUT_EVENT if event.kind in PAYOUT_KINDS else PROCESS_DEPOSIT_EVENT
        enqueue(session, job, {"event": row_id}, unique_key=f"psp-event:{row_id}")
    return Received(event_row_id=row_id, duplicate=False)


def _finish(session: Session, row_id: int, outcome: str, note: str | None = None) -> None:
    session.connection().execute(
        _FINISH,
        {"e_id": row_id, "e_processed_at": utcnow(), "e_outcome": outcome, "e_note": note[:255] if note else None},
    )


def _uuid(text: str | None) -> uuid.UUID | None:
    if not text:
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _find(session: Session, model: type[Payment], event: StoredEvent) -> Payment | None:
    """The deposit or withdrawal the event names (by our id, else the provider's), locked."""
    payment_id = _uuid(event.reference)
    if payment_id is None and event.psp_reference:
        payment_id = session.scalar(
            select(model.id).where(model.connector == event.connector, model.psp_reference == event.psp_reference)
        )
    if payment_id is None:
        return None
    try:
        payment = queries.locked(session, model, payment_id)
    except (DepositNotFound, WithdrawalNotFound):
        return None
    return payment if payment.connector == event.connector else None


def _find_deposit(session: Session, event: StoredEvent) -> deposits.LockedDeposit | None:
    """The deposit the event names (by our id, else the provider's), locked; read in Core."""
    deposit_id = _uuid(event.reference)
    if deposit_id is None and event.psp_reference:
        deposit_id = session.scalar(
            select(Deposit.id).where(Deposit.connector == event.connector, Deposit.psp_reference == event.psp_reference)
        )
    if deposit_id is None:
        return None
    deposit = deposits.lock(session, deposit_id)
    return deposit if deposit is not None and deposit.connector == event.connector else None


def process(session: Session, row_id: int, *, request_id: str | None = None) -> str:
    """Apply one stored event; returns its outcome. Raises EventNotReady to be retried."""
    row = session.connection().execute(_LOCK_EVENT, {"e_id": row_id}).first()
    if row is None:
        return "missing"
    event = StoredEvent(*row)  # the columns are selected in the order of its fields
    if event.processed_at is not None:
        return event.outcome or "done"
    actor = Actor(f"psp:{event.connector}", request_id)
    kind = EventKind(event.kind)
    if kind in PAYOUT_KINDS:
        outcome, note = _payout_event(session, event, kind, actor)
    else:
        outcome, note = _deposit_event(session, event, kind, actor)
    _finish(session, event.id, outcome, note)
    log.info("psp_event_processed", connector=event.connector, event_id=event.event_id, kind=kind, outcome=outcome)
    return outcome


def _deposit_event(session: Session, event: StoredEvent, kind: EventKind, actor: Actor) -> tuple[str, str | None]:
    locked = _find_deposit(session, event)
    if locked is None:
        log.warning("psp_event_unmatched", connector=event.connector, event_id=event.event_id, kind=kind)
        return "unmatched", "no deposit has this reference"
    if kind is EventKind.deposit_succeeded:
        return _deposit_succeeded(session, event, locked, actor)
    # The rarer events change the deposit through the ORM; its row is already locked.
    deposit = queries.get(session, Deposit, locked.id)
    if kind is EventKind.deposit_failed:
        return _deposit_failed(session, event, deposit, actor)
    return _deposit_reversed(session, event, deposit, kind, actor)


def _ledger_key(event: StoredEvent) -> str:
    return f"psp-event:{event.connector}:{event.event_id}"


def _deposit_succeeded(
    session: Session, event: StoredEvent, deposit: deposits.LockedDeposit, actor: Actor
) -> tuple[str, str | None]:
    if deposit.state in deposits.CREDITED:
        return "duplicate", f"deposit already {deposit.state.value}"
    # Pending, expired or failed: a late success after an expiry or a failure means
    # the payer did pay (a retried card, a slow bank), so it still credits.
    if deposit.state is DepositState.needs_review:
        return "recorded", "deposit is under review"
    # Stripe names a checkout session first and its payment intent here.
    new_reference = (
        event.psp_reference if event.psp_reference and deposit.psp_reference != event.psp_reference else None
    )
    if event.amount != deposit.amount or (event.currency or "").upper() != deposit.asset:
        row = queries.get(session, Deposit, deposit.id)
        if new_reference is not None:
            row.psp_reference = new_reference
        deposits.needs_review(session, row, amount=event.amount, currency=event.currency, actor=actor)
        return "needs_review", "amount or currency differs from the deposit"
    deposits.credit(
        session,
        deposit,
        settled_at=event.occurred_at,
        actor=actor,
        idempotency_key=_ledger_key(event),
        psp_reference=new_reference,
    )
    return "applied", None


def _deposit_failed(session: Session, event: StoredEvent, deposit: Deposit, actor: Actor) -> tuple[str, str | None]:
    if deposit.state in (DepositState.pending, DepositState.expired):
        reason = event.detail.get("failure_reason") or event.detail.get("message")
        deposits.fail(session, deposit, reason=str(reason) if reason else None, actor=actor)
        return "applied", None
    if deposit.state is DepositState.failed:
        return "duplicate", None
    # A failure after a success (a late or out-of-order delivery) never takes money back.
    record(
        session,
        subject_type=deposits.SUBJECT,
        subject_id=deposit.id,
        from_state=deposit.state.value,
        to_state=deposit.state.value,
        actor=actor.name,
        reason=f"failure event {event.event_id} after {deposit.state.value}: recorded, not applied",
        request_id=actor.request_id,
    )
    return "recorded", f"failure after {deposit.state.value}"


def _deposit_reversed(
    session: Session, event: StoredEvent, deposit: Deposit, kind: EventKind, actor: Actor
) -> tuple[str, str | None]:
    """A refund or a chargeback of a deposit."""
    if deposit.state in (DepositState.pending, DepositState.expired, DepositState.failed):
        # Out of order: the success this reverses has not been processed yet.
        raise EventNotReady(f"{kind.value} for deposit {deposit.id} arrived before its success")
    if deposit.state is DepositState.needs_review:
        return "recorded", "nothing was credited for this deposit"
    left = deposit.amount - deposit.reversed_amount
    if event.amount is None:
        amount = left  # the provider did not say: whatever is still credited
    elif kind is EventKind.refunded:
        # Refunds come as a running total (Stripe's amount_refunded): reverse what is new.
        amount = min(event.amount - deposit.refunded_amount, left)
    else:
        # A chargeback names the disputed amount itself.
        amount = min(event.amount, left)
    if amount <= 0:
        return "duplicate", "already reversed"
    deposits.reverse(
        session,
        deposit,
        amount=amount,
        chargeback=kind is EventKind.chargeback,
        actor=actor,
        idempotency_key=_ledger_key(event),
        reason=f"{kind.value} {event.event_id}",
    )
    return "applied", None


def _payout_event(session: Session, event: StoredEvent, kind: EventKind, actor: Actor) -> tuple[str, str | None]:
    withdrawal = _find(session, Withdrawal, event)
    if withdrawal is None:
        log.warning("psp_event_unmatched", connector=event.connector, event_id=event.event_id, kind=kind)
        return "unmatched", "no withdrawal has this reference"
    if withdrawal.state in (WithdrawalState.approved, WithdrawalState.processing):
        if kind is EventKind.payout_succeeded and (
            (event.amount is not None and event.amount != withdrawal.amount)
            or (event.currency is not None and event.currency.upper() != withdrawal.asset)
        ):
            # Paid, but not what was asked: leave it for people, never guess.
            why = f"provider paid {event.amount} {event.currency}, expected {withdrawal.amount} {withdrawal.asset}"
            record(
                session,
                subject_type=withdrawals.SUBJECT,
                subject_id=withdrawal.id,
                from_state=withdrawal.state.value,
                to_state=withdrawal.state.value,
                actor=actor.name,
                reason=f"{why}: recorded, not applied",
                request_id=actor.request_id,
            )
            log.error("psp_payout_amount_mismatch", withdrawal=str(withdrawal.id), detail=why)
            return "recorded", why[:255]
        if event.psp_reference and withdrawal.psp_reference is None:
            withdrawal.psp_reference = event.psp_reference
        if kind is EventKind.payout_succeeded:
            withdrawals.mark_paid(session, withdrawal, settled_at=event.occurred_at, actor=actor)
        else:
            reason = event.detail.get("failure_reason") or "payout failed at the provider"
            withdrawals.mark_failed(session, withdrawal, reason=str(reason), actor=actor)
        return "applied", None
    done = WithdrawalState.succeeded if kind is EventKind.payout_succeeded else WithdrawalState.failed
    if withdrawal.state is done:
        return "duplicate", None
    record(
        session,
        subject_type=withdrawals.SUBJECT,
        subject_id=withdrawal.id,
        from_state=withdrawal.state.value,
        to_state=withdrawal.state.value,
        actor=actor.name,
        reason=f"{kind.value} event {event.event_id} while {withdrawal.state.value}: recorded, not applied",
        request_id=actor.request_id,
    )
    log.error("psp_payout_event_conflict", withdrawal=str(withdrawal.id), state=withdrawal.state, kind=kind)
    return "recorded", f"{kind.value} while {withdrawal.state.value}"
