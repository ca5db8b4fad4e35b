"""The payments API in process, on SQLite and PostgreSQL: withdrawals and their refusals,
approvals, the webhook inbox and what each provider event does to the books.

Withdrawals never call the provider while the request runs (the payout is a queued
job), so their whole API is exercised here. Deposits call the provider when they are
created, so the deposit-event tests write the pending ``Deposit`` row directly (as
``POST /deposits`` would after the checkout opened) and then deliver signed webhooks.
A delivered event's queued job is run by its registered handler, in one transaction
that also deletes the job row, as the database driver's worker does; processing the
same row again must change nothing. The provider-facing jobs (payout, status check,
reconciliation) run end to end against the simulator in ``test_flows.py``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import psycopg
import pyotp
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select, text, update

from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.identity import service as identity
from bourse.identity.models import Role
from bourse.ledger.models import Account, AccountKind, Hold, HoldState, JournalEntry, Posting
from bourse.ledger.posting import Context
from bourse.ledger.transfers import transfer
from bourse.payments import deposits, inbox
from bourse.payments.audit import Actor
from bourse.payments.errors import EventNotReady
from bourse.payments.models import Deposit, DepositState, PaymentAudit, PspEvent, Withdrawal
from bourse.psp import signing
from bourse.psp.connectors.simulator import SimulatorConnector
from bourse.psp.connectors.stripe import StripeConnector
from bourse.queue.models import QueueJob
from bourse.queue.registry import JobContext, load_jobs
from bourse.settings import Settings
from tests.support.auth import TestUser, bearer, make_user
from tests.support.ledger import balance, fund, verify
from tests.support.services import make_settings
from tests.support.waiting import wait_until

PSP_SECRET = "payments-api-test-webhook-secret-0123456789"
STRIPE_SECRET = "whsec_payments_api_test_0123456789"
WEBHOOK = "/api/v1/psp/simulator/webhook"
DESTINATION = "GB33BUKB20201555555555"
# Review above 100 USD, two operators above 1000 USD; EUR is deliberately not listed.
BASE_SETTINGS: dict[str, Any] = {
    "psp_secret": PSP_SECRET,
    # Never called in process: nothing here reaches the provider.
    "psp_sim_url": "http://127.0.0.1:9",
    "withdrawal_review_above": {"USD": "100"},
    "withdrawal_two_approvals_above": {"USD": "1000"},
    "withdrawal_daily_limits": {"USD": "100000"},
}


@dataclass(frozen=True)
class DepositRef:
    id: uuid.UUID
    psp_reference: str
    amount: int
    asset: str = "USD"


@dataclass
class Payments:
    settings: Settings
    database: Database
    client: TestClient

    # --- people and money -----------------------------------------------------------

    def user(self, role: Role = Role.client) -> TestUser:
        return make_user(self.database, role=role)

    def funded(self, amount: int, asset: str = "USD", role: Role = Role.client) -> TestUser:
        user = self.user(role)
        fund(self.database, user.id, asset, amount)
        return user

    def available(self, user: TestUser, asset: str = "USD") -> int:
        return balance(self.database, user.id, asset)

    def held(self, user: TestUser, asset: str = "USD") -> int:
        return balance(self.database, user.id, asset, AccountKind.held)

    def receivable(self, user: TestUser, asset: str = "USD") -> int:
        return self.system_balance(AccountKind.chargeback_receivable, asset, str(user.id))

    def clearing(self, asset: str = "USD") -> int:
        return self.system_balance(AccountKind.psp_clearing, asset, "simulator")

    def system_balance(self, kind: AccountKind, asset: str, ref: str) -> int:
        with self.database.sessions() as session:
            found = session.scalar(
                select(Account.balance).where(Account.kind == kind, Account.asset == asset, Account.ref == ref)
            )
        return int(found or 0)

    def books_balance(self) -> None:
        report = verify(self.database)
        assert report.ok, report.discrepancies

    # --- HTTP -----------------------------------------------------------------------

    def headers(self, user: TestUser, key: str | None = None) -> dict[str, str]:
        return {**bearer(self.settings, user), "Idempotency-Key": key or uuid.uuid4().hex}

    def withdraw(
        self, user: TestUser, amount: object = "10.00", *, key: str | None = None, **fields: Any
    ) -> httpx.Response:
        body = {"asset": "USD", "amount": amount, "destination": DESTINATION, **fields}
        return self.client.post("/api/v1/withdrawals", json=body, headers=self.headers(user, key))

    def withdrawn(self, user: TestUser, amount: str = "10.00", **fields: Any) -> dict[str, Any]:
        response = self.withdraw(user, amount, **fields)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def get(self, path: str, user: TestUser) -> httpx.Response:
        return self.client.get(path, headers=bearer(self.settings, user))

    def post(self, path: str, user: TestUser, body: dict[str, Any] | None = None) -> httpx.Response:
        return self.client.post(path, json=body if body is not None else {}, headers=bearer(self.settings, user))

    def approve(self, withdrawal_id: str, operator: TestUser) -> httpx.Response:
        return self.post(f"/api/v1/admin/withdrawals/{withdrawal_id}/approve", operator)

    def webhook(
        self,
        event: dict[str, Any] | bytes,
        *,
        timestamp: int | None = None,
        secret: str = PSP_SECRET,
        connector: str = "simulator",
        signed: bool = True,
    ) -> httpx.Response:
        body = event if isinstance(event, bytes) else json.dumps(event).encode()
        headers = {"Content-Type": "application/json"}
        if signed and connector == "stripe":
            # Stripe signs with the same scheme under its own header and secret.
            headers["Stripe-Signature"] = signing.sign(STRIPE_SECRET, body, timestamp)
        elif signed:
            headers[signing.SIGNATURE_HEADER] = signing.sign(secret, body, timestamp)
        return self.client.post(f"/api/v1/psp/{connector}/webhook", content=body, headers=headers)

    # --- deposits and events --------------------------------------------------------

    def deposit(self, user: TestUser, amount: int, asset: str = "USD", *, connector: str = "simulator") -> DepositRef:
        """A pending deposit whose checkout is open at the provider, as ``POST /deposits`` leaves it."""
        prefix = "cs" if connector == "stripe" else "dep"
        ref = DepositRef(uuid.uuid4(), f"{prefix}_{uuid.uuid4().hex[:20]}", amount, asset)
        with unit_of_work(self.database) as session:
            session.add(
                Deposit(
                    id=ref.id,
                    user_id=user.id,
                    asset=asset,
                    amount=amount,
                    connector=connector,
                    state=DepositState.pending,
                    psp_reference=ref.psp_reference,
                    checkout_url=f"http://127.0.0.1:9/checkout/{ref.psp_reference}",
                    reversed_amount=0,
                )
            )
        return ref

    def deposit_row(self, ref: DepositRef) -> Deposit:
        with self.database.sessions() as session:
            row = session.get(Deposit, ref.id)
            assert row is not None
            session.expunge(row)
            return row

    def withdrawal_row(self, withdrawal_id: str) -> Withdrawal:
        with self.database.sessions() as session:
            row = session.get(Withdrawal, uuid.UUID(withdrawal_id))
            assert row is not None
            session.expunge(row)
            return row

    def event_row_by_id(self, row_id: int) -> PspEvent:
        with self.database.sessions() as session:
            row = session.get(PspEvent, row_id)
            assert row is not None
            session.expunge(row)
            return row

    def event_row(self, event_id: str, connector: str = "simulator") -> PspEvent | None:
        with self.database.sessions() as session:
            row = session.scalar(select(PspEvent).where(PspEvent.connector == connector, PspEvent.event_id == event_id))
            if row is not None:
                session.expunge(row)
            return row

    def jobs(self, unique_key: str) -> list[QueueJob]:
        with self.database.sessions() as session:
            rows = list(session.scalars(select(QueueJob).where(QueueJob.unique_key == unique_key)))
            session.expunge_all()
            return rows

    def counts(self) -> tuple[int, int, int]:
        """Journal entries, audit lines and queued jobs: any effect adds to one of them."""
        with self.database.sessions() as session:
            return (
                session.scalar(select(func.count()).select_from(JournalEntry)) or 0,
                session.scalar(select(func.count()).select_from(PaymentAudit)) or 0,
                session.scalar(select(func.count()).select_from(QueueJob)) or 0,
            )

    def run_queued(self, unique_key: str) -> None:
        """Run the queued job by its registered handler and delete it, in one transaction."""
        [queued] = self.jobs(unique_key)
        spec = load_jobs()[queued.job]
        with unit_of_work(self.database) as session:
            context = JobContext(session, json.loads(queued.payload), queued.uuid, 1, queued.queue, None, self.settings)
            spec.handler(context)
            session.execute(delete(QueueJob).where(QueueJob.id == queued.id))

    def process(self, row_id: int) -> str:
        with unit_of_work(self.database) as session:
            return inbox.process(session, row_id)

    def receive(self, event: dict[str, Any], connector: str = "simulator") -> int:
        """Deliver ``event`` to the inbox; returns its stored row id."""
        response = self.webhook(event, connector=connector)
        assert response.status_code == 200, response.text
        assert response.json() == {"received": True, "duplicate": False}
        row = self.event_row(event["id"], connector)
        assert row is not None
        return row.id

    def deliver(self, event: dict[str, Any], connector: str = "simulator") -> str:
        """Deliver ``event``, run its queued job, then process it again: the second run is a no-op."""
        row_id = self.receive(event, connector)
        self.run_queued(f"psp-event:{row_id}")
        row = self.event_row(event["id"], connector)
        assert row is not None
        assert row.processed_at is not None
        outcome = row.outcome
        assert outcome is not None
        before = self.counts()
        assert self.process(row_id) == outcome
        assert self.counts() == before
        return outcome


def deposit_event(
    kind: str,
    deposit: DepositRef,
    *,
    amount: int | None = None,
    currency: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A simulator event about ``deposit``, shaped as the simulator sends it."""
    obj = {
        "id": deposit.psp_reference,
        "object": "deposit",
        "reference": str(deposit.id),
        "amount": deposit.amount if amount is None else amount,
        "currency": currency or deposit.asset,
        **extra,
    }
    return _event(kind, obj)


