"""Accepting orders and cancels for the matcher: the API's half of order entry.

See docs/decisions/0027-matcher-per-instrument-shard.md. Placing an order is one short
transaction with no instrument lock: the order is checked against the instrument as
read, its funds are held (which locks its owner's two accounts), and it is inserted
``pending``; the matcher of its instrument's shard (:mod:`bourse.trading.matcher`) is
woken after the commit, sequences it, matches it and settles its fills. A cancel is a
mark on the order row, which the matcher carries out. Services never commit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bourse.assets.amounts import parse_amount
from bourse.assets.rounding import BPS
from bourse.idempotency.errors import IdempotencyInProgress, IdempotencyKeyReused
from bourse.ledger.holds import place_hold
from bourse.ledger.posting import Context
from bourse.logging import get_logger
from bourse.settings import Settings
from bourse.sqltypes import utcnow
from bourse.trading import signals
from bourse.trading.engine.vocabulary import (
    OrderKind,
    SelfTradePrevention,
    Side,
    TimeInForce,
)
from bourse.trading.errors import InvalidOrder, OrderNotOpen
from bourse.trading.instruments import (
    check_open,
    check_price_band,
    get_instrument,
    notional,
    parse_price,
    parse_quantity,
)
from bourse.trading.models import (
    DONE_STATUSES,
    LIVE_STATUSES,
    MAX_CLIENT_ORDER_ID,
    Instrument,
    Order,
    OrderStatus,
)
from bourse.trading.queries import get_order

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


# -- Accepting orders for the matcher -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Accepted:
    """An order as :func:`accept_order` left it; ``replayed`` if it was placed before (same key)."""

    order: Order
    replayed: bool


def _hold_of(instrument: Instrument, terms: _Terms, fees: Fees) -> tuple[str, int]:
    """The asset and amount an order's hold reserves (see :func:`buy_hold`)."""
    if terms.side is Side.SELL:
        asset, amount = instrument.base_asset, terms.quantity
    elif terms.quote_budget is not None:
        asset, amount = instrument.quote_asset, terms.quote_budget
        if terms.quote_budget * BPS // (BPS + fees.taker_bps) <= 0:
            raise InvalidOrder("The quote_budget cannot pay for anything once the fee is reserved")
    else:
        asset, amount = instrument.quote_asset, buy_hold(instrument, terms.price or 0, terms.quantity, fees)
    if amount <= 0:
        raise InvalidOrder("The order is worth less than one minor unit of the quote asset")
    return asset, amount


def _placed_before(
    session: Session,
    user_id: uuid.UUID,
    idempotency_key: str | None,
    request_fingerprint: str | None,
    client_order_id: str | None,
) -> Order | None:
    """The order this request placed already: same Idempotency-Key (and the same request), or client id."""
    if idempotency_key is not None:
        existing = session.scalar(
            select(Order).where(Order.user_id == user_id, Order.idempotency_key == idempotency_key)
        )
        if existing is not None:
            if existing.request_fingerprint != request_fingerprint:
                raise IdempotencyKeyReused("This Idempotency-Key was used for a different order")
            return existing
    if client_order_id is not None:
        return session.scalar(select(Order).where(Order.user_id == user_id, Order.client_order_id == client_order_id))
    return None


def accept_order(
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
    idempotency_key: str | None = None,
    request_fingerprint: str | None = None,
    context: Context,
    fees: Fees = DEFAULT_FEES,
) -> Accepted:
    """Accept an order for the matcher: hold its funds and insert it ``pending``.

    No instrument lock: the order is checked against the instrument as read (the
    matcher checks it again when it sequences it), its owner's accounts are locked by
    the hold, and the shard's matcher is woken after the commit
    (:func:`bourse.trading.signals.announce_commands`). The same Idempotency-Key with
    the same request, or the same ``client_order_id``, finds the order already placed,
    holding nothing more; a key reused for another request is refused.
    """
    if client_order_id is not None and not (
        isinstance(client_order_id, str) and 1 <= len(client_order_id) <= MAX_CLIENT_ORDER_ID
    ):
        raise InvalidOrder(f"client_order_id is 1 to {MAX_CLIENT_ORDER_ID} characters")
    instrument = get_instrument(session, symbol)
    existing = _placed_before(session, user_id, idempotency_key, request_fingerprint, client_order_id)
    if existing is not None:
        return Accepted(existing, replayed=True)
    check_open(instrument)
    terms = _terms(instrument, side, kind, tif, stp, price_text, quantity_text, quote_budget_text)
    asset, amount = _hold_of(instrument, terms, fees)
    hold = place_hold(
        session,
        user_id=user_id,
        asset=asset,
        amount=amount,
        reference=f"order:{symbol}",
        context=Context(
            actor=context.actor, idempotency_key=f"order:{symbol}:hold:{uuid.uuid4()}", request_id=context.request_id
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
        status=OrderStatus.pending,
        maker_bps=fees.maker_bps,
        taker_bps=fees.taker_bps,
        idempotency_key=idempotency_key,
        request_fingerprint=request_fingerprint,
    )
    session.add(order)
    try:
        session.flush()
    except IntegrityError as exc:
        # The same key or client order id, in a request that has not committed yet (or
        # just did): the client retries and gets that order.
        raise IdempotencyInProgress("An order with this key is being placed; retry shortly") from exc
    signals.announce_commands(session)
    log.info("order_accepted", order_id=order.id, symbol=symbol, side=order.side, kind=order.kind)
    return Accepted(order, replayed=False)


def request_cancel(session: Session, *, user_id: uuid.UUID, order_id: int) -> Order:
    """Ask the matcher to cancel one of the user's live orders; 409 ``order_not_open`` if it is done.

    The request is the order's ``cancel_requested_at``; asking twice is asking once.
    Waits for the matcher's batch if it is settling the order (its row lock), so the
    answer is about the order as the matcher left it.
    """
    found = get_order(session, order_id, user_id=user_id)
    order = session.scalar(
        select(Order).where(Order.id == found.id).with_for_update().execution_options(populate_existing=True)
    )
    if order is None or order.status in DONE_STATUSES:
        status = found.status.value if order is None else order.status.value
        raise OrderNotOpen(f"Order {order_id} is {status}; there is nothing to cancel")
    if order.cancel_requested_at is None:
        order.cancel_requested_at = utcnow()
        session.flush()
        signals.announce_commands(session)
    return order


def request_cancel_all(session: Session, *, user_id: uuid.UUID, symbol: str | None = None) -> list[Order]:
    """Ask the matcher to cancel every live order of the user (on one instrument, or everywhere)."""
    query = (
        select(Order)
        .where(Order.user_id == user_id, Order.status.in_(LIVE_STATUSES))
        .order_by(Order.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if symbol is not None:
        get_instrument(session, symbol)  # 404 for an unknown instrument, even with nothing open
        query = query.where(Order.instrument == symbol)
    orders = list(session.scalars(query))
    now = utcnow()
    for order in orders:
        if order.cancel_requested_at is None:
            order.cancel_requested_at = now
    session.flush()
    if orders:
        signals.announce_commands(session)
    return orders
