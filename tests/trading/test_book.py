"""The order book's rules, one at a time: priority, fills, cancels, IOC, FOK, market, STP, rejects, restore."""

from __future__ import annotations

import pytest

from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import (
    Accepted,
    BookSnapshot,
    Cancelled,
    CancelReason,
    CancelRejected,
    Event,
    Fill,
    NewOrder,
    OrderKind,
    Rejected,
    RejectReason,
    Rested,
    RestingOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
    limit_order,
    market_order,
)

BUY, SELL = Side.BUY, Side.SELL
GTC, IOC, FOK = TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK
STP = SelfTradePrevention


def fills(events: list[Event]) -> list[tuple[int, int, int]]:
    """(maker, price, quantity) of each fill, in order."""
    return [(e.maker_id, e.price, e.quantity) for e in events if isinstance(e, Fill)]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def seed(book: Book, *orders: NewOrder) -> None:
    for order in orders:
        assert isinstance(book.place(order)[-1], Rested)


# --- Resting, priority, fills -----------------------------------------------------------------


def test_a_limit_order_that_does_not_cross_rests() -> None:
    book = Book()
    events = book.place(limit_order(1, "a", BUY, 100, 5))
    assert events == [Accepted(1, 1), Rested(1, 5, 2)]
    assert book.best_bid() == 100
    assert book.best_ask() is None
    assert book.open_order(1) == RestingOrder(1, "a", BUY, 100, 5, 5)
    assert len(book) == 1
    assert 1 in book


def test_best_price_first_then_fifo_within_a_price() -> None:
    book = Book()
    seed(
        book,
        limit_order(1, "a", SELL, 101, 1),
        limit_order(2, "b", SELL, 100, 1),
        limit_order(3, "c", SELL, 102, 1),
        limit_order(4, "d", SELL, 100, 1),
    )
    events = book.place(limit_order(5, "z", BUY, 102, 4))
    assert fills(events) == [(2, 100, 1), (4, 100, 1), (1, 101, 1), (3, 102, 1)]
    assert len(book) == 0


def test_bids_match_highest_first() -> None:
    book = Book()
    seed(book, limit_order(1, "a", BUY, 99, 1), limit_order(2, "b", BUY, 101, 1), limit_order(3, "c", BUY, 100, 1))
    assert fills(book.place(limit_order(4, "z", SELL, 99, 3))) == [(2, 101, 1), (3, 100, 1), (1, 99, 1)]


def test_fills_are_at_the_makers_price_and_carry_both_sides() -> None:
    book = Book()
    seed(book, limit_order(1, "maker", SELL, 100, 5))
    events = book.place(limit_order(2, "taker", BUY, 105, 2))
    assert events == [Accepted(2, 3), Fill(1, 2, "maker", "taker", 100, 2, BUY, 4)]


def test_partial_fills_leave_the_maker_resting_and_rest_the_takers_remainder() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 5))
    assert fills(book.place(limit_order(2, "b", BUY, 100, 3))) == [(1, 100, 3)]
    assert book.open_order(1) == RestingOrder(1, "a", SELL, 100, 5, 2)
    events = book.place(limit_order(3, "c", BUY, 100, 6))
    assert fills(events) == [(1, 100, 2)]
    assert events[-1] == Rested(3, 4, events[-1].sequence)
    assert book.open_order(1) is None
    assert book.open_order(3) == RestingOrder(3, "c", BUY, 100, 6, 4)
    assert (book.best_bid(), book.best_ask()) == (100, None)


def test_a_limit_order_never_trades_through_its_price() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 101, 5))
    assert kinds(book.place(limit_order(2, "b", BUY, 100, 5))) == ["Accepted", "Rested"]
    assert (book.best_bid(), book.best_ask()) == (100, 101)


# --- Cancel -----------------------------------------------------------------------------------


def test_cancel_removes_the_order_and_keeps_the_others_in_time_order() -> None:
    book = Book()
    seed(book, *(limit_order(i, "a", SELL, 100, 1) for i in (1, 2, 3)))
    assert book.cancel(2) == [Cancelled(2, 1, CancelReason.USER, book.sequence)]
    assert book.depth(1) == ([], [(100, 2, 2)])
    assert fills(book.place(limit_order(4, "b", BUY, 100, 2))) == [(1, 100, 1), (3, 100, 1)]


