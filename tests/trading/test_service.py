"""The order service on SQLite and PostgreSQL: worked settlement examples, holds,
refusals, idempotency on client_order_id, and cancels."""

from __future__ import annotations

from typing import Any

import pytest

from bourse.db import Database, unit_of_work
from bourse.errors import BourseError
from bourse.trading import instruments
from bourse.trading.models import OrderStatus
from tests.support.ledger import balance, fund, verify
from tests.trading.orders_support import (
    asset_total,
    cancel,
    check_consistent,
    fees,
    held,
    market,
    new_user,
    place,
)


def code_of(call: Any) -> str:
    with pytest.raises(BourseError) as caught:
        call()
    return caught.value.code


def test_a_limit_buy_against_a_resting_sell_settles_exactly(database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 100_000_000)  # 1 BASE
    fund(database, buyer, quote, 1_000_000)  # 10,000.00
    ask, _ = place(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.5")
    assert ask.status is OrderStatus.open
    assert held(database, seller, base) == 50_000_000

    # 0.3 at a limit of 101.00 holds 30.30 plus the 0.2% fee on it rounded up (0.07).
    bid, trades = place(database, buyer, symbol, side="buy", price_text="101.00", quantity_text="0.3")
    assert bid.status is OrderStatus.filled
    [trade] = trades
    assert (trade.price, trade.quantity, trade.quote_amount) == (10_000, 30_000_000, 3_000)
    assert (trade.maker_fee, trade.taker_fee) == (3, 6)  # 10 and 20 bps of 30.00
    # The buyer paid 30.00 + 0.06; the rest of the 30.37 hold (price improvement, fee reserve) came back.
    assert balance(database, buyer, quote) == 1_000_000 - 3_006
    assert held(database, buyer, quote) == 0
    assert balance(database, buyer, base) == 30_000_000
    assert balance(database, seller, quote) == 2_997
    assert balance(database, seller, base) == 50_000_000
    assert held(database, seller, base) == 20_000_000
    assert fees(database, quote) == 9
    assert asset_total(database, quote) == 0
    check_consistent(database, symbol)
    assert verify(database).ok


def test_a_sweep_partially_fills_and_rests_the_remainder(database: Database) -> None:
    symbol, base, quote = market(database)
    a, b, taker = new_user(database), new_user(database), new_user(database)
    fund(database, a, base, 10**8)
    fund(database, b, base, 10**8)
    fund(database, taker, quote, 10_000_000)
    place(database, a, symbol, side="sell", price_text="10.00", quantity_text="0.2")
    place(database, b, symbol, side="sell", price_text="10.50", quantity_text="0.2")
    order, trades = place(database, taker, symbol, side="buy", price_text="10.50", quantity_text="0.5")
    assert [t.price for t in trades] == [1_000, 1_050]
    assert order.status is OrderStatus.partially_filled
    assert order.filled_quantity == 40_000_000
    # Paid 2.00 + 2.10 and 0.2% fees (0.00 + 0.00 rounded down... 0.004 and 0.0042 -> 0 each).
    assert [t.quote_amount for t in trades] == [200, 210]
    assert [t.taker_fee for t in trades] == [0, 0]
    # The remainder 0.1 at 10.50 still rests, its hold covering 1.05 and the fee on it.
    assert held(database, taker, quote) >= 105
    check_consistent(database, symbol)
    cancelled = cancel(database, taker, order.id)
    assert cancelled.status is OrderStatus.cancelled
    assert held(database, taker, quote) == 0
    assert balance(database, taker, quote) == 10_000_000 - 410
    assert code_of(lambda: cancel(database, taker, order.id)) == "order_not_open"
    check_consistent(database, symbol)
    assert verify(database).ok


def test_a_market_buy_spends_within_its_budget_fees_included(database: Database) -> None:
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 10**8)
    fund(database, buyer, quote, 100_000)
    place(database, seller, symbol, side="sell", price_text="100.00", quantity_text="1")
    order, trades = place(database, buyer, symbol, side="buy", kind="market", quote_budget_text="50.00")
    # 50.00 / 1.002 leaves 49.90 for the notional: 0.499 at 100.00, plus a 0.09 fee.
    assert order.status is OrderStatus.cancelled
    assert order.cancel_reason == "budget_exhausted"
    [trade] = trades
    assert trade.quantity == 49_900_000
    assert trade.quote_amount + trade.taker_fee <= 5_000
    assert balance(database, buyer, quote) == 100_000 - trade.quote_amount - trade.taker_fee
    assert held(database, buyer, quote) == 0
    check_consistent(database, symbol)
    assert verify(database).ok


