"""The market-data feed: what each committed command publishes.

The order service calls :func:`publish_after_commit` inside each command's
transaction, under the instrument lock. It only copies what the messages need
(plain values: the orders and trades the command touched, the levels it changed, as
the transaction sees them, so they match the committed state exactly) and returns.
The wire messages are built from that copy after the transaction commits, outside
the instrument's critical section, and handed to the process's hubs
(:mod:`bourse.trading.fanout`, which routes them to subscribers, and through Redis
to the other replicas); a rolled-back command publishes nothing, so no client ever
sees a fill that was rolled back.

No web framework here: the WebSocket endpoint that serves the feed to clients is
:mod:`bourse.trading.api.stream`.

Sequence numbers. Every committed command on an instrument publishes exactly one
``delta`` on its ``book`` channel with ``sequence`` (the instrument's sequence after
the command) and ``prev_sequence`` (before it). A client keeps the last sequence it
applied (the snapshot's, then each delta's): a delta whose ``prev_sequence`` equals it
is the next one; one whose ``sequence`` is not above it is old and is skipped; any
other is a gap, and the client subscribes again for a fresh snapshot. ``trade``
messages on the ``trades`` channel chain the same way from one trade's sequence to
the next (``prev_sequence`` is the instrument's previous trade, or null).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import format_amount
from bourse.trading import fanout, market_data
from bourse.trading.fanout import Message
from bourse.trading.instruments import format_price, format_quantity
from bourse.trading.models import Instrument, Order, OrderStatus, Trade

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_OUTBOX = "bourse.market_data.outbox"
_HOOKED = "bourse.market_data.hooked"
_Copied = TypeVar("_Copied", bound="DataclassInstance")


# -- What a command touched, copied inside its transaction --------------------------------------


@dataclass(frozen=True, slots=True)
class _Market:
    """The instrument as the command left it."""

    symbol: str
    price_scale: int
    base_scale: int
    quote_scale: int
    sequence: int


@dataclass(frozen=True, slots=True)
class _OrderState:
    id: int
    instrument: str
    client_order_id: str | None
    side: str
    kind: str
    price: int | None
    quantity: int
    filled_quantity: int
    status: OrderStatus
    cancel_reason: str | None
    user_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class _Fill:
    id: int
    instrument: str
    sequence: int
    price: int
    quantity: int
    taker_side: str
    created_at: datetime
    maker_order_id: int
    taker_order_id: int
    maker_user_id: uuid.UUID
    taker_user_id: uuid.UUID
    maker_fee: int
    taker_fee: int


@dataclass(frozen=True, slots=True)
class Command:
    """One committed command's part of the feed, in plain values (no ORM object, no session)."""

    market: _Market
    prev_sequence: int
    previous_trade_sequence: int | None  # the instrument's trade before the command's first one
    levels: tuple[tuple[str, market_data.Level], ...]  # (side, level) of each level it changed
    orders: tuple[_OrderState, ...]  # placed, cancelled, filled as a maker, cancelled by self-trade prevention
    trades: tuple[_Fill, ...]


def _copy(kind: type[_Copied], row: object) -> _Copied:
    """A frozen copy of the fields of ``row`` that ``kind`` names: plain values, no session behind them."""
    return kind(**{field.name: getattr(row, field.name) for field in fields(kind)})


def capture(
    session: Session, instrument: Instrument, prev_sequence: int, orders: Sequence[Order], trades: Sequence[Trade]
) -> Command:
    """What the messages of one command on ``instrument`` need, read in its transaction.

    ``orders`` are the orders the command placed or cancelled; the makers of
    ``trades`` and the resting orders self-trade prevention cancelled are found in
    the session. Levels are sent as absolute values, so naming a level that did not
    change is harmless.
    """
    symbol = instrument.symbol
    touched: dict[int, Order] = {order.id: order for order in orders}
    for trade in trades:
        if trade.maker_order_id in touched:
            continue  # a batch names every order it touched, makers included
        maker = session.get(Order, trade.maker_order_id)
        if maker is not None:
            touched[maker.id] = maker
    owners = {order.user_id for order in orders}
    for candidate in list(session.identity_map.values()):
        if (
            isinstance(candidate, Order)
            and candidate.instrument == symbol
            and candidate.cancel_reason == "self_trade"
            and candidate.user_id in owners
        ):
            touched[candidate.id] = candidate
    keys = {(order.side, order.price) for order in touched.values() if order.price is not None}
    bids, asks = market_data.levels(session, symbol, prices=keys)
    present = {("buy", level[0]): level for level in bids} | {("sell", level[0]): level for level in asks}
    ordered = sorted(keys, key=lambda key: (key[0], key[1]))
    changed = tuple((side, present.get((side, price), (price, 0, 0))) for side, price in ordered)
    previous = None
    if trades:
        previous = session.scalar(
            select(func.max(Trade.sequence)).where(Trade.instrument == symbol, Trade.sequence < trades[0].sequence)
        )
    market = _Market(symbol, instrument.price_scale, instrument.base_scale, instrument.quote_scale, instrument.sequence)
    return Command(
        market=market,
        prev_sequence=prev_sequence,
        previous_trade_sequence=previous,
        levels=changed,
        orders=tuple(_copy(_OrderState, order) for order in touched.values()),
        trades=tuple(_copy(_Fill, trade) for trade in trades),
    )


