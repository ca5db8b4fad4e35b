"""No input makes a 500: integers beyond 64 bits, control characters and times out of range
are refused where they are parsed, with a 422 and a stable code (on SQLite and PostgreSQL).

Each case here answered ``500 internal_error`` before: PostgreSQL's NumericValueOutOfRange
(SQLite's OverflowError), PostgreSQL's "text cannot contain NUL", Python's OverflowError
in the candles' date arithmetic, and a naive time reaching an aware column.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.ledger.models import JournalEntry
from bourse.settings import Settings
from tests.support.auth import bearer, make_user
from tests.support.ledger import fund

BEYOND_INT64 = str(2**63)
INT64_MAX = str(2**63 - 1)


def assert_refused(response: Any, status: int, code: str, *locations: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == code, body
    assert isinstance(body["detail"], str)
    assert body["request_id"] == response.headers["x-request-id"]
    if locations:
        assert {error["loc"] for error in body["errors"]} == set(locations), body
    return body


@pytest.fixture
def client_headers(settings: Settings, database: Database) -> dict[str, str]:
    user = make_user(database, Role.client)
    fund(database, user.id, "USD", 1_000)
    return bearer(settings, user)


@pytest.fixture
def admin_headers(settings: Settings, database: Database) -> dict[str, str]:
    return bearer(settings, make_user(database, Role.admin))


@pytest.fixture
def ib_headers(settings: Settings, database: Database) -> dict[str, str]:
    return bearer(settings, make_user(database, Role.ib))


# -- Integers beyond 64 bits -------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_order_id_beyond_64_bits_is_422(client: TestClient, client_headers: dict[str, str], method: str) -> None:
    response = client.request(method, f"/api/v1/orders/{BEYOND_INT64}", headers=client_headers)
    assert_refused(response, 422, "validation_error", "path.order_id")
    # The largest id that fits is an ordinary missing order.
    response = client.request(method, f"/api/v1/orders/{INT64_MAX}", headers=client_headers)
    assert_refused(response, 404, "order_not_found")


def test_a_trade_id_beyond_64_bits_cannot_be_busted(client: TestClient, admin_headers: dict[str, str]) -> None:
    response = client.post(
        f"/api/v1/admin/trades/{BEYOND_INT64}/bust", headers=admin_headers, json={"reason": "fat finger"}
    )
    assert_refused(response, 422, "validation_error", "path.trade_id")
    response = client.post(f"/api/v1/admin/trades/{INT64_MAX}/bust", headers=admin_headers, json={"reason": "oops"})
    assert_refused(response, 404, "trade_not_found")


def test_offsets_beyond_64_bits_are_422(
    client: TestClient, admin_headers: dict[str, str], ib_headers: dict[str, str]
) -> None:
    response = client.get("/api/v1/admin/jobs/failed", params={"offset": BEYOND_INT64}, headers=admin_headers)
    assert_refused(response, 422, "validation_error", "query.offset")
    response = client.get("/api/v1/admin/jobs/failed", params={"offset": INT64_MAX}, headers=admin_headers)
    assert response.status_code == 200, response.text
    assert response.json() == []
    for path in ("/api/v1/ib/referrals", "/api/v1/ib/payouts"):
        response = client.get(path, params={"offset": BEYOND_INT64}, headers=ib_headers)
        assert_refused(response, 422, "validation_error", "query.offset")


@pytest.mark.parametrize("ident", ["99999999999999999999", BEYOND_INT64, "²"])
def test_a_failed_job_named_by_an_impossible_id_is_not_found(
    client: TestClient, admin_headers: dict[str, str], ident: str
) -> None:
    assert_refused(
        client.post(f"/api/v1/admin/jobs/failed/{ident}/retry", headers=admin_headers), 404, "failed_job_not_found"
    )
    assert_refused(
        client.delete(f"/api/v1/admin/jobs/failed/{ident}", headers=admin_headers), 404, "failed_job_not_found"
    )


@pytest.mark.parametrize("position", ["9999999999999999999", BEYOND_INT64, "²"])
def test_a_statement_cursor_beyond_64_bits_is_invalid(
    client: TestClient, client_headers: dict[str, str], position: str
) -> None:
    wallets = client.get("/api/v1/wallets", headers=client_headers).json()["wallets"]
    account_id = next(line["available_account_id"] for line in wallets if line["asset"] == "USD")
    cursor = base64.urlsafe_b64encode(f"seq:{position}".encode()).decode().rstrip("=")
    response = client.get(f"/api/v1/accounts/{account_id}/postings", params={"cursor": cursor}, headers=client_headers)
    assert_refused(response, 422, "invalid_cursor")


# -- Control characters --------------------------------------------------------------------


@pytest.mark.parametrize("field", ["email", "password"])
def test_sign_in_with_a_nul_is_422_naming_the_field(client: TestClient, field: str) -> None:
    body = {"email": "ada@example.com", "password": "correct horse battery staple"}
    body[field] = body[field][:3] + "\x00" + body[field][3:]
    response = client.post("/api/v1/auth/login", json=body)
    assert_refused(response, 422, "control_character", f"body.{field}")


@pytest.mark.parametrize("field", ["email", "password", "referral_code"])
def test_registration_with_a_nul_is_422_and_creates_nobody(client: TestClient, field: str) -> None:
    email = f"nul-{uuid.uuid4().hex[:8]}@example.com"
    body = {"email": email, "password": "correct horse battery staple", "referral_code": "IB-CODE-1"}
    body[field] = "\x00" + body[field]
    assert_refused(client.post("/api/v1/auth/register", json=body), 422, "control_character", f"body.{field}")
    # Nothing was written: the same email registers afterwards.
    clean = {"email": email, "password": "correct horse battery staple"}
    assert client.post("/api/v1/auth/register", json=clean).status_code == 201


def test_the_reconciliation_filter_refuses_a_nul(client: TestClient, admin_headers: dict[str, str]) -> None:
    response = client.get(
        "/api/v1/admin/reconciliation-reports", params={"connector": "sim\x00"}, headers=admin_headers
    )
    assert_refused(response, 422, "control_character", "query.connector")


@pytest.mark.parametrize("character", ["\x00", "\x01", "\t", "\n", "\x1f", "\x7f", "\x85", "\x9f"])
def test_every_control_character_is_refused_and_never_stripped(
    client: TestClient, admin_headers: dict[str, str], character: str
) -> None:
    response = client.get(
        "/api/v1/admin/reconciliation-reports", params={"connector": character}, headers=admin_headers
    )
    assert_refused(response, 422, "control_character", "query.connector")
    response = client.post(
        "/api/v1/auth/login", json={"email": f"ada{character}@example.com", "password": "correct horse battery staple"}
    )
    assert_refused(response, 422, "control_character", "body.email")


def test_ordinary_unicode_text_is_accepted(client: TestClient, admin_headers: dict[str, str]) -> None:
    response = client.get(
        "/api/v1/admin/reconciliation-reports", params={"connector": "zürich €"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"data": []}


def test_control_characters_in_paths_keys_and_nested_values_are_refused(
    client: TestClient, admin_headers: dict[str, str], ib_headers: dict[str, str]
) -> None:
    assert_refused(client.get("/api/v1/instruments/BTC%00-USD/book"), 422, "control_character", "path.symbol")
    ib_id = client.get("/api/v1/auth/me", headers=ib_headers).json()["id"]
    response = client.put(
        f"/api/v1/admin/ib/{ib_id}/plan",
        headers=admin_headers,
        json={"kind": "per_lot", "amounts": {"BTC-USD": "1.00", "ETH\x00-USD": "2.00", "EUR-USD": "x\ny"}},
    )
    assert_refused(response, 422, "control_character", "body.amounts.ETH\x00-USD", "body.amounts.EUR-USD")


def test_an_idempotency_key_with_a_control_character_is_refused(
    client: TestClient, client_headers: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/transfers",
        headers={**client_headers, "Idempotency-Key": "key\x01one"},
        json={"to_user_id": str(uuid.uuid4()), "asset": "USD", "amount": "1.00"},
    )
    assert_refused(response, 422, "control_character", "header.idempotency-key")


def test_a_body_that_is_not_utf8_or_too_deep_is_invalid_json(client: TestClient) -> None:
    headers = {"Content-Type": "application/json"}
    not_utf8 = b'{"email": "ada\xff@example.com", "password": "correct horse battery staple"}'
    assert_refused(client.post("/api/v1/auth/login", content=not_utf8, headers=headers), 422, "invalid_json")
    deep = b"[" * 100_000 + b"]" * 100_000
    assert_refused(client.post("/api/v1/auth/login", content=deep, headers=headers), 422, "invalid_json")


# -- Times out of range ------------------------------------------------------------------


@pytest.mark.parametrize(
    "end", ["0001-01-01T00:00:01Z", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59Z", "3000-01-01T00:00:00Z"]
)
def test_candles_refuse_an_end_out_of_range(client: TestClient, end: str) -> None:
    response = client.get("/api/v1/instruments/BTC-USD/candles", params={"end": end})
    assert_refused(response, 422, "time_out_of_range", "query.end")


@pytest.mark.parametrize("end", ["1970-01-01T00:00:00Z", "2999-12-31T23:59:59+00:00", "2026-03-02T10:00:00"])
def test_candles_take_any_end_in_range(client: TestClient, end: str) -> None:
    response = client.get("/api/v1/instruments/BTC-USD/candles", params={"end": end, "interval": "1d", "limit": 1000})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == []


def test_a_time_without_an_offset_is_utc(client: TestClient, client_headers: dict[str, str]) -> None:
    for path in ("/api/v1/deposits", "/api/v1/withdrawals"):
        response = client.get(path, params={"before": "2026-01-01T00:00:00"}, headers=client_headers)
        assert response.status_code == 200, response.text
        response = client.get(path, params={"before": "0001-01-01T00:00:00Z"}, headers=client_headers)
        assert_refused(response, 422, "time_out_of_range", "query.before")


@pytest.mark.parametrize(("name", "day"), [("to", "9999-12-31"), ("from", "0001-01-01"), ("to", "3000-01-01")])
def test_commission_report_days_are_bounded(
    client: TestClient, ib_headers: dict[str, str], name: str, day: str
) -> None:
    response = client.get("/api/v1/ib/commissions", params={name: day}, headers=ib_headers)
    assert_refused(response, 422, "time_out_of_range", f"query.{name}")
    response = client.get(
        "/api/v1/ib/commissions", params={"from": "1970-01-01", "to": "2999-12-31"}, headers=ib_headers
    )
    assert response.status_code == 200, response.text


def test_a_reconciliation_day_is_bounded(client: TestClient, admin_headers: dict[str, str]) -> None:
    response = client.post(
        "/api/v1/admin/reconciliation-reports",
        headers=admin_headers,
        json={"connector": "simulator", "day": "9999-12-31"},
    )
    assert_refused(response, 422, "time_out_of_range", "body.day")


# -- The longest Idempotency-Key ---------------------------------------------------------


def test_the_longest_idempotency_key_moves_money_once(
    client: TestClient, settings: Settings, database: Database, admin_headers: dict[str, str]
) -> None:
    """A key of 255 characters is valid; the ledger's own key (operation, user and key) was
    longer than its 255 and the request was a 500."""
    sender, receiver = make_user(database), make_user(database)
    fund(database, sender.id, "USD", 10_000)
    longest = "k" * 255
    transfer = {"to_user_id": str(receiver.id), "asset": "USD", "amount": "1.00"}
    headers = {**bearer(settings, sender), "Idempotency-Key": longest}
    first = client.post("/api/v1/transfers", headers=headers, json=transfer)
    assert first.status_code == 201, first.text
    again = client.post("/api/v1/transfers", headers=headers, json=transfer)
    assert again.status_code == 201, again.text
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert client.get("/api/v1/wallets", headers=bearer(settings, receiver)).json()["wallets"][-1]["asset"]
    adjustment = {"user_id": str(receiver.id), "asset": "USD", "amount": "2.00", "direction": "credit", "reason": "why"}
    response = client.post(
        "/api/v1/admin/adjustments", headers={**admin_headers, "Idempotency-Key": longest}, json=adjustment
    )
    assert response.status_code == 201, response.text
    reversal = client.post(
        f"/api/v1/admin/entries/{response.json()['entry_id']}/reversal",
        headers={**admin_headers, "Idempotency-Key": "r" * 255},
        json={"reason": "undo"},
    )
    assert reversal.status_code == 201, reversal.text
    withdrawal = {"asset": "USD", "amount": "1.00", "destination": "DE89370400440532013000"}
    response = client.post("/api/v1/withdrawals", headers={**headers, "Idempotency-Key": "w" * 255}, json=withdrawal)
    assert response.status_code == 201, response.text
    usd = {
        line["asset"]: line
        for line in client.get("/api/v1/wallets", headers=bearer(settings, sender)).json()["wallets"]
    }
    assert usd["USD"]["available"] == "98.00"  # 100.00 - 1.00 sent once - 1.00 held for the withdrawal
    assert usd["USD"]["held"] == "1.00"
    # A key that fits keeps the ledger key it always had (entries already posted replay);
    # the longest is replaced by its hash.
    short = client.post("/api/v1/transfers", headers={**headers, "Idempotency-Key": "short-key"}, json=transfer)
    assert short.status_code == 201, short.text
    with unit_of_work(database) as session:
        keys = {
            entry.id: entry.idempotency_key
            for entry in session.scalars(
                select(JournalEntry).where(
                    JournalEntry.id.in_([uuid.UUID(first.json()["entry_id"]), uuid.UUID(short.json()["entry_id"])])
                )
            )
        }
    assert keys[uuid.UUID(short.json()["entry_id"])] == f"transfer:{sender.id}:short-key"
    assert (
        keys[uuid.UUID(first.json()["entry_id"])]
        == f"transfer:{sender.id}:sha256:{hashlib.sha256(longest.encode()).hexdigest()}"
    )
