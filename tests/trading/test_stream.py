"""The market data WebSocket in process, on SQLite and PostgreSQL: snapshots, sequenced
deltas and trades, the private orders channel, and a resync after a forced gap."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from bourse.db import Database, unit_of_work
from bourse.identity.models import User
from bourse.identity.tokens import issue_access_token
from bourse.settings import Settings
from bourse.trading import instruments
from tests.support.ledger import fund
from tests.trading.orders_support import cancel, market, new_user, place

pytestmark = pytest.mark.timeout(60)
Json = dict[str, Any]


def _sequence(database: Database, symbol: str) -> int:
    with unit_of_work(database) as session:
        return instruments.get_instrument(session, symbol).sequence


def _until(ws: WebSocketTestSession, done: Callable[[Json], bool], limit: int = 50) -> list[Json]:
    """Messages up to and including the first for which ``done`` holds."""
    seen: list[Json] = []
    for _ in range(limit):
        message: Json = ws.receive_json()
        seen.append(message)
        if done(message):
            return seen
    raise AssertionError(f"never came: {seen}")


def _funded_market(database: Database) -> tuple[str, Any, Any]:
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 10 * 10**8)
    fund(database, buyer, quote, 10_000_000)
    return symbol, seller, buyer


def test_snapshot_then_sequenced_deltas_and_trades(client: TestClient, database: Database) -> None:
    symbol, seller, buyer = _funded_market(database)
    resting, _ = place(database, seller, symbol, side="sell", price_text="100.00", quantity_text="1")
    with client.websocket_connect("/api/v1/ws") as ws:
        ws.send_json({"op": "subscribe", "channel": "book", "instrument": symbol})
        [*_, snapshot] = _until(ws, lambda m: m["type"] == "snapshot")
        assert snapshot["sequence"] == _sequence(database, symbol)
        assert snapshot["asks"] == [["100.00", "1.00000000", 1]]
        ws.send_json({"op": "subscribe", "channel": "trades", "instrument": symbol})
        _until(ws, lambda m: m["type"] == "snapshot" and m["channel"] == "trades")

        last = snapshot["sequence"]
        last_trade: int | None = None
        place(database, seller, symbol, side="sell", price_text="101.00", quantity_text="0.5")
        place(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.4")
        cancel(database, seller, resting.id)
        deltas: list[Json] = []
        trades: list[Json] = []
        while len(deltas) < 3:
            message = ws.receive_json()
            (deltas if message["type"] == "delta" else trades).append(message)
        for delta in deltas:
            assert delta["prev_sequence"] == last
            assert delta["sequence"] > last
            last = delta["sequence"]
        assert last == _sequence(database, symbol)
        assert deltas[0]["changes"] == [["sell", "101.00", "0.50000000", 1]]
        assert deltas[1]["changes"] == [["buy", "100.00", "0.00000000", 0], ["sell", "100.00", "0.60000000", 1]]
        assert deltas[2]["changes"] == [["sell", "100.00", "0.00000000", 0]]
        [trade] = [message for message in trades if message["type"] == "trade"]
        assert trade["type"] == "trade"
        assert (trade["price"], trade["quantity"], trade["side"]) == ("100.00", "0.40000000", "buy")
        assert trade["prev_sequence"] == last_trade
        assert deltas[0]["sequence"] < trade["sequence"] <= deltas[1]["sequence"]

        ws.send_json({"op": "subscribe", "channel": "book", "instrument": "NO-SUCH"})
        assert ws.receive_json() == {"type": "error", "error": "unknown_instrument"}
        ws.send_text("not json")
        assert ws.receive_json() == {"type": "error", "error": "invalid_message"}
        ws.send_json({"op": "dance"})
        assert ws.receive_json() == {"type": "error", "error": "unknown_op"}


def test_the_orders_channel_sees_only_the_users_own_orders(
    client: TestClient, database: Database, settings: Settings
) -> None:
    symbol, seller, buyer = _funded_market(database)
    with client.websocket_connect("/api/v1/ws") as ws:
        ws.send_json({"op": "subscribe", "channel": "orders"})
        assert ws.receive_json() == {"type": "error", "error": "auth_required"}
        ws.send_json({"op": "auth", "token": "not-a-token"})
        assert ws.receive_json() == {"type": "error", "error": "invalid_token"}
        with unit_of_work(database) as session:
            token = issue_access_token(settings, session.get(User, buyer))
        ws.send_json({"op": "auth", "token": token})
        assert ws.receive_json() == {"type": "authenticated"}
        ws.send_json({"op": "subscribe", "channel": "orders"})
        assert ws.receive_json() == {"type": "subscribed", "channel": "orders"}

        ask, _ = place(database, seller, symbol, side="sell", price_text="100.00", quantity_text="1")
        bid, _ = place(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.3")
        messages = _until(ws, lambda m: m["type"] == "fill")
        orders = [m for m in messages if m["type"] == "order"]
        assert [m["id"] for m in orders] == [bid.id]
        assert orders[0]["status"] == "filled"
        fill = messages[-1]
        assert (fill["order_id"], fill["liquidity"], fill["side"], fill["fee"]) == (bid.id, "taker", "buy", "0.06")
        # The seller's cancel is not the buyer's business; the next message is the buyer's own.
        cancel(database, seller, ask.id)
        mine, _ = place(database, buyer, symbol, side="buy", price_text="90.00", quantity_text="0.1")
        following = ws.receive_json()
        assert (following["type"], following["id"], following["status"]) == ("order", mine.id, "open")


def test_a_slow_subscriber_gets_a_resync_and_a_current_snapshot(
    app: FastAPI, client: TestClient, database: Database
) -> None:
    symbol, seller, buyer = _funded_market(database)
    place(database, seller, symbol, side="sell", price_text="100.00", quantity_text="1")
    app.state.market_hub.queue_size = 1  # a send queue too small for one fill's trade and delta
    with client.websocket_connect("/api/v1/ws") as ws:
        for channel in ("trades", "book"):
            ws.send_json({"op": "subscribe", "channel": channel, "instrument": symbol})
            _until(ws, lambda m, c=channel: m["type"] == "snapshot" and m["channel"] == c)  # type: ignore[misc]
        place(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.2")
        messages = _until(ws, lambda m: m["type"] == "snapshot" and m["channel"] == "book")
        kinds = [(m["type"], m.get("channel")) for m in messages]
        assert ("resync", "book") in kinds
        assert kinds.index(("resync", "book")) < len(kinds) - 1
        assert ("delta", "book") not in kinds  # dropped: the snapshot replaces it
        snapshot = messages[-1]
        assert snapshot["sequence"] == _sequence(database, symbol)
        assert snapshot["asks"] == [["100.00", "0.80000000", 1]]
        # With one subscription a command's single delta fits: deltas follow a fresh snapshot.
        ws.send_json({"op": "unsubscribe", "channel": "trades", "instrument": symbol})
        _until(ws, lambda m: m["type"] == "unsubscribed")
        ws.send_json({"op": "unsubscribe", "channel": "book", "instrument": symbol})
        _until(ws, lambda m: m["type"] == "unsubscribed")
        ws.send_json({"op": "subscribe", "channel": "book", "instrument": symbol})
        [*_, fresh] = _until(ws, lambda m: m["type"] == "snapshot")
        place(database, seller, symbol, side="sell", price_text="102.00", quantity_text="0.1")
        delta = _until(ws, lambda m: m["type"] == "delta")[-1]
        assert delta["prev_sequence"] == fresh["sequence"]
        assert delta["sequence"] == _sequence(database, symbol)