def test_cancelling_the_last_order_at_a_price_removes_the_level() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 1), limit_order(2, "a", SELL, 101, 1))
    book.cancel(1)
    assert book.best_ask() == 101
    book.cancel(2)
    assert book.best_ask() is None
    assert book.depth(5) == ([], [])


def test_cancel_reports_the_remaining_quantity_after_partial_fills() -> None:
    book = Book()
    seed(book, limit_order(1, "a", BUY, 100, 10))
    book.place(limit_order(2, "b", SELL, 100, 4))
    assert book.cancel(1)[0] == Cancelled(1, 6, CancelReason.USER, book.sequence)


def test_cancel_of_an_unknown_filled_or_cancelled_order_is_rejected_not_raised() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 1), limit_order(2, "a", SELL, 100, 1))
    book.place(limit_order(3, "b", BUY, 100, 1))  # fills order 1
    book.cancel(2)
    for order_id in (1, 2, 99):
        before = book.sequence
        assert book.cancel(order_id) == [CancelRejected(order_id, RejectReason.UNKNOWN_ORDER, before + 1)]
    assert len(book) == 0


def test_cancels_do_not_leave_dead_entries_piling_up_in_a_level() -> None:
    book = Book()
    seed(book, *(limit_order(i, "a", SELL, 100, 1) for i in range(1, 1001)))
    for order_id in range(1, 1000):
        book.cancel(order_id)
    level = book._asks[100]
    assert level.count == 1
    assert len(level.queue) <= 2 * level.count + 16
    assert fills(book.place(limit_order(2000, "b", BUY, 100, 1))) == [(1000, 100, 1)]


# --- IOC and FOK ------------------------------------------------------------------------------


def test_ioc_fills_what_it_can_and_cancels_the_rest() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 2), limit_order(2, "a", SELL, 102, 2))
    events = book.place(limit_order(3, "b", BUY, 101, 5, tif=IOC))
    assert fills(events) == [(1, 100, 2)]
    assert events[-1] == Cancelled(3, 3, CancelReason.IOC_REMAINDER, events[-1].sequence)
    assert 3 not in book
    assert book.best_bid() is None


def test_ioc_without_a_match_is_cancelled_whole() -> None:
    book = Book()
    assert kinds(book.place(limit_order(1, "a", BUY, 100, 5, tif=IOC))) == ["Accepted", "Cancelled"]
    assert len(book) == 0


def test_fok_fills_completely_across_several_levels() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 2), limit_order(2, "b", SELL, 101, 2), limit_order(3, "c", SELL, 102, 2))
    events = book.place(limit_order(4, "z", BUY, 102, 5, tif=FOK))
    assert fills(events) == [(1, 100, 2), (2, 101, 2), (3, 102, 1)]
    assert kinds(events) == ["Accepted", "Fill", "Fill", "Fill"]
    assert book.open_order(3) == RestingOrder(3, "c", SELL, 102, 2, 1)


def test_fok_that_cannot_fill_completely_changes_nothing() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 2), limit_order(2, "b", SELL, 101, 2), limit_order(3, "c", SELL, 103, 9))
    before = book.snapshot()
    events = book.place(limit_order(4, "z", BUY, 102, 5, tif=FOK))  # only 4 lots at or below 102
    assert events == [Accepted(4, 7), Cancelled(4, 5, CancelReason.FOK_UNFILLED, 8)]
    assert book.snapshot() == before


def test_fok_with_cancel_newest_counts_only_the_liquidity_ahead_of_the_owners_own_order() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 2), limit_order(2, "z", SELL, 100, 5), limit_order(3, "b", SELL, 101, 9))
    before = book.snapshot()
    events = book.place(limit_order(4, "z", BUY, 101, 3, tif=FOK, stp=STP.CANCEL_NEWEST))
    assert kinds(events) == ["Accepted", "Cancelled"]
    assert events[-1] == Cancelled(4, 3, CancelReason.FOK_UNFILLED, events[-1].sequence)
    assert book.snapshot() == before
    # Small enough to fill before reaching its own order: it fills.
    assert fills(book.place(limit_order(5, "z", BUY, 101, 2, tif=FOK, stp=STP.CANCEL_NEWEST))) == [(1, 100, 2)]


