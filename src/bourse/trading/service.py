"""The order service: placing and cancelling orders, matching under the instrument lock,
and settling every fill in the ledger in the same transaction.

See docs/decisions/0011-matching-single-writer.md. One command is one transaction:

1. lock the instrument (``SELECT ... FOR UPDATE``): one writer per instrument;
2. validate the order against the instrument and bring the process's cached
   :class:`~bourse.trading.engine.book.Book` up to date (rebuilt from the resting orders
   when the instrument's ``sequence`` says another process wrote since);
3. ask the book whom the order will trade with (:meth:`Book.counterparties`, which
   changes nothing) and lock every account the command will post to, the taker's,
   each counterparty's and ``fees``, in ONE statement in account id order
   (:func:`bourse.ledger.accounts.lock_accounts`);
4. place its hold (a buy limit holds its notional rounded up plus the largest fee it
   could pay on it; a sell holds its quantity; a market buy holds its quote budget);
5. insert the order, run the book, and settle each fill with ONE journal entry
   (:func:`bourse.ledger.holds.capture_holds`): the seller's base to the buyer,
   the buyer's quote to the seller less the seller's fee, both fees to ``fees``;
   then release what a finished order's hold still reserves.

The lock order is the same for every command: the instrument(s), then all the
accounts at once, then hold rows (which only their instrument's writer touches).
The instrument comes *before* any account: a transaction that holds a user's account
rows while queueing for the instrument would deadlock against the instrument's writer
settling a fill with that user. And the accounts are locked all at once: a command
that locked its taker's accounts for the hold and its counterparties' later, fill by
fill, could wait for an order on another instrument that did the same the other way
round (users buying on one market and selling on the other), and PostgreSQL aborted
one of them as a deadlock. See docs/decisions/0013-transient-database-errors.md.

Fees follow docs/decisions/0008-money-and-rounding.md: each is ``portion(notional,
bps(rate))``, rounded down. A fill's notional is rounded down too (what the seller
receives is what the buyer pays), so no fill charges more than the hold reserved.

Services never commit. The cached book is published only when the transaction
commits, so a rolled-back command never leaves the cache ahead of the database.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import parse_amount
from bourse.assets.rounding import BPS, bps, portion
from bourse.db import LOCK_WAIT_SECONDS
from bourse.ledger.accounts import AccountKey, lock_accounts, system_account, user_account
from bourse.ledger.holds import capture_holds, place_hold, release_hold, still_reserved
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context
from bourse.logging import get_logger
from bourse.queue.producer import enqueue
from bourse.settings import Settings
from bourse.trading import feed
from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import (
    Cancelled,
    CancelRejected,
    Fill,
    NewOrder,
    OrderKind,
    Rejected,
    Rested,
    RestingOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from bourse.trading.errors import InstrumentBusy, InvalidOrder, OrderNotFound, OrderNotOpen
from bourse.trading.instruments import (
    book_notional,
    check_open,
    check_price_band,
    lock_instrument,
    notional,
    parse_price,
    parse_quantity,
    price_to_ticks,
    quantity_to_lots,
)
from bourse.trading.models import DONE_STATUSES, MAX_CLIENT_ORDER_ID, Instrument, Order, OrderStatus, Trade

log = get_logger("bourse.trading.service")

OPEN_STATUSES = (OrderStatus.open, OrderStatus.partially_filled)


@dataclass(frozen=True, slots=True)
class Fees:
    """The fee rates an order is accepted with, in basis points of the notional."""

    maker_bps: int
    taker_bps: int


DEFAULT_FEES = Fees(maker_bps=10, taker_bps=20)


def fees_from_settings(settings: Settings) -> Fees:
    rates = settings.trading_fee_tiers[settings.trading_default_fee_tier]
    return Fees(maker_bps=rates["maker_bps"], taker_bps=rates["taker_bps"])


# -- The cached books ---------------------------------------------------------------------
#
# symbol -> (book, (sequence, tick_size, lot_size)). A command takes its instrument's
# entry out of the shared cache (under the instrument lock, so nobody else is using
# it), keeps it in the session until the transaction ends, and puts it back only on
# commit. Tick and lot are part of the key: the book's notional reads them.

_CacheKey = tuple[int, int, int]
_BOOKS: dict[str, tuple[Book, _CacheKey]] = {}
_BOOKS_GUARD = threading.Lock()
_PENDING = "bourse.trading.books"


def _key(instrument: Instrument) -> _CacheKey:
    return (instrument.sequence, instrument.tick_size, instrument.lot_size)


def _publish(session: Session) -> None:
    pending: dict[str, tuple[Book, _CacheKey]] = session.info.pop(_PENDING, {})
    with _BOOKS_GUARD:
        _BOOKS.update(pending)
    _release_writers(session)


def _discard(session: Session) -> None:
    session.info.pop(_PENDING, None)
    _release_writers(session)


# -- The writer's turn in this process ------------------------------------------------------
#
# The instrument row lock makes one writer per instrument across processes. Within a
# process, threads also take the instrument's mutex, before the row lock, and keep it
# until their transaction has ended and its book is back in the cache: without it, the
# next thread gets the row lock the moment the commit releases it, before the book is
# published, finds the cache empty, and rebuilds the book from the database on every
# contended command.

_WRITERS: dict[str, threading.Lock] = {}
_HELD = "bourse.trading.writers"


def _writer(symbol: str) -> threading.Lock:
    with _BOOKS_GUARD:
        return _WRITERS.setdefault(symbol, threading.Lock())


def _release_writers(session: Session) -> None:
    for mutex in session.info.pop(_HELD, {}).values():
        mutex.release()


def _lock(session: Session, symbol: str) -> Instrument:
    """Take this process's turn on ``symbol``, then its row lock (``lock_instrument``)."""
    _pending(session)  # the hooks that end the turn at commit or rollback
    held: dict[str, threading.Lock] = session.info.setdefault(_HELD, {})
    if symbol not in held:
        mutex = _writer(symbol)
        wait: float = session.info.get(LOCK_WAIT_SECONDS, -1)
        if not mutex.acquire(timeout=wait):
            log.warning("instrument_turn_timeout", instrument=symbol, waited_seconds=wait)
            raise InstrumentBusy(f"{symbol} is busy; retry shortly")
        held[symbol] = mutex
    return lock_instrument(session, symbol)


