"""The order-entry contract over HTTP: 201 once the matcher has carried an order out, 202
with the order pending when the wait runs out, retries by Idempotency-Key finding the
same order as it stands, and cancels answered the same way (200 or 202)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.ledger.models import Hold
from bourse.settings import Settings
from bourse.trading.models import Order
from tests.support.auth import bearer, make_user
from tests.support.ledger import fund, verify
from tests.support.services import make_settings
from tests.support.waiting import wait_until
from tests.trading.orders_support import held, market, settle


@pytest.fixture
def no_matcher(database_url: str, database: Database) -> Iterator[tuple[TestClient, Settings]]:
    """An API whose orders no matcher reaches (``external``, none running) until the test settles them."""
    settings = make_settings(database_url, matcher="external", order_wait_ms=200)
    with TestClient(create_app(settings, database=database), raise_server_exceptions=False) as client:
        yield client, settings


def _post(client: TestClient, settings: Settings, user: Any, key: str, **body: Any) -> Any:
    return client.post("/api/v1/orders", json=body, headers={**bearer(settings, user), "Idempotency-Key": key})


def test_an_order_the_matcher_has_not_reached_is_202_pending_and_a_retry_finds_it(
    no_matcher: tuple[TestClient, Settings], database: Database
) -> None:
    client, settings = no_matcher
    symbol, _base, quote = market(database)
    user = make_user(database)
    fund(database, user.id, quote, 1_000_000)
    key = uuid.uuid4().hex
    order = {"instrument": symbol, "side": "buy", "type": "limit", "price": "100.00", "quantity": "0.1"}
    first = _post(client, settings, user, key, **order)
    assert first.status_code == 202, first.text
    assert first.headers["Idempotent-Replayed"] == "false"
    body = first.json()
    assert (body["status"], body["fills"]) == ("pending", [])
    assert held(database, user.id, quote) == 1_002  # 10.00 plus the largest fee on it, 0.2%
    assert client.get(f"/api/v1/orders/{body['id']}", headers=bearer(settings, user)).json()["status"] == "pending"

    # The retry while still pending: the same order, nothing more held.
    again = _post(client, settings, user, key, **order)
    assert again.status_code == 202, again.text
    assert (again.json()["id"], again.headers["Idempotent-Replayed"]) == (body["id"], "true")
    assert held(database, user.id, quote) == 1_002

    settle(database)
    # The retry after the matcher: the order as it stands now, answered 201.
    late = _post(client, settings, user, key, **order)
    assert late.status_code == 201, late.text
    assert (late.json()["id"], late.json()["status"]) == (body["id"], "open")
    # The same key for another order is refused, and nothing is placed.
    reused = _post(client, settings, user, key, **{**order, "price": "99.00"})
    assert reused.status_code == 422, reused.text
    assert reused.json()["error"] == "idempotency_key_reused"
    with unit_of_work(database) as session:
        assert session.scalar(select(func.count()).select_from(Order).where(Order.user_id == user.id)) == 1
        assert session.scalar(select(func.count()).select_from(Hold).where(Hold.user_id == user.id)) == 1
    assert verify(database).ok


def test_a_cancel_the_matcher_has_not_carried_out_is_202_then_done(
    no_matcher: tuple[TestClient, Settings], database: Database
) -> None:
    client, settings = no_matcher
    symbol, _base, quote = market(database)
    user = make_user(database)
    fund(database, user.id, quote, 1_000_000)
    placed = _post(
        client,
        settings,
        user,
        uuid.uuid4().hex,
        instrument=symbol,
        side="buy",
        type="limit",
        price="1.00",
        quantity="1",
    )
    order_id = placed.json()["id"]
    headers = bearer(settings, user)
    asked = client.delete(f"/api/v1/orders/{order_id}", headers=headers)
    assert asked.status_code == 202, asked.text
    assert (asked.json()["status"], asked.json()["cancel_requested"]) == ("pending", True)
    settle(database)
    # Cancelled before the matcher sequenced it: the cancel won, the hold came back whole.
    done = client.get(f"/api/v1/orders/{order_id}", headers=headers).json()
    assert (done["status"], done["cancel_reason"], done["cancel_requested"]) == ("cancelled", "user", False)
    assert held(database, user.id, quote) == 0
    again = client.delete(f"/api/v1/orders/{order_id}", headers=headers)
    assert again.status_code == 409, again.text
    assert again.json()["error"] == "order_not_open"
    assert verify(database).ok


def test_cancel_all_waits_for_the_matcher_and_answers_200(
    client: TestClient, settings: Settings, database: Database
) -> None:
    symbol, _base, quote = market(database)
    user = make_user(database)
    fund(database, user.id, quote, 1_000_000)
    for price in ("1.00", "2.00", "3.00"):
        placed = _post(
            client,
            settings,
            user,
            uuid.uuid4().hex,
            instrument=symbol,
            side="buy",
            type="limit",
            price=price,
            quantity="1",
        )
        assert placed.status_code == 201, placed.text
    cancelled = client.delete("/api/v1/orders", params={"instrument": symbol}, headers=bearer(settings, user))
    assert cancelled.status_code == 200, cancelled.text
    assert sorted(order["status"] for order in cancelled.json()["data"]) == ["cancelled"] * 3
    assert held(database, user.id, quote) == 0
    assert verify(database).ok


def test_the_schema_documents_both_answers(client: TestClient) -> None:
    schema = client.get("/api/openapi.json").json()
    place = schema["paths"]["/api/v1/orders"]["post"]["responses"]
    cancel = schema["paths"]["/api/v1/orders/{order_id}"]["delete"]["responses"]
    assert {"201", "202"} <= set(place)
    assert {"200", "202"} <= set(cancel)
    assert "pending" in schema["components"]["schemas"]["OrderOut"]["properties"]["status"]["description"]


def test_an_order_waiting_for_the_matcher_holds_no_database_lease(database_url: str, database: Database) -> None:
    """With one lease in the whole process, a request that needs the database is served while
    an order waits for the matcher, instead of queueing behind the wait."""
    settings = make_settings(
        database_url, matcher="external", order_wait_ms=3000, database_pool_size=1, database_max_overflow=0
    )
    symbol, _base, quote = market(database)
    user = make_user(database)
    fund(database, user.id, quote, 1_000_000)
    answered: dict[str, float] = {}
    one_connection = Database.from_settings(settings)
    try:
        with TestClient(create_app(settings, database=one_connection), raise_server_exceptions=False) as client:
            assert client.app.state.db_leases.size == 1  # type: ignore[attr-defined]

            def place() -> None:
                order = {"instrument": symbol, "side": "buy", "type": "limit", "price": "1.00", "quantity": "1"}
                response = _post(client, settings, user, uuid.uuid4().hex, **order)
                assert response.status_code == 202, response.text
                answered["order"] = time.monotonic()

            placing = threading.Thread(target=place)
            placing.start()
            wait_until(lambda: _pending(database, user.id) == 1, "the order to be accepted and waiting", timeout=10)
            wallets = client.get("/api/v1/wallets", headers=bearer(settings, user))
            answered["wallets"] = time.monotonic()
            assert wallets.status_code == 200, wallets.text
            placing.join(timeout=30)
    finally:
        one_connection.dispose()
    assert set(answered) == {"order", "wallets"}
    assert answered["wallets"] < answered["order"]  # served during the wait, not after it
    settle(database)
    assert verify(database).ok


def _pending(database: Database, user_id: uuid.UUID) -> int:
    with unit_of_work(database) as session:
        query = select(func.count()).select_from(Order).where(Order.user_id == user_id, Order.status == "pending")
        return int(session.scalar(query) or 0)