def test_fok_with_cancel_both_stops_at_the_owners_own_order_too() -> None:
    book = Book()
    seed(book, limit_order(1, "z", SELL, 100, 5), limit_order(2, "b", SELL, 101, 9))
    before = book.snapshot()
    events = book.place(limit_order(3, "z", BUY, 101, 3, tif=FOK, stp=STP.CANCEL_BOTH))
    assert kinds(events) == ["Accepted", "Cancelled"]
    assert book.snapshot() == before


def test_fok_with_cancel_oldest_skips_own_orders_and_cancels_them_only_if_it_fills() -> None:
    book = Book()
    seed(book, limit_order(1, "z", SELL, 100, 5), limit_order(2, "b", SELL, 101, 3))
    before = book.snapshot()
    unfilled = book.place(limit_order(3, "z", BUY, 101, 4, tif=FOK, stp=STP.CANCEL_OLDEST))
    assert kinds(unfilled) == ["Accepted", "Cancelled"]  # own 5 lots do not count: only 3 fillable
    assert book.snapshot() == before
    events = book.place(limit_order(4, "z", BUY, 101, 3, tif=FOK, stp=STP.CANCEL_OLDEST))
    assert kinds(events) == ["Accepted", "Cancelled", "Fill"]
    assert events[1] == Cancelled(1, 5, CancelReason.SELF_TRADE, events[1].sequence)
    assert fills(events) == [(2, 101, 3)]
    assert len(book) == 0


def test_fok_with_stp_none_counts_the_owners_own_liquidity() -> None:
    book = Book()
    seed(book, limit_order(1, "z", SELL, 100, 2), limit_order(2, "b", SELL, 100, 2))
    events = book.place(limit_order(3, "z", BUY, 100, 4, tif=FOK, stp=STP.NONE))
    assert fills(events) == [(1, 100, 2), (2, 100, 2)]


# --- Market orders ----------------------------------------------------------------------------


def test_a_market_order_sweeps_levels_and_never_rests() -> None:
    book = Book()
    seed(book, limit_order(1, "a", BUY, 100, 2), limit_order(2, "b", BUY, 90, 2))
    events = book.place(market_order(3, "z", SELL, 5))
    assert fills(events) == [(1, 100, 2), (2, 90, 2)]
    assert events[-1] == Cancelled(3, 1, CancelReason.NO_LIQUIDITY, events[-1].sequence)
    assert len(book) == 0


def test_a_market_order_on_an_empty_side_is_cancelled_for_no_liquidity() -> None:
    book = Book()
    seed(book, limit_order(1, "a", BUY, 100, 2))
    assert book.place(market_order(2, "z", BUY, 1)) == [
        Accepted(2, 3),
        Cancelled(2, 1, CancelReason.NO_LIQUIDITY, 4),
    ]


def test_a_market_fok_is_all_or_nothing() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 2))
    assert kinds(book.place(market_order(2, "z", BUY, 3, tif=FOK))) == ["Accepted", "Cancelled"]
    assert fills(book.place(market_order(3, "z", BUY, 2, tif=FOK))) == [(1, 100, 2)]


def test_a_market_buy_with_a_budget_buys_what_the_budget_affords_at_each_level() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 3), limit_order(2, "b", SELL, 110, 5))
    events = book.place(market_order(3, "z", BUY, 100, quote_budget=500))
    # 3 x 100 = 300, then 200 left buys 1 x 110; 90 left cannot buy another lot.
    assert fills(events) == [(1, 100, 3), (2, 110, 1)]
    assert events[-1] == Cancelled(3, 96, CancelReason.BUDGET_EXHAUSTED, events[-1].sequence)
    assert book.open_order(2) == RestingOrder(2, "b", SELL, 110, 5, 4)


def test_a_budget_that_covers_the_quantity_stops_at_the_quantity() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 10))
    events = book.place(market_order(2, "z", BUY, 4, quote_budget=10_000))
    assert kinds(events) == ["Accepted", "Fill"]
    assert fills(events) == [(1, 100, 4)]


def test_a_budget_uses_the_books_notional_function() -> None:
    # One tick is 5 minor units per lot, plus a fixed 7 per fill: the binary search path.
    book = Book(notional=lambda price, quantity: price * quantity * 5 + 7)
    seed(book, limit_order(1, "a", SELL, 10, 100))
    events = book.place(market_order(2, "z", BUY, 100, quote_budget=1000))
    assert fills(events) == [(1, 10, 19)]  # 19 x 50 + 7 = 957 <= 1000 < 20 x 50 + 7
    assert events[-1] == Cancelled(2, 81, CancelReason.BUDGET_EXHAUSTED, events[-1].sequence)