def _pending(session: Session) -> dict[str, tuple[Book, _CacheKey]]:
    if _PENDING not in session.info:
        if not session.info.get("bourse.trading.hooked"):
            event.listen(session, "after_commit", _publish)
            event.listen(session, "after_rollback", _discard)
            # Also when no database transaction had begun: the writer's turn must end.
            event.listen(session, "after_soft_rollback", lambda session, _previous: _discard(session))
            session.info["bourse.trading.hooked"] = True
        session.info[_PENDING] = {}
    pending: dict[str, tuple[Book, _CacheKey]] = session.info[_PENDING]
    return pending


def resting_orders(session: Session, instrument: Instrument) -> list[RestingOrder]:
    """The instrument's resting orders from the database, as the book holds them (in id order)."""
    rows = session.scalars(
        select(Order).where(Order.instrument == instrument.symbol, Order.status.in_(OPEN_STATUSES)).order_by(Order.id)
    )
    return [
        RestingOrder(
            order.id,
            str(order.user_id),
            Side(order.side),
            price_to_ticks(instrument, order.price or 0),
            quantity_to_lots(instrument, order.quantity),
            quantity_to_lots(instrument, order.remaining),
        )
        for order in rows
    ]


def rebuild_book(session: Session, instrument: Instrument) -> Book:
    """A book rebuilt from the database, without matching (``Book.restore``)."""
    book = Book(notional=book_notional(instrument))
    book.restore(resting_orders(session, instrument), sequence=instrument.sequence)
    return book


def _checkout_book(session: Session, instrument: Instrument) -> Book:
    """The instrument's book, current with the locked row; the caller holds the lock."""
    symbol = instrument.symbol
    cached = _pending(session).pop(symbol, None)
    if cached is None:
        with _BOOKS_GUARD:
            cached = _BOOKS.pop(symbol, None)
    if cached is not None and cached[1] == _key(instrument):
        return cached[0]
    log.info("book_rebuilt", symbol=symbol, sequence=instrument.sequence)
    return rebuild_book(session, instrument)


def _checkin_book(session: Session, instrument: Instrument, book: Book) -> None:
    _pending(session)[instrument.symbol] = (book, _key(instrument))


def cached_book(symbol: str) -> Book | None:
    """The committed cached book of ``symbol`` in this process, if any (for checks and tests)."""
    with _BOOKS_GUARD:
        cached = _BOOKS.get(symbol)
    return None if cached is None else cached[0]


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
    instrument = _lock(session, symbol)
    if client_order_id is not None:
        existing = session.scalar(
            select(Order).where(Order.user_id == user_id, Order.client_order_id == client_order_id)
        )
        if existing is not None:
            return existing, trades_of_order(session, existing.id)
    check_open(instrument)
    terms = _terms(instrument, side, kind, tif, stp, price_text, quantity_text, quote_budget_text)
    book = _checkout_book(session, instrument)
    order, trades = _place_locked(session, instrument, book, user_id, terms, client_order_id, context, fees)
    _checkin_book(session, instrument, book)
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
    _lock_accounts(session, instrument, user_id, *book.counterparties(command), buys=terms.side is Side.BUY)
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
    trades = _apply(session, instrument, order, events, context)
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


