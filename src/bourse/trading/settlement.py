"""Settling what the book did: each fill in one journal entry, in the command's transaction.

A fill moves the seller's base to the buyer and the buyer's quote to the seller less
the seller's fee, both fees to ``fees``, in ONE journal entry captured from the two
orders' holds (:func:`bourse.ledger.holds.capture_holds`), and records the trade.
What a finished order's hold still reserves (the unfilled part, price improvement,
the fee reserve) is released. Each fill queues its commissions job in the same
transaction, so no fill is ever lost to them.

Fees follow docs/decisions/0008-money-and-rounding.md: each is ``portion(notional,
bps(rate))``, rounded down. A fill's notional is rounded down too (what the seller
receives is what the buyer pays), so no fill charges more than the hold reserved.

Every account a command posts to is locked before its first entry, all in one
statement (:func:`lock_parties`); see :mod:`bourse.trading.orders` for the lock order.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy.orm import Session

from bourse.assets.rounding import bps, portion
from bourse.ledger.accounts import AccountKey, lock_accounts, system_account, user_account
from bourse.ledger.holds import capture_holds, release_hold, still_reserved
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context
from bourse.queue.producer import enqueue
from bourse.trading.engine.vocabulary import Cancelled, Fill, Rejected, Rested, Side
from bourse.trading.errors import InvalidOrder
from bourse.trading.instruments import notional
from bourse.trading.models import DONE_STATUSES, Instrument, Order, OrderStatus, Trade


def lock_parties(
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
    lock, is what keeps two orders on two instruments from deadlocking (see
    :mod:`bourse.trading.orders`).
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


def apply_events(
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
            trades.append(settle_fill(session, instrument, maker, taker, book_event, context))
        elif isinstance(book_event, Cancelled):
            cancelled = touched.get(book_event.order_id) or _order(session, book_event.order_id)
            touched[cancelled.id] = cancelled
            cancelled.status = OrderStatus.cancelled
            cancelled.cancel_reason = book_event.reason.value
        elif isinstance(book_event, Rested):
            taker.status = OrderStatus.partially_filled if taker.filled_quantity else OrderStatus.open
    for order in touched.values():
        if order.status in DONE_STATUSES:
            release_remainder(session, order, context)
    return trades


def _order(session: Session, order_id: int) -> Order:
    order = session.get(Order, order_id)
    if order is None:
        raise RuntimeError(f"the book names order {order_id}, which is not in the database")
    return order


def settle_fill(  # noqa: PLR0917 - one fill's state
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


def release_remainder(session: Session, order: Order, context: Context) -> None:
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