def test_a_market_fok_with_a_budget_must_fill_its_quantity_within_the_budget() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 10))
    before = book.snapshot()
    assert kinds(book.place(market_order(2, "z", BUY, 5, tif=FOK, quote_budget=499))) == ["Accepted", "Cancelled"]
    assert book.snapshot() == before
    assert fills(book.place(market_order(3, "z", BUY, 5, tif=FOK, quote_budget=500))) == [(1, 100, 5)]


# --- Self-trade prevention --------------------------------------------------------------------


def test_stp_none_lets_an_owner_trade_with_itself() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 2))
    events = book.place(limit_order(2, "a", BUY, 100, 2, stp=STP.NONE))
    assert events[1] == Fill(1, 2, "a", "a", 100, 2, BUY, events[1].sequence)


def test_cancel_newest_cancels_the_incoming_remainder_and_keeps_the_resting_order() -> None:
    book = Book()
    seed(book, limit_order(1, "b", SELL, 100, 2), limit_order(2, "a", SELL, 100, 5), limit_order(3, "b", SELL, 100, 5))
    events = book.place(limit_order(4, "a", BUY, 100, 6, stp=STP.CANCEL_NEWEST))
    assert fills(events) == [(1, 100, 2)]
    assert events[-1] == Cancelled(4, 4, CancelReason.SELF_TRADE, events[-1].sequence)
    assert 4 not in book  # a GTC order cancelled by STP does not rest
    assert book.open_order(2) == RestingOrder(2, "a", SELL, 100, 5, 5)


def test_cancel_oldest_cancels_the_resting_order_and_keeps_matching() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 5), limit_order(2, "b", SELL, 101, 5))
    events = book.place(limit_order(3, "a", BUY, 101, 3, stp=STP.CANCEL_OLDEST))
    assert kinds(events) == ["Accepted", "Cancelled", "Fill"]
    assert events[1] == Cancelled(1, 5, CancelReason.SELF_TRADE, events[1].sequence)
    assert fills(events) == [(2, 101, 3)]
    assert book.best_ask() == 101


def test_cancel_both_cancels_the_resting_order_and_the_incoming_remainder() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 5), limit_order(2, "b", SELL, 100, 5))
    events = book.place(limit_order(3, "a", BUY, 100, 3, stp=STP.CANCEL_BOTH))
    assert events[1:] == [
        Cancelled(1, 5, CancelReason.SELF_TRADE, events[1].sequence),
        Cancelled(3, 3, CancelReason.SELF_TRADE, events[2].sequence),
    ]
    assert book.orders() == [RestingOrder(2, "b", SELL, 100, 5, 5)]


def test_the_books_default_mode_applies_when_an_order_has_none() -> None:
    default_book = Book()  # cancel_newest unless configured otherwise
    seed(default_book, limit_order(1, "a", SELL, 100, 1))
    assert kinds(default_book.place(limit_order(2, "a", BUY, 100, 1))) == ["Accepted", "Cancelled"]
    permissive = Book(default_stp=STP.NONE)
    seed(permissive, limit_order(1, "a", SELL, 100, 1))
    assert fills(permissive.place(limit_order(2, "a", BUY, 100, 1))) == [(1, 100, 1)]


def test_the_incoming_orders_mode_decides() -> None:
    book = Book()
    seed(book, limit_order(1, "a", SELL, 100, 1, stp=STP.CANCEL_BOTH))
    assert fills(book.place(limit_order(2, "a", BUY, 100, 1, stp=STP.NONE))) == [(1, 100, 1)]


def test_stp_applies_to_market_orders() -> None:
    book = Book()
    seed(book, limit_order(1, "b", BUY, 100, 1), limit_order(2, "a", BUY, 99, 1))
    events = book.place(market_order(3, "a", SELL, 5))
    assert fills(events) == [(1, 100, 1)]
    assert events[-1] == Cancelled(3, 4, CancelReason.SELF_TRADE, events[-1].sequence)


def test_an_unknown_default_mode_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="self-trade"):
        Book(default_stp="sometimes")  # type: ignore[arg-type]


