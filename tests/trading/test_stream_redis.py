"""The market data WebSocket across two API apps joined by the real Redis.

Two ``create_app`` instances share one PostgreSQL database and one Redis prefix, as
two replicas would: orders placed through app A reach a WebSocket client of app B
only through Redis (with Redis configured nothing is delivered in process), in
sequence; the orders channel reaches its own user only; and when B's subscriber
loses its Redis connection it reconnects and resyncs its book and trades clients.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.settings import Settings
from bourse.trading import instruments
from bourse.trading.fanout import RedisRelay
from tests.support.auth import bearer, make_user
from tests.support.ledger import fund
from tests.support.services import make_settings
from tests.support.waiting import wait_until
from tests.trading.orders_support import market

pytestmark = pytest.mark.timeout(60)
Json = dict[str, Any]


@pytest.fixture
def redis_settings(postgres_url: str, redis_url: str) -> Settings:
    # A prefix of its own: no other test (or replica) hears these channels.
    return make_settings(postgres_url, redis_url=redis_url, queue_redis_prefix=f"test-{uuid.uuid4().hex[:8]}:")


@pytest.fixture
def shared_database(redis_settings: Settings) -> Iterator[Database]:
    db = Database.from_settings(redis_settings)
    yield db
    db.dispose()


def _relay(app: FastAPI) -> RedisRelay:
    relay = app.state.market_relay
    assert isinstance(relay, RedisRelay)
    return relay


def _wait_subscribed(app: FastAPI) -> None:
    wait_until(_relay(app).connected.is_set, "the market data subscriber to subscribe", timeout=10, interval=0.02)


@pytest.fixture
def replicas(redis_settings: Settings, shared_database: Database) -> Iterator[tuple[TestClient, TestClient]]:
    app_a = create_app(redis_settings, database=shared_database)
    app_b = create_app(redis_settings, database=shared_database)
    with (
        TestClient(app_a, raise_server_exceptions=False) as a,
        TestClient(app_b, raise_server_exceptions=False) as b,
    ):
        _wait_subscribed(app_a)
        _wait_subscribed(app_b)
        yield a, b


def _until(ws: WebSocketTestSession, done: Callable[[Json], bool], limit: int = 50) -> list[Json]:
    """Messages up to and including the first for which ``done`` holds."""
    seen: list[Json] = []
    for _ in range(limit):
        message: Json = ws.receive_json()
        seen.append(message)
        if done(message):
            return seen
    raise AssertionError(f"never came: {seen}")


def _sequence(database: Database, symbol: str) -> int:
    with unit_of_work(database) as session:
        return instruments.get_instrument(session, symbol).sequence


def _place(client: TestClient, headers: dict[str, str], symbol: str, side: str, price: str, quantity: str) -> Json:
    response = client.post(
        "/api/v1/orders",
        json={"instrument": symbol, "side": side, "type": "limit", "price": price, "quantity": quantity},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    body: Json = response.json()
    return body


def _subscribe(ws: WebSocketTestSession, channel: str, symbol: str) -> Json:
    """Subscribe and return the snapshot, having read the acknowledgement too (it may come second)."""
    ws.send_json({"op": "subscribe", "channel": channel, "instrument": symbol})
    seen: list[Json] = [ws.receive_json(), ws.receive_json()]
    assert sorted(m["type"] for m in seen) == ["snapshot", "subscribed"], seen
    [snapshot] = [m for m in seen if m["type"] == "snapshot"]
    return snapshot


def test_commands_on_one_replica_reach_the_clients_of_another_in_sequence(
    replicas: tuple[TestClient, TestClient], shared_database: Database, redis_settings: Settings
) -> None:
    a, b = replicas
    symbol, base, quote = market(shared_database)
    seller, buyer = make_user(shared_database), make_user(shared_database)
    fund(shared_database, seller.id, base, 10 * 10**8)
    fund(shared_database, buyer.id, quote, 10_000_000)
    sell_headers, buy_headers = bearer(redis_settings, seller), bearer(redis_settings, buyer)
    listener = redis.Redis.from_url(str(redis_settings.redis_url)).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe(f"{redis_settings.queue_redis_prefix}md:{symbol}")
    with listener, b.websocket_connect("/api/v1/ws") as ws:
        book = _subscribe(ws, "book", symbol)
        _subscribe(ws, "trades", symbol)
        last = book["sequence"]
        resting = _place(a, sell_headers, symbol, "sell", "100.00", "1")
        _place(a, buy_headers, symbol, "buy", "100.00", "0.4")
        assert a.delete(f"/api/v1/orders/{resting['id']}", headers=sell_headers).status_code == 200
        deltas: list[Json] = []
        trades: list[Json] = []
        while len(deltas) < 3:
            message = ws.receive_json()
            (deltas if message["type"] == "delta" else trades).append(message)
        for delta in deltas:
            assert delta["prev_sequence"] == last
            last = delta["sequence"]
        assert last == _sequence(shared_database, symbol)
        assert [delta["changes"] for delta in deltas] == [
            [["sell", "100.00", "1.00000000", 1]],
            [["buy", "100.00", "0.00000000", 0], ["sell", "100.00", "0.60000000", 1]],
            [["sell", "100.00", "0.00000000", 0]],
        ]
        [trade] = trades
        assert (trade["type"], trade["price"], trade["quantity"], trade["side"]) == (
            "trade",
            "100.00",
            "0.40000000",
            "buy",
        )
        assert trade["prev_sequence"] is None
        assert deltas[0]["sequence"] < trade["sequence"] <= deltas[1]["sequence"]
        # One more command, committed after them: its delta closes the stream, so that a
        # duplicate of theirs, published at their commit, would have come before it.
        _place(a, sell_headers, symbol, "sell", "105.00", "0.1")
        [closing] = _until(ws, lambda m: m["type"] == "delta")
        assert closing["prev_sequence"] == last
        assert closing["changes"] == [["sell", "105.00", "0.10000000", 1]]
        # They travelled through Redis, published once (by one of the two apps), in commit order.
        heard: list[Json] = []

        def closed() -> bool:
            raw = listener.get_message(timeout=0.1)  # None for the subscription's own acknowledgement
            if raw is not None:
                heard.append(json.loads(raw["data"]))
            return bool(heard) and heard[-1] == closing

        wait_until(closed, lambda: f"the closing delta through Redis (heard {heard})", timeout=10, interval=0)
        assert heard == [deltas[0], trade, deltas[1], deltas[2], closing]


def test_the_orders_channel_through_redis_reaches_its_own_user_only(
    replicas: tuple[TestClient, TestClient], shared_database: Database, redis_settings: Settings
) -> None:
    a, b = replicas
    symbol, base, quote = market(shared_database)
    seller, buyer = make_user(shared_database), make_user(shared_database)
    fund(shared_database, seller.id, base, 10 * 10**8)
    fund(shared_database, buyer.id, quote, 10_000_000)
    sell_headers, buy_headers = bearer(redis_settings, seller), bearer(redis_settings, buyer)
    with b.websocket_connect("/api/v1/ws") as ws:
        ws.send_json({"op": "auth", "token": buy_headers["Authorization"].removeprefix("Bearer ")})
        assert ws.receive_json() == {"type": "authenticated"}
        ws.send_json({"op": "subscribe", "channel": "orders"})
        assert ws.receive_json() == {"type": "subscribed", "channel": "orders"}
        ask = _place(a, sell_headers, symbol, "sell", "100.00", "1")
        bid = _place(a, buy_headers, symbol, "buy", "100.00", "0.3")
        messages = _until(ws, lambda m: m["type"] == "fill")
        assert [(m["type"], m["id"], m["status"]) for m in messages[:-1]] == [("order", bid["id"], "filled")]
        fill = messages[-1]
        assert (fill["order_id"], fill["liquidity"], fill["side"]) == (bid["id"], "taker", "buy")
        # The seller's cancel is published on the seller's channel only: the buyer's next message is their own.
        assert a.delete(f"/api/v1/orders/{ask['id']}", headers=sell_headers).status_code == 200
        mine = _place(a, buy_headers, symbol, "buy", "90.00", "0.1")
        following = ws.receive_json()
        assert (following["type"], following["id"], following["status"]) == ("order", mine["id"], "open")


def test_a_message_published_on_redis_reaches_the_subscribers_of_every_replica(
    replicas: tuple[TestClient, TestClient], shared_database: Database, redis_settings: Settings
) -> None:
    a, b = replicas
    symbol, _, _ = market(shared_database)
    publisher = redis.Redis.from_url(str(redis_settings.redis_url))
    try:
        with a.websocket_connect("/api/v1/ws") as on_a, b.websocket_connect("/api/v1/ws") as on_b:
            book = _subscribe(on_a, "book", symbol)
            _subscribe(on_b, "book", symbol)
            delta = {
                "type": "delta",
                "channel": "book",
                "instrument": symbol,
                "sequence": book["sequence"] + 1,
                "prev_sequence": book["sequence"],
                "changes": [],
            }
            channel = f"{redis_settings.queue_redis_prefix}md:{symbol}"
            assert publisher.publish(channel, "not json") == 2  # ignored by both subscribers
            assert publisher.publish(channel, json.dumps(delta)) == 2  # one subscriber per replica
            assert on_a.receive_json() == delta
            assert on_b.receive_json() == delta
    finally:
        publisher.close()


def test_a_subscriber_that_lost_redis_reconnects_and_resyncs_its_clients(
    replicas: tuple[TestClient, TestClient], shared_database: Database, redis_settings: Settings
) -> None:
    a, b = replicas
    symbol, base, _ = market(shared_database)
    seller = make_user(shared_database)
    fund(shared_database, seller.id, base, 10 * 10**8)
    relay = _relay(b.app)  # type: ignore[arg-type]
    admin = redis.Redis.from_url(str(redis_settings.redis_url))
    try:
        with b.websocket_connect("/api/v1/ws") as ws:
            _subscribe(ws, "book", symbol)
            _subscribe(ws, "trades", symbol)
            [victim] = [c["id"] for c in admin.client_list() if c["name"] == relay.client_name]
            assert admin.client_kill_filter(_id=victim) == 1
            # Whatever was published while it was away is lost: each subscription is resynced.
            messages = [ws.receive_json() for _ in range(4)]
            for channel in ("book", "trades"):
                mine = [m for m in messages if m["channel"] == channel]
                assert [m["type"] for m in mine] == ["resync", "snapshot"], messages
            [snapshot] = [m for m in messages if m["type"] == "snapshot" and m["channel"] == "book"]
            assert snapshot["sequence"] == _sequence(shared_database, symbol)
            # The reconnected subscriber delivers the next command as the next delta.
            _wait_subscribed(b.app)  # type: ignore[arg-type]
            _place(a, bearer(redis_settings, seller), symbol, "sell", "101.00", "0.5")
            delta = ws.receive_json()
            assert delta["type"] == "delta"
            assert delta["prev_sequence"] == snapshot["sequence"]
            assert delta["changes"] == [["sell", "101.00", "0.50000000", 1]]
    finally:
        admin.close()