def payout_event(kind: str, withdrawal: dict[str, Any], **extra: Any) -> dict[str, Any]:
    obj = {
        "id": f"po_{uuid.UUID(withdrawal['id']).hex[:20]}",
        "object": "payout",
        "reference": withdrawal["id"],
        "amount": int(withdrawal["amount"].replace(".", "")),
        "currency": withdrawal["asset"],
        **extra,
    }
    return _event(kind, obj)


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }


@pytest.fixture
def make_payments(database_url: str, database: Database) -> Iterator[Callable[..., Payments]]:
    """Build an app with the base payments settings plus ``overrides``, on the shared database."""
    with ExitStack() as stack:

        def build(**overrides: Any) -> Payments:
            settings = make_settings(database_url, **{**BASE_SETTINGS, **overrides})
            client = TestClient(create_app(settings, database=database), raise_server_exceptions=False)
            return Payments(settings, database, stack.enter_context(client))

        yield build


@pytest.fixture
def pay(make_payments: Callable[..., Payments]) -> Payments:
    return make_payments()


@pytest.fixture(autouse=True)
def _books_balance() -> None:
    """Replaces the package's fixture of that name, which starts the process stack these
    in-process tests do not use; each test here that moves money verifies its own books."""


@pytest.fixture(autouse=True)
def _drop_queued_jobs(database: Database) -> Iterator[None]:
    """The payout and event jobs these tests queue are never run by a worker: drop them after."""
    with database.sessions() as session:
        before = session.scalar(select(func.max(QueueJob.id))) or 0
    yield
    with unit_of_work(database) as session:
        session.execute(delete(QueueJob).where(QueueJob.id > before, QueueJob.job.like("payments.%")))


# --- Withdrawals: requests and refusals -------------------------------------------------------


def test_a_withdrawal_holds_the_funds_once_and_replays_with_the_same_key(pay: Payments) -> None:
    alice = pay.funded(50_00)
    key = uuid.uuid4().hex
    first = pay.withdraw(alice, "20.00", key=key)
    assert first.status_code == 201, first.text
    assert first.headers["Idempotent-Replayed"] == "false"
    body = first.json()
    assert (body["amount"], body["state"], body["required_approvals"]) == ("20.00", "approved", 0)
    assert body["destination"] == DESTINATION
    assert body["connector"] == "simulator"
    again = pay.withdraw(alice, "20.00", key=key)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == body
    assert (pay.available(alice), pay.held(alice)) == (30_00, 20_00)
    listed = pay.get("/api/v1/withdrawals", alice).json()["data"]
    assert [w["id"] for w in listed] == [body["id"]]
    reused = pay.withdraw(alice, "20.01", key=key)
    assert (reused.status_code, reused.json()["error"]) == (422, "idempotency_key_reused")
    pay.books_balance()