# --- Rejects ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (limit_order(10, "a", BUY, 100, 0), RejectReason.INVALID_QUANTITY),
        (limit_order(10, "a", BUY, 100, -3), RejectReason.INVALID_QUANTITY),
        (NewOrder(10, "a", BUY, OrderKind.LIMIT, 100, 1.5), RejectReason.INVALID_QUANTITY),  # type: ignore[arg-type]
        (NewOrder(10, "a", BUY, OrderKind.LIMIT, 100, quantity=True), RejectReason.INVALID_QUANTITY),
        (NewOrder(10, "a", BUY, OrderKind.LIMIT, None, 1), RejectReason.MISSING_PRICE),
        (limit_order(10, "a", BUY, 0, 1), RejectReason.INVALID_PRICE),
        (NewOrder(10, "a", BUY, OrderKind.LIMIT, 100.5, 1), RejectReason.INVALID_PRICE),  # type: ignore[arg-type]
        (NewOrder(10, "a", BUY, OrderKind.MARKET, 100, 1), RejectReason.PRICE_ON_MARKET_ORDER),
        (market_order(10, "a", BUY, 1, tif=GTC), RejectReason.INVALID_TIME_IN_FORCE),
        (NewOrder(10, "a", BUY, OrderKind.LIMIT, 100, 1, "day"), RejectReason.INVALID_TIME_IN_FORCE),  # type: ignore[arg-type]
        (market_order(10, "a", SELL, 1, quote_budget=100), RejectReason.QUOTE_BUDGET_NOT_ALLOWED),
        (NewOrder(10, "a", BUY, OrderKind.LIMIT, 100, 1, quote_budget=100), RejectReason.QUOTE_BUDGET_NOT_ALLOWED),
        (market_order(10, "a", BUY, 1, quote_budget=0), RejectReason.INVALID_QUOTE_BUDGET),
        (NewOrder(10, "a", "buy", OrderKind.LIMIT, 100, 1), RejectReason.INVALID_SIDE),  # type: ignore[arg-type]
        (NewOrder(10, "a", BUY, "stop", 100, 1), RejectReason.INVALID_KIND),  # type: ignore[arg-type]
        (limit_order(10, "a", BUY, 100, 1, stp="x"), RejectReason.INVALID_SELF_TRADE_PREVENTION),  # type: ignore[arg-type]
        (limit_order(5, "a", BUY, 100, 1), RejectReason.DUPLICATE_ORDER_ID),
        (limit_order(4, "a", BUY, 100, 1), RejectReason.ORDER_ID_NOT_INCREASING),
    ],
)
def test_invalid_orders_are_rejected_and_change_nothing_but_the_sequence(order: NewOrder, reason: RejectReason) -> None:
    book = Book()
    seed(book, limit_order(4, "b", SELL, 100, 1))
    book.cancel(4)
    seed(book, limit_order(5, "b", SELL, 100, 1))
    before, sequence = book.snapshot(), book.sequence
    assert book.place(order) == [Rejected(order.order_id, reason, sequence + 1)]
    assert book.snapshot() == before
    assert book.sequence == sequence + 1
    assert book.best_ask() == 100


def test_a_rejected_order_does_not_use_up_its_id() -> None:
    book = Book()
    assert kinds(book.place(limit_order(1, "a", BUY, 100, 0))) == ["Rejected"]
    assert kinds(book.place(limit_order(1, "a", BUY, 100, 1))) == ["Accepted", "Rested"]


# --- Queries and sequence numbers -------------------------------------------------------------


def test_depth_aggregates_levels_best_first() -> None:
    book = Book()
    seed(
        book,
        limit_order(1, "a", BUY, 99, 2),
        limit_order(2, "b", BUY, 100, 3),
        limit_order(3, "c", BUY, 99, 4),
        limit_order(4, "a", BUY, 98, 1),
        limit_order(5, "a", SELL, 102, 5),
        limit_order(6, "b", SELL, 101, 1),
        limit_order(7, "c", SELL, 101, 2),
    )
    assert book.depth(10) == ([(100, 3, 1), (99, 6, 2), (98, 1, 1)], [(101, 3, 2), (102, 5, 1)])
    assert book.depth(1) == ([(100, 3, 1)], [(101, 3, 2)])
    assert book.depth(0) == ([], [])
    book.place(limit_order(8, "z", SELL, 99, 4))  # 3 at 100, then 1 of order 1 at 99
    assert book.depth(2)[0] == [(99, 5, 2), (98, 1, 1)]


