"""The handler idempotency contract, for the jobs that exist: running twice equals running once.

Delivery is at least once (docs/decisions/0006-queue.md), so each job's handler is run
twice with the same job id and payload, as a redelivery would, and the state after the
second run must equal the state after the first.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY
from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.idempotency.models import IdempotencyRecord
from bourse.identity.models import RefreshToken, Role, User
from bourse.ledger.holds import place_hold
from bourse.ledger.models import AccountKind, Hold, HoldState, JournalEntry
from bourse.ledger.posting import Context
from bourse.payments.models import Deposit, DepositState, PaymentAudit, PspEvent, Withdrawal, WithdrawalState
from bourse.queue.models import QueueProcess
from bourse.queue.operations import PIPELINE_HEARTBEAT_ID
from bourse.queue.registry import JobContext, JobSpec, load_jobs
from tests.support.auth import make_user
from tests.support.ledger import balance, fund, verify


def run_twice(database: Database, spec: JobSpec, payload: dict[str, object]) -> None:
    job_id = uuid.uuid4().hex
    for attempt in (1, 2):
        with unit_of_work(database) as session:
            spec.handler(JobContext(session, payload, job_id, attempt, spec.queue, None))


def test_queue_heartbeat_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["queue.heartbeat"]
    with unit_of_work(database) as session:
        row = session.get(QueueProcess, PIPELINE_HEARTBEAT_ID)
        if row is not None:
            session.delete(row)
    run_twice(database, spec, {})
    with database.sessions() as session:
        rows = session.scalars(select(QueueProcess).where(QueueProcess.id == PIPELINE_HEARTBEAT_ID)).all()
        assert len(rows) == 1
        first = rows[0].heartbeat_at
    # A late duplicate never moves the stamp backwards.
    with unit_of_work(database) as session:
        session.get(QueueProcess, PIPELINE_HEARTBEAT_ID).heartbeat_at = first + 3600  # type: ignore[union-attr]
    run_twice(database, spec, {})
    with database.sessions() as session:
        assert session.get(QueueProcess, PIPELINE_HEARTBEAT_ID).heartbeat_at == first + 3600  # type: ignore[union-attr]


def test_identity_prune_expired_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["identity.prune_expired"]
    now = datetime.now(UTC)
    with unit_of_work(database) as session:
        user = User(email=f"prune-{uuid.uuid4().hex[:10]}@example.com", password_hash="x", role=Role.client.value)
        session.add(user)
        session.flush()
        family = uuid.uuid4()
        tokens = {}
        for name, expires in (("expired", now - timedelta(days=1)), ("valid", now + timedelta(days=1))):
            token = RefreshToken(
                user_id=user.id,
                family_id=family,
                token_hash=hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
                expires_at=expires,
            )
            session.add(token)
            session.flush()
            tokens[name] = token.id
    run_twice(database, spec, {})
    with database.sessions() as session:
        assert session.get(RefreshToken, tokens["expired"]) is None
        assert session.get(RefreshToken, tokens["valid"]) is not None


def test_idempotency_prune_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["idempotency.prune"]
    now = datetime.now(UTC)
    with unit_of_work(database) as session:
        user = User(email=f"idem-{uuid.uuid4().hex[:10]}@example.com", password_hash="x", role=Role.client.value)
        session.add(user)
        session.flush()
        records = {}
        for name, expires in (("expired", now - timedelta(hours=1)), ("valid", now + timedelta(hours=1))):
            record = IdempotencyRecord(
                user_id=user.id,
                key=f"{name}-{uuid.uuid4().hex}",
                fingerprint="0" * 64,
                response_status=200,
                response_body="{}",
                expires_at=expires,
            )
            session.add(record)
            session.flush()
            records[name] = record.id
    run_twice(database, spec, {})
    with database.sessions() as session:
        assert session.get(IdempotencyRecord, records["expired"]) is None
        assert session.get(IdempotencyRecord, records["valid"]) is not None


def test_ledger_verify_runs_twice_like_once(database: Database) -> None:
    """It only reads the ledger: the second run reports what the first did."""
    spec = load_jobs()["ledger.verify"]
    answers = []
    job_id = uuid.uuid4().hex
    for attempt in (1, 2):
        with unit_of_work(database) as session:
            spec.handler(JobContext(session, {}, job_id, attempt, spec.queue, None))
            assert not session.new
            assert not session.dirty
            assert not session.deleted
        answers.append(REGISTRY.get_sample_value("bourse_ledger_discrepancies"))
    assert answers[0] is not None
    assert answers[0] == answers[1]


# --- Payments -----------------------------------------------------------------------------
# The payments jobs that call the provider (payments.payout, payments.check_payout and
# payments.reconcile) rely on the provider's idempotency keys as well as Bourse's state;
# they are run twice, through killed workers and provider faults, against the real PSP
# simulator in tests/payments/test_flows.py.


def _audit_lines(database: Database, subject_id: uuid.UUID) -> list[tuple[str | None, str]]:
    with database.sessions() as session:
        rows = session.scalars(
            select(PaymentAudit).where(PaymentAudit.subject_id == subject_id).order_by(PaymentAudit.id)
        )
        return [(row.from_state, row.to_state) for row in rows]


def _stored_event(database: Database, kind: str, provider_type: str, reference: uuid.UUID, amount: int) -> PspEvent:
    """A verified event in the inbox, as the webhook endpoint stores it."""
    with unit_of_work(database) as session:
        event = PspEvent(
            connector="simulator",
            event_id=f"evt_{uuid.uuid4().hex}",
            kind=kind,
            provider_type=provider_type,
            reference=str(reference),
            psp_reference=f"psp_{uuid.uuid4().hex[:20]}",
            amount=amount,
            currency="USD",
            detail={},
            body="{}",
        )
        session.add(event)
        session.flush()
        session.expunge(event)
    return event


def test_payments_deposit_event_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["payments.deposit_event"]
    user = make_user(database)
    deposit_id = uuid.uuid4()
    with unit_of_work(database) as session:
        session.add(
            Deposit(
                id=deposit_id,
                user_id=user.id,
                asset="USD",
                amount=25_00,
                connector="simulator",
                state=DepositState.pending,
                psp_reference=f"dep_{uuid.uuid4().hex[:20]}",
                reversed_amount=0,
            )
        )
    event = _stored_event(database, "deposit_succeeded", "deposit.succeeded", deposit_id, 25_00)
    run_twice(database, spec, {"event": event.id})
    assert balance(database, user.id, "USD") == 25_00
    assert _audit_lines(database, deposit_id) == [("pending", "succeeded")]
    with database.sessions() as session:
        deposit = session.get_one(Deposit, deposit_id)
        assert deposit.state is DepositState.succeeded
        stored = session.get_one(PspEvent, event.id)
        assert (stored.outcome, stored.processed_at is not None) == ("applied", True)
        entries = session.scalars(
            select(JournalEntry.id).where(JournalEntry.idempotency_key == f"psp-event:simulator:{event.event_id}")
        ).all()
        assert entries == [deposit.credit_entry_id]
    assert verify(database).ok


def test_payments_payout_event_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["payments.payout_event"]
    user = make_user(database)
    fund(database, user.id, "USD", 100_00)
    withdrawal_id = uuid.uuid4()
    with unit_of_work(database) as session:
        hold = place_hold(
            session,
            user_id=user.id,
            asset="USD",
            amount=60_00,
            reference=f"withdrawal:{withdrawal_id}",
            context=Context(actor="test", idempotency_key=f"test-hold:{withdrawal_id}"),
        )
        session.add(
            Withdrawal(
                id=withdrawal_id,
                user_id=user.id,
                asset="USD",
                amount=60_00,
                connector="simulator",
                destination="GB33BUKB20201555555555",
                state=WithdrawalState.approved,
                required_approvals=0,
                hold_id=hold.id,
            )
        )
        hold_id = hold.id
    event = _stored_event(database, "payout_succeeded", "payout.succeeded", withdrawal_id, 60_00)
    run_twice(database, spec, {"event": event.id})
    assert balance(database, user.id, "USD") == 40_00
    assert balance(database, user.id, "USD", AccountKind.held) == 0
    assert _audit_lines(database, withdrawal_id) == [("approved", "succeeded")]
    with database.sessions() as session:
        withdrawal = session.get_one(Withdrawal, withdrawal_id)
        assert (withdrawal.state, withdrawal.psp_reference) == (WithdrawalState.succeeded, event.psp_reference)
        captured = session.get_one(Hold, hold_id)
        assert (captured.state, captured.captured) == (HoldState.captured, 60_00)
        assert session.get_one(PspEvent, event.id).outcome == "applied"
    assert verify(database).ok


def test_payments_expire_deposits_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["payments.expire_deposits"]
    user = make_user(database)
    stale, fresh = uuid.uuid4(), uuid.uuid4()
    with unit_of_work(database) as session:
        for deposit_id, age in ((stale, timedelta(days=2)), (fresh, timedelta(0))):
            session.add(
                Deposit(
                    id=deposit_id,
                    user_id=user.id,
                    asset="USD",
                    amount=10_00,
                    connector="simulator",
                    state=DepositState.pending,
                    psp_reference=f"dep_{uuid.uuid4().hex[:20]}",
                    reversed_amount=0,
                    created_at=datetime.now(UTC) - age,
                )
            )
    run_twice(database, spec, {})
    assert _audit_lines(database, stale) == [("pending", "expired")]
    assert _audit_lines(database, fresh) == []
    with database.sessions() as session:
        assert session.get_one(Deposit, stale).state is DepositState.expired
        assert session.get_one(Deposit, fresh).state is DepositState.pending