def test_insufficient_funds_is_refused_and_holds_nothing(pay: Payments) -> None:
    nothing = pay.user()
    refused = pay.withdraw(nothing, "1.00")
    assert (refused.status_code, refused.json()["error"]) == (409, "insufficient_funds")
    alice = pay.funded(10_00)
    key = uuid.uuid4().hex
    too_much = pay.withdraw(alice, "10.01", key=key)
    assert (too_much.status_code, too_much.json()["error"]) == (409, "insufficient_funds")
    assert (pay.available(alice), pay.held(alice)) == (10_00, 0)
    assert pay.get("/api/v1/withdrawals", alice).json()["data"] == []
    # Nothing was kept under the key: a corrected request with it runs.
    fixed = pay.withdraw(alice, "10.00", key=key)
    assert fixed.status_code == 201, fixed.text
    assert fixed.headers["Idempotent-Replayed"] == "false"
    pay.books_balance()


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"amount": 12.5}, 422, "amount_must_be_string"),
        ({"amount": 12}, 422, "amount_must_be_string"),
        ({"amount": "1.005"}, 422, "amount_precision"),
        ({"amount": "0"}, 422, "amount_not_positive"),
        ({"amount": "-1.00"}, 422, "amount_not_positive"),
        # More than the simulator takes in one payout (10**15 minor units): refused here, not by the provider.
        ({"amount": "10000000000000.01"}, 422, "amount_too_large"),
        ({"asset": "XYZ"}, 422, "unknown_asset"),
        ({"destination": ""}, 422, "validation_error"),
        ({"destination": "   "}, 422, "validation_error"),
        ({"destination": None}, 422, "validation_error"),
        ({"connector": "nope"}, 404, "unknown_connector"),
        ({"connector": "Not A Name"}, 422, "validation_error"),
        ({"extra": "field"}, 422, "validation_error"),
    ],
)
def test_withdrawal_input_errors_have_stable_codes(
    pay: Payments, change: dict[str, Any], status: int, code: str
) -> None:
    alice = pay.funded(100_00)
    body = {"asset": "USD", "amount": "1.00", "destination": DESTINATION, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = pay.client.post("/api/v1/withdrawals", json=body, headers=pay.headers(alice))
    assert (response.status_code, response.json()["error"]) == (status, code), response.text
    assert (pay.available(alice), pay.held(alice)) == (100_00, 0)


def test_a_deposit_larger_than_the_provider_takes_is_refused_before_anything_is_kept(pay: Payments) -> None:
    """The simulator takes at most 10**15 minor units in one deposit; Bourse says so itself
    (422) instead of forwarding the amount and passing on the provider's refusal as a 502."""
    alice = pay.user()
    for asset, amount in (("USD", "10000000000000.01"), ("BTC", "451576786")):
        body = {"asset": asset, "amount": amount}
        response = pay.client.post("/api/v1/deposits", json=body, headers=pay.headers(alice))
        assert (response.status_code, response.json()["error"]) == (422, "amount_too_large"), response.text
        assert "simulator connector takes at most" in response.json()["detail"]
    assert pay.get("/api/v1/deposits", alice).json()["data"] == []


def test_each_connector_names_the_most_it_takes() -> None:
    assert SimulatorConnector.max_amount == 10**15
    assert StripeConnector.max_amount == 99_999_999  # eight digits: $999,999.99


def test_a_withdrawal_needs_an_idempotency_key(pay: Payments) -> None:
    alice = pay.funded(10_00)
    body = {"asset": "USD", "amount": "1.00", "destination": DESTINATION}
    response = pay.client.post("/api/v1/withdrawals", json=body, headers=bearer(pay.settings, alice))
    assert (response.status_code, response.json()["error"]) == (400, "idempotency_key_required")
    assert pay.held(alice) == 0


def test_withdrawals_wait_out_the_cooling_off_after_a_deposit(make_payments: Callable[..., Payments]) -> None:
    pay = make_payments(withdrawal_cooling_off_minutes=60)
    alice = pay.user()
    deposit = pay.deposit(alice, 40_00)
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    refused = pay.withdraw(alice, "5.00")
    assert (refused.status_code, refused.json()["error"]) == (409, "withdrawal_cooling_off")
    assert pay.held(alice) == 0
    # Money that did not come from a deposit (an adjustment) is not cooled off.
    bob = pay.funded(10_00)
    assert pay.withdraw(bob, "5.00").status_code == 201
    # Once the deposit is older than the window, alice may withdraw.
    with unit_of_work(pay.database) as session:
        session.execute(
            update(Deposit)
            .where(Deposit.id == deposit.id)
            .values(credited_at=datetime.now(UTC) - timedelta(minutes=61))
        )
    assert pay.withdraw(alice, "5.00").status_code == 201
    pay.books_balance()


def test_the_daily_limit_counts_only_withdrawals_that_may_still_pay(make_payments: Callable[..., Payments]) -> None:
    pay = make_payments(withdrawal_daily_limits={"USD": "100"}, withdrawal_review_above={"USD": "50"})
    alice = pay.funded(500_00)
    operator = pay.user(Role.operator)
    cancelled = pay.withdrawn(alice, "60.00")
    assert cancelled["state"] == "pending_review"
    assert pay.post(f"/api/v1/withdrawals/{cancelled['id']}/cancel", alice).status_code == 200
    kept = pay.withdrawn(alice, "80.00")
    over = pay.withdraw(alice, "20.01")
    assert (over.status_code, over.json()["error"]) == (409, "daily_limit_exceeded")
    assert pay.withdraw(alice, "20.00").status_code == 201
    full = pay.withdraw(alice, "0.01")
    assert (full.status_code, full.json()["error"]) == (409, "daily_limit_exceeded")
    rejected = pay.post(f"/api/v1/admin/withdrawals/{kept['id']}/reject", operator, {"reason": "wrong account"})
    assert rejected.status_code == 200, rejected.text
    assert pay.withdraw(alice, "80.00").status_code == 201
    # Another asset has no limit configured.
    fund(pay.database, alice.id, "EUR", 1_000_00)
    assert pay.withdraw(alice, "900.00", asset="EUR").status_code == 201
    pay.books_balance()


def test_an_enrolled_user_needs_a_current_totp_code(pay: Payments) -> None:
    alice = pay.funded(10_00)
    earlier = datetime.now(UTC) - timedelta(seconds=90)
    with unit_of_work(pay.database) as session:
        secret = identity.start_totp_enrolment(session, pay.settings, alice.id).secret
    otp = pyotp.TOTP(secret)
    with unit_of_work(pay.database) as session:
        identity.confirm_totp(session, pay.settings, alice.id, otp.at(earlier), now=earlier)
    key = uuid.uuid4().hex
    missing = pay.withdraw(alice, "1.00", key=key)
    assert (missing.status_code, missing.json()["error"]) == (401, "totp_required")
    now = time.time()
    window = {otp.at(now, counter_offset=n) for n in (-1, 0, 1)}
    wrong = next(code for code in ("000000", "111111", "222222", "333333") if code not in window)
    bad = pay.withdraw(alice, "1.00", key=key, totp_code=wrong)
    assert (bad.status_code, bad.json()["error"]) == (401, "invalid_totp_code")
    assert pay.held(alice) == 0
    accepted = pay.withdraw(alice, "1.00", totp_code=otp.now())
    assert accepted.status_code == 201, accepted.text
    assert pay.held(alice) == 1_00
    pay.books_balance()


# --- Approvals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asset", "amount", "required"),
    [
        ("USD", "100.00", 0),
        ("USD", "100.01", 1),
        ("USD", "1000.00", 1),
        ("USD", "1000.01", 2),
        ("EUR", "0.01", 1),  # not listed in the thresholds: always reviewed
    ],
)
def test_required_approvals_follow_the_thresholds(pay: Payments, asset: str, amount: str, required: int) -> None:
    alice = pay.funded(2_000_00, asset)
    withdrawal = pay.withdrawn(alice, amount, asset=asset)
    assert withdrawal["required_approvals"] == required
    assert withdrawal["state"] == ("approved" if required == 0 else "pending_review")
    # Only a withdrawal that needs nobody's approval has its payout queued at once.
    assert len(pay.jobs(f"payout:{withdrawal['id']}")) == (1 if required == 0 else 0)
    pay.books_balance()


def test_two_operators_approve_a_large_withdrawal_and_one_payout_is_queued(pay: Payments) -> None:
    alice = pay.funded(5_000_00)
    first, second = pay.user(Role.operator), pay.user(Role.admin)
    withdrawal = pay.withdrawn(alice, "2000.00")
    assert (withdrawal["state"], withdrawal["required_approvals"]) == ("pending_review", 2)
    one = pay.approve(withdrawal["id"], first)
    assert one.status_code == 200, one.text
    assert one.json()["state"] == "pending_review"
    assert [a["operator_id"] for a in one.json()["approvals"]] == [str(first.id)]
    twice = pay.approve(withdrawal["id"], first)
    assert (twice.status_code, twice.json()["error"]) == (409, "already_approved")
    assert pay.jobs(f"payout:{withdrawal['id']}") == []
    two = pay.post(f"/api/v1/admin/withdrawals/{withdrawal['id']}/approve", second, {"reason": "known customer"})
    assert two.status_code == 200, two.text
    assert two.json()["state"] == "approved"
    [job] = pay.jobs(f"payout:{withdrawal['id']}")
    assert (job.job, job.queue, json.loads(job.payload)) == (
        "payments.payout",
        "withdrawals",
        {"withdrawal_id": withdrawal["id"]},
    )
    late = pay.approve(withdrawal["id"], pay.user(Role.operator))
    assert (late.status_code, late.json()["error"]) == (409, "invalid_state")
    assert len(pay.jobs(f"payout:{withdrawal['id']}")) == 1
    detail = pay.get(f"/api/v1/admin/withdrawals/{withdrawal['id']}", first).json()
    trail = [(line["from_state"], line["to_state"], line["actor"]) for line in detail["audit"]]
    assert trail == [
        (None, "pending_review", f"user:{alice.id}"),
        ("pending_review", "pending_review", f"user:{first.id}"),
        ("pending_review", "approved", f"user:{second.id}"),
    ]
    assert detail["audit"][1]["reason"] == "approval 1 of 2"
    assert detail["audit"][2]["reason"] == "approval 2 of 2: known customer"
    pay.books_balance()