def test_orders_lists_bids_then_asks_in_priority_order() -> None:
    book = Book()
    seed(
        book,
        limit_order(1, "a", SELL, 102, 1),
        limit_order(2, "a", BUY, 99, 1),
        limit_order(3, "a", SELL, 101, 1),
        limit_order(4, "a", BUY, 100, 1),
        limit_order(5, "a", BUY, 100, 1),
    )
    assert [o.order_id for o in book.orders()] == [4, 5, 2, 3, 1]
    assert book.snapshot() == BookSnapshot(tuple(book.orders()[:3]), tuple(book.orders()[3:]))


def test_every_event_takes_the_next_sequence_number() -> None:
    book = Book()
    seen: list[int] = []
    seen += [e.sequence for e in book.place(limit_order(1, "a", SELL, 100, 2))]
    seen += [e.sequence for e in book.place(limit_order(2, "a", SELL, 101, 2))]
    seen += [e.sequence for e in book.place(limit_order(3, "b", BUY, 101, 5))]
    seen += [e.sequence for e in book.cancel(3)]
    seen += [e.sequence for e in book.cancel(3)]
    seen += [e.sequence for e in book.place(limit_order(0, "b", BUY, 101, 5))]
    assert seen == list(range(1, len(seen) + 1))
    assert book.sequence == len(seen)


# --- Restore ----------------------------------------------------------------------------------


def _busy_book() -> Book:
    book = Book()
    seed(
        book,
        limit_order(1, "a", SELL, 101, 3),
        limit_order(2, "b", BUY, 99, 2),
        limit_order(3, "c", SELL, 101, 4),
        limit_order(4, "a", BUY, 98, 5),
        limit_order(5, "b", SELL, 103, 1),
    )
    book.place(limit_order(6, "z", BUY, 101, 2))  # partly fills order 1
    book.cancel(4)
    return book


def test_restore_rebuilds_an_equal_book_that_then_behaves_the_same() -> None:
    original = _busy_book()
    restored = Book()
    restored.restore(original.orders(), sequence=original.sequence)
    assert restored.snapshot() == original.snapshot()
    assert restored.depth(5) == original.depth(5)
    assert len(restored) == len(original)
    for order in (limit_order(7, "y", BUY, 103, 6), market_order(8, "y", SELL, 9)):
        assert restored.place(order) == original.place(order)
    assert restored.snapshot() == original.snapshot()


def test_restore_takes_time_priority_from_the_order_ids() -> None:
    book = Book()
    book.restore([RestingOrder(9, "b", SELL, 100, 1, 1), RestingOrder(3, "a", SELL, 100, 1, 1)])
    assert [o.order_id for o in book.orders()] == [3, 9]
    assert kinds(book.place(limit_order(9, "c", BUY, 1, 1))) == ["Rejected"]  # ids keep increasing
    assert fills(book.place(limit_order(10, "c", BUY, 100, 1))) == [(3, 100, 1)]
    assert book.sequence == 3


@pytest.mark.parametrize(
    ("orders", "message"),
    [
        ([RestingOrder(1, "a", BUY, 101, 1, 1), RestingOrder(2, "b", SELL, 101, 1, 1)], "cross"),
        ([RestingOrder(1, "a", BUY, 100, 1, 1), RestingOrder(1, "b", BUY, 99, 1, 1)], "duplicate"),
        ([RestingOrder(1, "a", BUY, 100, 1, 2)], "more remaining"),
        ([RestingOrder(1, "a", BUY, 100, 1, 0)], "positive"),
        ([RestingOrder(1, "a", BUY, 0, 1, 1)], "price"),
        ([RestingOrder(1, "a", "buy", 100, 1, 1)], "side"),  # type: ignore[arg-type]
    ],
)
def test_restore_refuses_state_no_command_sequence_could_produce(orders: list[RestingOrder], message: str) -> None:
    book = Book()
    with pytest.raises(ValueError, match=message):
        book.restore(orders)
    assert len(book) == 0
    assert book.orders() == []


def test_restore_needs_an_empty_book() -> None:
    book = _busy_book()
    with pytest.raises(ValueError, match="empty"):
        book.restore([])
