"""The simulator's /v1 API over real HTTP: auth, validation, idempotency, status, transactions."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import httpx2 as httpx
import pytest

from bourse.psp.connectors.base import PaymentState, PspRefused, TransactionKind
from bourse.psp.connectors.simulator import SimulatorConnector
from tests.support.psp_sim import API_KEY, Receiver, Simulator, unique

pytestmark = pytest.mark.process


def _payout_body(**overrides: Any) -> dict[str, Any]:
    return {"reference": unique(), "amount": 500, "currency": "USD", "destination": "acct-1", **overrides}


def _deposit_body(**overrides: Any) -> dict[str, Any]:
    return {"reference": unique(), "amount": 500, "currency": "USD", "return_url": None, **overrides}


def test_healthz_needs_no_key(sim: Simulator) -> None:
    response = httpx.get(f"{sim.url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_root_says_what_it_is_and_lists_every_endpoint(sim: Simulator) -> None:
    """The simulator's address (README's "What you get") answers a person who opens it, without a key."""
    response = httpx.get(f"{sim.url}/")
    assert response.status_code == 200
    body = response.json()
    assert body["service"] == "bourse-psp-sim"
    assert "Authorization: Bearer" in body["authentication"]
    endpoints = set(body["endpoints"])
    assert {
        "GET /healthz",
        "POST /v1/deposits",
        "GET /checkout/{id}",
        "POST /checkout/{id}/approve",
        "POST /checkout/{id}/decline",
        "PUT /admin/faults",
        "GET /admin/events",
    } <= endpoints
    # Every endpoint it lists exists: without a key it is refused, or it shows the unknown payment's page,
    # but the router never answers that there is no such route.
    for endpoint in endpoints:
        method, path = endpoint.split(" ")
        answered = httpx.request(method, sim.url + path.replace("{id}", "unknown"))
        assert answered.status_code != 404 or "text/html" in answered.headers["content-type"], endpoint


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer wrong-key", f"Basic {API_KEY}", f"Bearer {API_KEY}x", API_KEY],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/deposits"), ("GET", "/v1/transactions"), ("GET", "/admin/faults")]
)
def test_api_and_admin_need_the_api_key(sim: Simulator, authorization: str | None, method: str, path: str) -> None:
    headers = {"Idempotency-Key": unique()}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = httpx.request(method, f"{sim.url}{path}", json=_deposit_body(), headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("amount", 1.0, "invalid_amount"),
        ("amount", "100", "invalid_amount"),
        ("amount", True, "invalid_amount"),
        ("amount", 0, "invalid_amount"),
        ("amount", -5, "invalid_amount"),
        ("amount", 10**15 + 1, "invalid_amount"),
        ("amount", None, "invalid_amount"),
        ("currency", "usd", "invalid_currency"),
        ("currency", "US", "invalid_currency"),
        ("currency", "USDOLL", "invalid_currency"),
        ("currency", "USD\n", "invalid_currency"),
        ("currency", 840, "invalid_currency"),
        ("reference", "", "invalid_reference"),
        ("reference", "r" * 101, "invalid_reference"),
        ("reference", 7, "invalid_reference"),
        ("return_url", "javascript:alert(1)", "invalid_return_url"),
    ],
)
def test_deposit_validation(sim: Simulator, field: str, value: object, code: str) -> None:
    response = sim.client.post(
        "/v1/deposits", json=_deposit_body(**{field: value}), headers={"Idempotency-Key": unique()}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code


@pytest.mark.parametrize(("value", "code"), [("", "invalid_destination"), ("d" * 201, "invalid_destination")])
def test_payout_validation(sim: Simulator, value: str, code: str) -> None:
    body = _payout_body(destination=value)
    response = sim.client.post("/v1/payouts", json=body, headers={"Idempotency-Key": unique()})
    assert response.status_code == 422
    assert response.json()["error"] == code


def test_limits_are_inclusive(sim: Simulator) -> None:
    deposit = sim.deposit(reference="r" * 100, amount=10**15)
    assert deposit["amount"] == 10**15
    body = _payout_body(destination="d" * 200, currency="USDTT", amount=1)
    response = sim.client.post("/v1/payouts", json=body, headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 201


@pytest.mark.parametrize("key", [None, "", "k" * 256])
def test_creates_need_an_idempotency_key(sim: Simulator, key: str | None) -> None:
    headers = {} if key is None else {"Idempotency-Key": key}
    for path, body in (("/v1/deposits", _deposit_body()), ("/v1/payouts", _payout_body())):
        response = sim.client.post(path, json=body, headers=headers)
        assert response.status_code == 400
        assert response.json()["error"] == "idempotency_key_required"


@pytest.mark.parametrize("raw", [b"{", b"[1, 2]", b"\xff"])
def test_unreadable_bodies(sim: Simulator, raw: bytes) -> None:
    response = sim.client.post("/v1/deposits", content=raw, headers={"Idempotency-Key": unique()})
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_json"


def test_created_deposit_has_the_documented_shape(sim: Simulator) -> None:
    body = _deposit_body(return_url="https://shop.example/back")
    response = sim.client.post("/v1/deposits", json=body, headers={"Idempotency-Key": unique()})
    assert response.status_code == 201
    deposit = response.json()
    assert deposit["id"].startswith("dep_")
    assert deposit["object"] == "deposit"
    assert deposit["status"] == "pending"
    assert (deposit["reference"], deposit["amount"], deposit["currency"]) == (body["reference"], 500, "USD")
    assert deposit["checkout_url"] == f"{sim.url}/checkout/{deposit['id']}"
    assert isinstance(deposit["created_at"], int)
    assert deposit["updated_at"] >= deposit["created_at"]
    assert sim.client.get(f"/v1/deposits/{deposit['id']}").json() == deposit


def test_same_key_same_body_replays_the_stored_response(sim: Simulator) -> None:
    key, body = unique(), _payout_body()
    first = sim.client.post("/v1/payouts", json=body, headers={"Idempotency-Key": key})
    second = sim.client.post("/v1/payouts", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 201
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    payouts = sim.client.get("/admin/payouts", params={"reference": body["reference"]}).json()["data"]
    assert [p["id"] for p in payouts] == [first.json()["id"]]


def test_same_key_with_another_body_is_refused(sim: Simulator) -> None:
    key, body = unique(), _payout_body()
    assert sim.client.post("/v1/payouts", json=body, headers={"Idempotency-Key": key}).status_code == 201
    reused = sim.client.post("/v1/payouts", json={**body, "amount": 501}, headers={"Idempotency-Key": key})
    assert reused.status_code == 409
    assert reused.json()["error"] == "idempotency_key_reused"


def test_keys_are_scoped_per_endpoint(sim: Simulator) -> None:
    key = unique()
    deposit = sim.client.post("/v1/deposits", json=_deposit_body(), headers={"Idempotency-Key": key})
    payout = sim.client.post("/v1/payouts", json=_payout_body(), headers={"Idempotency-Key": key})
    assert deposit.status_code == payout.status_code == 201
    assert payout.json()["id"].startswith("po_")


@pytest.mark.parametrize("path", ["/v1/payouts", "/v1/deposits"])
def test_concurrent_creates_with_one_key_create_one_object(sim: Simulator, path: str) -> None:
    key = unique()
    body = _payout_body() if path == "/v1/payouts" else _deposit_body()
    barrier = threading.Barrier(20)
    results: list[httpx.Response] = []

    # One shared client with a connection per thread, so the 20 requests really overlap.
    limits = httpx.Limits(max_connections=20)
    with httpx.Client(base_url=sim.url, headers={"Authorization": f"Bearer {API_KEY}"}, limits=limits) as client:

        def create() -> None:
            barrier.wait()
            results.append(client.post(path, json=body, headers={"Idempotency-Key": key}))

        threads = [threading.Thread(target=create) for _ in range(20)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=20)
    assert len(results) == 20
    assert {r.status_code for r in results} == {201}
    assert len({r.json()["id"] for r in results}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in results) == 19
    if path == "/v1/payouts":
        payouts = sim.client.get("/admin/payouts", params={"reference": body["reference"]}).json()["data"]
        assert len(payouts) == 1


def test_unknown_ids_are_not_found(sim: Simulator) -> None:
    for path in ("/v1/deposits/dep_nope", "/v1/payouts/po_nope", "/admin/events/evt_nope/redeliver"):
        method = "POST" if path.endswith("redeliver") else "GET"
        response = sim.client.request(method, path)
        assert response.status_code == 404
        assert response.json()["error"] == "not_found"


def test_payment_status_through_the_connector(sim: Simulator, connector: SimulatorConnector) -> None:
    deposit = sim.deposit(amount=1234)
    status = connector.payment_status(deposit["id"])
    assert (status.psp_reference, status.state, status.amount, status.currency) == (
        deposit["id"],
        PaymentState.pending,
        1234,
        "USD",
    )
    payout = sim.payout(amount=99)
    sim.wait_for_status(f"/v1/payouts/{payout['id']}", "succeeded")
    assert connector.payment_status(payout["id"]).state == PaymentState.succeeded
    with pytest.raises(PspRefused, match="not_found"):
        connector.payment_status("po_doesnotexist")
    with pytest.raises(PspRefused):
        connector.payment_status("ch_foreign")


def test_connector_reports_the_simulators_error_code(connector: SimulatorConnector) -> None:
    with pytest.raises(PspRefused, match="invalid_amount"):
        connector.create_payout(reference=unique(), amount=0, currency="USD", destination="x", idempotency_key=unique())


def test_refund_and_dispute(sim: Simulator, receiver: Receiver, connector: SimulatorConnector) -> None:
    pending = sim.deposit()
    refused = sim.client.post(f"/admin/deposits/{pending['id']}/refund")
    assert refused.status_code == 409
    assert refused.json()["error"] == "invalid_state"

    refunded, disputed = sim.deposit(), sim.deposit()
    for deposit in (refunded, disputed):
        assert sim.approve(deposit["id"]).status_code == 200
    response = sim.client.post(f"/admin/deposits/{refunded['id']}/refund")
    assert response.status_code == 200
    assert response.json()["status"] == "refunded"
    response = sim.client.post(f"/admin/deposits/{disputed['id']}/dispute")
    assert response.json()["status"] == "disputed"
    assert sim.client.post(f"/admin/deposits/{refunded['id']}/refund").status_code == 409
    assert sim.client.post(f"/admin/deposits/{refunded['id']}/dispute").status_code == 409
    assert sim.client.post("/admin/deposits/dep_nope/refund").status_code == 404

    for deposit, provider_type, kind in (
        (refunded, "deposit.refunded", "refunded"),
        (disputed, "deposit.disputed", "chargeback"),
    ):
        deliveries = receiver.for_reference(deposit["reference"], count=2)
        types = [d.event["type"] for d in deliveries]
        assert types == ["deposit.succeeded", provider_type]
        event = connector.parse_webhook(body=deliveries[1].body, headers=deliveries[1].headers)
        assert (event.kind, event.psp_reference, event.amount) == (kind, deposit["id"], 1000)

    rows = sim.client.get("/v1/transactions", params={"date": dt.datetime.now(dt.UTC).date().isoformat()})
    by_kind = {(row["id"], row["type"]) for row in rows.json()["data"]}
    assert {(refunded["id"], "refund"), (disputed["id"], "chargeback"), (refunded["id"], "deposit")} <= by_kind


def test_transactions_list_what_settled_that_day(sim: Simulator, connector: SimulatorConnector) -> None:
    today = dt.datetime.now(dt.UTC).date()
    settled, unpaid, declined = sim.deposit(amount=111), sim.deposit(amount=222), sim.deposit(amount=333)
    sim.approve(settled["id"])
    sim.decline(declined["id"])
    payout = sim.payout(amount=444)
    sim.wait_for_status(f"/v1/payouts/{payout['id']}", "succeeded")

    rows = {t.psp_reference: t for t in connector.transactions(today)}
    assert rows[settled["id"]].kind == TransactionKind.deposit
    assert rows[settled["id"]].amount == 111
    assert rows[settled["id"]].reference == settled["reference"]
    assert rows[settled["id"]].occurred_at.tzinfo is not None
    assert rows[settled["id"]].occurred_at.date() == today
    assert rows[payout["id"]].kind == TransactionKind.payout
    assert rows[payout["id"]].amount == 444
    assert unpaid["id"] not in rows
    assert declined["id"] not in rows
    assert all(t.psp_reference != settled["id"] for t in connector.transactions(today - dt.timedelta(days=1)))


@pytest.mark.parametrize("date", [None, "", "2026-13-01", "2026-02-30", "20260101", "2026-1-01", "2026-01-01x"])
def test_transactions_need_a_valid_date(sim: Simulator, date: str | None) -> None:
    params = {} if date is None else {"date": date}
    response = sim.client.get("/v1/transactions", params=params)
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_date"


def test_reconciliation_tampering(sim: Simulator, connector: SimulatorConnector) -> None:
    today = dt.datetime.now(dt.UTC).date()
    yesterday = today - dt.timedelta(days=1)
    deposit = sim.deposit(amount=5000)
    sim.approve(deposit["id"])

    tampered = sim.client.patch(f"/admin/transactions/{deposit['id']}", json={"amount": 4999})
    assert tampered.status_code == 200
    assert {t.psp_reference: t.amount for t in connector.transactions(today)}[deposit["id"]] == 4999
    assert sim.client.get(f"/v1/deposits/{deposit['id']}").json()["amount"] == 5000

    reference = unique()
    body = {"type": "payout", "reference": reference, "amount": 75, "currency": "EUR", "date": yesterday.isoformat()}
    added = sim.client.post("/admin/transactions", json=body)
    assert added.status_code == 201
    assert added.json()["id"].startswith("tx_")
    foreign = [t for t in connector.transactions(yesterday) if t.reference == reference]
    assert [(t.kind, t.amount, t.currency, t.occurred_at.date()) for t in foreign] == [
        (TransactionKind.payout, 75, "EUR", yesterday)
    ]
    assert all(t.reference != reference for t in connector.transactions(today))

    assert sim.client.patch("/admin/transactions/dep_nope", json={"amount": 1}).status_code == 404
    bad = sim.client.patch(f"/admin/transactions/{deposit['id']}", json={"amount": 1.5})
    assert bad.json()["error"] == "invalid_amount"
    bad = sim.client.post("/admin/transactions", json={**body, "type": "fee"})
    assert bad.json()["error"] == "invalid_type"
    bad = sim.client.post("/admin/transactions", json={**body, "date": "yesterday"})
    assert bad.json()["error"] == "invalid_date"