def test_nobody_approves_their_own_withdrawal(pay: Payments) -> None:
    operator = pay.funded(500_00, role=Role.operator)
    withdrawal = pay.withdrawn(operator, "200.00")
    refused = pay.approve(withdrawal["id"], operator)
    assert (refused.status_code, refused.json()["error"]) == (403, "self_approval_forbidden")
    assert pay.withdrawal_row(withdrawal["id"]).state.value == "pending_review"
    assert pay.approve(withdrawal["id"], pay.user(Role.operator)).json()["state"] == "approved"
    pay.books_balance()


def test_clients_are_refused_the_operator_routes(pay: Payments) -> None:
    alice = pay.funded(500_00)
    mallory = pay.user()
    withdrawal = pay.withdrawn(alice, "200.00")
    routes = [
        ("GET", "/api/v1/admin/withdrawals", None),
        ("GET", f"/api/v1/admin/withdrawals/{withdrawal['id']}", None),
        ("POST", f"/api/v1/admin/withdrawals/{withdrawal['id']}/approve", {}),
        ("POST", f"/api/v1/admin/withdrawals/{withdrawal['id']}/reject", {"reason": "because"}),
        ("GET", "/api/v1/admin/deposits", None),
        ("GET", "/api/v1/admin/reconciliation-reports", None),
    ]
    for method, path, body in routes:
        response = pay.client.request(method, path, json=body, headers=bearer(pay.settings, mallory))
        assert (response.status_code, response.json()["error"]) == (403, "forbidden"), path
    assert pay.withdrawal_row(withdrawal["id"]).state.value == "pending_review"


def test_a_rejection_needs_a_reason_and_releases_the_hold(pay: Payments) -> None:
    alice = pay.funded(500_00)
    operator = pay.user(Role.operator)
    withdrawal = pay.withdrawn(alice, "200.00")
    assert (pay.available(alice), pay.held(alice)) == (300_00, 200_00)
    path = f"/api/v1/admin/withdrawals/{withdrawal['id']}/reject"
    for body in ({}, {"reason": ""}, {"reason": "  x "}):
        refused = pay.post(path, operator, body)
        assert (refused.status_code, refused.json()["error"]) == (422, "validation_error"), body
    assert pay.held(alice) == 200_00
    rejected = pay.post(path, operator, {"reason": "destination does not match the KYC name"})
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["state"], rejected.json()["failure_reason"]) == (
        "rejected",
        "destination does not match the KYC name",
    )
    assert rejected.json()["audit"][-1]["reason"] == "destination does not match the KYC name"
    assert (pay.available(alice), pay.held(alice)) == (500_00, 0)
    again = pay.post(path, operator, {"reason": "once more"})
    assert (again.status_code, again.json()["error"]) == (409, "invalid_state")
    late = pay.approve(withdrawal["id"], operator)
    assert (late.status_code, late.json()["error"]) == (409, "invalid_state")
    assert pay.jobs(f"payout:{withdrawal['id']}") == []
    with unit_of_work(pay.database) as session:
        hold = session.get(Hold, uuid.UUID(withdrawal["hold_id"]))
        assert hold is not None
        assert (hold.state, hold.released) == (HoldState.released, 200_00)
    pay.books_balance()


def test_only_the_owner_cancels_and_only_while_pending_review(pay: Payments) -> None:
    alice = pay.funded(500_00)
    bob = pay.funded(10_00)
    pending = pay.withdrawn(alice, "200.00")
    approved = pay.withdrawn(alice, "50.00")
    other = pay.post(f"/api/v1/withdrawals/{pending['id']}/cancel", bob)
    assert (other.status_code, other.json()["error"]) == (404, "withdrawal_not_found")
    assert pay.withdrawal_row(pending["id"]).state.value == "pending_review"
    too_late = pay.post(f"/api/v1/withdrawals/{approved['id']}/cancel", alice)
    assert (too_late.status_code, too_late.json()["error"]) == (409, "invalid_state")
    cancelled = pay.post(f"/api/v1/withdrawals/{pending['id']}/cancel", alice)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] == "cancelled"
    assert (pay.available(alice), pay.held(alice)) == (450_00, 50_00)
    twice = pay.post(f"/api/v1/withdrawals/{pending['id']}/cancel", alice)
    assert (twice.status_code, twice.json()["error"]) == (409, "invalid_state")
    assert pay.held(alice) == 50_00
    pay.books_balance()


# --- IDOR ------------------------------------------------------------------------------------


def test_another_clients_deposits_and_withdrawals_are_404(pay: Payments) -> None:
    alice = pay.funded(500_00)
    bob = pay.user()
    operator = pay.user(Role.operator)
    withdrawal = pay.withdrawn(alice, "200.00")
    deposit = pay.deposit(alice, 25_00)
    own = pay.get(f"/api/v1/withdrawals/{withdrawal['id']}", alice)
    assert own.status_code == 200
    assert own.json()["audit"] is None  # the audit trail is for operators
    assert pay.get(f"/api/v1/deposits/{deposit.id}", alice).json()["amount"] == "25.00"
    denied = {
        f"/api/v1/withdrawals/{withdrawal['id']}": "withdrawal_not_found",
        f"/api/v1/withdrawals/{uuid.uuid4()}": "withdrawal_not_found",
        f"/api/v1/deposits/{deposit.id}": "deposit_not_found",
        f"/api/v1/deposits/{uuid.uuid4()}": "deposit_not_found",
    }
    for path, code in denied.items():
        response = pay.get(path, bob)
        assert (response.status_code, response.json()["error"]) == (404, code), path
    cancel = pay.post(f"/api/v1/withdrawals/{withdrawal['id']}/cancel", bob)
    assert (cancel.status_code, cancel.json()["error"]) == (404, "withdrawal_not_found")
    assert pay.get("/api/v1/withdrawals", bob).json() == {"data": [], "next_before": None}
    assert pay.get("/api/v1/deposits", bob).json() == {"data": [], "next_before": None}
    assert [w["id"] for w in pay.get("/api/v1/withdrawals", alice).json()["data"]] == [withdrawal["id"]]
    assert [d["id"] for d in pay.get("/api/v1/deposits", alice).json()["data"]] == [str(deposit.id)]
    # Operators see any client's, with the audit trail.
    assert pay.get(f"/api/v1/admin/deposits/{deposit.id}", operator).status_code == 200
    assert pay.get(f"/api/v1/admin/withdrawals/{withdrawal['id']}", operator).json()["audit"]


# --- The webhook inbox -------------------------------------------------------------------------


def test_a_webhook_for_an_unknown_connector_is_404(pay: Payments) -> None:
    event = _event("deposit.succeeded", {"id": "dep_x", "reference": "x", "amount": 1, "currency": "USD"})
    response = pay.webhook(event, connector="nope")
    assert (response.status_code, response.json()["error"]) == (404, "unknown_connector")
    assert pay.event_row(event["id"]) is None


