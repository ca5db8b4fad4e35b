"""Random flows of place and cancel from a few owners, checked against invariants and a naive model.

The reference model keeps resting orders in one list, sorts it for every
match and decides FOK by matching a copy and throwing it away: slow and
obviously right, with none of the book's data structures or its FOK pre-check.
Every event the book emits must equal the model's, so price-time priority,
self-trade prevention, budgets and sequence numbers are all checked per fill.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bourse.trading.engine.book import Book, Notional, price_times_quantity
from bourse.trading.engine.vocabulary import (
    Accepted,
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
    SelfTradePrevention,
    Side,
    TimeInForce,
)

OWNERS = ("alice", "bob", "carol")
STP_MODES = (None, *SelfTradePrevention)


def fee_like_notional(price: int, quantity: int) -> int:
    """A non-linear notional (a per-fill charge), to drive the budget's binary search."""
    return price * quantity + 3


@dataclass
class _Resting:
    order_id: int
    owner: str
    side: Side
    price: int
    remaining: int


class Reference:
    """The rules written as plainly as possible (valid orders and cancels only)."""

    def __init__(self, default_stp: SelfTradePrevention, notional: Notional) -> None:
        self.default_stp = default_stp
        self.notional = notional
        self.resting: list[_Resting] = []
        self.sequence = 0

    def _event(self, events: list[Event], make: type, *fields: object) -> None:
        self.sequence += 1
        events.append(make(*fields, self.sequence))

    def cancel(self, order_id: int) -> list[Event]:
        events: list[Event] = []
        for resting in self.resting:
            if resting.order_id == order_id:
                self.resting.remove(resting)
                self._event(events, Cancelled, order_id, resting.remaining, CancelReason.USER)
                return events
        self._event(events, CancelRejected, order_id, RejectReason.UNKNOWN_ORDER)
        return events

    def place(self, order: NewOrder) -> list[Event]:
        tif = order.tif or (TimeInForce.GTC if order.kind is OrderKind.LIMIT else TimeInForce.IOC)
        if tif is TimeInForce.FOK:
            trial = copy.deepcopy(self)
            events = trial._match(order, tif)
            if sum(e.quantity for e in events if isinstance(e, Fill)) == order.quantity:
                self.__dict__.update(trial.__dict__)
                return events
            events = []
            self._event(events, Accepted, order.order_id)
            self._event(events, Cancelled, order.order_id, order.quantity, CancelReason.FOK_UNFILLED)
            return events
        return self._match(order, tif)

    def _match(self, order: NewOrder, tif: TimeInForce) -> list[Event]:  # noqa: PLR0912 - the rules, in order
        events: list[Event] = []
        self._event(events, Accepted, order.order_id)
        stp = order.stp or self.default_stp
        buy = order.side is Side.BUY
        makers = sorted(
            (r for r in self.resting if r.side is not order.side),
            key=lambda r: (r.price if buy else -r.price, r.order_id),
        )
        remaining, budget, stop = order.quantity, order.quote_budget, None
        for maker in makers:
            if order.price is not None and (maker.price > order.price if buy else maker.price < order.price):
                break
            if maker.owner == order.owner and stp is not SelfTradePrevention.NONE:
                if stp is SelfTradePrevention.CANCEL_NEWEST:
                    stop = CancelReason.SELF_TRADE
                    break
                self.resting.remove(maker)
                self._event(events, Cancelled, maker.order_id, maker.remaining, CancelReason.SELF_TRADE)
                if stp is SelfTradePrevention.CANCEL_BOTH:
                    stop = CancelReason.SELF_TRADE
                    break
                continue
            quantity = min(remaining, maker.remaining)
            if budget is not None:
                while quantity and self.notional(maker.price, quantity) > budget:
                    quantity -= 1
                if not quantity:
                    stop = CancelReason.BUDGET_EXHAUSTED
                    break
                budget -= self.notional(maker.price, quantity)
            self._event(
                events,
                Fill,
                maker.order_id,
                order.order_id,
                maker.owner,
                order.owner,
                maker.price,
                quantity,
                order.side,
            )
            remaining -= quantity
            maker.remaining -= quantity
            if not maker.remaining:
                self.resting.remove(maker)
            if not remaining:
                break
            if maker.remaining:  # the budget cut this fill short: it cannot buy another lot here or later
                stop = CancelReason.BUDGET_EXHAUSTED
                break
        if remaining:
            if stop is not None:
                self._event(events, Cancelled, order.order_id, remaining, stop)
            elif order.kind is OrderKind.MARKET:
                self._event(events, Cancelled, order.order_id, remaining, CancelReason.NO_LIQUIDITY)
            elif tif is TimeInForce.GTC:
                assert order.price is not None
                self.resting.append(_Resting(order.order_id, order.owner, order.side, order.price, remaining))
                self._event(events, Rested, order.order_id, remaining)
            else:
                self._event(events, Cancelled, order.order_id, remaining, CancelReason.IOC_REMAINDER)
        return events


