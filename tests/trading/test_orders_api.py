"""The orders API in process, on SQLite and PostgreSQL: place, fills, list, cancel, refusals."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bourse.db import Database, unit_of_work
from bourse.ledger.models import Hold
from bourse.settings import Settings
from bourse.trading import instruments
from bourse.trading.models import Instrument, Order
from tests.support.auth import bearer, make_user
from tests.support.ledger import balance, fund, verify
from tests.trading.orders_support import check_consistent, market


def _post(client: TestClient, settings: Settings, user: Any, **body: Any) -> Any:
    headers = {**bearer(settings, user), "Idempotency-Key": uuid.uuid4().hex}
    return client.post("/api/v1/orders", json=body, headers=headers)


def test_place_fill_list_and_cancel(client: TestClient, settings: Settings, database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = make_user(database), make_user(database)
    fund(database, seller.id, base, 10**8)
    fund(database, buyer.id, quote, 1_000_000)
    ask = _post(client, settings, seller, instrument=symbol, side="sell", price="100.00", quantity="0.5")
    assert ask.status_code == 201, ask.text
    assert ask.json()["status"] == "open"
    bid = _post(client, settings, buyer, instrument=symbol, side="buy", price="101.00", quantity="0.2")
    assert bid.status_code == 201, bid.text
    body = bid.json()
    assert body["status"] == "filled"
    assert body["fills"][0]["price"] == "100.00"
    assert body["fills"][0]["quantity"] == "0.20000000"
    assert body["fills"][0]["fee"] == "0.04"
    assert body["fills"][0]["liquidity"] == "taker"
    mine = client.get("/api/v1/orders", headers=bearer(settings, seller)).json()["data"]
    assert [order["status"] for order in mine] == ["partially_filled"]
    trades = client.get("/api/v1/trades", headers=bearer(settings, seller)).json()["data"]
    assert trades[0]["liquidity"] == "maker"
    assert trades[0]["side"] == "sell"
    order_id = ask.json()["id"]
    assert client.get(f"/api/v1/orders/{order_id}", headers=bearer(settings, buyer)).status_code == 404
    cancelled = client.delete(f"/api/v1/orders/{order_id}", headers=bearer(settings, seller))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = client.delete(f"/api/v1/orders/{order_id}", headers=bearer(settings, seller))
    assert again.json()["error"] == "order_not_open"
    check_consistent(database, symbol)
    assert verify(database).ok


def test_refusals_have_stable_codes(client: TestClient, settings: Settings, database: Database) -> None:
    symbol, _, quote = market(database)
    user = make_user(database)
    fund(database, user.id, quote, 10_000)

    def code(**body: Any) -> str:
        response = _post(client, settings, user, **{"instrument": symbol, "side": "buy", **body})
        assert response.status_code in {404, 409, 422}, response.text
        return str(response.json()["error"])

    assert code(price="1.001", quantity="1") in {"price_off_tick", "amount_precision"}
    assert code(price="1.00", quantity="0.0015") in {"quantity_off_lot", "amount_precision"}
    assert code(price="1.00", quantity="1000") == "quantity_too_large"
    assert code(price="1.00", quantity="0") == "amount_not_positive"
    assert code(price="1.00", quantity=1.5) == "amount_must_be_string"
    assert code(price="500.00", quantity="1") == "insufficient_funds"
    assert code(type="market", quantity="1") == "invalid_order"
    assert code(instrument="NO-SUCH", price="1.00", quantity="1") == "unknown_instrument"
    missing_key = client.post(
        "/api/v1/orders",
        json={"instrument": symbol, "side": "buy", "price": "1.00", "quantity": "1"},
        headers=bearer(settings, user),
    )
    assert missing_key.status_code in {400, 422}


def test_each_bad_order_input_has_its_own_code(client: TestClient, settings: Settings, database: Database) -> None:
    """Off tick, off lot, too small, outside the band, halted, zero, negative, float, unknown: one code each."""
    symbol, _, quote = market(database, tick_size="0.05", min_quantity="0.01", price_band_bps=1000)
    user = make_user(database)
    fund(database, user.id, quote, 10_000_000)

    def code(**body: Any) -> str:
        response = _post(client, settings, user, **{"instrument": symbol, "side": "buy", **body})
        assert response.status_code in {404, 409, 422}, response.text
        return str(response.json()["error"])

    assert code(price="1.01", quantity="1") == "price_off_tick"
    assert code(price="1.00", quantity="1.0005") == "quantity_off_lot"
    assert code(price="1.00", quantity="0.005") == "quantity_too_small"
    assert code(price="1.00", quantity="0") == "amount_not_positive"
    assert code(price="1.00", quantity="-1") in {"amount_not_positive", "amount_invalid"}
    assert code(price="1.00", quantity=1) == "amount_must_be_string"
    assert code(price=1.0, quantity="1") == "amount_must_be_string"
    assert code(instrument="NO-SUCH", price="1.00", quantity="1") == "unknown_instrument"
    with unit_of_work(database) as session:
        session.get(Instrument, symbol).last_price = 100  # type: ignore[union-attr]  # 1.00 at price scale 2
    assert code(price="1.20", quantity="1") == "price_outside_band"
    assert _post(client, settings, user, instrument=symbol, side="buy", price="1.05", quantity="1").status_code == 201
    with unit_of_work(database) as session:
        instruments.halt(session, symbol, "test halt", "test")
    assert code(price="1.00", quantity="1") == "market_halted"
    assert verify(database).ok


def test_a_refused_order_leaves_nothing_behind(client: TestClient, settings: Settings, database: Database) -> None:
    """A refusal rolls back the whole acceptance: no order row, no hold, nothing for the matcher."""
    symbol, _, quote = market(database)
    user = make_user(database)
    fund(database, user.id, quote, 1_000)
    refused = _post(client, settings, user, instrument=symbol, side="buy", price="100.00", quantity="5")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"] == "insufficient_funds"
    unknown = _post(client, settings, user, instrument="ZZZ-USD", side="buy", price="1.00", quantity="1")
    assert unknown.status_code == 404, unknown.text
    nameless = client.delete("/api/v1/orders", params={"instrument": ""}, headers=bearer(settings, user))
    assert nameless.status_code == 404, nameless.text
    assert nameless.json()["error"] == "unknown_instrument"
    invalid = _post(client, settings, user, instrument="not a symbol", side="buy", price="1.00", quantity="1")
    assert invalid.status_code in {404, 422}, invalid.text
    with unit_of_work(database) as session:
        assert session.scalar(select(func.count()).select_from(Order).where(Order.user_id == user.id)) == 0
        assert session.scalar(select(func.count()).select_from(Hold).where(Hold.user_id == user.id)) == 0
    accepted = _post(client, settings, user, instrument=symbol, side="buy", price="1.00", quantity="0.01")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["status"] == "open"
    assert balance(database, user.id, quote) == 1_000 - 2  # 1.00 times 0.01 plus the fee reserve, rounded up