@pytest.mark.parametrize(
    ("how", "code"),
    [
        ("missing", "invalid_signature"),
        ("forged", "invalid_signature"),
        ("malformed", "invalid_signature"),
        ("stale", "signature_expired"),
    ],
)
def test_a_badly_signed_webhook_is_refused_and_nothing_is_stored(pay: Payments, how: str, code: str) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 10_00)
    event = deposit_event("deposit.succeeded", deposit, status="succeeded")
    body = json.dumps(event).encode()
    before = pay.counts()
    if how == "missing":
        response = pay.webhook(body, signed=False)
    elif how == "forged":
        response = pay.webhook(body, secret="not-the-shared-secret-0123456789")
    elif how == "malformed":
        response = pay.client.post(WEBHOOK, content=body, headers={signing.SIGNATURE_HEADER: "v1=abc"})
    else:
        response = pay.webhook(body, timestamp=int(time.time()) - 3600)
    assert (response.status_code, response.json()["error"]) == (401, code), response.text
    assert pay.event_row(event["id"]) is None
    assert pay.counts() == before
    assert pay.deposit_row(deposit).state is DepositState.pending


def test_a_replayed_event_is_acknowledged_as_a_duplicate_and_queues_nothing(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 10_00)
    event = deposit_event("deposit.succeeded", deposit, status="succeeded")
    row_id = pay.receive(event)
    assert len(pay.jobs(f"psp-event:{row_id}")) == 1
    before = pay.counts()
    # A replay signed later (the provider retries with a new signature) and the very same request.
    for _ in range(2):
        replay = pay.webhook(event)
        assert replay.status_code == 200, replay.text
        assert replay.json() == {"received": True, "duplicate": True}
    assert pay.counts() == before
    # Even after the first job ran (its unique key is free again), a replay queues nothing.
    pay.run_queued(f"psp-event:{row_id}")
    assert pay.webhook(event).json()["duplicate"] is True
    assert pay.jobs(f"psp-event:{row_id}") == []
    assert pay.available(alice) == 10_00
    pay.books_balance()


def test_an_unknown_event_type_is_stored_as_ignored_and_queues_nothing(pay: Payments) -> None:
    event = _event("customer.created", {"id": "cus_1"})
    before = pay.counts()
    response = pay.webhook(event)
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True, "duplicate": False}
    row = pay.event_row(event["id"])
    assert row is not None
    assert (row.kind, row.provider_type, row.outcome) == ("ignored", "customer.created", "ignored")
    assert row.processed_at is not None
    assert json.loads(row.body) == event
    assert pay.jobs(f"psp-event:{row.id}") == []
    assert pay.counts() == before


@pytest.mark.parametrize("body", [b"not json at all", b"[1, 2]", b'{"type": "deposit.succeeded"}'])
def test_a_well_signed_body_that_is_not_an_event_is_400(pay: Payments, body: bytes) -> None:
    before = pay.counts()
    response = pay.webhook(body)
    assert (response.status_code, response.json()["error"]) == (400, "malformed_event")
    assert pay.counts() == before


# --- Deposit events ------------------------------------------------------------------------------


def test_a_success_credits_the_deposit_once(pay: Payments) -> None:
    alice = pay.user()
    operator = pay.user(Role.operator)
    deposit = pay.deposit(alice, 123_45)
    clearing = pay.clearing()
    event = deposit_event("deposit.succeeded", deposit, status="succeeded")
    assert pay.deliver(event) == "applied"
    row = pay.deposit_row(deposit)
    assert row.state is DepositState.succeeded
    assert row.credited_at is not None
    assert row.settled_at is not None
    assert pay.available(alice) == 123_45
    assert pay.clearing() == clearing - 123_45
    # The same success under another event id (a second notification) is a duplicate.
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "duplicate"
    assert pay.available(alice) == 123_45
    shown = pay.get(f"/api/v1/deposits/{deposit.id}", alice).json()
    assert (shown["state"], shown["amount"]) == ("succeeded", "123.45")
    audit = pay.get(f"/api/v1/admin/deposits/{deposit.id}", operator).json()["audit"]
    assert [(a["from_state"], a["to_state"], a["actor"]) for a in audit] == [("pending", "succeeded", "psp:simulator")]
    pay.books_balance()


@pytest.mark.parametrize(("amount", "currency"), [(99_99, "USD"), (100_01, "USD"), (100_00, "EUR")])
def test_an_amount_or_currency_mismatch_needs_review(pay: Payments, amount: int, currency: str) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 100_00)
    event = deposit_event("deposit.succeeded", deposit, amount=amount, currency=currency, status="succeeded")
    assert pay.deliver(event) == "needs_review"
    row = pay.deposit_row(deposit)
    assert (row.state, row.received_amount, row.received_currency) == (DepositState.needs_review, amount, currency)
    assert row.credit_entry_id is None
    assert pay.available(alice) == 0
    # A later, matching success does not credit a deposit under review.
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "recorded"
    assert pay.available(alice) == 0
    pay.books_balance()


# --- Operators resolve deposits under review ------------------------------------------------


def _under_review(pay: Payments, user: TestUser, asked: int, received: int | None, currency: str = "USD") -> DepositRef:
    deposit = pay.deposit(user, asked)
    reported = asked + 1 if received is None else received
    event = deposit_event("deposit.succeeded", deposit, amount=reported, currency=currency, status="succeeded")
    assert pay.deliver(event) == "needs_review"
    if received is None:  # a provider that names no amount (the simulator always does)
        with unit_of_work(pay.database) as session:
            session.execute(update(Deposit).where(Deposit.id == deposit.id).values(received_amount=None))
    return deposit


def _review(pay: Payments, deposit: DepositRef, action: str, operator: TestUser, **options: Any) -> httpx.Response:
    body = {"reason": options.pop("reason", "bank wire came in short; confirmed with the payer")}
    headers = pay.headers(operator, options.pop("key", None))
    return pay.client.post(f"/api/v1/admin/deposits/{deposit.id}/{action}", json=body, headers=headers)


def test_an_operator_finds_the_deposits_under_review_and_credits_what_arrived(pay: Payments) -> None:
    alice = pay.user()
    operator = pay.user(Role.operator)
    deposit = _under_review(pay, alice, 100_00, 99_50)
    listed = pay.get("/api/v1/admin/deposits?state=needs_review&limit=200", operator)
    assert listed.status_code == 200, listed.text
    [found] = [row for row in listed.json()["data"] if row["id"] == str(deposit.id)]
    assert (found["amount"], found["received_amount"], found["received_currency"]) == ("100.00", "99.50", "USD")
    clearing, entries = pay.clearing(), pay.counts()[0]

    key = uuid.uuid4().hex
    credited = _review(pay, deposit, "credit", operator, key=key)
    assert credited.status_code == 200, credited.text
    body = credited.json()
    assert (body["state"], body["amount"], body["received_amount"]) == ("succeeded", "99.50", "99.50")
    assert body["credited_at"] is not None
    last = body["audit"][-1]
    assert (last["from_state"], last["to_state"], last["actor"]) == ("needs_review", "succeeded", f"user:{operator.id}")
    assert "bank wire came in short" in last["reason"]
    assert "99.50" in last["reason"] or "9950" in last["reason"]
    # What arrived, and only that, moved from the provider's clearing account to the wallet.
    assert pay.available(alice) == 99_50
    assert pay.clearing() == clearing - 99_50
    assert pay.counts()[0] == entries + 1
    row = pay.deposit_row(deposit)
    assert (row.state, row.amount, row.credit_entry_id is not None) == (DepositState.succeeded, 99_50, True)
    with pay.database.sessions() as session:
        entry = session.get_one(JournalEntry, row.credit_entry_id)
        assert entry.actor == f"user:{operator.id}"

    # The same request again replays the answer; another one is refused: credited once only.
    replay = _review(pay, deposit, "credit", operator, key=key)
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (200, "true")
    again = _review(pay, deposit, "credit", pay.user(Role.operator))
    assert (again.status_code, again.json()["error"]) == (409, "invalid_state")
    assert pay.available(alice) == 99_50
    # A refund later reverses at most what was credited.
    refund = deposit_event("deposit.refunded", deposit, amount=100_00, status="refunded")
    assert pay.deliver(refund) == "applied"
    assert (pay.available(alice), pay.receivable(alice)) == (0, 0)
    pay.books_balance()


