"""Public market data over HTTP, on SQLite and PostgreSQL: book snapshot, trades, candles."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from bourse.db import Database, unit_of_work
from bourse.trading import instruments
from bourse.trading.models import Trade
from bourse.trading.queries import open_orders
from tests.support.ledger import fund
from tests.trading.orders_support import market, new_user, place


def test_book_snapshot_aggregates_the_open_orders(client: TestClient, database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 10 * 10**8)
    fund(database, buyer, quote, 10_000_000)
    for price, quantity in [("101.00", "0.5"), ("101.00", "0.25"), ("102.50", "1"), ("103.00", "0.1")]:
        place(database, seller, symbol, side="sell", price_text=price, quantity_text=quantity)
    for price, quantity in [("99.00", "0.3"), ("99.00", "0.2"), ("98.00", "1")]:
        place(database, buyer, symbol, side="buy", price_text=price, quantity_text=quantity)
    place(database, buyer, symbol, side="buy", price_text="101.00", quantity_text="0.6")  # takes 0.5 + 0.1

    response = client.get(f"/api/v1/instruments/{symbol}/book")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["asks"] == [["101.00", "0.15000000", 1], ["102.50", "1.00000000", 1], ["103.00", "0.10000000", 1]]
    assert body["bids"] == [["99.00", "0.50000000", 2], ["98.00", "1.00000000", 1]]
    with unit_of_work(database) as session:
        instrument = instruments.get_instrument(session, symbol)
        assert body["sequence"] == instrument.sequence
        expected: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        for order in open_orders(session, symbol):
            assert order.price is not None
            expected[(order.side, order.price)][0] += order.remaining
            expected[(order.side, order.price)][1] += 1
        asks = [
            [instruments.format_price(instrument, p), instruments.format_quantity(instrument, q), n]
            for (side, p), (q, n) in sorted(expected.items())
            if side == "sell"
        ]
    assert body["asks"] == asks
    top = client.get(f"/api/v1/instruments/{symbol}/book", params={"depth": 1}).json()
    assert top["asks"] == body["asks"][:1]
    assert top["bids"] == body["bids"][:1]
    assert client.get(f"/api/v1/instruments/{symbol}/book", params={"depth": 0}).status_code == 422
    assert client.get(f"/api/v1/instruments/{symbol}/book", params={"depth": 201}).status_code == 422
    missing = client.get("/api/v1/instruments/NO-SUCH/book")
    assert missing.status_code == 404
    assert missing.json()["error"] == "unknown_instrument"


def _trade_times(database: Database, symbol: str, times: list[datetime]) -> None:
    """Give the instrument's trades, in id order, the chosen times."""
    with unit_of_work(database) as session:
        ids = list(session.scalars(select(Trade.id).where(Trade.instrument == symbol).order_by(Trade.id)))
        assert len(ids) == len(times)
        for trade_id, moment in zip(ids, times, strict=True):
            session.execute(update(Trade).where(Trade.id == trade_id).values(created_at=moment))


def test_recent_trades_and_candles(client: TestClient, database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 10 * 10**8)
    fund(database, buyer, quote, 10_000_000)
    # Four trades: 100 x 0.1, 105 x 0.2, 95 x 0.3, 102 x 0.4.
    for price, quantity in [("100.00", "0.1"), ("105.00", "0.2"), ("95.00", "0.3"), ("102.00", "0.4")]:
        place(database, seller, symbol, side="sell", price_text=price, quantity_text=quantity)
        place(database, buyer, symbol, side="buy", price_text=price, quantity_text=quantity)
    minute = datetime(2026, 3, 2, 10, 4, tzinfo=UTC)
    _trade_times(
        database,
        symbol,
        [
            minute.replace(second=5),
            minute.replace(second=50),
            minute.replace(second=30),  # earlier in time, later by id: close follows the id
            minute.replace(minute=7, second=1),
        ],
    )

    trades = client.get(f"/api/v1/instruments/{symbol}/trades", params={"limit": 3}).json()["data"]
    assert [trade["price"] for trade in trades] == ["102.00", "95.00", "105.00"]
    assert [trade["side"] for trade in trades] == ["buy", "buy", "buy"]
    assert trades[0]["quantity"] == "0.40000000"
    assert trades[0]["id"] > trades[1]["id"] > trades[2]["id"]

    end = "2026-03-02T10:09:00Z"
    one = client.get(f"/api/v1/instruments/{symbol}/candles", params={"interval": "1m", "end": end, "limit": 10})
    assert one.status_code == 200, one.text
    assert one.json()["data"] == [
        {
            "time": "2026-03-02T10:04:00+00:00",
            "open": "100.00",
            "high": "105.00",
            "low": "95.00",
            "close": "95.00",
            "volume": "0.60000000",
            "quote_volume": "59.50",
            "trades": 3,
        },
        {
            "time": "2026-03-02T10:07:00+00:00",
            "open": "102.00",
            "high": "102.00",
            "low": "102.00",
            "close": "102.00",
            "volume": "0.40000000",
            "quote_volume": "40.80",
            "trades": 1,
        },
    ]
    five = client.get(f"/api/v1/instruments/{symbol}/candles", params={"interval": "5m", "end": end}).json()["data"]
    assert [(c["time"], c["open"], c["close"], c["volume"]) for c in five] == [
        ("2026-03-02T10:00:00+00:00", "100.00", "95.00", "0.60000000"),
        ("2026-03-02T10:05:00+00:00", "102.00", "102.00", "0.40000000"),
    ]
    day = client.get(f"/api/v1/instruments/{symbol}/candles", params={"interval": "1d", "end": end}).json()["data"]
    assert [(c["time"], c["high"], c["low"], c["quote_volume"]) for c in day] == [
        ("2026-03-02T00:00:00+00:00", "105.00", "95.00", "100.30")
    ]
    # The window holds the last `limit` buckets up to `end`: 10:07 only.
    short = client.get(f"/api/v1/instruments/{symbol}/candles", params={"interval": "1m", "end": end, "limit": 3})
    assert [c["time"] for c in short.json()["data"]] == ["2026-03-02T10:07:00+00:00"]
    bad = client.get(f"/api/v1/instruments/{symbol}/candles", params={"interval": "2m"})
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_interval")
    missing = client.get("/api/v1/instruments/NO-SUCH/candles")
    assert (missing.status_code, missing.json()["error"]) == (404, "unknown_instrument")
    assert client.get("/api/v1/instruments/NO-SUCH/trades").json()["error"] == "unknown_instrument"
