"""Placing and cancelling orders: matching under the instrument's one writer, and
settling every fill in the ledger in the same transaction.

See docs/decisions/0011-matching-single-writer.md. One command is one transaction:

1. take the instrument's turn (:func:`bourse.trading.book_cache.take_turn`: this
   process's mutex, then ``SELECT ... FOR UPDATE`` on the row): one writer per instrument;
2. validate the order against the instrument and bring the process's cached
   :class:`~bourse.trading.engine.book.Book` up to date (rebuilt from the resting orders
   when the instrument's ``sequence`` says another process wrote since,
   :func:`bourse.trading.book_cache.checkout_book`);
3. ask the book whom the order will trade with (:meth:`Book.counterparties`, which
   changes nothing) and lock every account the command will post to, the taker's,
   each counterparty's and ``fees``, in ONE statement in account id order
   (:func:`bourse.trading.settlement.lock_parties`);
4. place its hold (a buy limit holds its notional rounded up plus the largest fee it
   could pay on it; a sell holds its quantity; a market buy holds its quote budget);
5. insert the order, run the book, and settle each fill with ONE journal entry
   (:mod:`bourse.trading.settlement`); then release what a finished order's hold
   still reserves;
6. hand the book back, and leave the plain values the market-data messages need with
   the feed (:mod:`bourse.trading.feed`), which builds and sends them after commit,
   outside the instrument's critical section.

The lock order is the same for every command: the instrument(s), then all the
accounts at once, then hold rows (which only their instrument's writer touches).
The instrument comes *before* any account: a transaction that holds a user's account
rows while queueing for the instrument would deadlock against the instrument's writer
settling a fill with that user. And the accounts are locked all at once: a command
that locked its taker's accounts for the hold and its counterparties' later, fill by
fill, could wait for an order on another instrument that did the same the other way
round (users buying on one market and selling on the other), and PostgreSQL aborted
one of them as a deadlock. See docs/decisions/0013-transient-database-errors.md.

Services never commit. The cached book is published only when the transaction
commits, so a rolled-back command never leaves the cache ahead of the database.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.assets.amounts import parse_amount
from bourse.assets.rounding import BPS
from bourse.ledger.accounts import AccountKey, lock_accounts
from bourse.ledger.holds import place_hold
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context
from bourse.logging import get_logger
from bourse.settings import Settings
from bourse.trading import feed
from bourse.trading.book_cache import checkin_book, checkout_book, take_turn
from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import (
    CancelRejected,
    NewOrder,
    OrderKind,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from bourse.trading.errors import InvalidOrder, OrderNotOpen
from bourse.trading.instruments import (
    check_open,
    check_price_band,
    notional,
    parse_price,
    parse_quantity,
    price_to_ticks,
    quantity_to_lots,
)
from bourse.trading.models import (
    DONE_STATUSES,
    MAX_CLIENT_ORDER_ID,
    OPEN_STATUSES,
    Instrument,
    Order,
    OrderStatus,
    Trade,
)
from bourse.trading.queries import get_order, trades_of_order
from bourse.trading.settlement import apply_events, lock_parties, release_remainder

# Log lines keep the name they were always written under: searches select on it.
log = get_logger("bourse.trading.orders")


@dataclass(frozen=True, slots=True)
class Fees:
    """The fee rates an order is accepted with, in basis points of the notional."""

    maker_bps: int
    taker_bps: int


DEFAULT_FEES = Fees(maker_bps=10, taker_bps=20)


def fees_from_settings(settings: Settings) -> Fees:
    rates = settings.trading_fee_tiers[settings.trading_default_fee_tier]
    return Fees(maker_bps=rates["maker_bps"], taker_bps=rates["taker_bps"])


# -- Placing ------------------------------------------------------------------------------


def _enum(kind: type[Any], value: object, field: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise InvalidOrder(f"{field} is one of {allowed}, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class _Terms:
    side: Side
    kind: OrderKind
    tif: TimeInForce
    stp: SelfTradePrevention
    price: int | None
    quantity: int
    quote_budget: int | None


def _terms(  # noqa: PLR0917 - the order's fields, as they arrive
    instrument: Instrument,
    side: str,
    kind: str,
    tif: str | None,
    stp: str | None,
    price_text: str | None,
    quantity_text: str | None,
    quote_budget_text: str | None,
) -> _Terms:
    """The order's terms in integers, or the refusal of the first thing wrong with them."""
    the_side: Side = _enum(Side, side, "side")
    the_kind: OrderKind = _enum(OrderKind, kind, "type")
    market = the_kind is OrderKind.MARKET
    the_tif: TimeInForce = (
        _enum(TimeInForce, tif, "tif") if tif is not None else (TimeInForce.IOC if market else TimeInForce.GTC)
    )
    the_stp: SelfTradePrevention = (
        _enum(SelfTradePrevention, stp, "stp") if stp is not None else SelfTradePrevention.CANCEL_NEWEST
    )
    if market and the_tif is TimeInForce.GTC:
        raise InvalidOrder("A market order is IOC or FOK: it never rests")
    if market and price_text is not None:
        raise InvalidOrder("A market order takes no price")
    if not market and price_text is None:
        raise InvalidOrder("A limit order needs a price")
    if quote_budget_text is not None and not (market and the_side is Side.BUY):
        raise InvalidOrder("Only a market buy takes a quote_budget")
    if market and the_side is Side.BUY and quote_budget_text is None:
        raise InvalidOrder("A market buy needs a quote_budget: the most it may spend, fees included")
    if quantity_text is None and not (market and the_side is Side.BUY):
        raise InvalidOrder("The order needs a quantity")
    price = None if price_text is None else parse_price(instrument, price_text)
    quantity = instrument.max_quantity if quantity_text is None else parse_quantity(instrument, quantity_text)
    budget = None if quote_budget_text is None else parse_amount(quote_budget_text, instrument.quote_scale)
    if price is not None:
        check_price_band(instrument, price)
    return _Terms(the_side, the_kind, the_tif, the_stp, price, quantity, budget)