def test_an_operator_rejects_a_deposit_under_review_and_nothing_is_credited(pay: Payments) -> None:
    alice = pay.user()
    operator = pay.user(Role.operator)
    deposit = _under_review(pay, alice, 100_00, 100_01)
    entries = pay.counts()[0]
    for body in ({}, {"reason": ""}, {"reason": "  x "}):
        refused = pay.post(f"/api/v1/admin/deposits/{deposit.id}/reject", operator, body)
        assert (refused.status_code, refused.json()["error"]) == (422, "validation_error"), body
    rejected = _review(pay, deposit, "reject", operator, reason="payer sent from a third-party account")
    assert rejected.status_code == 200, rejected.text
    body = rejected.json()
    assert body["state"] == "failed"
    assert body["failure_reason"] == "rejected after review: payer sent from a third-party account"
    last = body["audit"][-1]
    assert (last["from_state"], last["to_state"], last["actor"]) == ("needs_review", "failed", f"user:{operator.id}")
    assert pay.available(alice) == 0
    assert pay.counts()[0] == entries
    late = _review(pay, deposit, "credit", operator)
    assert (late.status_code, late.json()["error"]) == (409, "invalid_state")
    pay.books_balance()


def test_another_currency_or_no_amount_is_never_credited(pay: Payments) -> None:
    alice = pay.user()
    operator = pay.user(Role.operator)
    euros = _under_review(pay, alice, 100_00, 100_00, "EUR")
    refused = _review(pay, euros, "credit", operator)
    assert (refused.status_code, refused.json()["error"]) == (409, "deposit_currency_mismatch")
    unknown = _under_review(pay, alice, 100_00, None)
    nothing = _review(pay, unknown, "credit", operator)
    assert (nothing.status_code, nothing.json()["error"]) == (409, "received_amount_unknown")
    for deposit in (euros, unknown):
        assert pay.deposit_row(deposit).state is DepositState.needs_review
        assert _review(pay, deposit, "reject", operator).json()["state"] == "failed"
    assert pay.available(alice) == 0
    pay.books_balance()


def test_nobody_resolves_their_own_deposit_and_clients_resolve_none(pay: Payments) -> None:
    operator = pay.user(Role.operator)
    own = _under_review(pay, operator, 50_00, 49_00)
    for action in ("credit", "reject"):
        refused = _review(pay, own, action, operator)
        assert (refused.status_code, refused.json()["error"]) == (403, "self_approval_forbidden"), action
    alice = pay.user()
    theirs = _under_review(pay, alice, 50_00, 49_00)
    for action in ("credit", "reject"):
        refused = _review(pay, theirs, action, alice)
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden"), action
    missing = pay.client.post(
        f"/api/v1/admin/deposits/{uuid.uuid4()}/reject", json={"reason": "no such"}, headers=pay.headers(operator)
    )
    assert (missing.status_code, missing.json()["error"]) == (404, "deposit_not_found")
    pending = pay.deposit(alice, 10_00)
    early = _review(pay, pending, "credit", operator)
    assert (early.status_code, early.json()["error"]) == (409, "invalid_state")
    assert pay.deposit_row(own).state is DepositState.needs_review
    assert pay.available(operator) == 0
    assert _review(pay, own, "credit", pay.user(Role.admin)).json()["state"] == "succeeded"
    assert pay.available(operator) == 49_00
    pay.books_balance()


def test_a_failure_then_a_success_credits(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 30_00)
    failed = deposit_event("deposit.failed", deposit, status="failed", failure_reason="card_declined")
    assert pay.deliver(failed) == "applied"
    row = pay.deposit_row(deposit)
    assert (row.state, row.failure_reason) == (DepositState.failed, "card_declined")
    assert pay.available(alice) == 0
    # The payer retried with another card.
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    assert pay.deposit_row(deposit).state is DepositState.succeeded
    assert pay.available(alice) == 30_00
    pay.books_balance()


def test_a_success_after_the_deposit_expired_still_credits(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 15_00)
    with unit_of_work(pay.database) as session:
        session.execute(
            update(Deposit).where(Deposit.id == deposit.id).values(created_at=datetime.now(UTC) - timedelta(hours=3))
        )
        assert deposits.expire_stale(session, older_than=timedelta(hours=2)) >= 1
    assert pay.deposit_row(deposit).state is DepositState.expired
    # A slow bank: the payer did pay, so the money is credited.
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    assert pay.deposit_row(deposit).state is DepositState.succeeded
    assert pay.available(alice) == 15_00
    pay.books_balance()


def test_a_failure_after_a_success_is_recorded_and_reverses_nothing(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 30_00)
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    late = deposit_event("deposit.failed", deposit, status="failed", failure_reason="card_declined")
    assert pay.deliver(late) == "recorded"
    assert pay.deposit_row(deposit).state is DepositState.succeeded
    assert pay.available(alice) == 30_00
    pay.books_balance()


def test_an_unmatched_event_changes_nothing(pay: Payments) -> None:
    stranger = DepositRef(uuid.uuid4(), f"dep_{uuid.uuid4().hex[:20]}", 5_00)
    before = pay.counts()
    assert pay.deliver(deposit_event("deposit.succeeded", stranger, status="succeeded")) == "unmatched"
    assert pay.counts() == before


def test_a_refund_before_its_success_waits_and_changes_nothing(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 20_00)
    refund = deposit_event("deposit.refunded", deposit, status="refunded")
    row_id = pay.receive(refund)
    before = pay.counts()
    with pytest.raises(EventNotReady):
        pay.run_queued(f"psp-event:{row_id}")
    with pytest.raises(EventNotReady):
        pay.process(row_id)
    assert pay.counts() == before
    row = pay.event_row(refund["id"])
    assert row is not None
    assert (row.processed_at, row.outcome) == (None, None)
    assert pay.deposit_row(deposit).state is DepositState.pending
    # Once the success is processed, the retried refund applies.
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    assert pay.available(alice) == 20_00
    pay.run_queued(f"psp-event:{row_id}")
    assert pay.process(row_id) == "applied"
    row_after = pay.deposit_row(deposit)
    assert (row_after.state, row_after.reversed_amount) == (DepositState.refunded, 20_00)
    assert pay.available(alice) == 0
    pay.books_balance()


def test_a_cumulative_refund_reverses_only_what_is_new(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 100_00)
    clearing = pay.clearing()
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    assert pay.deliver(deposit_event("deposit.refunded", deposit, amount=30_00)) == "applied"
    assert (pay.deposit_row(deposit).reversed_amount, pay.available(alice)) == (30_00, 70_00)
    # The provider reports the refunded total: 70 in all means 40 more.
    assert pay.deliver(deposit_event("deposit.refunded", deposit, amount=70_00)) == "applied"
    row = pay.deposit_row(deposit)
    assert (row.state, row.reversed_amount) == (DepositState.refunded, 70_00)
    assert pay.available(alice) == 30_00
    # A total that is not larger is a duplicate; a total above the deposit stops at the deposit.
    assert pay.deliver(deposit_event("deposit.refunded", deposit, amount=70_00)) == "duplicate"
    assert pay.deliver(deposit_event("deposit.refunded", deposit, amount=500_00)) == "applied"
    assert (pay.deposit_row(deposit).reversed_amount, pay.available(alice)) == (100_00, 0)
    assert pay.clearing() == clearing
    assert pay.receivable(alice) == 0
    pay.books_balance()


