"""The instruments API: public reads, admin create and patch, operator halt and resume."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bourse.assets import service as assets
from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.settings import Settings
from tests.support.auth import TestUser, bearer, make_user

ADMIN = "/api/v1/admin/instruments"


@pytest.fixture
def admin(database: Database) -> TestUser:
    return make_user(database, role=Role.admin)


@pytest.fixture
def operator(database: Database) -> TestUser:
    return make_user(database, role=Role.operator)


@pytest.fixture
def client_user(database: Database) -> TestUser:
    return make_user(database)


def new_pair(database: Database) -> tuple[str, str]:
    """Two new assets (scales 8 and 2), so the instrument on them is this test's alone."""
    base, quote = f"B{uuid.uuid4().hex[:8].upper()}", f"Q{uuid.uuid4().hex[:8].upper()}"
    with unit_of_work(database) as session:
        assets.create_asset(session, code=base, scale=8, name="Test base")
        assets.create_asset(session, code=quote, scale=2, name="Test quote")
    return base, quote


def body(base: str, quote: str, **changes: Any) -> dict[str, Any]:
    return {
        "symbol": f"{base}-{quote}",
        "base_asset": base,
        "quote_asset": quote,
        "price_scale": 2,
        "tick_size": "0.05",
        "lot_size": "0.001",
        "min_quantity": "0.002",
        "max_quantity": "10",
        "price_band_bps": 500,
        **changes,
    }


def create(client: TestClient, settings: Settings, admin: TestUser, database: Database) -> str:
    base, quote = new_pair(database)
    response = client.post(ADMIN, json=body(base, quote), headers=bearer(settings, admin))
    assert response.status_code == 201, response.text
    symbol: str = response.json()["symbol"]
    return symbol


def test_anyone_reads_the_instruments_as_decimal_strings(client: TestClient) -> None:
    listing = client.get("/api/v1/instruments")
    assert listing.status_code == 200
    rows = {row["symbol"]: row for row in listing.json()}
    assert {"BTC-USD", "ETH-USD", "EUR-USD"} <= set(rows)
    one = client.get("/api/v1/instruments/EUR-USD")
    assert one.status_code == 200
    eur = one.json()
    assert eur == rows["EUR-USD"]
    assert {k: eur[k] for k in ("tick_size", "lot_size", "min_quantity", "max_quantity", "last_price")} == {
        "tick_size": "0.00001",
        "lot_size": "1.00",
        "min_quantity": "1.00",
        "max_quantity": "1000000.00",
        "last_price": None,
    }
    assert (eur["price_scale"], eur["price_band_bps"], eur["status"], eur["sequence"]) == (5, 500, "open", 0)
    assert rows["BTC-USD"]["lot_size"] == "0.00010000"
    assert rows["BTC-USD"]["tick_size"] == "0.01"


@pytest.mark.parametrize("symbol", ["NOPE-USD", "btc-usd", "X"])
def test_an_unknown_symbol_is_404(client: TestClient, symbol: str) -> None:
    response = client.get(f"/api/v1/instruments/{symbol}")
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_instrument"


def test_admin_creates_an_instrument(
    client: TestClient, settings: Settings, database: Database, admin: TestUser
) -> None:
    base, quote = new_pair(database)
    response = client.post(ADMIN, json=body(base, quote), headers=bearer(settings, admin))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["symbol"] == f"{base}-{quote}"
    assert (created["tick_size"], created["lot_size"], created["min_quantity"], created["max_quantity"]) == (
        "0.05",
        "0.00100000",
        "0.00200000",
        "10.00000000",
    )
    assert created["status"] == "open"
    assert client.get(f"/api/v1/instruments/{base}-{quote}").json() == created
    again = client.post(ADMIN, json=body(base, quote), headers=bearer(settings, admin))
    assert again.status_code == 409
    assert again.json()["error"] == "instrument_exists"


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"tick_size": 0.05}, 422, "amount_must_be_string"),
        ({"tick_size": "0.051"}, 422, "amount_precision"),
        ({"lot_size": "0"}, 422, "amount_not_positive"),
        ({"min_quantity": "0.0015"}, 422, "instrument_quantity_limits_invalid"),
        ({"price_band_bps": 0}, 422, "instrument_price_band_invalid"),
        ({"price_band_bps": "500"}, 422, "validation_error"),
        ({"price_scale": 9}, 422, "instrument_price_scale_invalid"),
        ({"price_scale": 2.5}, 422, "validation_error"),
        ({"symbol": "BTC/USD"}, 422, "instrument_symbol_invalid"),
        ({"base_asset": "NOPE1"}, 422, "unknown_asset"),
        ({"last_price": "1.00"}, 422, "validation_error"),
    ],
)
def test_create_refusals(
    client: TestClient,
    settings: Settings,
    database: Database,
    admin: TestUser,
    changes: dict[str, Any],
    status: int,
    code: str,
) -> None:
    base, quote = new_pair(database)
    response = client.post(ADMIN, json=body(base, quote, **changes), headers=bearer(settings, admin))
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert client.get(f"/api/v1/instruments/{base}-{quote}").status_code == 404


