"""Faults: the admin API, failing and hanging API calls, failed payouts, settlement delay."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bourse.psp.connectors.base import EventKind, PaymentState, PspRefused, PspUnavailable
from bourse.psp.connectors.simulator import SimulatorConnector
from tests.support.processes import free_port
from tests.support.psp_sim import API_KEY, SECRET, Receiver, Simulator, unique

pytestmark = pytest.mark.process


def _payout(connector: SimulatorConnector, reference: str, key: str, amount: int = 800) -> Any:
    return connector.create_payout(
        reference=reference, amount=amount, currency="USD", destination="acct-9", idempotency_key=key
    )


def _payouts(sim: Simulator, reference: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = sim.client.get("/admin/payouts", params={"reference": reference}).json()["data"]
    return data


def test_faults_admin_api(sim: Simulator) -> None:
    defaults = sim.client.get("/admin/faults").json()
    assert defaults["duplicate_webhooks"] == 0
    assert defaults["payout_settle_seconds"] == 0.2
    assert defaults["api_failures"]["count"] == 0

    updated = sim.client.put("/admin/faults", json={"duplicate_webhooks": 3}).json()
    updated = sim.client.put("/admin/faults", json={"decline_deposits": True}).json()
    assert (updated["duplicate_webhooks"], updated["decline_deposits"]) == (3, True)
    failures = {"count": 2, "mode": "timeout", "endpoints": ["status"], "timeout_seconds": 1.5}
    updated = sim.client.put("/admin/faults", json={"api_failures": failures}).json()
    assert updated["api_failures"] == failures
    assert sim.client.get("/admin/faults").json() == updated

    assert sim.client.delete("/admin/faults").json() == defaults
    assert sim.client.get("/admin/faults").json() == defaults


@pytest.mark.parametrize(
    ("update", "code"),
    [
        ({"nonsense": 1}, "unknown_fault"),
        ({"api_failures": {"count": 1, "when": "now"}}, "unknown_fault"),
        ({"duplicate_webhooks": 11}, "invalid_fault"),
        ({"duplicate_webhooks": True}, "invalid_fault"),
        ({"duplicate_webhooks": 1.0}, "invalid_fault"),
        ({"out_of_order_window_seconds": 61}, "invalid_fault"),
        ({"webhook_delay_seconds": -1}, "invalid_fault"),
        ({"payout_settle_seconds": "1"}, "invalid_fault"),
        ({"decline_deposits": "yes"}, "invalid_fault"),
        ({"fail_payouts": -1}, "invalid_fault"),
        ({"api_failures": {"count": 1, "mode": "explode"}}, "invalid_fault"),
        ({"api_failures": {"count": 1, "endpoints": ["refunds"]}}, "invalid_fault"),
        ({"api_failures": {"count": 1, "timeout_seconds": 601}}, "invalid_fault"),
        ({"api_failures": 3}, "invalid_fault"),
    ],
)
def test_invalid_fault_updates_change_nothing(sim: Simulator, update: dict[str, Any], code: str) -> None:
    response = sim.client.put("/admin/faults", json={"fail_payouts": 4, **update})
    assert response.status_code == 422
    assert response.json()["error"] == code
    assert sim.client.get("/admin/faults").json()["fail_payouts"] == 0


def test_error_mode_fails_without_effect(sim: Simulator, connector: SimulatorConnector) -> None:
    sim.set_faults(api_failures={"count": 1, "mode": "error", "endpoints": ["payouts"]})
    reference, key = unique(), unique()
    with pytest.raises(PspUnavailable):
        _payout(connector, reference, key)
    assert _payouts(sim, reference) == []
    payout = _payout(connector, reference, key)
    assert payout.state == PaymentState.pending
    assert [p["id"] for p in _payouts(sim, reference)] == [payout.psp_reference]


@pytest.mark.parametrize(
    ("mode", "failure"),
    [
        ("error_after", "The simulator answered 500 to POST /v1/payouts"),
        # The caller's own 0.5 s timeout: had it waited out the 2 s hold, the answer was a success.
        ("timeout", "The simulator did not answer POST /v1/payouts in time"),
    ],
)
def test_failures_after_the_effect_are_safe_to_retry_with_the_same_key(
    sim: Simulator, connector: SimulatorConnector, mode: str, failure: str
) -> None:
    impatient = SimulatorConnector(sim.url, API_KEY, SECRET, timeout=0.5)
    try:
        sim.set_faults(api_failures={"count": 1, "mode": mode, "endpoints": ["payouts"], "timeout_seconds": 2})
        reference, key = unique(), unique()
        with pytest.raises(PspUnavailable) as failed:
            _payout(impatient, reference, key)
        assert failed.value.detail == failure
        first = _payouts(sim, reference)
        assert len(first) == 1  # the call took effect although the caller saw a failure
        retried = _payout(impatient, reference, key)
        assert retried.psp_reference == first[0]["id"]
        assert len(_payouts(sim, reference)) == 1
    finally:
        impatient.close()


def test_failures_of_status_and_transactions(sim: Simulator, connector: SimulatorConnector) -> None:
    deposit = sim.deposit()
    sim.set_faults(api_failures={"count": 2, "mode": "error", "endpoints": ["status", "transactions"]})
    with pytest.raises(PspUnavailable):
        connector.payment_status(deposit["id"])
    with pytest.raises(PspUnavailable):
        connector.transactions(dt.datetime.now(dt.UTC).date())
    assert connector.payment_status(deposit["id"]).state == PaymentState.pending
    assert sim.client.get("/admin/faults").json()["api_failures"]["count"] == 0


def test_failures_only_hit_the_named_endpoints(sim: Simulator, connector: SimulatorConnector) -> None:
    sim.set_faults(api_failures={"count": 1, "mode": "error", "endpoints": ["deposits"]})
    _payout(connector, unique(), unique())
    with pytest.raises(PspUnavailable):
        connector.create_deposit(reference=unique(), amount=10, currency="USD", idempotency_key=unique())
    checkout = connector.create_deposit(reference=unique(), amount=10, currency="USD", idempotency_key=unique())
    assert checkout.checkout_url == f"{sim.url}/checkout/{checkout.psp_reference}"


def test_unreachable_simulator_is_unavailable() -> None:
    offline = SimulatorConnector(f"http://127.0.0.1:{free_port()}", API_KEY, SECRET, timeout=1)
    try:
        with pytest.raises(PspUnavailable):
            offline.payment_status("dep_x")
    finally:
        offline.close()


def test_wrong_api_key_is_refused(sim: Simulator) -> None:
    wrong = SimulatorConnector(sim.url, "not-the-key", SECRET)
    try:
        with pytest.raises(PspRefused, match="unauthorized"):
            wrong.payment_status("dep_x")
    finally:
        wrong.close()


def test_fail_payouts_fault(sim: Simulator, receiver: Receiver, connector: SimulatorConnector) -> None:
    sim.set_faults(fail_payouts=1)
    doomed, fine = unique(), unique()
    accepted = _payout(connector, doomed, unique())
    assert accepted.state == PaymentState.pending
    _payout(connector, fine, unique())

    failed = sim.wait_for_status(f"/v1/payouts/{accepted.psp_reference}", "failed")
    assert failed["failure_reason"] == "beneficiary_account_closed"
    delivery = receiver.for_reference(doomed)[0]
    event = connector.parse_webhook(body=delivery.body, headers=delivery.headers)
    assert (event.kind, event.psp_reference, event.amount) == (EventKind.payout_failed, accepted.psp_reference, 800)
    assert event.detail["failure_reason"] == "beneficiary_account_closed"

    delivery = receiver.for_reference(fine)[0]
    assert connector.parse_webhook(body=delivery.body, headers=delivery.headers).kind == EventKind.payout_succeeded
    assert sim.client.get("/admin/faults").json()["fail_payouts"] == 0


def test_payout_settle_seconds_fault(sim: Simulator, connector: SimulatorConnector) -> None:
    sim.set_faults(payout_settle_seconds=2.0)
    held = _payout(connector, unique(), unique())
    sim.set_faults(payout_settle_seconds=0)
    prompt = _payout(connector, unique(), unique())
    # The payout made after it without the delay has settled; the one under the delay has not.
    sim.wait_for_status(f"/v1/payouts/{prompt.psp_reference}", "succeeded")
    assert connector.payment_status(held.psp_reference).state == PaymentState.pending
    sim.wait_for_status(f"/v1/payouts/{held.psp_reference}", "succeeded", timeout=30)
