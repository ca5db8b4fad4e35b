"""One batch of an instrument's commands: sequenced, matched and settled in one transaction.

The matcher (:mod:`bourse.trading.matcher`) calls :func:`run_batch` inside a transaction
of its own, with the instrument's row locked and its :class:`~bourse.trading.engine.book.Book`
current with that row. The batch:

1. reads the instrument's pending commands (:data:`~bourse.trading.models.PENDING_COMMANDS_SQL`:
   orders not yet sequenced, and cancels requested of live orders), oldest id first, at
   most ``limit``, locking their rows: a cancel requested meanwhile waits for the commit
   and is then a command of the next batch. It reads what is pending, never "ids above a
   cursor": ids are allocated by concurrent API transactions and commit out of order;
2. runs them through the book in that order. Each order gets its accepted sequence (the
   book's next one), which is its time priority and its id in the book. A pending order
   whose cancel was requested before it was sequenced is cancelled without entering the
   book (the cancel wins); one on a halted market is cancelled with ``market_halted``;
   one that no longer fits the instrument's rules (changed since it was placed) is
   rejected with the rule's code;
3. locks every account the batch posts to, in ONE statement in account id order, then
   the holds of every order it touches, in one statement in id order (the placement of
   an order locks its owner's accounts the same way, so the two never wait on each
   other in a cycle);
4. plans, in memory (:class:`bourse.ledger.batch.EntryBatch`), one balanced journal
   entry per fill captured from the two orders' holds
   (:func:`bourse.trading.settlement.settle_fill`) and a release of what every finished
   order's hold still reserves, each posting chained to its account's previous link;
5. writes it all in a fixed number of statements, whatever the number of fills: the
   entries, postings, balances and holds (one statement on PostgreSQL), the trades (one
   multi-row insert), one commissions job, the orders, and the instrument's
   ``sequence`` and ``last_price``;
6. leaves the market-data feed one message set for the whole batch (published after
   the commit).

Nothing here commits, and nothing outside the transaction changes except the book, which
the caller throws away (and rebuilds from the database) if the transaction does not
commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from bourse.assets.rounding import BPS
from bourse.ledger.accounts import AccountKey
from bourse.ledger.batch import EntryBatch
from bourse.ledger.models import AccountKind
from bourse.trading import feed
from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import (
    Cancelled,
    CancelReason,
    CancelRejected,
    Event,
    Fill,
    NewOrder,
    OrderKind,
    Rejected,
    Rested,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from bourse.trading.errors import OrderRuleError
from bourse.trading.instruments import (
    check_price_band,
    format_price,
    format_quantity,
    parse_price,
    parse_quantity,
    price_to_ticks,
    quantity_to_lots,
)
from bourse.trading.models import (
    DONE_STATUSES,
    PENDING_COMMANDS_SQL,
    Instrument,
    InstrumentStatus,
    Order,
    OrderStatus,
    Trade,
)
from bourse.trading.settlement import fee_account, record_trades, release_finished, settle_fill, write_orders

MATCHER_ACTOR = "system:matcher"
HALTED = "market_halted"


@dataclass(slots=True)
class Batch:
    """What one batch did: its commands (in the order they ran) and its trades."""

    commands: list[Order] = field(default_factory=list)
    trades: list[Trade] = field(default_factory=list)
    prev_sequence: int = 0
    sequence: int = 0

    @property
    def order_ids(self) -> list[int]:
        return [order.id for order in self.commands]


def pending_commands(session: Session, symbol: str, *, limit: int, after_id: int = 0) -> list[Order]:
    """The instrument's pending commands, oldest id first, their rows locked (``FOR UPDATE``)."""
    query = (
        select(Order)
        .where(Order.instrument == symbol, Order.id > after_id, text(f"({PENDING_COMMANDS_SQL})"))
        .order_by(Order.id)
        .limit(limit)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(query))


