"""Operator busts and the operator's book, through the API on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bourse.commissions.models import CommissionAccrual
from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.ledger.models import Account, JournalEntry
from bourse.settings import Settings
from bourse.trading.models import Trade
from tests.commissions.support import client_takes, hierarchy, payable, run_accrual
from tests.commissions.support import fees as fees_balance
from tests.support.auth import TestUser, bearer, make_user
from tests.support.ledger import fund, verify
from tests.trading.orders_support import cancel, check_consistent, market, place

Balances = dict[tuple[str, str, str | None, str], int]


def balances(database: Database, *assets: str) -> Balances:
    """Every non-zero balance of the assets, by (asset, kind, user, ref): the whole state of their money."""
    with unit_of_work(database) as session:
        rows = session.execute(
            select(Account.asset, Account.kind, Account.user_id, Account.ref, Account.balance).where(
                Account.asset.in_(assets), Account.balance != 0
            )
        ).all()
    return {
        (asset, str(kind), None if user is None else str(user), ref): int(amount)
        for asset, kind, user, ref, amount in rows
    }


def owned(found: Balances) -> dict[tuple[str, str], int]:
    """Available and held together per asset and user (system accounts as they are): what a bust gives back."""
    totals: dict[tuple[str, str], int] = {}
    for (asset, kind, user, ref), amount in found.items():
        key = (asset, f"user:{user}" if user is not None else f"{kind}:{ref}")
        totals[key] = totals.get(key, 0) + amount
    return {key: amount for key, amount in totals.items() if amount}


def bust(client: TestClient, settings: Settings, who: TestUser, trade_id: int, reason: str = "fat finger") -> Any:
    return client.post(f"/api/v1/admin/trades/{trade_id}/bust", json={"reason": reason}, headers=bearer(settings, who))


def trade_row(database: Database, trade_id: int) -> Trade:
    with unit_of_work(database) as session:
        trade = session.get_one(Trade, trade_id)
        session.expunge_all()
    return trade


def test_a_bust_moves_every_balance_back_exactly(client: TestClient, settings: Settings, database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = make_user(database), make_user(database)
    operator = make_user(database, role=Role.operator)
    fund(database, seller.id, base, 10**8)
    fund(database, buyer.id, quote, 1_000_000)
    place(database, seller.id, symbol, side="sell", price_text="100.00", quantity_text="0.5")
    before = balances(database, base, quote)
    _, [trade] = place(database, buyer.id, symbol, side="buy", price_text="101.00", quantity_text="0.2")
    assert balances(database, base, quote) != before

    response = bust(client, settings, operator, trade.id)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trade_id"] == trade.id
    assert body["busted_by"] == str(operator.id)
    assert body["reason"] == "fat finger"
    assert body["commissions_clawed_back"] == 0
    # What each party owns of each asset, and the fees, are as before the fill, to the unit.
    assert owned(balances(database, base, quote)) == owned(before)
    after = balances(database, base, quote)
    # The buyer's order is done: all its quote is available again. The seller's order is not
    # re-opened: the 0.2 it sold comes back available, its remainder 0.3 stays held.
    assert after[(quote, "available", str(buyer.id), str(buyer.id))] == 1_000_000
    assert (quote, "held", str(buyer.id), str(buyer.id)) not in after
    assert (base, "available", str(buyer.id), str(buyer.id)) not in after
    assert after[(base, "held", str(seller.id), str(seller.id))] == 30_000_000
    assert after[(base, "available", str(seller.id), str(seller.id))] == 10**8 - 30_000_000
    assert not [key for key in after if key[1] == "fees"]
    busted = trade_row(database, trade.id)
    assert busted.busted_at is not None
    assert busted.busted_by == operator.id
    assert busted.bust_reason == "fat finger"
    assert str(busted.bust_entry_id) == body["reversal_entry_id"]
    with unit_of_work(database) as session:
        reversal = session.get_one(JournalEntry, busted.bust_entry_id)
        assert reversal.reverses_id == trade.entry_id
        assert reversal.idempotency_key == f"bust:{trade.id}"
    # The seller's order keeps its fill as history and its remainder rests on its hold.
    book = client.get(f"/api/v1/admin/instruments/{symbol}/orders", headers=bearer(settings, operator)).json()
    [resting] = book["data"]
    assert (resting["quantity"], resting["remaining"]) == ("0.50000000", "0.30000000")
    check_consistent(database, symbol)
    assert verify(database).ok


def test_a_bust_claws_back_accrued_commissions_and_stops_a_later_accrual(
    client: TestClient, settings: Settings, database: Database
) -> None:
    h = hierarchy(database)
    operator = make_user(database, role=Role.admin)
    accrued = client_takes(database, h)
    run_accrual(database, settings, accrued.id)
    assert payable(database, h.sub.id, h.quote) > 0
    assert payable(database, h.ib.id, h.quote) > 0
    with unit_of_work(database) as session:
        accruals = len(session.scalars(select(CommissionAccrual).where(CommissionAccrual.trade_id == accrued.id)).all())
    assert accruals == 2  # the sub-IB at level 1, the IB at level 2
    response = bust(client, settings, operator, accrued.id)
    assert response.status_code == 200, response.text
    assert response.json()["commissions_clawed_back"] == accruals
    assert payable(database, h.sub.id, h.quote) == 0
    assert payable(database, h.ib.id, h.quote) == 0
    assert fees_balance(database, h.quote) == 0  # the fees went back to the parties, commissions to fees first
    assert verify(database).ok

    # Busted before its accrual job ran: the job then grants nothing.
    early = client_takes(database, h)
    assert bust(client, settings, operator, early.id).status_code == 200
    run_accrual(database, settings, early.id)
    with unit_of_work(database) as session:
        assert not session.scalars(select(CommissionAccrual).where(CommissionAccrual.trade_id == early.id)).all()
    assert payable(database, h.sub.id, h.quote) == 0
    assert payable(database, h.ib.id, h.quote) == 0
    assert fees_balance(database, h.quote) == 0
    assert verify(database).ok


def test_refusals_second_bust_unknown_trade_bad_reason(
    client: TestClient, settings: Settings, database: Database
) -> None:
    symbol, base, quote = market(database)
    seller, buyer = make_user(database), make_user(database)
    operator = make_user(database, role=Role.operator)
    fund(database, seller.id, base, 10**8)
    fund(database, buyer.id, quote, 1_000_000)
    place(database, seller.id, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    _, [trade] = place(database, buyer.id, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    assert bust(client, settings, operator, trade.id).status_code == 200
    after_first = balances(database, base, quote)
    again = bust(client, settings, operator, trade.id, reason="again")
    assert again.status_code == 409
    assert again.json()["error"] == "trade_already_busted"
    assert balances(database, base, quote) == after_first
    assert trade_row(database, trade.id).bust_reason == "fat finger"
    missing = bust(client, settings, operator, 10**12)
    assert (missing.status_code, missing.json()["error"]) == (404, "trade_not_found")
    blank = bust(client, settings, operator, trade.id, reason="  ")
    assert (blank.status_code, blank.json()["error"]) == (422, "bust_reason_invalid")
    assert verify(database).ok


def test_a_bust_is_refused_when_the_proceeds_were_spent(
    client: TestClient, settings: Settings, database: Database
) -> None:
    symbol, base, quote = market(database)
    seller, buyer = make_user(database), make_user(database)
    operator = make_user(database, role=Role.operator)
    fund(database, seller.id, base, 10**8)
    fund(database, buyer.id, quote, 1_000_000)
    place(database, seller.id, symbol, side="sell", price_text="100.00", quantity_text="0.2")
    _, [trade] = place(database, buyer.id, symbol, side="buy", price_text="100.00", quantity_text="0.2")
    # The buyer puts the base it bought on the book: it is held, no longer available.
    place(database, buyer.id, symbol, side="sell", price_text="150.00", quantity_text="0.2")
    before = balances(database, base, quote)
    with unit_of_work(database) as session:
        entries = session.scalar(select(func.count()).select_from(JournalEntry))
    response = bust(client, settings, operator, trade.id)
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "bust_insufficient_funds"
    assert balances(database, base, quote) == before
    assert trade_row(database, trade.id).busted_at is None
    with unit_of_work(database) as session:
        assert session.scalar(select(func.count()).select_from(JournalEntry)) == entries
        assert session.scalar(select(JournalEntry).where(JournalEntry.idempotency_key == f"bust:{trade.id}")) is None
    check_consistent(database, symbol)
    assert verify(database).ok


def test_clients_may_not_bust_or_see_the_book(client: TestClient, settings: Settings, database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = make_user(database), make_user(database)
    fund(database, seller.id, base, 10**8)
    fund(database, buyer.id, quote, 1_000_000)
    place(database, seller.id, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    _, [trade] = place(database, buyer.id, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    refused = bust(client, settings, buyer, trade.id)
    assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
    assert trade_row(database, trade.id).busted_at is None
    book = client.get(f"/api/v1/admin/instruments/{symbol}/orders", headers=bearer(settings, seller))
    assert (book.status_code, book.json()["error"]) == (403, "forbidden")
    anonymous = client.get(f"/api/v1/admin/instruments/{symbol}/orders")
    assert anonymous.status_code == 401
    assert verify(database).ok


def test_the_operator_book_lists_exactly_the_resting_orders_in_priority_order(
    client: TestClient, settings: Settings, database: Database
) -> None:
    symbol, base, quote = market(database)
    alice, bob = make_user(database), make_user(database)
    operator = make_user(database, role=Role.operator)
    for user in (alice, bob):
        fund(database, user.id, base, 10**9)
        fund(database, user.id, quote, 10**8)

    def rest(user: TestUser, side: str, price: str, quantity: str = "0.1") -> int:
        order, _ = place(database, user.id, symbol, side=side, price_text=price, quantity_text=quantity)
        return order.id

    bid_99_a = rest(alice, "buy", "99.00")
    bid_98 = rest(bob, "buy", "98.00")
    bid_99_b = rest(bob, "buy", "99.00")
    ask_102_a = rest(alice, "sell", "102.00")
    ask_101 = rest(bob, "sell", "101.00", "0.3")
    ask_102_b = rest(bob, "sell", "102.00")
    cancelled = rest(alice, "buy", "97.00")
    cancel(database, alice.id, cancelled)
    rest(alice, "buy", "101.00", "0.1")  # fills against ask_101 in part: taker done, maker rests
    ask_100 = rest(alice, "sell", "100.00", "0.05")  # below every ask, above every bid: the best ask
    response = client.get(f"/api/v1/admin/instruments/{symbol}/orders", headers=bearer(settings, operator))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["instrument"] == symbol
    rows = body["data"]
    assert [row["id"] for row in rows] == [bid_99_a, bid_99_b, bid_98, ask_100, ask_101, ask_102_a, ask_102_b]
    by_id = {row["id"]: row for row in rows}
    assert by_id[ask_101]["remaining"] == "0.20000000"
    assert by_id[ask_101]["quantity"] == "0.30000000"
    assert by_id[ask_101]["status"] == "partially_filled"
    assert by_id[ask_101]["side"] == "sell"
    assert by_id[ask_101]["price"] == "101.00"
    assert by_id[bid_99_a]["user_id"] == str(alice.id)
    assert by_id[bid_98]["user_id"] == str(bob.id)
    assert all(row["created_at"] for row in rows)
    unknown = client.get("/api/v1/admin/instruments/NO-SUCH/orders", headers=bearer(settings, operator))
    assert (unknown.status_code, unknown.json()["error"]) == (404, "unknown_instrument")
    check_consistent(database, symbol)
    assert verify(database).ok


def test_bust_body_is_validated(client: TestClient, settings: Settings, database: Database) -> None:
    operator = make_user(database, role=Role.operator)
    headers = bearer(settings, operator)
    extra = client.post("/api/v1/admin/trades/1/bust", json={"reason": "x", "other": 1}, headers=headers)
    assert extra.status_code == 422
    not_an_id = client.post("/api/v1/admin/trades/abc/bust", json={"reason": "x"}, headers=headers)
    assert not_an_id.status_code == 422