def test_only_admins_create_and_patch(
    client: TestClient, settings: Settings, database: Database, operator: TestUser, client_user: TestUser
) -> None:
    base, quote = new_pair(database)
    for user in (operator, client_user):
        response = client.post(ADMIN, json=body(base, quote), headers=bearer(settings, user))
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"
        patched = client.patch(f"{ADMIN}/BTC-USD", json={"price_band_bps": 1}, headers=bearer(settings, user))
        assert patched.status_code == 403
    anonymous = client.post(ADMIN, json=body(base, quote))
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    assert client.patch(f"{ADMIN}/BTC-USD", json={"price_band_bps": 1}).status_code == 401
    assert client.get("/api/v1/instruments/BTC-USD").json()["price_band_bps"] == 1_000


def test_admin_patches_the_rules_but_not_the_scale_or_assets(
    client: TestClient, settings: Settings, database: Database, admin: TestUser
) -> None:
    symbol = create(client, settings, admin, database)
    headers = bearer(settings, admin)
    patched = client.patch(
        f"{ADMIN}/{symbol}", json={"tick_size": "0.10", "max_quantity": "20", "price_band_bps": 50}, headers=headers
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["tick_size"], patched.json()["max_quantity"], patched.json()["price_band_bps"]) == (
        "0.10",
        "20.00000000",
        50,
    )
    assert patched.json()["lot_size"] == "0.00100000"  # not sent, not changed
    same = client.patch(f"{ADMIN}/{symbol}", json={"price_scale": 2}, headers=headers)
    assert same.status_code == 200
    for change in ({"price_scale": 4}, {"base_asset": "BTC"}, {"quote_asset": "USD"}):
        refused = client.patch(f"{ADMIN}/{symbol}", json=change, headers=headers)
        assert refused.status_code == 409, change
        assert refused.json()["error"] == "instrument_immutable_field"
    for change, code in (
        ({"lot_size": "0.003"}, "instrument_quantity_limits_invalid"),
        ({"tick_size": 1}, "amount_must_be_string"),
        ({"symbol": "BTC-USD"}, "validation_error"),
    ):
        refused = client.patch(f"{ADMIN}/{symbol}", json=change, headers=headers)
        assert refused.status_code == 422, change
        assert refused.json()["error"] == code
    missing = client.patch(f"{ADMIN}/NOPE-USD", json={"price_band_bps": 5}, headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_instrument"
    after = client.get(f"/api/v1/instruments/{symbol}").json()
    assert (after["price_scale"], after["tick_size"], after["lot_size"], after["price_band_bps"]) == (
        2,
        "0.10",
        "0.00100000",
        50,
    )


def test_operator_halts_and_resumes_recording_who_and_why(
    client: TestClient, settings: Settings, database: Database, admin: TestUser, operator: TestUser
) -> None:
    symbol = create(client, settings, admin, database)
    headers = bearer(settings, operator)
    halted = client.post(f"{ADMIN}/{symbol}/halt", json={"reason": "  suspicious volume  "}, headers=headers)
    assert halted.status_code == 200, halted.text
    assert halted.json()["instrument"]["status"] == "halted"
    assert halted.json()["reason"] == "suspicious volume"
    assert halted.json()["actor"] == f"user:{operator.id}"
    assert client.get(f"/api/v1/instruments/{symbol}").json()["status"] == "halted"
    # Halting a halted market is a no-op, not a conflict.
    again = client.post(f"{ADMIN}/{symbol}/halt", json={"reason": "still looking"}, headers=headers)
    assert again.status_code == 200
    assert again.json()["instrument"]["status"] == "halted"
    resumed = client.post(f"{ADMIN}/{symbol}/resume", json={"reason": "all clear"}, headers=bearer(settings, admin))
    assert resumed.status_code == 200
    assert resumed.json()["instrument"]["status"] == "open"
    assert resumed.json()["actor"] == f"user:{admin.id}"
    assert client.post(f"{ADMIN}/{symbol}/resume", json={"reason": "all clear"}, headers=headers).status_code == 200
    assert client.get(f"/api/v1/instruments/{symbol}").json()["status"] == "open"


@pytest.mark.parametrize("action", ["halt", "resume"])
def test_halt_and_resume_refusals(
    client: TestClient, settings: Settings, database: Database, operator: TestUser, client_user: TestUser, action: str
) -> None:
    url = f"{ADMIN}/BTC-USD/{action}"
    forbidden = client.post(url, json={"reason": "I want to"}, headers=bearer(settings, client_user))
    assert forbidden.status_code == 403
    assert forbidden.json()["error"] == "forbidden"
    anonymous = client.post(url, json={"reason": "I want to"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    headers = bearer(settings, operator)
    for reason_body, code in (
        ({"reason": " "}, "reason_required"),
        ({}, "validation_error"),
        ({"reason": "fine", "extra": 1}, "validation_error"),
    ):
        refused = client.post(url, json=reason_body, headers=headers)
        assert refused.status_code == 422, reason_body
        assert refused.json()["error"] == code
    unknown = client.post(f"{ADMIN}/NOPE-USD/{action}", json={"reason": "because"}, headers=headers)
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "unknown_instrument"
    assert client.get("/api/v1/instruments/BTC-USD").json()["status"] == "open"


def test_the_routes_are_in_the_openapi_document(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    assert {"/api/v1/instruments", "/api/v1/instruments/{symbol}", "/api/v1/admin/instruments"} <= set(paths)
    assert {"/api/v1/admin/instruments/{symbol}/halt", "/api/v1/admin/instruments/{symbol}/resume"} <= set(paths)