def commands_by_id(session: Session, symbol: str, ids: Sequence[int]) -> list[Order]:
    """The named orders if they are still pending commands, in id order, rows locked."""
    query = (
        select(Order)
        .where(Order.instrument == symbol, Order.id.in_(ids), text(f"({PENDING_COMMANDS_SQL})"))
        .order_by(Order.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(query))


def _broken_rule(instrument: Instrument, order: Order) -> str | None:
    """The code of the instrument rule ``order`` breaks now (they may have changed since it was placed)."""
    try:
        if order.price is not None:
            parse_price(instrument, format_price(instrument, order.price))
            check_price_band(instrument, order.price)
        if order.quote_budget is None:
            parse_quantity(instrument, format_quantity(instrument, order.quantity))
    except OrderRuleError as exc:
        return exc.code
    return None


def _new_order(instrument: Instrument, order: Order, book_id: int) -> NewOrder:
    book_budget = None
    if order.quote_budget is not None:
        # The budget pays the fills' notional and the taker fee on it.
        book_budget = order.quote_budget * BPS // (BPS + order.taker_bps)
    # A market buy with a budget was placed for up to the instrument's largest quantity.
    lots = max(1, quantity_to_lots(instrument, order.quantity))
    return NewOrder(
        book_id,
        str(order.user_id),
        Side(order.side),
        OrderKind(order.kind),
        None if order.price is None else price_to_ticks(instrument, order.price),
        lots,
        TimeInForce(order.tif),
        book_budget,
        SelfTradePrevention(order.stp),
    )


@dataclass(slots=True)
class _Step:
    order: Order
    events: list[Event]
    # Done without the book: (status, reason) for a cancel before sequencing, a halt or a rule.
    outcome: tuple[OrderStatus, str] | None = None


def _account_keys(instrument: Instrument, orders: Sequence[Order], trades: bool) -> set[AccountKey]:
    """Every account settling ``orders`` may post to: each pays from ``available`` through
    ``held`` (hold, capture, release) and receives into ``available``; fees in the instrument's account."""
    base, quote = instrument.base_asset, instrument.quote_asset
    available, held = AccountKind.available, AccountKind.held
    keys: set[AccountKey] = set()
    for order in orders:
        pays, gets = (quote, base) if order.side == Side.BUY.value else (base, quote)
        keys.update({(available, pays, order.user_id), (held, pays, order.user_id), (available, gets, order.user_id)})
    if trades:
        keys.add(fee_account(instrument))
    return keys


def run_batch(session: Session, instrument: Instrument, book: Book, commands: Sequence[Order]) -> Batch:
    """Sequence, match and settle ``commands`` (see the module docstring). ``book`` moves with them."""
    # The orders are written once, by write_orders, in one statement: nothing the batch
    # reads or writes before that may flush them one UPDATE at a time.
    with session.no_autoflush:
        return _run_batch(session, instrument, book, commands)


def _run_batch(session: Session, instrument: Instrument, book: Book, commands: Sequence[Order]) -> Batch:
    batch = Batch(prev_sequence=book.sequence)
    by_book_id: dict[int, Order] = {}
    steps = [_sequence(instrument, book, order, by_book_id) for order in commands]
    # The resting orders the batch traded with or cancelled that it did not bring itself.
    wanted = {
        book_id
        for step in steps
        for event in step.events
        for book_id in ((event.maker_id,) if isinstance(event, Fill) else (getattr(event, "order_id", 0),))
        if book_id not in by_book_id
    }
    if wanted:
        rows = session.scalars(
            select(Order)
            .where(Order.instrument == instrument.symbol, Order.sequence.in_(sorted(wanted)))
            .execution_options(populate_existing=True)
        )
        for row in rows:
            if row.sequence is not None:
                by_book_id[row.sequence] = row
    orders = {order.id: order for order in [*commands, *by_book_id.values()]}
    traded = any(isinstance(event, Fill) for step in steps for event in step.events)
    ledger = EntryBatch(session, actor=MATCHER_ACTOR)
    ledger.lock_accounts(_account_keys(instrument, list(orders.values()), traded))
    ledger.lock_holds(order.hold_id for order in orders.values())
    for step in steps:
        batch.trades.extend(_settle(ledger, instrument, step, by_book_id))
    ledger.write()
    record_trades(session, instrument, batch.trades)
    write_orders(session, list(orders.values()))
    batch.commands = list(commands)
    batch.sequence = book.sequence
    instrument.sequence = book.sequence
    session.flush()
    feed.publish_after_commit(
        session,
        instrument,
        prev_sequence=batch.prev_sequence,
        orders=list(orders.values()),  # the commands, and the resting orders they filled or cancelled
        trades=batch.trades,
    )
    return batch


def _sequence(instrument: Instrument, book: Book, order: Order, by_book_id: dict[int, Order]) -> _Step:
    """Run one command through the book (nothing written yet)."""
    if order.status is not OrderStatus.pending:
        # A cancel requested of a resting order.
        assert order.sequence is not None  # noqa: S101 - a live, non-pending order is sequenced (ck_orders_sequenced)
        events = book.cancel(order.sequence)
        if isinstance(events[0], CancelRejected):
            raise RuntimeError(f"order {order.id} is live in the database but not in the book")
        by_book_id[order.sequence] = order
        order.cancel_sequence = events[0].sequence
        return _Step(order, events)
    if order.cancel_requested_at is not None:
        return _Step(order, [], (OrderStatus.cancelled, CancelReason.USER.value))
    if instrument.status is InstrumentStatus.halted:
        return _Step(order, [], (OrderStatus.cancelled, HALTED))
    broken = _broken_rule(instrument, order)
    if broken is not None:
        return _Step(order, [], (OrderStatus.rejected, broken))
    book_id = book.sequence + 1
    order.sequence = book_id
    by_book_id[book_id] = order
    return _Step(order, book.place(_new_order(instrument, order, book_id)))


def _settle(ledger: EntryBatch, instrument: Instrument, step: _Step, by_book_id: dict[int, Order]) -> list[Trade]:
    """Plan what the book did for one command: fills, order states, released holds."""
    order = step.order
    if step.outcome is not None:
        status, reason = step.outcome
        order.status = status
        if status is OrderStatus.rejected:
            order.reject_reason = reason
        else:
            order.cancel_reason = reason
        release_finished(ledger, order)
        return []
    touched: dict[int, Order] = {order.id: order}
    trades: list[Trade] = []
    for event in step.events:
        if isinstance(event, Fill):
            maker, taker = by_book_id[event.maker_id], by_book_id[event.taker_id]
            touched[maker.id] = maker
            trades.append(settle_fill(ledger, instrument, maker, taker, event))
        elif isinstance(event, Cancelled):
            cancelled = by_book_id[event.order_id]
            touched[cancelled.id] = cancelled
            cancelled.status = OrderStatus.cancelled
            cancelled.cancel_reason = event.reason.value
        elif isinstance(event, Rested):
            order.status = OrderStatus.partially_filled if order.filled_quantity else OrderStatus.open
        elif isinstance(event, Rejected):
            order.status = OrderStatus.rejected
            order.reject_reason = event.reason.value
    for each in touched.values():
        if each.status in DONE_STATUSES:
            release_finished(ledger, each)
    return trades
