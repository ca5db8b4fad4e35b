"""Settling what the book did: each fill in one journal entry, the whole batch in a few statements.

A fill moves the seller's base to the buyer and the buyer's quote to the seller less
the seller's fee, both fees to the instrument's fee account, in ONE journal entry
captured from the two orders' holds, and records the trade. What a finished order's
hold still reserves (the unfilled part, price improvement, the fee reserve) is
released. The entries are planned in memory against accounts and holds the batch
locked once (:class:`bourse.ledger.batch.EntryBatch`) and written with the batch's
trades in multi-row statements; the batch queues ONE commissions job naming its
trades, in the same transaction, so no fill is ever lost to them.

**Fees per instrument.** Every fill credits its fees to the instrument's own ``fees``
account (``ref`` = the symbol), not the one ``fees`` account of the quote asset: the
matchers of two instruments never queue on one hot row. The ``ledger.sweep_fees``
job moves those balances into the asset's ``fees`` pool (``ref`` ""), from which
commissions are paid (docs/decisions/0027-matcher-per-instrument-shard.md).

Fees follow docs/decisions/0008-money-and-rounding.md: each is ``portion(notional,
bps(rate))``, rounded down. A fill's notional is rounded down too (what the seller
receives is what the buyer pays), so no fill charges more than the hold reserved.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, text, update
from sqlalchemy.orm import Session

from bourse.assets.rounding import bps, portion
from bourse.ledger.accounts import AccountKey
from bourse.ledger.batch import EntryBatch
from bourse.ledger.holds import release_hold, still_reserved
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context
from bourse.queue.producer import enqueue
from bourse.sqltypes import utcnow
from bourse.trading.engine.vocabulary import Fill, Side
from bourse.trading.instruments import notional
from bourse.trading.models import Instrument, Order, OrderStatus, Trade

ACCRUE_JOB = "commissions.accrue"  # the commissions domain's job, named here: it stands above trading
_TRADES = cast("Table", Trade.__table__)


def fee_account(instrument: Instrument) -> AccountKey:
    """The account an instrument's fills pay their fees into (swept into the asset's pool)."""
    return (AccountKind.fees, instrument.quote_asset, instrument.symbol)


def settle_fill(ledger: EntryBatch, instrument: Instrument, maker: Order, taker: Order, fill: Fill) -> Trade:
    """Post one fill's entry in ``ledger`` (in memory), move both orders, and return its trade (not written yet)."""
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
        (seller.hold_id, quantity, ledger.account((AccountKind.available, base, buyer.user_id))),
        (buyer.hold_id, quote - seller_fee, ledger.account((AccountKind.available, quote_asset, seller.user_id))),
        (buyer.hold_id, seller_fee + buyer_fee, ledger.account(fee_account(instrument))),
    ]
    entry_id = ledger.capture(
        captures=[capture for capture in captures if capture[1] > 0],
        kind="trade",
        idempotency_key=f"trade:{instrument.symbol}:{fill.sequence}",
        metadata={"instrument": instrument.symbol, "sequence": fill.sequence},
    )
    for order in (maker, taker):
        order.filled_quantity += quantity
        order.quote_spent += quote
    maker.status = OrderStatus.filled if maker.filled_quantity == maker.quantity else OrderStatus.partially_filled
    taker.status = OrderStatus.filled if taker.filled_quantity == taker.quantity else OrderStatus.partially_filled
    instrument.last_price = price
    return Trade(
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
        entry_id=entry_id,
        created_at=utcnow(),
    )


def release_finished(ledger: EntryBatch, order: Order) -> None:
    """Give back what a finished order's hold still reserves (unfilled part, price improvement, fee reserve)."""
    ledger.release(order.hold_id, idempotency_key=f"order:{order.id}:release")


_TRADE_COLUMNS = (
    "instrument",
    "sequence",
    "price",
    "quantity",
    "maker_order_id",
    "taker_order_id",
    "maker_user_id",
    "taker_user_id",
    "taker_side",
    "quote_amount",
    "maker_fee",
    "taker_fee",
    "entry_id",
    "created_at",
)


def record_trades(session: Session, instrument: Instrument, trades: Sequence[Trade]) -> None:
    """Insert the batch's trades in one statement (after its entries), give each its id,
    and queue ONE commissions job for all of them."""
    if not trades:
        return
    if session.get_bind().dialect.name == "postgresql":
        rows = session.connection().execute(
            _PG_INSERT_TRADES,
            {f"t_{name}": [getattr(trade, name) for trade in trades] for name in _TRADE_COLUMNS},
        )
        ids = {row[0]: row[1] for row in rows}
        for trade in trades:
            trade.id = ids[trade.sequence]
    else:
        statement = insert(_TRADES).returning(_TRADES.c.id, sort_by_parameter_order=True)
        values = [{name: getattr(trade, name) for name in _TRADE_COLUMNS} for trade in trades]
        for trade, trade_id in zip(trades, session.execute(statement, values).scalars(), strict=True):
            trade.id = trade_id
    # Commissions accrue in their own job, queued in this transaction: a fill is never lost to them.
    enqueue(
        session,
        ACCRUE_JOB,
        {"trade_ids": [trade.id for trade in trades]},
        unique_key=f"commissions:{instrument.symbol}:{trades[0].sequence}",
    )


