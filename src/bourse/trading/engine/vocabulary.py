"""The matching engine's vocabulary: a ``NewOrder`` in, events out, resting-order views.

Everything is an integer: prices in ticks, quantities in lots, budgets in the
quote asset's minor units. The instrument layer converts to and from decimals;
the engine never sees a float, so replaying the same commands always gives the
same events.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderKind(StrEnum):
    LIMIT = "limit"
    MARKET = "market"


class TimeInForce(StrEnum):
    """GTC rests what does not fill; IOC cancels it; FOK fills everything or nothing."""

    GTC = "gtc"
    IOC = "ioc"
    FOK = "fok"


class SelfTradePrevention(StrEnum):
    """What happens when an incoming order meets a resting order of the same owner.

    The incoming (taker) order's mode decides, as on most venues: the owner chooses
    when acting, and a resting order's mode could not be changed without a cancel.
    """

    NONE = "none"  # trade with yourself like with anyone else
    CANCEL_NEWEST = "cancel_newest"  # cancel the incoming order's remainder; the resting order stays
    CANCEL_OLDEST = "cancel_oldest"  # cancel the resting order and keep matching
    CANCEL_BOTH = "cancel_both"  # cancel both


class CancelReason(StrEnum):
    USER = "user"
    IOC_REMAINDER = "ioc_remainder"  # a limit IOC's unfilled remainder
    FOK_UNFILLED = "fok_unfilled"  # a FOK that could not fill completely, so nothing happened
    SELF_TRADE = "self_trade"  # self-trade prevention cancelled it (taker or maker)
    BUDGET_EXHAUSTED = "budget_exhausted"  # a market buy's quote budget cannot pay for one more lot
    NO_LIQUIDITY = "no_liquidity"  # a market order's remainder: nothing left to trade against


class RejectReason(StrEnum):
    DUPLICATE_ORDER_ID = "duplicate_order_id"  # an order with this id is resting
    ORDER_ID_NOT_INCREASING = "order_id_not_increasing"  # ids must grow in arrival order
    INVALID_SIDE = "invalid_side"
    INVALID_KIND = "invalid_kind"
    INVALID_QUANTITY = "invalid_quantity"  # not a positive integer
    MISSING_PRICE = "missing_price"  # a limit order without a price
    INVALID_PRICE = "invalid_price"  # not a positive integer
    PRICE_ON_MARKET_ORDER = "price_on_market_order"
    INVALID_TIME_IN_FORCE = "invalid_time_in_force"  # e.g. a market order with GTC
    QUOTE_BUDGET_NOT_ALLOWED = "quote_budget_not_allowed"  # only market buys have a budget
    INVALID_QUOTE_BUDGET = "invalid_quote_budget"  # not a positive integer
    INVALID_SELF_TRADE_PREVENTION = "invalid_self_trade_prevention"
    UNKNOWN_ORDER = "unknown_order"  # cancel of an order that is not resting


@dataclass(frozen=True, slots=True)
class NewOrder:
    """A command to trade, as the book receives it (the ``orders`` row is :class:`bourse.trading.models.Order`).

    ``order_id`` is assigned by the caller, increasing in arrival order.

    ``tif`` None means GTC for a limit order and IOC for a market order; ``stp``
    None means the book's default. ``quote_budget`` caps what a market buy spends,
    in the quote asset's minor units, as measured by the book's ``notional``.
    """

    order_id: int
    owner: str
    side: Side
    kind: OrderKind
    price: int | None
    quantity: int
    tif: TimeInForce | None = None
    quote_budget: int | None = None
    stp: SelfTradePrevention | None = None


def limit_order(
    order_id: int,
    owner: str,
    side: Side,
    price: int,
    quantity: int,
    *,
    tif: TimeInForce = TimeInForce.GTC,
    stp: SelfTradePrevention | None = None,
) -> NewOrder:
    """A limit order; spelled out so call sites cannot swap price and quantity."""
    return NewOrder(order_id, owner, side, OrderKind.LIMIT, price, quantity, tif, None, stp)


def market_order(
    order_id: int,
    owner: str,
    side: Side,
    quantity: int,
    *,
    tif: TimeInForce = TimeInForce.IOC,
    quote_budget: int | None = None,
    stp: SelfTradePrevention | None = None,
) -> NewOrder:
    """A market order (IOC or FOK); buys may also be capped by ``quote_budget``."""
    return NewOrder(order_id, owner, side, OrderKind.MARKET, None, quantity, tif, quote_budget, stp)


# --- Events: what the book did, numbered by ``sequence`` (one per event, per book) ---------


@dataclass(frozen=True, slots=True)
class Accepted:
    """The order was valid; what happened to it follows."""

    order_id: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Fill:
    """A trade, always at the maker's (resting order's) price."""

    maker_id: int
    taker_id: int
    maker_owner: str
    taker_owner: str
    price: int
    quantity: int
    taker_side: Side
    sequence: int


@dataclass(frozen=True, slots=True)
class Rested:
    """The order's unfilled ``remaining`` quantity now rests in the book."""

    order_id: int
    remaining: int
    sequence: int


@dataclass(frozen=True, slots=True)
class Cancelled:
    """``remaining`` lots of the order will never trade (a resting order, or an incoming one's remainder)."""

    order_id: int
    remaining: int
    reason: CancelReason
    sequence: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """An invalid order: the book did nothing else."""

    order_id: int
    reason: RejectReason
    sequence: int


@dataclass(frozen=True, slots=True)
class CancelRejected:
    """A cancel of an order that is not resting (unknown, filled or already cancelled)."""

    order_id: int
    reason: RejectReason
    sequence: int


Event = Accepted | Fill | Rested | Cancelled | Rejected | CancelRejected


@dataclass(frozen=True, slots=True)
class RestingOrder:
    """A resting limit order as the book holds it: ``quantity`` as placed, ``remaining`` unfilled."""

    order_id: int
    owner: str
    side: Side
    price: int
    quantity: int
    remaining: int


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    """Every resting order, each side best price first and FIFO within a price."""

    bids: tuple[RestingOrder, ...]
    asks: tuple[RestingOrder, ...]
