"""The instruments table: the markets Bourse trades, and the rules of each.

Every number is an integer. A price is counted in units of ``10**-price_scale``
of the quote asset per ONE whole unit of the base asset (BTC-USD at
``price_scale`` 2: ``6500012`` is USD 65,000.12 per BTC). Quantities are counted
in the base asset's minor units (``10_000`` is 0.0001 BTC). The matching engine
works in ticks and lots; :mod:`bourse.trading.instruments` converts.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Integer, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bourse.assets.amounts import MAX_SCALE
from bourse.assets.models import Asset
from bourse.db import Base
from bourse.sqltypes import StrEnumType, UTCDateTime, enum_values, utcnow

SYMBOL_PATTERN = r"[A-Z0-9]{2,12}-[A-Z0-9]{2,12}"
MAX_SYMBOL = 25
MAX_BAND_BPS = 10_000  # 100%: a band wider than the price itself would not limit anything


class InstrumentStatus(StrEnum):
    open = "open"  # orders are accepted and matched
    halted = "halted"  # operators stopped trading: new orders are refused with market_halted


# SQLite has no regular expressions, so the symbol's shape is spelled with GLOB
# and string arithmetic there; both express SYMBOL_PATTERN exactly.
_SYMBOL_CHECK_POSTGRESQL = f"symbol ~ '^{SYMBOL_PATTERN}$'"
_SYMBOL_CHECK_SQLITE = (
    "symbol NOT GLOB '*[^A-Z0-9-]*'"
    " AND length(symbol) - length(replace(symbol, '-', '')) = 1"
    " AND instr(symbol, '-') BETWEEN 3 AND 13"
    " AND length(symbol) - instr(symbol, '-') BETWEEN 2 AND 12"
)


class Instrument(Base):
    """A market: one base asset priced in one quote asset, e.g. BTC-USD.

    ``price_scale`` and the two assets never change once the instrument exists:
    stored prices, resting orders and trades would silently change meaning.
    ``tick_size``, ``lot_size``, the quantity limits and the price band may be
    changed by an admin; they apply to new orders.

    ``sequence`` is the per-instrument sequence number of market data: the one
    writer of an instrument (which holds :func:`bourse.trading.instruments.lock_instrument`)
    advances it, so clients can detect gaps.
    """

    __tablename__ = "instruments"
    __table_args__ = (
        CheckConstraint(_SYMBOL_CHECK_POSTGRESQL, name="symbol_format").ddl_if(dialect="postgresql"),
        CheckConstraint(_SYMBOL_CHECK_SQLITE, name="symbol_format").ddl_if(dialect="sqlite"),
        CheckConstraint("symbol = base_asset || '-' || quote_asset", name="symbol_names_assets"),
        CheckConstraint("base_asset <> quote_asset", name="assets_differ"),
        CheckConstraint(f"price_scale >= 0 AND price_scale <= {MAX_SCALE}", name="price_scale_range"),
        CheckConstraint("tick_size > 0", name="tick_size_positive"),
        CheckConstraint("lot_size > 0", name="lot_size_positive"),
        CheckConstraint("min_quantity > 0 AND min_quantity % lot_size = 0", name="min_quantity_on_lot"),
        CheckConstraint("max_quantity % lot_size = 0", name="max_quantity_on_lot"),
        CheckConstraint("min_quantity <= max_quantity", name="min_not_above_max"),
        CheckConstraint(f"price_band_bps >= 1 AND price_band_bps <= {MAX_BAND_BPS}", name="price_band_range"),
        CheckConstraint(f"status IN ({enum_values(InstrumentStatus)})", name="status"),
        CheckConstraint("last_price IS NULL OR last_price > 0", name="last_price_positive"),
        CheckConstraint("sequence >= 0", name="sequence_not_negative"),
    )

    symbol: Mapped[str] = mapped_column(String(MAX_SYMBOL), primary_key=True)
    base_asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    quote_asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    price_scale: Mapped[int] = mapped_column(SmallInteger)
    tick_size: Mapped[int] = mapped_column(BigInteger)  # in units of 10**-price_scale
    lot_size: Mapped[int] = mapped_column(BigInteger)  # in base minor units
    min_quantity: Mapped[int] = mapped_column(BigInteger)  # in base minor units
    max_quantity: Mapped[int] = mapped_column(BigInteger)  # in base minor units
    price_band_bps: Mapped[int] = mapped_column(Integer)
    status: Mapped[InstrumentStatus] = mapped_column(StrEnumType(InstrumentStatus), default=InstrumentStatus.open)
    last_price: Mapped[int | None] = mapped_column(BigInteger, default=None)  # at price_scale; NULL before a trade
    sequence: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    # Joined into every query for instruments, so an instrument always knows its
    # scales, in one statement (lock_instrument locks only the instruments row).
    base: Mapped[Asset] = relationship(foreign_keys=[base_asset], lazy="joined", innerjoin=True, viewonly=True)
    quote: Mapped[Asset] = relationship(foreign_keys=[quote_asset], lazy="joined", innerjoin=True, viewonly=True)

    @property
    def base_scale(self) -> int:
        """Decimals of the base asset: quantities are in 10**-base_scale base units."""
        return self.base.scale

    @property
    def quote_scale(self) -> int:
        """Decimals of the quote asset: notionals are in 10**-quote_scale quote units."""
        return self.quote.scale