def _lock_accounts(
    session: Session,
    instrument: Instrument,
    taker: uuid.UUID,
    makers: set[str],
    cancels_own: bool,
    *,
    buys: bool,
) -> None:
    """Lock every account the order will post to, in one statement, before its first entry.

    The book says whom the order will trade with before anything changes
    (:meth:`Book.counterparties`). Each party pays from its ``available`` account of
    one asset through its ``held`` one (hold, capture, release) and receives into its
    ``available`` account of the other; fees go to the quote asset's ``fees``; resting
    orders of the taker's own that self-trade prevention cancels release the asset the
    taker receives. Locking them all at once, in id order, right after the instrument
    lock, is what keeps two orders on two instruments from deadlocking (see the module
    docstring).
    """
    base, quote = instrument.base_asset, instrument.quote_asset
    available, held = AccountKind.available, AccountKind.held
    keys: set[AccountKey] = set()

    def party(user_id: uuid.UUID, *, buyer: bool, trades: bool) -> None:
        pays, gets = (quote, base) if buyer else (base, quote)
        keys.update({(available, pays, user_id), (held, pays, user_id)})
        if trades:
            keys.add((available, gets, user_id))

    party(taker, buyer=buys, trades=bool(makers))
    for maker in makers:
        party(uuid.UUID(maker), buyer=not buys, trades=True)
    if cancels_own:
        party(taker, buyer=not buys, trades=False)
    if makers:
        keys.add((AccountKind.fees, quote, None))
    lock_accounts(session, keys)


def _apply(
    session: Session, instrument: Instrument, taker: Order, events: Sequence[object], context: Context
) -> list[Trade]:
    """Write what the book did: settle fills, mark orders, release finished holds."""
    touched: dict[int, Order] = {taker.id: taker}
    trades: list[Trade] = []
    for book_event in events:
        if isinstance(book_event, Rejected):
            raise InvalidOrder(f"The order was refused: {book_event.reason.value}")
        if isinstance(book_event, Fill):
            maker = touched.get(book_event.maker_id) or _order(session, book_event.maker_id)
            touched[maker.id] = maker
            trades.append(_settle(session, instrument, maker, taker, book_event, context))
        elif isinstance(book_event, Cancelled):
            cancelled = touched.get(book_event.order_id) or _order(session, book_event.order_id)
            touched[cancelled.id] = cancelled
            cancelled.status = OrderStatus.cancelled
            cancelled.cancel_reason = book_event.reason.value
        elif isinstance(book_event, Rested):
            taker.status = OrderStatus.partially_filled if taker.filled_quantity else OrderStatus.open
    for order in touched.values():
        if order.status in DONE_STATUSES:
            _release(session, order, context)
    return trades


def _order(session: Session, order_id: int) -> Order:
    order = session.get(Order, order_id)
    if order is None:
        raise RuntimeError(f"the book names order {order_id}, which is not in the database")
    return order


def _settle(  # noqa: PLR0917 - one fill's state
    session: Session, instrument: Instrument, maker: Order, taker: Order, fill: Fill, context: Context
) -> Trade:
    """Settle one fill in one journal entry, and record it."""
    price = fill.price * instrument.tick_size
    quantity = fill.quantity * instrument.lot_size
    quote = notional(instrument, price, quantity, instrument.base_scale, instrument.quote_scale)
    maker_fee = portion(quote, bps(maker.maker_bps))
    taker_fee = portion(quote, bps(taker.taker_bps))
    if fill.taker_side is Side.BUY:
        buyer, seller, buyer_fee, seller_fee = taker, maker, taker_fee, maker_fee
    else:
        buyer, seller, buyer_fee, seller_fee = maker, taker, maker_fee, taker_fee
    base, quote_asset = instrument.base_asset, instrument.quote_asset
    captures = [
        (seller.hold_id, quantity, user_account(session, buyer.user_id, base)),
        (buyer.hold_id, quote - seller_fee, user_account(session, seller.user_id, quote_asset)),
        (buyer.hold_id, seller_fee + buyer_fee, system_account(session, AccountKind.fees, quote_asset)),
    ]
    posted = capture_holds(
        session,
        captures=[capture for capture in captures if capture[1] > 0],
        legs=[],
        kind="trade",
        context=Context(
            actor=context.actor,
            idempotency_key=f"trade:{instrument.symbol}:{fill.sequence}",
            request_id=context.request_id,
        ),
        metadata={"instrument": instrument.symbol, "sequence": fill.sequence},
    )
    for order in (maker, taker):
        order.filled_quantity += quantity
        order.quote_spent += quote
    maker.status = OrderStatus.filled if maker.filled_quantity == maker.quantity else OrderStatus.partially_filled
    taker.status = OrderStatus.filled if taker.filled_quantity == taker.quantity else OrderStatus.partially_filled
    instrument.last_price = price
    trade = Trade(
        instrument=instrument.symbol,
        sequence=fill.sequence,
        price=price,
        quantity=quantity,
        maker_order_id=maker.id,
        taker_order_id=taker.id,
        maker_user_id=maker.user_id,
        taker_user_id=taker.user_id,
        taker_side=fill.taker_side.value,
        quote_amount=quote,
        maker_fee=maker_fee,
        taker_fee=taker_fee,
        entry_id=posted.entry_id,
    )
    session.add(trade)
    session.flush()
    # Commissions accrue in their own job, queued in this transaction: a fill is never lost to them.
    enqueue(session, "commissions.accrue", {"trade_id": trade.id}, unique_key=f"commissions:{trade.id}")
    return trade