def test_refusals_have_their_codes_and_hold_nothing(database: Database) -> None:
    symbol, base, quote = market(database, price_band_bps=1_000)
    user = new_user(database)
    fund(database, user, quote, 100_000)
    fund(database, user, base, 10**8)

    def refused(**fields: Any) -> str:
        return code_of(lambda: place(database, user, symbol, **fields))

    assert refused(side="buy", price_text="1.005", quantity_text="1") == "amount_precision"
    assert refused(side="buy", price_text="1.00", quantity_text="0.0015") == "quantity_off_lot"
    assert refused(side="buy", price_text="1.00", quantity_text="1000") == "quantity_too_large"
    assert refused(side="buy", price_text="1.00", quantity_text="0") == "amount_not_positive"
    assert refused(side="buy", quantity_text="1") == "invalid_order"
    assert refused(side="buy", kind="market", quantity_text="1") == "invalid_order"
    assert refused(side="sell", kind="market", tif="gtc", quantity_text="1") == "invalid_order"
    assert refused(side="sell", kind="market", price_text="1.00", quantity_text="1") == "invalid_order"
    assert refused(side="sell", price_text="1.00", quantity_text="1", quote_budget_text="1.00") == "invalid_order"
    assert refused(side="up", price_text="1.00", quantity_text="1") == "invalid_order"
    assert refused(side="buy", price_text="9999.00", quantity_text="1") == "insufficient_funds"
    assert code_of(lambda: place(database, user, "NO-SUCH", price_text="1.00", quantity_text="1")) == (
        "unknown_instrument"
    )
    # A trade sets the last price; then the band applies.
    place(database, user, symbol, side="sell", price_text="10.00", quantity_text="0.001", stp="none")
    place(database, user, symbol, side="buy", price_text="10.00", quantity_text="0.001", stp="none")
    assert refused(side="buy", price_text="12.00", quantity_text="0.001") == "price_outside_band"
    assert held(database, user, quote) == 0
    assert held(database, user, base) == 0
    check_consistent(database, symbol)


def test_a_halted_market_refuses_orders(database: Database) -> None:
    symbol, _, quote = market(database)
    user = new_user(database)
    fund(database, user, quote, 100_000)
    with unit_of_work(database) as session:
        instruments.halt(session, symbol, "maintenance", "user:test")
    code = code_of(lambda: place(database, user, symbol, price_text="1.00", quantity_text="1"))
    assert code == "market_halted"


def test_the_same_client_order_id_returns_the_same_order(database: Database) -> None:
    symbol, _, quote = market(database)
    user = new_user(database)
    fund(database, user, quote, 100_000)
    first, _ = place(database, user, symbol, price_text="5.00", quantity_text="1", client_order_id="abc")
    again, _ = place(database, user, symbol, price_text="5.00", quantity_text="1", client_order_id="abc")
    assert again.id == first.id
    assert held(database, user, quote) == 500 + 1  # one hold: 5.00 and the 0.2% fee reserve


def test_self_trade_prevention_cancels_the_newest_by_default(database: Database) -> None:
    symbol, base, quote = market(database)
    user = new_user(database)
    fund(database, user, quote, 100_000)
    fund(database, user, base, 10**8)
    place(database, user, symbol, side="sell", price_text="5.00", quantity_text="1")
    bid, trades = place(database, user, symbol, side="buy", price_text="5.00", quantity_text="1")
    assert trades == []
    assert bid.status is OrderStatus.cancelled
    assert bid.cancel_reason == "self_trade"
    assert held(database, user, quote) == 0
    assert held(database, user, base) == 10**8
    check_consistent(database, symbol)