# -- Building the wire messages of a committed command (after commit) ----------------------------


def _order_wire(market: _Market, order: _OrderState) -> dict[str, Any]:
    return {
        "type": "order",
        "channel": "orders",
        "id": order.id,
        "instrument": order.instrument,
        "client_order_id": order.client_order_id,
        "side": order.side,
        "order_type": order.kind,
        "price": None if order.price is None else format_price(market, order.price),
        "quantity": format_quantity(market, order.quantity),
        "filled_quantity": format_quantity(market, order.filled_quantity),
        "status": order.status.value,
        "cancel_reason": order.cancel_reason,
        "sequence": market.sequence,
    }


def _fill_wire(market: _Market, trade: _Fill, *, maker: bool) -> dict[str, Any]:
    taker_side = trade.taker_side
    return {
        "type": "fill",
        "channel": "orders",
        "trade_id": trade.id,
        "instrument": trade.instrument,
        "order_id": trade.maker_order_id if maker else trade.taker_order_id,
        "side": ("sell" if taker_side == "buy" else "buy") if maker else taker_side,
        "liquidity": "maker" if maker else "taker",
        "price": format_price(market, trade.price),
        "quantity": format_quantity(market, trade.quantity),
        "fee": format_amount(trade.maker_fee if maker else trade.taker_fee, market.quote_scale),
        "sequence": trade.sequence,
    }


def command_messages(command: Command) -> list[Message]:
    """The public and private messages of one committed command, in publishing order."""
    market = command.market
    symbol = market.symbol
    messages: list[Message] = []
    previous = command.previous_trade_sequence
    for trade in command.trades:
        wire = market_data.trade_wire(market, trade)
        messages.append(
            (
                ("trades", symbol),
                {"type": "trade", "channel": "trades", "instrument": symbol, "prev_sequence": previous, **wire},
            )
        )
        previous = trade.sequence
    messages.append(
        (
            ("book", symbol),
            {
                "type": "delta",
                "channel": "book",
                "instrument": symbol,
                "sequence": market.sequence,
                "prev_sequence": command.prev_sequence,
                "changes": [[side, *market_data.level_wire(market, level)] for side, level in command.levels],
            },
        )
    )
    messages.extend((("orders", str(order.user_id)), _order_wire(market, order)) for order in command.orders)
    for trade in command.trades:
        messages.append((("orders", str(trade.maker_user_id)), _fill_wire(market, trade, maker=True)))
        messages.append((("orders", str(trade.taker_user_id)), _fill_wire(market, trade, maker=False)))
    return messages


def publish_after_commit(
    session: Session,
    instrument: Instrument,
    *,
    prev_sequence: int,
    orders: Sequence[Order],
    trades: Sequence[Trade] = (),
) -> None:
    """Note the command in the transaction; its messages are built and sent when it commits."""
    session.flush()
    command = capture(session, instrument, prev_sequence, orders, trades)
    if not session.info.get(_HOOKED):
        event.listen(session, "after_commit", _deliver_outbox)
        event.listen(session, "after_rollback", _drop_outbox)
        session.info[_HOOKED] = True
    session.info.setdefault(_OUTBOX, []).append(command)


def _deliver_outbox(session: Session) -> None:
    commands: list[Command] = session.info.pop(_OUTBOX, [])
    if not commands:
        return
    hubs = fanout.live_hubs()
    if not hubs:
        return  # no API in this process (a worker, a benchmark): nobody to build them for
    messages = [message for command in commands for message in command_messages(command)]
    published: set[tuple[str, str]] = set()
    for hub in hubs:
        if hub.relay is None:
            hub.submit(messages)
        elif hub.relay.identity not in published:
            # Hubs sharing one Redis and prefix (apps in one process) hear it back once each.
            published.add(hub.relay.identity)
            hub.relay.publish(messages)


def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)