def _release(session: Session, order: Order, context: Context) -> None:
    """Give back what a finished order's hold still reserves (unfilled part, price improvement, fee reserve)."""
    if still_reserved(session, order.hold_id) == 0:
        return
    release_hold(
        session,
        hold_id=order.hold_id,
        context=Context(
            actor=context.actor, idempotency_key=f"order:{order.id}:release", request_id=context.request_id
        ),
    )


# -- Cancelling ---------------------------------------------------------------------------


def get_order(session: Session, order_id: int, *, user_id: uuid.UUID | None = None) -> Order:
    """The order, or 404 ``order_not_found`` (also for another user's order)."""
    order = session.get(Order, order_id) if isinstance(order_id, int) else None
    if order is None or (user_id is not None and order.user_id != user_id):
        raise OrderNotFound(f"There is no order {order_id}")
    return order


def _cancel_locked(session: Session, instrument: Instrument, book: Book, order: Order, context: Context) -> None:
    events = book.cancel(order.id)
    if isinstance(events[0], CancelRejected):
        raise RuntimeError(f"order {order.id} is open in the database but not in the book")  # noqa: TRY004
    order.status = OrderStatus.cancelled
    order.cancel_reason = "user"
    _release(session, order, context)
    instrument.sequence = book.sequence


def cancel_order(session: Session, *, user_id: uuid.UUID, order_id: int, context: Context) -> Order:
    """Cancel one of the user's resting orders and release its hold; 409 ``order_not_open`` if it is done."""
    order = get_order(session, order_id, user_id=user_id)
    instrument = _lock(session, order.instrument)
    session.refresh(order)
    if order.status in DONE_STATUSES:
        raise OrderNotOpen(f"Order {order_id} is {order.status.value}; there is nothing to cancel")
    book = _checkout_book(session, instrument)
    _cancel_locked(session, instrument, book, order, context)
    session.flush()
    _checkin_book(session, instrument, book)
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
        _lock(session, symbol)  # 404 for an unknown instrument, even with nothing open
        query = query.where(Order.instrument == symbol)
    instruments = [_lock(session, each) for each in sorted(set(session.scalars(query)))]
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
        book = _checkout_book(session, instrument)
        for order in orders:
            _cancel_locked(session, instrument, book, order, context)
        session.flush()
        _checkin_book(session, instrument, book)
        feed.publish_after_commit(session, instrument, prev_sequence=instrument.sequence - len(orders), orders=orders)
        cancelled.extend(orders)
    return cancelled


# -- Reading ------------------------------------------------------------------------------


def list_orders(session: Session, *, user_id: uuid.UUID, open_only: bool, limit: int = 200) -> list[Order]:
    query = select(Order).where(Order.user_id == user_id)
    if open_only:
        query = query.where(Order.status.in_(OPEN_STATUSES))
    return list(session.scalars(query.order_by(Order.id.desc()).limit(limit)))


def trades_of_order(session: Session, order_id: int) -> list[Trade]:
    query = select(Trade).where(or_(Trade.maker_order_id == order_id, Trade.taker_order_id == order_id))
    return list(session.scalars(query.order_by(Trade.id)))


def list_trades(session: Session, *, user_id: uuid.UUID, limit: int = 200) -> list[Trade]:
    query = select(Trade).where(or_(Trade.maker_user_id == user_id, Trade.taker_user_id == user_id))
    return list(session.scalars(query.order_by(Trade.id.desc()).limit(limit)))


def open_orders(session: Session, symbol: str) -> Iterable[Order]:
    """Every resting order of an instrument, in id (time) order."""
    return session.scalars(
        select(Order).where(Order.instrument == symbol, Order.status.in_(OPEN_STATUSES)).order_by(Order.id)
    )