def test_a_chargeback_of_spent_money_is_a_debt_that_blocks_withdrawals_until_repaid(pay: Payments) -> None:
    alice, bob = pay.user(), pay.user()
    operator = pay.user(Role.operator)
    first = pay.deposit(alice, 100_00)
    assert pay.deliver(deposit_event("deposit.succeeded", first, status="succeeded")) == "applied"
    # Alice spends 70 of the 100.
    with unit_of_work(pay.database) as session:
        transfer(
            session,
            from_user=alice.id,
            to_user=bob.id,
            asset="USD",
            amount=70_00,
            context=Context(actor="test", idempotency_key=f"spend:{uuid.uuid4()}"),
        )
    clearing = pay.clearing()
    assert pay.deliver(deposit_event("deposit.disputed", first, status="disputed")) == "applied"
    row = pay.deposit_row(first)
    assert (row.state, row.reversed_amount) == (DepositState.charged_back, 100_00)
    assert (pay.available(alice), pay.receivable(alice)) == (0, -70_00)
    assert pay.clearing() == clearing + 100_00
    assert pay.available(bob) == 70_00  # what was spent stays spent
    blocked = pay.withdraw(alice, "0.01")
    assert (blocked.status_code, blocked.json()["error"]) == (409, "withdrawals_blocked")
    # The next deposits repay the debt before anything reaches the wallet.
    second = pay.deposit(alice, 50_00)
    assert pay.deliver(deposit_event("deposit.succeeded", second, status="succeeded")) == "applied"
    assert (pay.available(alice), pay.receivable(alice)) == (0, -20_00)
    assert pay.withdraw(alice, "0.01").json()["error"] == "withdrawals_blocked"
    third = pay.deposit(alice, 50_00)
    assert pay.deliver(deposit_event("deposit.succeeded", third, status="succeeded")) == "applied"
    assert (pay.available(alice), pay.receivable(alice)) == (30_00, 0)
    assert pay.get(f"/api/v1/admin/deposits/{third.id}", operator).json()["audit"][-1]["reason"] == (
        "debt repaid first"
    )
    assert pay.withdraw(alice, "30.00").status_code == 201
    pay.books_balance()


def test_a_credit_writes_one_balanced_entry_the_deposit_and_one_audit_line(pay: Payments) -> None:
    alice = pay.user()
    deposit = pay.deposit(alice, 42_17)
    clearing = pay.clearing()
    event = deposit_event("deposit.succeeded", deposit, status="succeeded")
    entries, lines, _ = pay.counts()
    assert pay.deliver(event) == "applied"
    assert pay.counts()[:2] == (entries + 1, lines + 1)
    row = pay.deposit_row(deposit)
    assert (row.state, row.psp_reference, row.reversed_amount) == (DepositState.succeeded, deposit.psp_reference, 0)
    assert row.settled_at == datetime.fromtimestamp(event["created"], UTC)
    assert row.credited_at is not None
    assert row.updated_at == row.credited_at
    with pay.database.sessions() as session:
        entry = session.get(JournalEntry, row.credit_entry_id)
        assert entry is not None
        postings = session.execute(
            select(Account.kind, Account.ref, Posting.amount)
            .join(Account, Account.id == Posting.account_id)
            .where(Posting.entry_id == entry.id)
        ).all()
        [line] = session.scalars(select(PaymentAudit).where(PaymentAudit.subject_id == deposit.id)).all()
    assert (entry.kind, entry.idempotency_key, entry.actor) == (
        "deposit",
        f"psp-event:simulator:{event['id']}",
        "psp:simulator",
    )
    assert entry.meta == {"deposit_id": str(deposit.id), "connector": "simulator", "repaid_debt": 0}
    assert sorted(postings) == sorted(
        [(AccountKind.psp_clearing, "simulator", -42_17), (AccountKind.available, str(alice.id), 42_17)]
    )
    assert (line.subject_type, line.from_state, line.to_state, line.actor, line.reason) == (
        "deposit",
        "pending",
        "succeeded",
        "psp:simulator",
        None,
    )
    assert line.created_at == row.credited_at
    assert (pay.available(alice), pay.clearing()) == (42_17, clearing - 42_17)
    pay.books_balance()


def test_the_first_deposit_in_a_new_asset_opens_its_accounts(pay: Payments) -> None:
    alice = pay.user()
    asset = "EUR"
    with pay.database.sessions() as session:
        before = session.scalar(select(func.count()).where(Account.ref == str(alice.id), Account.asset == asset))
    assert before == 0
    deposit = pay.deposit(alice, 5_00, asset)
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    assert pay.available(alice, asset) == 5_00
    assert pay.system_balance(AccountKind.psp_clearing, asset, "simulator") <= -5_00
    with pay.database.sessions() as session:
        kinds = set(session.scalars(select(Account.kind).where(Account.ref == str(alice.id), Account.asset == asset)))
    # No debt account is opened for a user who owes nothing.
    assert kinds == {AccountKind.available}
    pay.books_balance()


def test_two_credits_at_once_repay_a_debt_exactly_once(pay: Payments) -> None:
    """On PostgreSQL both credits are made to wait on the debt account's lock, then race."""
    alice, bob = pay.user(), pay.user()
    first = pay.deposit(alice, 100_00)
    assert pay.deliver(deposit_event("deposit.succeeded", first, status="succeeded")) == "applied"
    with unit_of_work(pay.database) as session:
        transfer(
            session,
            from_user=alice.id,
            to_user=bob.id,
            asset="USD",
            amount=70_00,
            context=Context(actor="test", idempotency_key=f"spend:{uuid.uuid4()}"),
        )
    assert pay.deliver(deposit_event("deposit.disputed", first, status="disputed")) == "applied"
    assert (pay.available(alice), pay.receivable(alice)) == (0, -70_00)
    refs = [pay.deposit(alice, 50_00), pay.deposit(alice, 50_00)]
    rows = [pay.receive(deposit_event("deposit.succeeded", ref, status="succeeded")) for ref in refs]
    outcomes: list[str] = []
    failures: list[BaseException] = []

    def credit(row_id: int) -> None:
        try:
            outcomes.append(pay.process(row_id))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=credit, args=(row_id,)) for row_id in rows]
    if pay.database.engine.dialect.name != "postgresql":
        for thread in threads:
            thread.start()
    else:
        url = pay.database.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        # Hold the debt account's lock, so both credits are inside their transactions at once.
        with psycopg.connect(url) as holder, psycopg.connect(url, autocommit=True) as watch:
            holder.execute(
                "SELECT id FROM accounts WHERE kind = 'chargeback_receivable' AND ref = %s FOR UPDATE", (str(alice.id),)
            )
            for thread in threads:
                thread.start()

            def waiting() -> bool:
                row = watch.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND pid <> %s",
                    (holder.info.backend_pid,),
                ).fetchone()
                return row is not None and int(row[0]) >= 2

            wait_until(waiting, "both credits waiting for the debt account's lock")
            holder.rollback()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(outcomes) == ["applied", "applied"]
    assert (pay.available(alice), pay.receivable(alice)) == (30_00, 0)
    with pay.database.sessions() as session:
        repaid = sorted(
            entry.meta["repaid_debt"]
            for entry in session.scalars(
                select(JournalEntry).where(
                    JournalEntry.kind == "deposit",
                    JournalEntry.idempotency_key.in_(
                        [f"psp-event:simulator:{row.event_id}" for row in map(pay.event_row_by_id, rows)]
                    ),
                )
            )
        )
        reasons = sorted(
            str(line.reason)
            for line in session.scalars(
                select(PaymentAudit).where(PaymentAudit.subject_id.in_([ref.id for ref in refs]))
            )
            if line.to_state == "succeeded"
        )
    assert repaid == [20_00, 50_00]
    assert reasons == ["debt repaid first", "debt repaid first"]
    # Every run again of either event changes nothing.
    before = pay.counts()
    assert [pay.process(row_id) for row_id in rows] == ["applied", "applied"]
    assert pay.counts() == before
    # With the debt repaid, the next deposit goes to the wallet whole.
    third = pay.deposit(alice, 10_00)
    assert pay.deliver(deposit_event("deposit.succeeded", third, status="succeeded")) == "applied"
    assert (pay.available(alice), pay.receivable(alice)) == (40_00, 0)
    pay.books_balance()


