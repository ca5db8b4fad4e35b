"""Helpers for the order service's tests: a private instrument, funded users, orders."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select, text

from bourse.assets import service as assets
from bourse.db import Database, unit_of_work
from bourse.ledger.models import Account, AccountKind, Hold, HoldState
from bourse.ledger.posting import Context, user_actor
from bourse.trading import instruments, orders, queries
from bourse.trading.matcher import ShardMatcher, rebuild_book
from bourse.trading.models import PENDING_COMMANDS_SQL, Order, Trade
from tests.support.auth import make_user
from tests.support.ledger import balance
from tests.support.waiting import wait_until


def market(database: Database, **changes: Any) -> tuple[str, str, str]:
    """A new open instrument on two new assets (base 8 decimals, quote 2): tick 0.01, lot 0.001."""
    base, quote = f"B{uuid.uuid4().hex[:8].upper()}", f"Q{uuid.uuid4().hex[:8].upper()}"
    with unit_of_work(database) as session:
        assets.create_asset(session, code=base, scale=8, name="Test base")
        assets.create_asset(session, code=quote, scale=2, name="Test quote")
        definition = {
            "symbol": f"{base}-{quote}",
            "base_asset": base,
            "quote_asset": quote,
            "price_scale": 2,
            "tick_size": "0.01",
            "lot_size": "0.001",
            "min_quantity": "0.001",
            "max_quantity": "100",
            "price_band_bps": 10_000,
            **changes,
        }
        symbol = instruments.create_instrument(session, **definition).symbol
    return symbol, base, quote


def new_user(database: Database) -> uuid.UUID:
    return make_user(database).id


def settle(database: Database) -> None:
    """Have every pending command carried out: by a matcher of our own, or, if another leads
    (an app's in-process matcher), by that one."""
    matcher = ShardMatcher(database)
    try:
        if matcher.lead():
            matcher.drain()
            return
    finally:
        matcher.close()

    def nothing_pending() -> bool:
        with unit_of_work(database) as session:
            return session.scalar(select(Order.id).where(text(f"({PENDING_COMMANDS_SQL})")).limit(1)) is None

    wait_until(nothing_pending, "the leading matcher to carry out every pending command", interval=0.02)


def place(database: Database, user_id: uuid.UUID, symbol: str, **fields: Any) -> tuple[Order, list[Trade]]:
    """Accept an order, let the matcher carry it out, and return it with its trades as they stand."""
    terms: dict[str, Any] = {
        "side": "buy",
        "kind": "limit",
        "tif": None,
        "price_text": None,
        "quantity_text": None,
        "quote_budget_text": None,
        "client_order_id": None,
        "stp": None,
        **fields,
    }
    with unit_of_work(database) as session:
        context = Context(actor=user_actor(user_id), idempotency_key=f"test:{uuid.uuid4()}")
        accepted = orders.accept_order(session, user_id=user_id, symbol=symbol, context=context, **terms)
        order_id = accepted.order.id
    settle(database)
    with unit_of_work(database) as session:
        order = queries.get_order(session, order_id)
        trades = queries.trades_of_order(session, order_id)
        session.expunge_all()
    return order, trades


def cancel(database: Database, user_id: uuid.UUID, order_id: int) -> Order:
    """Ask for the order's cancel, let the matcher carry it out, and return the order as it stands."""
    with unit_of_work(database) as session:
        orders.request_cancel(session, user_id=user_id, order_id=order_id)
    settle(database)
    with unit_of_work(database) as session:
        order = queries.get_order(session, order_id)
        session.expunge_all()
    return order


def held(database: Database, user_id: uuid.UUID, asset: str) -> int:
    return balance(database, user_id, asset, AccountKind.held)


def fees(database: Database, asset: str) -> int:
    with unit_of_work(database) as session:
        found = session.scalar(select(Account.balance).where(Account.kind == AccountKind.fees, Account.asset == asset))
    return int(found or 0)


def asset_total(database: Database, asset: str) -> int:
    """Every account's balance of ``asset`` summed: always zero in a double-entry ledger."""
    with unit_of_work(database) as session:
        total = session.scalar(select(func.coalesce(func.sum(Account.balance), 0)).where(Account.asset == asset))
        assert total is not None
        return int(total)


def user_total(database: Database, asset: str) -> int:
    """What users own of ``asset`` (available and held) plus the fees collected: what was funded."""
    with unit_of_work(database) as session:
        total = session.scalar(
            select(func.coalesce(func.sum(Account.balance), 0)).where(
                Account.asset == asset,
                Account.kind.in_([AccountKind.available, AccountKind.held, AccountKind.fees]),
            )
        )
        assert total is not None
        return int(total)


def check_consistent(database: Database, symbol: str) -> None:
    """The book rebuilds from the database; holds cover what open orders can still trade."""
    with unit_of_work(database) as session:
        instrument = instruments.get_instrument(session, symbol)
        rebuilt = rebuild_book(session, instrument)
        assert rebuilt.sequence == instrument.sequence
        for hold in session.scalars(select(Hold)):
            assert hold.remaining >= 0
        for order in queries.open_orders(session, symbol):
            order_hold = session.get(Hold, order.hold_id)
            assert order_hold is not None
            assert order_hold.state is HoldState.open
            if order.side == "sell":
                assert order_hold.remaining >= order.remaining
            else:
                needed = orders.buy_hold(instrument, order.price or 0, order.remaining, orders.DEFAULT_FEES)
                # The reserve is rounded up once for the whole order, so a partly filled buy
                # may hold up to a unit or two less than a fresh order for its remainder would.
                exact = order.price * order.remaining * 10**instrument.quote_scale * (10_000 + 20)  # type: ignore[operator]
                denominator = 10 ** (instrument.price_scale + instrument.base_scale) * 10_000
                assert order_hold.remaining * denominator >= exact, (order_hold.remaining, needed)
        for order in session.scalars(select(Order).where(Order.instrument == symbol)):
            if order.status.value in {"filled", "cancelled", "rejected"}:
                closed_hold = session.get(Hold, order.hold_id)
                assert closed_hold is not None
                assert closed_hold.remaining == 0