# A command is ("place", fields) or ("cancel", k): the k-th live order, in id order, if any.
limit_orders = st.fixed_dictionaries(
    {
        "kind": st.just(OrderKind.LIMIT),
        "owner": st.sampled_from(OWNERS),
        "side": st.sampled_from(Side),
        "price": st.integers(96, 104),
        "quantity": st.integers(1, 8),
        "tif": st.sampled_from((None, TimeInForce.GTC, TimeInForce.GTC, TimeInForce.IOC, TimeInForce.FOK)),
        "stp": st.sampled_from(STP_MODES),
        "quote_budget": st.none(),
    }
)
market_orders = st.fixed_dictionaries(
    {
        "kind": st.just(OrderKind.MARKET),
        "owner": st.sampled_from(OWNERS),
        "side": st.sampled_from(Side),
        "price": st.none(),
        "quantity": st.integers(1, 12),
        "tif": st.sampled_from((None, TimeInForce.IOC, TimeInForce.FOK)),
        "stp": st.sampled_from(STP_MODES),
        "quote_budget": st.none() | st.integers(1, 1500),
    }
)
commands = st.lists(
    st.one_of(
        st.tuples(st.just("place"), limit_orders),
        st.tuples(st.just("place"), limit_orders),
        st.tuples(st.just("place"), limit_orders),
        st.tuples(st.just("place"), market_orders),
        st.tuples(st.just("cancel"), st.integers(0, 20)),
    ),
    max_size=60,
)


def build(raw: tuple[str, object], live: list[int], next_id: int) -> tuple[NewOrder | None, int]:
    """Turn a drawn command into an order (or None and the id to cancel), against the live ids."""
    kind, payload = raw
    if kind == "cancel":
        assert isinstance(payload, int)
        return None, (live[payload % len(live)] if live else 10_000 + payload)
    assert isinstance(payload, dict)
    fields = dict(payload)
    if fields["kind"] is OrderKind.MARKET and fields["side"] is Side.SELL:
        fields["quote_budget"] = None
    return NewOrder(order_id=next_id, **fields), 0


@dataclass
class Ledger:
    """Per order: quantity placed, filled, cancelled; effective STP mode; kind and time in force."""

    placed: dict[int, int]
    filled: defaultdict[int, int]
    cancelled: defaultdict[int, int]
    orders: dict[int, NewOrder]


def run_flow(
    book: Book, reference: Reference | None, drawn: list[tuple[str, object]]
) -> tuple[list[list[Event]], list[NewOrder | int]]:
    """Feed the drawn commands to the book (and the model), checking invariants after each."""
    outputs: list[list[Event]] = []
    fed: list[NewOrder | int] = []
    ledger = Ledger({}, defaultdict(int), defaultdict(int), {})
    next_id = 1
    for raw in drawn:
        live = sorted(o.order_id for o in book.orders())
        order, cancel_id = build(raw, live, next_id)
        if order is None:
            events = book.cancel(cancel_id)
            fed.append(cancel_id)
            if reference is not None:
                assert events == reference.cancel(cancel_id)
        else:
            next_id += 1
            before = book.snapshot()
            predicted = book.counterparties(order)
            events = book.place(order)
            fed.append(order)
            if reference is not None:
                assert events == reference.place(order), order
            check_place(book, order, events, before)
            check_counterparties(order, events, predicted)
        outputs.append(events)
        account(ledger, events, order)
        check_book(book, ledger)
    return outputs, fed


def account(ledger: Ledger, events: list[Event], order: NewOrder | None) -> None:
    for event in events:
        if isinstance(event, Accepted):
            assert order is not None
            ledger.placed[event.order_id] = order.quantity
            ledger.orders[event.order_id] = order
        elif isinstance(event, Fill):
            ledger.filled[event.maker_id] += event.quantity
            ledger.filled[event.taker_id] += event.quantity
        elif isinstance(event, Cancelled):
            ledger.cancelled[event.order_id] += event.remaining