def test_a_debt_also_stops_the_approval_of_a_waiting_withdrawal(pay: Payments) -> None:
    alice = pay.user()
    operator = pay.user(Role.operator)
    deposit = pay.deposit(alice, 300_00)
    assert pay.deliver(deposit_event("deposit.succeeded", deposit, status="succeeded")) == "applied"
    withdrawal = pay.withdrawn(alice, "200.00")
    assert withdrawal["state"] == "pending_review"
    # The hold is not available money: the chargeback leaves a debt of 200.
    with unit_of_work(pay.database) as session:
        row = session.get(Deposit, deposit.id)
        assert row is not None
        shortfall = deposits.reverse(
            session,
            row,
            amount=300_00,
            chargeback=True,
            actor=Actor("test"),
            idempotency_key=f"test-chargeback:{deposit.id}",
            reason="dispute opened",
        )
    assert shortfall == 200_00
    assert pay.receivable(alice) == -200_00
    refused = pay.approve(withdrawal["id"], operator)
    assert (refused.status_code, refused.json()["error"]) == (409, "withdrawals_blocked")
    assert pay.jobs(f"payout:{withdrawal['id']}") == []
    pay.books_balance()


# --- Payout events -----------------------------------------------------------------------------


def test_a_payout_success_captures_the_hold_into_clearing(pay: Payments) -> None:
    alice = pay.funded(100_00)
    withdrawal = pay.withdrawn(alice, "60.00")
    assert withdrawal["state"] == "approved"
    clearing = pay.clearing()
    succeeded = payout_event("payout.succeeded", withdrawal, status="succeeded")
    assert pay.deliver(succeeded) == "applied"
    row = pay.withdrawal_row(withdrawal["id"])
    assert row.state.value == "succeeded"
    assert row.psp_reference == succeeded["data"]["object"]["id"]
    assert row.settled_at is not None
    assert (pay.available(alice), pay.held(alice)) == (40_00, 0)
    assert pay.clearing() == clearing + 60_00
    with pay.database.sessions() as session:
        hold = session.get(Hold, row.hold_id)
        assert hold is not None
        assert (hold.state, hold.captured) == (HoldState.captured, 60_00)
    # A second notification of the same payout is a duplicate; a failure after it is only recorded.
    assert pay.deliver(payout_event("payout.succeeded", withdrawal, status="succeeded")) == "duplicate"
    late = payout_event("payout.failed", withdrawal, status="failed", failure_reason="account_closed")
    assert pay.deliver(late) == "recorded"
    assert pay.withdrawal_row(withdrawal["id"]).state.value == "succeeded"
    assert (pay.available(alice), pay.held(alice), pay.clearing()) == (40_00, 0, clearing + 60_00)
    pay.books_balance()


def test_a_payout_failure_releases_the_hold(pay: Payments) -> None:
    alice = pay.funded(100_00)
    withdrawal = pay.withdrawn(alice, "60.00")
    clearing = pay.clearing()
    failed = payout_event("payout.failed", withdrawal, status="failed", failure_reason="account_closed")
    assert pay.deliver(failed) == "applied"
    row = pay.withdrawal_row(withdrawal["id"])
    assert (row.state.value, row.failure_reason) == ("failed", "account_closed")
    assert (pay.available(alice), pay.held(alice)) == (100_00, 0)
    assert pay.clearing() == clearing
    assert pay.deliver(payout_event("payout.failed", withdrawal, status="failed")) == "duplicate"
    assert pay.deliver(payout_event("payout.succeeded", withdrawal, status="succeeded")) == "recorded"
    assert (pay.available(alice), pay.held(alice), pay.clearing()) == (100_00, 0, clearing)
    pay.books_balance()


def test_a_payout_paid_for_another_amount_is_recorded_not_applied(pay: Payments) -> None:
    alice = pay.funded(100_00)
    withdrawal = pay.withdrawn(alice, "60.00")
    clearing = pay.clearing()
    wrong = payout_event("payout.succeeded", withdrawal, status="succeeded", amount=59_00)
    assert pay.deliver(wrong) == "recorded"
    row = pay.withdrawal_row(withdrawal["id"])
    assert row.state.value == "approved"
    assert (pay.available(alice), pay.held(alice), pay.clearing()) == (40_00, 60_00, clearing)
    pay.books_balance()


def test_an_inactive_asset_can_still_be_withdrawn(pay: Payments) -> None:
    alice = pay.funded(100_00)
    with pay.database.sessions() as session, session.begin():
        session.execute(text("UPDATE assets SET active = false WHERE code = 'USD'"))
    try:
        assert pay.withdrawn(alice, "10.00")["state"] == "approved"
    finally:
        with pay.database.sessions() as session, session.begin():
            session.execute(text("UPDATE assets SET active = true WHERE code = 'USD'"))
    pay.books_balance()


def test_a_payout_event_for_a_withdrawal_under_review_is_only_recorded(pay: Payments) -> None:
    alice = pay.funded(500_00)
    withdrawal = pay.withdrawn(alice, "200.00")
    assert withdrawal["state"] == "pending_review"
    assert pay.deliver(payout_event("payout.succeeded", withdrawal, status="succeeded")) == "recorded"
    assert pay.withdrawal_row(withdrawal["id"]).state.value == "pending_review"
    assert pay.held(alice) == 200_00
    pay.books_balance()


def test_a_stripe_dispute_after_a_partial_refund_reverses_the_whole_disputed_amount(
    make_payments: Callable[..., Payments],
) -> None:
    pay = make_payments(
        psp_connectors=("simulator", "stripe"), stripe_api_key="sk_test_unused", stripe_webhook_secret=STRIPE_SECRET
    )
    alice = pay.user()
    deposit = pay.deposit(alice, 100_00, connector="stripe")
    intent = f"pi_{uuid.uuid4().hex[:20]}"
    metadata = {"bourse_reference": str(deposit.id)}
    clearing = pay.system_balance(AccountKind.psp_clearing, "USD", "stripe")
    paid = {"id": intent, "object": "payment_intent", "amount_received": 100_00, "currency": "usd"}
    assert pay.deliver(_event("payment_intent.succeeded", {**paid, "metadata": metadata}), "stripe") == "applied"
    assert pay.deposit_row(deposit).psp_reference == intent
    # 30 refunded (Stripe reports the running total), then the payer disputes the 70 left.
    charge = {"id": "ch_1", "object": "charge", "payment_intent": intent, "currency": "usd", "metadata": metadata}
    refunded = _event("charge.refunded", {**charge, "amount_refunded": 30_00, "refunded": False})
    assert pay.deliver(refunded, "stripe") == "applied"
    assert pay.available(alice) == 70_00
    dispute = {"id": "dp_1", "object": "dispute", "payment_intent": intent, "charge": "ch_1", "currency": "usd"}
    assert pay.deliver(_event("charge.dispute.created", {**dispute, "amount": 70_00}), "stripe") == "applied"
    pay.books_balance()
    # Stripe took back all 100: the books must say so.
    assert (pay.deposit_row(deposit).reversed_amount, pay.available(alice)) == (100_00, 0)
    assert pay.system_balance(AccountKind.psp_clearing, "USD", "stripe") == clearing
