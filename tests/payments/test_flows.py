"""Deposits, webhooks, payouts, chargebacks and reconciliation end to end: real HTTP
between a client, the API, the worker and the PSP simulator, on PostgreSQL and Redis."""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import select, text

from bourse.db import unit_of_work
from bourse.identity.models import Role
from bourse.payments.models import DepositState, ReconciliationReport, WithdrawalState
from bourse.psp.registry import close_all
from bourse.queue.registry import JobContext, load_jobs
from tests.support.payments import RETRY_AFTER, Stack
from tests.support.processes import run_bourse
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process


def _event(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"evt_test_{uuid.uuid4().hex}",
        "object": "event",
        "type": kind,
        "created": int(time.time()),
        "data": {"object": obj},
    }


def _sim_deposit(stack: Stack, deposit: dict[str, Any], **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = stack.sim("GET", f"/v1/deposits/{deposit['psp_reference']}").json()
    obj.update(changes)
    return obj


# --- Deposits ------------------------------------------------------------------------------


def test_a_paid_deposit_is_credited_once(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "250.00")
    assert deposit["state"] == "pending"
    assert deposit["checkout_url"].startswith(stack.sim_url)
    page = stack.http.get(deposit["checkout_url"])
    assert page.status_code == 200
    assert "250" in page.text
    stack.pay(deposit)
    row = stack.wait_deposit(deposit["id"], DepositState.succeeded)
    assert row.credited_at is not None
    assert stack.wallet(user)["available"] == "250.00"
    shown = stack.api("GET", f"/api/v1/deposits/{deposit['id']}", user).json()
    assert shown["state"] == "succeeded"
    # Another client cannot see it.
    assert stack.api("GET", f"/api/v1/deposits/{deposit['id']}", stack.user()).status_code == 404


def test_a_declined_deposit_fails_and_credits_nothing(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "40.00")
    stack.pay(deposit, "decline")
    row = stack.wait_deposit(deposit["id"], DepositState.failed)
    assert row.failure_reason == "declined_by_payer"
    assert stack.wallet(user)["available"] == "0.00"


def test_the_scheduler_expires_an_abandoned_deposit(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "15.00")
    with stack.db.engine.begin() as conn:
        conn.execute(
            text("UPDATE deposits SET created_at = now() - interval '2 hours' WHERE id = :id"),
            {"id": uuid.UUID(deposit["id"])},
        )
    # The real scheduler command runs the tasks due this minute; expiry is due every minute.
    result = run_bourse("schedule", "run", env=stack.env, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    stack.wait_deposit(deposit["id"], DepositState.expired)
    audit = stack.api("GET", f"/api/v1/admin/deposits/{deposit['id']}", stack.user(Role.operator)).json()["audit"]
    assert [line["to_state"] for line in audit] == ["pending", "expired"]


def test_a_deposit_when_the_psp_is_down_keeps_nothing(stack: Stack) -> None:
    user = stack.user()
    stack.faults(api_failures={"count": 1, "mode": "error", "endpoints": ["deposits"]})
    key = uuid.uuid4().hex
    body = {"asset": "USD", "amount": "10.00"}
    refused = stack.api("POST", "/api/v1/deposits", user, json=body, headers={"Idempotency-Key": key})
    assert refused.status_code == 503
    assert refused.json()["error"] == "psp_unavailable"
    assert refused.headers["retry-after"] == "5"  # retryable, as every 503
    assert stack.api("GET", "/api/v1/deposits", user).json()["data"] == []
    # The same key works once the provider is back.
    retried = stack.api("POST", "/api/v1/deposits", user, json=body, headers={"Idempotency-Key": key})
    assert retried.status_code == 201, retried.text


# --- Webhooks ------------------------------------------------------------------------------


def test_the_same_event_delivered_five_times_credits_once(stack: Stack) -> None:
    stack.faults(duplicate_webhooks=4)
    user = stack.user()
    deposit = stack.deposit(user, "75.50")
    stack.pay(deposit)
    stack.wait_deposit(deposit["id"], DepositState.succeeded)
    events = stack.sim("GET", "/admin/events").json()["data"]
    ours = [e for e in events if e["object_id"] == deposit["psp_reference"] and e["type"] == "deposit.succeeded"]
    assert len(ours) == 1
    wait_until(
        lambda: stack.sim("GET", "/admin/events").json()["data"] and _attempts(stack, ours[0]["id"]) >= 5,
        "5 deliveries",
        timeout=20,
    )
    stored = stack.events_for("simulator", psp_reference=deposit["psp_reference"])
    assert len(stored) == 1
    assert stack.wallet(user)["available"] == "75.50"


def _attempts(stack: Stack, event_id: str) -> int:
    for event in stack.sim("GET", "/admin/events").json()["data"]:
        if event["id"] == event_id:
            return int(event["attempts"])
    return 0


def test_a_failure_after_a_success_does_not_reverse_the_credit(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "30.00")
    stack.pay(deposit)
    stack.wait_deposit(deposit["id"], DepositState.succeeded)
    late = _event("deposit.failed", _sim_deposit(stack, deposit, status="failed", failure_reason="card_declined"))
    response = stack.signed_webhook(late)
    assert response.status_code == 200, response.text
    wait_until(
        lambda: (
            bool(events := stack.events_for("simulator", event_id=late["id"])) and events[0].processed_at is not None
        ),
        "the late failure to be processed",
        timeout=20,
    )
    assert stack.events_for("simulator", event_id=late["id"])[0].outcome == "recorded"
    assert stack.deposit_row(deposit["id"]).state is DepositState.succeeded
    assert stack.wallet(user)["available"] == "30.00"


def test_forged_and_stale_signatures_are_refused_and_nothing_is_stored(stack: Stack) -> None:
    before = len(stack.events_for("simulator"))
    event = _event(
        "deposit.succeeded", {"id": "dep_forged", "reference": str(uuid.uuid4()), "amount": 100, "currency": "USD"}
    )
    body = json.dumps(event).encode()
    url = f"{stack.api_url}/api/v1/psp/simulator/webhook"
    forged = stack.http.post(url, content=body, headers={"PSP-Signature": f"t={int(time.time())},v1={'0' * 64}"})
    assert forged.status_code == 401
    assert forged.json()["error"] == "invalid_signature"
    missing = stack.http.post(url, content=body)
    assert missing.status_code == 401
    assert missing.json()["error"] == "invalid_signature"
    stale = stack.signed_webhook(event, timestamp=int(time.time()) - 6 * 60)
    assert stale.status_code == 401
    assert stale.json()["error"] == "signature_expired"
    assert len(stack.events_for("simulator")) == before
    assert "webhook_signature_refused" in stack.log("api")


def test_an_amount_mismatch_goes_to_review_and_credits_nothing(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "60.00")
    wrong = _event("deposit.succeeded", _sim_deposit(stack, deposit, status="succeeded", amount=5000))
    assert stack.signed_webhook(wrong).status_code == 200
    row = stack.wait_deposit(deposit["id"], DepositState.needs_review)
    assert row.received_amount == 5000
    assert stack.wallet(user)["available"] == "0.00"
    operator = stack.user(Role.operator)
    listed = stack.api("GET", "/api/v1/admin/deposits", operator, params={"state": "needs_review"}).json()["data"]
    assert deposit["id"] in {d["id"] for d in listed}
    # The real success that follows stays recorded, not credited.
    stack.pay(deposit)
    # Wait until the simulator's own success has reached the inbox and been handled:
    # only then can "nothing changed" mean the event was seen and left the deposit be.
    real = wait_until(
        lambda: [
            event
            for event in stack.events_for("simulator", psp_reference=deposit["psp_reference"])
            if event.event_id != wrong["id"] and event.processed_at is not None
        ],
        "the simulator's success to be processed",
        timeout=20,
    )
    assert [event.provider_type for event in real] == ["deposit.succeeded"]
    assert stack.deposit_row(deposit["id"]).state is DepositState.needs_review
    assert stack.wallet(user)["available"] == "0.00"


# --- Withdrawals and payouts ---------------------------------------------------------------


def _withdraw(stack: Stack, user: Any, amount: str, key: str | None = None) -> Any:
    return stack.api(
        "POST",
        "/api/v1/withdrawals",
        user,
        json={"asset": "USD", "amount": amount, "destination": "DE89 3704 0044 0532 0130 00"},
        headers={"Idempotency-Key": key or uuid.uuid4().hex},
    )


def test_a_small_withdrawal_is_paid_without_review(stack: Stack) -> None:
    user = stack.funded("80.00")
    created = _withdraw(stack, user, "50.00")
    assert created.status_code == 201, created.text
    assert created.json()["state"] == "approved"
    assert stack.wallet(user)["held"] == "50.00"
    row = stack.wait_withdrawal(created.json()["id"], "succeeded")
    assert row.psp_reference is not None
    wallet = stack.wallet(user)
    assert (wallet["available"], wallet["held"]) == ("30.00", "0.00")


def test_a_payout_answered_with_500_is_retried_with_the_same_key_and_paid_once(stack: Stack) -> None:
    user = stack.funded("90.00")
    # The provider creates the payout, then answers 500: the job must not pay again.
    # It settles late, so the retry (1 s later) meets the payout still in flight.
    stack.faults(api_failures={"count": 1, "mode": "error_after", "endpoints": ["payouts"]}, payout_settle_seconds=4)
    created = _withdraw(stack, user, "90.00").json()
    stack.wait_withdrawal(created["id"], "processing", timeout=20)
    row = stack.wait_withdrawal(created["id"], "succeeded", timeout=30)
    payouts = stack.sim("GET", "/admin/payouts", params={"reference": created["id"]}).json()["data"]
    assert len(payouts) == 1
    assert payouts[0]["id"] == row.psp_reference
    # The 500 was served, so the job called again (with the same key) and got the same payout.
    assert stack.sim("GET", "/admin/faults").json()["api_failures"]["count"] == 0
    assert stack.wallet(user)["available"] == "0.00"


def test_a_worker_killed_in_the_middle_of_a_payout_does_not_pay_twice(stack: Stack) -> None:
    user = stack.funded("70.00")
    # The provider takes the payout, then holds its answer: the worker waits in the call.
    stack.faults(api_failures={"count": 1, "mode": "timeout", "endpoints": ["payouts"], "timeout_seconds": 8})
    created = _withdraw(stack, user, "70.00").json()
    wait_until(
        lambda: len(stack.sim("GET", "/admin/payouts", params={"reference": created["id"]}).json()["data"]) == 1,
        "the provider to accept the payout",
        timeout=20,
    )
    stack.kill("worker")
    assert stack.withdrawal_row(created["id"]).state is WithdrawalState.approved
    stack.start_worker()
    # The killed job's reservation expires after RETRY_AFTER; then it runs again with the same key.
    row = stack.wait_withdrawal(created["id"], "succeeded", timeout=RETRY_AFTER + 30)
    payouts = stack.sim("GET", "/admin/payouts", params={"reference": created["id"]}).json()["data"]
    assert len(payouts) == 1
    assert payouts[0]["id"] == row.psp_reference
    assert stack.wallet(user)["available"] == "0.00"


def test_a_payout_that_fails_after_being_accepted_releases_the_hold(stack: Stack) -> None:
    user = stack.funded("45.00")
    stack.faults(fail_payouts=1)
    created = _withdraw(stack, user, "45.00").json()
    row = stack.wait_withdrawal(created["id"], "failed")
    assert row.failure_reason == "beneficiary_account_closed"
    wallet = stack.wallet(user)
    assert (wallet["available"], wallet["held"]) == ("45.00", "0.00")


def test_twenty_concurrent_withdrawals_hold_only_what_is_affordable(stack: Stack) -> None:
    user = stack.funded("100.00")
    stack.faults(payout_settle_seconds=30)  # keep them in flight while we count

    def attempt(_: int) -> tuple[int, str]:
        response = _withdraw(stack, user, "15.00")
        return response.status_code, response.json().get("error", "created")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(attempt, range(20)))
    created = [r for r in results if r[0] == 201]
    refused = [r for r in results if r[0] != 201]
    assert len(created) == 6, results
    assert set(refused) == {(409, "insufficient_funds")}
    wallet = stack.wallet(user)
    assert (wallet["available"], wallet["held"]) == ("10.00", "90.00")


def test_four_eyes(stack: Stack) -> None:
    # An operator who is also a client of the brokerage withdraws their own money.
    requester = stack.funded("2500.00", role=Role.operator)
    first, second = stack.user(Role.operator), stack.user(Role.admin)
    client = stack.user()

    one = _withdraw(stack, requester, "500.00").json()
    assert (one["state"], one["required_approvals"]) == ("pending_review", 1)
    own = stack.api("POST", f"/api/v1/admin/withdrawals/{one['id']}/approve", requester, json={})
    assert own.status_code == 403
    assert own.json()["error"] == "self_approval_forbidden"
    assert stack.api("POST", f"/api/v1/admin/withdrawals/{one['id']}/approve", client, json={}).status_code == 403
    approved = stack.api(
        "POST", f"/api/v1/admin/withdrawals/{one['id']}/approve", first, json={"reason": "known client"}
    )
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    stack.wait_withdrawal(one["id"], "succeeded")

    two = _withdraw(stack, requester, "1500.00").json()
    assert (two["state"], two["required_approvals"]) == ("pending_review", 2)
    path = f"/api/v1/admin/withdrawals/{two['id']}/approve"
    assert stack.api("POST", path, first, json={}).json()["state"] == "pending_review"
    again = stack.api("POST", path, first, json={})
    assert (again.status_code, again.json()["error"]) == (409, "already_approved")
    done = stack.api("POST", path, second, json={"reason": "second pair of eyes"})
    assert done.json()["state"] == "approved"
    assert {a["operator_id"] for a in done.json()["approvals"]} == {str(first.id), str(second.id)}
    stack.wait_withdrawal(two["id"], "succeeded")
    audit = stack.api("GET", f"/api/v1/admin/withdrawals/{two['id']}", first).json()["audit"]
    assert [(a["to_state"], a["actor"]) for a in audit][:3] == [
        ("pending_review", f"user:{requester.id}"),
        ("pending_review", f"user:{first.id}"),
        ("approved", f"user:{second.id}"),
    ]
    assert stack.wallet(requester)["available"] == "500.00"


def test_cancel_and_reject_release_the_hold(stack: Stack) -> None:
    user = stack.funded("600.00")
    operator = stack.user(Role.operator)
    to_cancel = _withdraw(stack, user, "200.00").json()
    to_reject = _withdraw(stack, user, "300.00").json()
    assert stack.wallet(user)["held"] == "500.00"
    cancelled = stack.api("POST", f"/api/v1/withdrawals/{to_cancel['id']}/cancel", user)
    assert cancelled.json()["state"] == "cancelled"
    again = stack.api("POST", f"/api/v1/withdrawals/{to_cancel['id']}/cancel", user)
    assert (again.status_code, again.json()["error"]) == (409, "invalid_state")
    no_reason = stack.api("POST", f"/api/v1/admin/withdrawals/{to_reject['id']}/reject", operator, json={})
    assert no_reason.status_code == 422
    rejected = stack.api(
        "POST", f"/api/v1/admin/withdrawals/{to_reject['id']}/reject", operator, json={"reason": "destination mismatch"}
    )
    assert rejected.json()["state"] == "rejected"
    assert rejected.json()["failure_reason"] == "destination mismatch"
    wallet = stack.wallet(user)
    assert (wallet["available"], wallet["held"]) == ("600.00", "0.00")


# --- Chargebacks ---------------------------------------------------------------------------


def test_a_chargeback_after_the_funds_were_spent_books_a_debt_and_blocks_withdrawals(stack: Stack) -> None:
    user = stack.user()
    friend = stack.user()
    deposit = stack.deposit(user, "100.00")
    stack.pay(deposit)
    stack.wait_deposit(deposit["id"], DepositState.succeeded)
    spent = stack.api(
        "POST",
        "/api/v1/transfers",
        user,
        json={"to_user_id": str(friend.id), "asset": "USD", "amount": "70.00"},
        headers={"Idempotency-Key": uuid.uuid4().hex},
    )
    assert spent.status_code == 201, spent.text
    assert stack.sim("POST", f"/admin/deposits/{deposit['psp_reference']}/dispute").status_code == 200
    row = stack.wait_deposit(deposit["id"], DepositState.charged_back)
    assert row.reversed_amount == 10000
    # The wallet gave what it had; the rest is owed, not a negative balance.
    assert stack.wallet(user)["available"] == "0.00"
    with stack.db.engine.connect() as conn:
        owed = conn.execute(
            text("SELECT balance FROM accounts WHERE kind = 'chargeback_receivable' AND ref = :ref AND asset = 'USD'"),
            {"ref": str(user.id)},
        ).scalar_one()
    assert owed == -7000
    blocked = _withdraw(stack, user, "1.00")
    assert (blocked.status_code, blocked.json()["error"]) == (409, "withdrawals_blocked")
    # A new deposit repays the debt first.
    again = stack.deposit(user, "100.00")
    stack.pay(again)
    stack.wait_deposit(again["id"], DepositState.succeeded)
    assert stack.wallet(user)["available"] == "30.00"
    assert _withdraw(stack, user, "5.00").status_code == 201


def test_a_refund_takes_the_money_back(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "20.00")
    stack.pay(deposit)
    stack.wait_deposit(deposit["id"], DepositState.succeeded)
    assert stack.sim("POST", f"/admin/deposits/{deposit['psp_reference']}/refund").status_code == 200
    stack.wait_deposit(deposit["id"], DepositState.refunded)
    assert stack.wallet(user)["available"] == "0.00"


def test_a_refund_delivered_before_its_success_waits_for_it(stack: Stack) -> None:
    # The simulator holds events for 2 s and then delivers them newest first.
    stack.faults(out_of_order_window_seconds=2)
    user = stack.user()
    deposit = stack.deposit(user, "25.00")
    stack.pay(deposit)
    assert stack.sim("POST", f"/admin/deposits/{deposit['psp_reference']}/refund").status_code == 200
    row = stack.wait_deposit(deposit["id"], DepositState.refunded, timeout=30)
    assert row.reversed_amount == 2500
    assert stack.wallet(user)["available"] == "0.00"
    stored = stack.events_for("simulator", psp_reference=deposit["psp_reference"])
    assert sorted(e.kind for e in stored) == ["deposit_succeeded", "refunded"]
    # The refund arrived first: its job was refused until the success was applied.
    refund, success = sorted(stored, key=lambda e: e.kind, reverse=True)
    assert refund.received_at < success.received_at
    assert refund.processed_at is not None
    assert success.processed_at is not None
    assert refund.processed_at > success.processed_at


# --- Reconciliation ------------------------------------------------------------------------


def test_reconciliation_finds_injected_mismatches(stack: Stack) -> None:
    user = stack.user()
    deposit = stack.deposit(user, "12.34")
    stack.pay(deposit)
    stack.wait_deposit(deposit["id"], DepositState.succeeded)
    today = dt.datetime.now(dt.UTC).date().isoformat()

    def reconcile() -> dict[str, Any]:
        done = run_bourse("psp", "reconcile", "--connector", "simulator", "--date", today, "--json", env=stack.env)
        return dict(json.loads(done.stdout))

    # The baseline: what the scenarios above left, once nothing of theirs is still moving (on a
    # loaded machine a payout can reach the provider, or its webhook us, between two runs).
    runs = [reconcile()]

    def settled() -> bool:
        runs.append(reconcile())
        return _problems(runs[-1]) == _problems(runs[-2])

    wait_until(settled, "two reconciliations in a row to find the same problems", timeout=60)
    baseline = runs[-1]
    assert baseline["matched"] > 0
    # Inject: the provider reports a different amount for ours, and one we never saw.
    assert (
        stack.sim("PATCH", f"/admin/transactions/{deposit['psp_reference']}", json={"amount": 1299}).status_code == 200
    )
    phantom = {"type": "deposit", "reference": "nobody", "amount": 777, "currency": "USD", "date": today}
    assert stack.sim("POST", "/admin/transactions", json=phantom).status_code in (200, 201)
    result = run_bourse("psp", "reconcile", "--connector", "simulator", "--date", today, "--json", env=stack.env)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    new = _problems(report) - _problems(baseline)
    # Exactly the two injected: ours at another amount, and one the provider made up.
    assert {(section, amount) for section, _, _, amount, _ in new} == {("mismatches", 1299), ("missing_here", 777)}, new
    assert report["mismatch_count"] == baseline["mismatch_count"] + 2
    assert any(m["psp_reference"] == deposit["psp_reference"] and m["amount"] == 1299 for m in report["mismatches"])
    assert any(m["amount"] == 777 for m in report["missing_here"])
    operator = stack.user(Role.operator)
    listed = stack.api("GET", "/api/v1/admin/reconciliation-reports", operator, params={"connector": "simulator"})
    assert listed.json()["data"][0]["id"] == report["id"]
    shown = stack.api("GET", f"/api/v1/admin/reconciliation-reports/{report['id']}", operator).json()
    assert shown["mismatch_count"] == report["mismatch_count"]
    assert stack.api("GET", "/api/v1/admin/reconciliation-reports", user).status_code == 403


def _problems(report: dict[str, Any]) -> set[tuple[str, str, str, int, str]]:
    """Every line of a reconciliation report: (section, kind, provider reference, amount, problem)."""
    return {
        (section, line["kind"], line["psp_reference"], line["amount"], line["problem"])
        for section in ("missing_here", "missing_at_psp", "mismatches")
        for line in report[section]
    }


def run_then_close_connectors(handler: Any, ctx: JobContext) -> None:
    try:
        handler(ctx)
    finally:
        close_all()


def test_the_daily_reconciliation_job_exports_its_mismatches(stack: Stack) -> None:
    """The scheduled job (run here in process, as a worker's runner would) sets the metric."""
    spec = load_jobs()["payments.reconcile"]
    today = dt.datetime.now(dt.UTC).date().isoformat()
    with unit_of_work(stack.db) as session:
        run_then_close_connectors(
            spec.handler,
            JobContext(
                session,
                {"connector": "simulator", "day": today},
                job_id=uuid.uuid4().hex,
                attempt=1,
                queue=spec.queue,
                request_id=None,
                settings=stack.settings,
            ),
        )
        report = session.scalars(
            select(ReconciliationReport).order_by(ReconciliationReport.created_at.desc()).limit(1)
        ).one()
    exported = REGISTRY.get_sample_value("bourse_reconciliation_mismatches", {"connector": "simulator"})
    assert exported == report.mismatch_count
    # The injected phantom and tampered amount from the test above are still there.
    assert report.mismatch_count >= 2