def check_place(book: Book, order: NewOrder, events: list[Event], before: object) -> None:
    """The rules one placed order must obey, whatever the book held."""
    sequences = [e.sequence for e in events]
    assert sequences == list(range(book.sequence - len(events) + 1, book.sequence + 1))
    if isinstance(events[0], Rejected):
        return
    stp = order.stp or book._default_stp
    tif = order.tif or (TimeInForce.GTC if order.kind is OrderKind.LIMIT else TimeInForce.IOC)
    filled = sum(e.quantity for e in events if isinstance(e, Fill))
    for event in events:
        if isinstance(event, Fill):
            assert event.taker_id == order.order_id
            if event.maker_owner == event.taker_owner:
                assert stp is SelfTradePrevention.NONE
            if order.price is not None:
                assert event.price <= order.price if order.side is Side.BUY else event.price >= order.price
    if tif is TimeInForce.FOK:
        assert filled in {0, order.quantity}
        if filled == 0:
            assert events[1:] == [Cancelled(order.order_id, order.quantity, CancelReason.FOK_UNFILLED, book.sequence)]
            assert book.snapshot() == before
    if tif is not TimeInForce.GTC or order.kind is OrderKind.MARKET:
        assert not any(isinstance(e, Rested) for e in events)
        assert order.order_id not in book
    if order.quote_budget is not None:
        spent = sum(book._notional(e.price, e.quantity) for e in events if isinstance(e, Fill))
        assert spent <= order.quote_budget


def check_counterparties(order: NewOrder, events: list[Event], predicted: tuple[set[str], bool]) -> None:
    """``Book.counterparties``, asked before the order was placed, named exactly whom it traded with
    and whether it cancelled its owner's own resting orders (the order service locks their accounts by it)."""
    makers = {e.maker_owner for e in events if isinstance(e, Fill)}
    cancels_own = any(isinstance(e, Cancelled) and e.order_id != order.order_id for e in events)
    assert predicted == (makers, cancels_own), order


def check_book(book: Book, ledger: Ledger) -> None:
    """Never crossed; depth agrees with the orders; every lot is filled, resting or cancelled."""
    bid, ask = book.best_bid(), book.best_ask()
    assert bid is None or ask is None or bid < ask
    resting = {o.order_id: o for o in book.orders()}
    assert len(resting) == len(book)
    bids, asks = book.depth(1000)
    for side, levels in ((Side.BUY, bids), (Side.SELL, asks)):
        totals: defaultdict[int, list[int]] = defaultdict(lambda: [0, 0])
        for o in resting.values():
            if o.side is side:
                totals[o.price][0] += o.remaining
                totals[o.price][1] += 1
        expected = sorted(totals.items(), reverse=side is Side.BUY)
        assert levels == [(price, qty, count) for price, (qty, count) in expected]
    for order_id, quantity in ledger.placed.items():
        left = resting[order_id].remaining if order_id in resting else 0
        assert quantity == ledger.filled[order_id] + left + ledger.cancelled[order_id]


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    drawn=commands,
    default_stp=st.sampled_from(SelfTradePrevention),
    notional=st.sampled_from((price_times_quantity, fee_like_notional)),
)
def test_random_flows_match_the_reference_model(
    drawn: list[tuple[str, object]], default_stp: SelfTradePrevention, notional: Notional
) -> None:
    book = Book(default_stp=default_stp, notional=notional)
    reference = Reference(default_stp, notional)
    run_flow(book, reference, drawn)
    assert sorted((o.order_id, o.remaining) for o in book.orders()) == sorted(
        (r.order_id, r.remaining) for r in reference.resting
    )


@settings(max_examples=300, deadline=None)
@given(drawn=commands)
def test_invariants_hold_and_replay_and_restore_are_deterministic(drawn: list[tuple[str, object]]) -> None:
    book = Book()
    outputs, fed = run_flow(book, None, drawn)

    replayed = Book()
    again = [replayed.cancel(c) if isinstance(c, int) else replayed.place(c) for c in fed]
    assert again == outputs
    assert replayed.snapshot() == book.snapshot()

    restored = Book()
    restored.restore(book.orders(), sequence=book.sequence)
    assert restored.snapshot() == book.snapshot()
    assert restored.depth(100) == book.depth(100)
    assert (restored.best_bid(), restored.best_ask()) == (book.best_bid(), book.best_ask())
    # The restored book goes on exactly as the original does.
    probe_id = max([0, *(c.order_id for c in fed if isinstance(c, NewOrder))]) + 1
    for probe in (
        NewOrder(probe_id, "dave", Side.BUY, OrderKind.MARKET, None, 20),
        NewOrder(probe_id + 1, "dave", Side.SELL, OrderKind.LIMIT, 100, 20),
    ):
        assert restored.place(probe) == book.place(probe)
    assert restored.snapshot() == book.snapshot()
