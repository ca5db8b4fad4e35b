"""Instruments: looking them up, listing, halting, and the rules an order must meet.

Units (see :mod:`bourse.trading.models`):

- a **price** is an integer at the instrument's ``price_scale``: units of
  ``10**-price_scale`` quote per ONE whole base unit;
- a **quantity** is an integer of the base asset's minor units;
- a **notional** is an integer of the quote asset's minor units.

The matching engine (:mod:`bourse.trading.engine.book`) counts in ticks and lots
instead; :func:`price_to_ticks`, :func:`quantity_to_lots` and :func:`book_notional`
translate, so the engine stays free of scales.

An order's price and quantity arrive as decimal strings and go through
:func:`parse_price` and :func:`parse_quantity`, then :func:`check_price_band`
and :func:`check_open`. Each refusal has its own code (see
:mod:`bourse.trading.errors`). Creating and changing instruments takes decimal
strings too, because only this module knows which scale each one is read at.

Nothing here commits: the caller's transaction boundary does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.assets.amounts import MAX_SCALE, format_amount, parse_amount
from bourse.assets.service import get_asset
from bourse.logging import get_logger
from bourse.trading.errors import (
    InstrumentExists,
    InstrumentImmutableField,
    InvalidPriceBand,
    InvalidPriceScale,
    InvalidQuantityLimits,
    InvalidSymbol,
    MarketHalted,
    PriceOffTick,
    PriceOutsideBand,
    QuantityOffLot,
    QuantityTooLarge,
    QuantityTooSmall,
    ReasonRequired,
    SameAssets,
    UnknownInstrument,
)
from bourse.trading.models import MAX_BAND_BPS, SYMBOL_PATTERN, Instrument, InstrumentStatus

log = get_logger("bourse.trading.instruments")

_SYMBOL = re.compile(SYMBOL_PATTERN)
BPS = 10_000
MIN_REASON = 3
MAX_REASON = 500


def _valid_symbol(symbol: object) -> bool:
    return isinstance(symbol, str) and _SYMBOL.fullmatch(symbol) is not None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pow10(exponent: int) -> int:
    result: int = 10**exponent
    return result


# -- Reading and locking ------------------------------------------------------------------


def get_instrument(session: Session, symbol: str) -> Instrument:
    """The instrument ``symbol`` (e.g. ``BTC-USD``), or 404 ``unknown_instrument``."""
    instrument = session.get(Instrument, symbol) if _valid_symbol(symbol) else None
    if instrument is None:
        raise UnknownInstrument(f"There is no instrument {symbol!r}")
    return instrument


def list_instruments(session: Session, *, status: InstrumentStatus | None = None) -> list[Instrument]:
    """Every instrument by symbol, or only those in ``status``."""
    query = select(Instrument).order_by(Instrument.symbol)
    if status is not None:
        query = query.where(Instrument.status == status)
    return list(session.scalars(query))


def lock_instrument(session: Session, symbol: str) -> Instrument:
    """The instrument, locked until the transaction ends (``SELECT ... FOR NO KEY UPDATE``).

    Whatever changes an instrument's state (its status, ``last_price``,
    ``sequence``) takes this lock first, so each instrument has one writer at a
    time (the matcher's batch, a halt, a bust) and a halt lands between two
    batches, never inside one. Only the instrument row is locked (``OF
    instruments``), never the asset rows joined to it, so instruments sharing a
    quote asset do not wait for each other. ``NO KEY``: nobody changes a symbol,
    and the weaker lock does not conflict with the ``FOR KEY SHARE`` that
    inserting an order takes through its foreign key, so accepting an order never
    waits for the matcher (which may be waiting for the accepting user's accounts:
    that was a deadlock).
    The row is re-read even if the session already holds it, so the caller sees
    the state the previous lock holder committed. On SQLite every write
    transaction already holds the database's single write lock.
    """
    if not _valid_symbol(symbol):
        raise UnknownInstrument(f"There is no instrument {symbol!r}")
    query = (
        select(Instrument)
        .where(Instrument.symbol == symbol)
        .with_for_update(of=Instrument, key_share=True)
        .execution_options(populate_existing=True)
    )
    instrument = session.scalars(query).one_or_none()
    if instrument is None:
        raise UnknownInstrument(f"There is no instrument {symbol!r}")
    return instrument


# -- Creating and changing ----------------------------------------------------------------


def _check_price_scale(price_scale: object) -> int:
    if isinstance(price_scale, bool) or not isinstance(price_scale, int) or not 0 <= price_scale <= MAX_SCALE:
        raise InvalidPriceScale(f"price_scale is a whole number from 0 to {MAX_SCALE}, not {price_scale!r}")
    return price_scale


def _check_band(price_band_bps: object) -> int:
    if (
        isinstance(price_band_bps, bool)
        or not isinstance(price_band_bps, int)
        or not 1 <= price_band_bps <= MAX_BAND_BPS
    ):
        raise InvalidPriceBand(
            f"price_band_bps is a whole number of basis points from 1 to {MAX_BAND_BPS}, not {price_band_bps!r}"
        )
    return price_band_bps


def _check_limits(lot_size: int, min_quantity: int, max_quantity: int, base_scale: int) -> None:
    def show(quantity: int) -> str:
        return format_amount(quantity, base_scale)

    if min_quantity % lot_size:
        raise InvalidQuantityLimits(f"min_quantity {show(min_quantity)} is not a multiple of the lot {show(lot_size)}")
    if max_quantity % lot_size:
        raise InvalidQuantityLimits(f"max_quantity {show(max_quantity)} is not a multiple of the lot {show(lot_size)}")
    if min_quantity > max_quantity:
        raise InvalidQuantityLimits(f"min_quantity {show(min_quantity)} is above max_quantity {show(max_quantity)}")


def create_instrument(
    session: Session,
    *,
    symbol: str,
    base_asset: str,
    quote_asset: str,
    price_scale: int,
    tick_size: str,
    lot_size: str,
    min_quantity: str,
    max_quantity: str,
    price_band_bps: int,
) -> Instrument:
    """List a new market, open for trading.

    ``tick_size`` is a decimal string in quote units at ``price_scale`` (``"0.01"``);
    ``lot_size``, ``min_quantity`` and ``max_quantity`` are decimal strings of the
    base asset (``"0.0001"``). The symbol must be ``BASE-QUOTE``, so a symbol
    always says what it trades. Both assets must exist and be active.
    """
    if not _valid_symbol(symbol):
        raise InvalidSymbol(f"A symbol is BASE-QUOTE, each 2 to 12 upper-case letters and digits; not {symbol!r}")
    base = get_asset(session, base_asset, for_new_money=True)
    quote = get_asset(session, quote_asset, for_new_money=True)
    if base.code == quote.code:
        raise SameAssets(f"An instrument trades two different assets, not {base.code} for {quote.code}")
    if symbol != f"{base.code}-{quote.code}":
        raise InvalidSymbol(
            f"The symbol of {base.code} priced in {quote.code} is {base.code}-{quote.code}, not {symbol}"
        )
    scale = _check_price_scale(price_scale)
    tick = parse_amount(tick_size, scale)
    lot = parse_amount(lot_size, base.scale)
    smallest = parse_amount(min_quantity, base.scale)
    largest = parse_amount(max_quantity, base.scale)
    _check_limits(lot, smallest, largest, base.scale)
    band = _check_band(price_band_bps)
    if session.get(Instrument, symbol) is not None:
        raise InstrumentExists(f"The instrument {symbol} already exists")
    instrument = Instrument(
        symbol=symbol,
        base_asset=base.code,
        quote_asset=quote.code,
        price_scale=scale,
        tick_size=tick,
        lot_size=lot,
        min_quantity=smallest,
        max_quantity=largest,
        price_band_bps=band,
        status=InstrumentStatus.open,
        last_price=None,
        sequence=0,
    )
    session.add(instrument)
    session.flush()
    session.refresh(instrument)  # loads base and quote, so the instrument is usable once detached
    log.info("instrument_created", symbol=symbol, price_scale=scale, tick_size=tick, lot_size=lot)
    return instrument


def update_instrument(
    session: Session,
    symbol: str,
    *,
    tick_size: str | None = None,
    lot_size: str | None = None,
    min_quantity: str | None = None,
    max_quantity: str | None = None,
    price_band_bps: int | None = None,
    price_scale: int | None = None,
    base_asset: str | None = None,
    quote_asset: str | None = None,
) -> Instrument:
    """Change an instrument's tick, lot, quantity limits or price band (None keeps a value).

    The new values are checked together, so a new lot must divide the limits in
    force after the change. ``price_scale``, ``base_asset`` and ``quote_asset``
    are accepted only to refuse a change to them (409
    ``instrument_immutable_field``): the same value as now is not a change.
    Resting orders keep their price and quantity; the new rules apply to new orders.
    """
    instrument = lock_instrument(session, symbol)
    for field, wanted, current in (
        ("price_scale", price_scale, instrument.price_scale),
        ("base_asset", base_asset, instrument.base_asset),
        ("quote_asset", quote_asset, instrument.quote_asset),
    ):
        if wanted is not None and wanted != current:
            raise InstrumentImmutableField(
                f"{field} of {symbol} can never change (it is {current!r}); list a new instrument instead"
            )
    base_scale = instrument.base_scale
    tick = instrument.tick_size if tick_size is None else parse_amount(tick_size, instrument.price_scale)
    lot = instrument.lot_size if lot_size is None else parse_amount(lot_size, base_scale)
    smallest = instrument.min_quantity if min_quantity is None else parse_amount(min_quantity, base_scale)
    largest = instrument.max_quantity if max_quantity is None else parse_amount(max_quantity, base_scale)
    _check_limits(lot, smallest, largest, base_scale)
    band = instrument.price_band_bps if price_band_bps is None else _check_band(price_band_bps)
    instrument.tick_size = tick
    instrument.lot_size = lot
    instrument.min_quantity = smallest
    instrument.max_quantity = largest
    instrument.price_band_bps = band
    session.flush()
    log.info(
        "instrument_updated",
        symbol=symbol,
        tick_size=tick,
        lot_size=lot,
        min_quantity=smallest,
        max_quantity=largest,
        price_band_bps=band,
    )
    return instrument


def _set_status(session: Session, symbol: str, status: InstrumentStatus, reason: str, actor: str) -> Instrument:
    reason = reason.strip() if isinstance(reason, str) else ""
    if not MIN_REASON <= len(reason) <= MAX_REASON:
        raise ReasonRequired(f"Say why, in {MIN_REASON} to {MAX_REASON} characters")
    if not isinstance(actor, str) or not actor:
        raise ValueError("a status change needs the actor who made it")
    instrument = lock_instrument(session, symbol)
    previous = instrument.status
    if previous is not status:
        instrument.status = status
        session.flush()
    log.warning(
        "instrument_halted" if status is InstrumentStatus.halted else "instrument_resumed",
        symbol=symbol,
        actor=actor,
        reason=reason,
        previous_status=previous.value,
        changed=previous is not status,
    )
    return instrument


def halt(session: Session, symbol: str, reason: str, actor: str) -> Instrument:
    """Stop trading ``symbol``: new orders get 409 ``market_halted``. Idempotent.

    Halting a halted market changes nothing and returns it. Who and why are
    logged (``instrument_halted``) whether or not anything changed.
    """
    return _set_status(session, symbol, InstrumentStatus.halted, reason, actor)


def resume(session: Session, symbol: str, reason: str, actor: str) -> Instrument:
    """Open a halted market again. Idempotent, like :func:`halt`."""
    return _set_status(session, symbol, InstrumentStatus.open, reason, actor)


# -- An order's price and quantity --------------------------------------------------------


def parse_price(instrument: Instrument, text: str) -> int:
    """A limit price from its decimal string (quote per whole base), at ``price_scale``.

    Refuses what :func:`~bourse.assets.amounts.parse_amount` refuses (``amount_*``
    codes: too many decimals, zero, negative, malformed), then 422
    ``price_off_tick`` unless the price is a whole number of ticks.
    """
    price = parse_amount(text, instrument.price_scale)
    if price % instrument.tick_size:
        raise PriceOffTick(
            f"{text} is not a multiple of the tick {format_price(instrument, instrument.tick_size)} "
            f"on {instrument.symbol}"
        )
    return price


def parse_quantity(instrument: Instrument, text: str) -> int:
    """A quantity from its decimal string, in the base asset's minor units.

    Refuses the ``amount_*`` codes of :func:`~bourse.assets.amounts.parse_amount`
    (zero and negative quantities get ``amount_not_positive``), then 422
    ``quantity_off_lot``, ``quantity_too_small`` or ``quantity_too_large``.
    """
    quantity = parse_amount(text, instrument.base_scale)
    if quantity % instrument.lot_size:
        raise QuantityOffLot(
            f"{text} is not a multiple of the lot {format_quantity(instrument, instrument.lot_size)} "
            f"on {instrument.symbol}"
        )
    if quantity < instrument.min_quantity:
        raise QuantityTooSmall(
            f"{text} is below the minimum {format_quantity(instrument, instrument.min_quantity)} on {instrument.symbol}"
        )
    if quantity > instrument.max_quantity:
        raise QuantityTooLarge(
            f"{text} is above the maximum {format_quantity(instrument, instrument.max_quantity)} on {instrument.symbol}"
        )
    return quantity


def check_price_band(instrument: Instrument, price: int) -> None:
    """422 ``price_outside_band`` if ``price`` is more than ``price_band_bps`` from ``last_price``.

    The band is inclusive and computed exactly: ``|price - last| / last <= band / 10_000``.
    Before the first trade (``last_price`` NULL) there is no reference, so any price passes.
    """
    last = instrument.last_price
    if last is None:
        return
    if abs(price - last) * BPS > instrument.price_band_bps * last:
        raise PriceOutsideBand(
            f"{format_price(instrument, price)} is more than {instrument.price_band_bps} bps from the last price "
            f"{format_price(instrument, last)} on {instrument.symbol}"
        )


def check_open(instrument: Instrument) -> None:
    """409 ``market_halted`` unless the instrument is open for trading."""
    if instrument.status is not InstrumentStatus.open:
        raise MarketHalted(f"Trading on {instrument.symbol} is halted")


def notional(
    instrument: Instrument, price: int, quantity: int, base_scale: int, quote_scale: int, *, round_up: bool = False
) -> int:
    """What ``quantity`` at ``price`` is worth, in the quote asset's minor units.

    ``price * 10**-price_scale`` quote per whole base, times ``quantity *
    10**-base_scale`` base, is ``price * quantity / 10**(price_scale + base_scale)``
    quote, so ``price * quantity * 10**quote_scale / 10**(price_scale + base_scale)``
    minor units: exact integer arithmetic, rounded once. The default rounds down
    (what a seller receives); ``round_up=True`` rounds up (what a buyer must hold),
    so a buyer is never short by a fraction of a minor unit.
    """
    if not (_is_int(price) and _is_int(quantity)) or price < 0 or quantity < 0:
        raise ValueError(f"price and quantity are non-negative integers, not {price!r} and {quantity!r}")
    numerator = price * quantity * _pow10(quote_scale)
    denominator = _pow10(instrument.price_scale + base_scale)
    if round_up:
        return -(-numerator // denominator)
    return numerator // denominator


# -- The matching engine's units ----------------------------------------------------------


def price_to_ticks(instrument: Instrument, price: int) -> int:
    """A price (at ``price_scale``) as the book's whole number of ticks."""
    ticks, off = divmod(price, instrument.tick_size)
    if off:
        raise PriceOffTick(f"{format_price(instrument, price)} is not a whole number of ticks on {instrument.symbol}")
    return ticks


def ticks_to_price(instrument: Instrument, ticks: int) -> int:
    """The book's ticks as a price at ``price_scale``."""
    return ticks * instrument.tick_size


def quantity_to_lots(instrument: Instrument, quantity: int) -> int:
    """A quantity (base minor units) as the book's whole number of lots."""
    lots, off = divmod(quantity, instrument.lot_size)
    if off:
        raise QuantityOffLot(
            f"{format_quantity(instrument, quantity)} is not a whole number of lots on {instrument.symbol}"
        )
    return lots


def lots_to_quantity(instrument: Instrument, lots: int) -> int:
    """The book's lots as base minor units."""
    return lots * instrument.lot_size


def book_notional(instrument: Instrument, *, round_up: bool = False) -> Callable[[int, int], int]:
    """The ``notional`` callable for :class:`bourse.trading.engine.book.Book`: (ticks, lots) to quote minor units.

    It reads the tick, lot and scales now, so a later change to the instrument
    does not change the book it was given to. Floor and ceiling of a product of
    non-negative numbers are non-decreasing in both, as the book requires.
    """
    tick, lot, price_scale = instrument.tick_size, instrument.lot_size, instrument.price_scale
    base_scale, quote_scale = instrument.base_scale, instrument.quote_scale
    denominator = _pow10(price_scale + base_scale)
    factor = tick * lot * _pow10(quote_scale)

    def value(ticks: int, lots: int) -> int:
        numerator = ticks * lots * factor
        return -(-numerator // denominator) if round_up else numerator // denominator

    return value


# -- Formatting ---------------------------------------------------------------------------


class Scaled(Protocol):
    """What formatting reads of an instrument: an :class:`Instrument`, or the market-data
    feed's copy of one taken before commit (:mod:`bourse.trading.feed`)."""

    @property
    def price_scale(self) -> int: ...

    @property
    def base_scale(self) -> int: ...


def format_price(instrument: Scaled, price: int) -> str:
    """A price as its wire string, with exactly ``price_scale`` decimals."""
    return format_amount(price, instrument.price_scale)


def format_quantity(instrument: Scaled, quantity: int) -> str:
    """A quantity as its wire string, with exactly the base asset's decimals."""
    return format_amount(quantity, instrument.base_scale)