# The columns the matcher changes on an order, written for the whole batch at once.
_ORDER_STATE = (
    "status",
    "sequence",
    "filled_quantity",
    "quote_spent",
    "cancel_reason",
    "reject_reason",
    "cancel_sequence",
)


def write_orders(session: Session, orders: Sequence[Order]) -> None:
    """Write the state of every order the batch touched in ONE statement (executemany elsewhere
    than PostgreSQL), then detach them: the ORM must not write them again, one by one.

    The caller holds each row: the pending commands are locked, and a resting order the
    batch fills or cancels changes only by the instrument's one matcher.
    """
    if not orders:
        return
    now = utcnow()
    if session.get_bind().dialect.name == "postgresql":
        params: dict[str, Any] = {"o_ids": [order.id for order in orders], "now": now}
        for name in _ORDER_STATE:
            params[f"o_{name}"] = [_column_value(getattr(order, name)) for order in orders]
        written = int(session.connection().execute(_PG_UPDATE_ORDERS, params).scalar_one())
    else:
        rows = [
            {
                "o_id": order.id,
                "o_now": now,
                **{f"o_{name}": _column_value(getattr(order, name)) for name in _ORDER_STATE},
            }
            for order in orders
        ]
        written = int(session.execute(_UPDATE_ORDER, rows).rowcount)  # type: ignore[attr-defined]
    if written != len(orders):
        raise RuntimeError(f"the batch wrote {written} of its {len(orders)} orders")
    for order in orders:
        order.updated_at = now
        if order in session:
            session.expunge(order)


def _column_value(value: Any) -> Any:
    return value.value if isinstance(value, OrderStatus) else value


_ORDERS = cast("Table", Order.__table__)
_UPDATE_ORDER = (
    update(_ORDERS)
    .where(_ORDERS.c.id == bindparam("o_id"))
    .values(updated_at=bindparam("o_now"), **{name: bindparam(f"o_{name}") for name in _ORDER_STATE})
)
_PG_UPDATE_ORDERS = text(
    """
    WITH u AS (
        UPDATE orders SET status = v.status, sequence = v.sequence, filled_quantity = v.filled_quantity,
            quote_spent = v.quote_spent, cancel_reason = v.cancel_reason, reject_reason = v.reject_reason,
            cancel_sequence = v.cancel_sequence, updated_at = :now
        FROM unnest(
            CAST(:o_ids AS bigint[]), CAST(:o_status AS varchar[]), CAST(:o_sequence AS bigint[]),
            CAST(:o_filled_quantity AS bigint[]), CAST(:o_quote_spent AS bigint[]),
            CAST(:o_cancel_reason AS varchar[]), CAST(:o_reject_reason AS varchar[]),
            CAST(:o_cancel_sequence AS bigint[])
        ) AS v(id, status, sequence, filled_quantity, quote_spent, cancel_reason, reject_reason, cancel_sequence)
        WHERE orders.id = v.id
        RETURNING 1
    )
    SELECT count(*) FROM u
    """
)
_PG_INSERT_TRADES = text(
    """
    INSERT INTO trades (instrument, sequence, price, quantity, maker_order_id, taker_order_id, maker_user_id,
        taker_user_id, taker_side, quote_amount, maker_fee, taker_fee, entry_id, created_at)
    SELECT * FROM unnest(
        CAST(:t_instrument AS varchar[]), CAST(:t_sequence AS bigint[]), CAST(:t_price AS bigint[]),
        CAST(:t_quantity AS bigint[]), CAST(:t_maker_order_id AS bigint[]), CAST(:t_taker_order_id AS bigint[]),
        CAST(:t_maker_user_id AS uuid[]), CAST(:t_taker_user_id AS uuid[]), CAST(:t_taker_side AS varchar[]),
        CAST(:t_quote_amount AS bigint[]), CAST(:t_maker_fee AS bigint[]), CAST(:t_taker_fee AS bigint[]),
        CAST(:t_entry_id AS uuid[]), CAST(:t_created_at AS timestamptz[])
    )
    RETURNING sequence, id
    """
)


def release_remainder(session: Session, order: Order, context: Context) -> None:
    """Outside a batch (an order rejected on its own): release what its hold still reserves."""
    if still_reserved(session, order.hold_id) == 0:
        return
    release_hold(
        session,
        hold_id=order.hold_id,
        context=Context(
            actor=context.actor, idempotency_key=f"order:{order.id}:release", request_id=context.request_id
        ),
    )