def buy_hold(instrument: Instrument, price: int, quantity: int, fees: Fees) -> int:
    """What a buy limit order holds: its notional rounded up, plus the largest fee on it, rounded up.

    Each fill pays its notional rounded down plus a fee rounded down, at a price no
    worse than the limit, so the fills of the whole order never need more.
    """
    value = notional(instrument, price, quantity, instrument.base_scale, instrument.quote_scale, round_up=True)
    rate = max(fees.maker_bps, fees.taker_bps)
    return value + -(-value * rate // BPS)


def place_order(
    session: Session,
    *,
    user_id: uuid.UUID,
    symbol: str,
    side: str,
    kind: str,
    tif: str | None,
    price_text: str | None,
    quantity_text: str | None,
    quote_budget_text: str | None = None,
    client_order_id: str | None = None,
    stp: str | None = None,
    context: Context,
    fees: Fees = DEFAULT_FEES,
) -> tuple[Order, list[Trade]]:
    """Place an order: hold its funds, match it, settle its fills. Returns the order and its trades.

    The same ``client_order_id`` from the same user returns the order already placed
    under it (and its trades), holding nothing more.
    """
    if client_order_id is not None and not (
        isinstance(client_order_id, str) and 1 <= len(client_order_id) <= MAX_CLIENT_ORDER_ID
    ):
        raise InvalidOrder(f"client_order_id is 1 to {MAX_CLIENT_ORDER_ID} characters")
    instrument = take_turn(session, symbol)
    if client_order_id is not None:
        existing = session.scalar(
            select(Order).where(Order.user_id == user_id, Order.client_order_id == client_order_id)
        )
        if existing is not None:
            return existing, trades_of_order(session, existing.id)
    check_open(instrument)
    terms = _terms(instrument, side, kind, tif, stp, price_text, quantity_text, quote_budget_text)
    book = checkout_book(session, instrument)
    order, trades = _place_locked(session, instrument, book, user_id, terms, client_order_id, context, fees)
    checkin_book(session, instrument, book)
    feed.publish_after_commit(session, instrument, prev_sequence=order.sequence - 1, orders=[order], trades=trades)
    return order, trades


def _place_locked(  # noqa: PLR0917 - one command's state
    session: Session,
    instrument: Instrument,
    book: Book,
    user_id: uuid.UUID,
    terms: _Terms,
    client_order_id: str | None,
    context: Context,
    fees: Fees,
) -> tuple[Order, list[Trade]]:
    symbol = instrument.symbol
    accepted_at = instrument.sequence + 1
    if terms.side is Side.SELL:
        asset, amount = instrument.base_asset, terms.quantity
    elif terms.quote_budget is not None:
        asset, amount = instrument.quote_asset, terms.quote_budget
    else:
        asset, amount = instrument.quote_asset, buy_hold(instrument, terms.price or 0, terms.quantity, fees)
    if amount <= 0:
        raise InvalidOrder("The order is worth less than one minor unit of the quote asset")
    book_budget = None
    if terms.quote_budget is not None:
        # The budget pays the fills' notional and the taker fee on it.
        book_budget = terms.quote_budget * BPS // (BPS + fees.taker_bps)
        if book_budget <= 0:
            raise InvalidOrder("The quote_budget cannot pay for anything once the fee is reserved")
    command = NewOrder(
        0,  # the order's id, once it has one
        str(user_id),
        terms.side,
        terms.kind,
        None if terms.price is None else price_to_ticks(instrument, terms.price),
        quantity_to_lots(instrument, terms.quantity),
        terms.tif,
        book_budget,
        terms.stp,
    )
    lock_parties(session, instrument, user_id, *book.counterparties(command), buys=terms.side is Side.BUY)
    hold = place_hold(
        session,
        user_id=user_id,
        asset=asset,
        amount=amount,
        reference=f"order:{symbol}:{accepted_at}",
        context=Context(
            actor=context.actor, idempotency_key=f"order:{symbol}:{accepted_at}:hold", request_id=context.request_id
        ),
    )
    order = Order(
        instrument=symbol,
        user_id=user_id,
        client_order_id=client_order_id,
        side=terms.side.value,
        kind=terms.kind.value,
        tif=terms.tif.value,
        stp=terms.stp.value,
        price=terms.price,
        quantity=terms.quantity,
        filled_quantity=0,
        quote_budget=terms.quote_budget,
        quote_spent=0,
        hold_id=hold.id,
        status=OrderStatus.open,
        maker_bps=fees.maker_bps,
        taker_bps=fees.taker_bps,
        sequence=accepted_at,
    )
    session.add(order)
    session.flush()
    events = book.place(replace(command, order_id=order.id))
    trades = apply_events(session, instrument, order, events, context)
    instrument.sequence = book.sequence
    session.flush()
    log.info(
        "order_placed",
        order_id=order.id,
        symbol=symbol,
        side=order.side,
        kind=order.kind,
        status=order.status.value,
        fills=len(trades),
    )
    return order, trades


# -- Cancelling ---------------------------------------------------------------------------


def _cancel_locked(session: Session, instrument: Instrument, book: Book, order: Order, context: Context) -> None:
    events = book.cancel(order.id)
    if isinstance(events[0], CancelRejected):
        raise RuntimeError(f"order {order.id} is open in the database but not in the book")  # noqa: TRY004
    order.status = OrderStatus.cancelled
    order.cancel_reason = "user"
    release_remainder(session, order, context)
    instrument.sequence = book.sequence


def cancel_order(session: Session, *, user_id: uuid.UUID, order_id: int, context: Context) -> Order:
    """Cancel one of the user's resting orders and release its hold; 409 ``order_not_open`` if it is done."""
    order = get_order(session, order_id, user_id=user_id)
    instrument = take_turn(session, order.instrument)
    session.refresh(order)
    if order.status in DONE_STATUSES:
        raise OrderNotOpen(f"Order {order_id} is {order.status.value}; there is nothing to cancel")
    book = checkout_book(session, instrument)
    _cancel_locked(session, instrument, book, order, context)
    session.flush()
    checkin_book(session, instrument, book)
    feed.publish_after_commit(session, instrument, prev_sequence=instrument.sequence - 1, orders=[order])
    log.info("order_cancelled", order_id=order.id, symbol=instrument.symbol)
    return order


def cancel_all(session: Session, *, user_id: uuid.UUID, symbol: str | None = None, context: Context) -> list[Order]:
    """Cancel every resting order of the user (on one instrument, or everywhere).

    Every instrument is locked first, in symbol order, so two cancel-alls never wait on
    each other in a cycle; then the user's accounts on all of them, in one statement,
    before the first release: no lock is taken after an account lock (see the module
    docstring).
    """
    query = select(Order.instrument).where(Order.user_id == user_id, Order.status.in_(OPEN_STATUSES))
    if symbol is not None:
        take_turn(session, symbol)  # 404 for an unknown instrument, even with nothing open
        query = query.where(Order.instrument == symbol)
    instruments = [take_turn(session, each) for each in sorted(set(session.scalars(query)))]
    by_symbol = {instrument.symbol: instrument for instrument in instruments}
    keys: set[AccountKey] = set()
    sides = select(Order.instrument, Order.side).where(
        Order.user_id == user_id, Order.status.in_(OPEN_STATUSES), Order.instrument.in_(sorted(by_symbol))
    )
    for each, side in set(session.execute(sides).tuples()):
        # What the order's hold reserves: the quote asset for a buy, the base asset for a sell.
        asset = by_symbol[each].quote_asset if side == Side.BUY.value else by_symbol[each].base_asset
        keys.update({(AccountKind.available, asset, user_id), (AccountKind.held, asset, user_id)})
    lock_accounts(session, keys)
    cancelled: list[Order] = []
    for instrument in instruments:
        each = instrument.symbol
        orders = session.scalars(
            select(Order)
            .where(Order.user_id == user_id, Order.instrument == each, Order.status.in_(OPEN_STATUSES))
            .order_by(Order.id)
            .execution_options(populate_existing=True)
        ).all()
        book = checkout_book(session, instrument)
        for order in orders:
            _cancel_locked(session, instrument, book, order, context)
        session.flush()
        checkin_book(session, instrument, book)
        feed.publish_after_commit(session, instrument, prev_sequence=instrument.sequence - len(orders), orders=orders)
        cancelled.extend(orders)
    return cancelled
