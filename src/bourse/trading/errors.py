"""The trading domain's refusals, each with its own stable code.

Order-facing refusals (``price_off_tick`` and the others below it) are what a
client sees when an order does not fit its instrument's rules. Amount syntax
errors come from :mod:`bourse.assets.amounts` (``amount_invalid``,
``amount_precision``, ``amount_not_positive``, ...).
"""

from __future__ import annotations

from bourse.errors import Conflict, NotFound, TemporarilyUnavailable, Unprocessable


class UnknownInstrument(NotFound):
    code = "unknown_instrument"


class TradeNotFound(NotFound):
    """No such trade (a bust, a commission accrual or clawback names one)."""

    code = "trade_not_found"


class InstrumentExists(Conflict):
    code = "instrument_exists"


class InstrumentImmutableField(Conflict):
    """``price_scale`` and the assets of an instrument can never change."""

    code = "instrument_immutable_field"


class InvalidInstrument(Unprocessable):
    """Base class of the refusals of an instrument's definition; all are 422."""

    code = "invalid_instrument"


class InvalidSymbol(InvalidInstrument):
    code = "instrument_symbol_invalid"


class SameAssets(InvalidInstrument):
    code = "instrument_same_assets"


class InvalidPriceScale(InvalidInstrument):
    code = "instrument_price_scale_invalid"


class InvalidQuantityLimits(InvalidInstrument):
    code = "instrument_quantity_limits_invalid"


class InvalidPriceBand(InvalidInstrument):
    code = "instrument_price_band_invalid"


class ReasonRequired(Unprocessable):
    code = "reason_required"


# -- Orders against an instrument ---------------------------------------------------------


class OrderRuleError(Unprocessable):
    """Base class of an order's refusals against its instrument's rules; all are 422."""

    code = "order_invalid"


class PriceOffTick(OrderRuleError):
    code = "price_off_tick"


class QuantityOffLot(OrderRuleError):
    code = "quantity_off_lot"


class QuantityTooSmall(OrderRuleError):
    code = "quantity_too_small"


class QuantityTooLarge(OrderRuleError):
    code = "quantity_too_large"


class PriceOutsideBand(OrderRuleError):
    code = "price_outside_band"


class MarketHalted(Conflict):
    code = "market_halted"


class InvalidOrder(Unprocessable):
    """A bad combination of type, time in force, price and budget."""

    code = "invalid_order"


class OrderNotFound(NotFound):
    code = "order_not_found"


class OrderNotOpen(Conflict):
    """The order is filled, cancelled or rejected: there is nothing left to cancel."""

    code = "order_not_open"


# -- Busts --------------------------------------------------------------------------------


class TradeAlreadyBusted(Conflict):
    code = "trade_already_busted"


class BustInsufficientFunds(Conflict):
    """A user no longer has what the fill gave them; an operator adjusts by hand."""

    code = "bust_insufficient_funds"


class InvalidBustReason(Unprocessable):
    code = "bust_reason_invalid"


# -- Market data --------------------------------------------------------------------------


class InvalidInterval(Unprocessable):
    code = "invalid_interval"


class BookBusy(TemporarilyUnavailable):
    code = "book_busy"
