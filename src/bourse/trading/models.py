"""The instruments table: the markets Bourse trades, and the rules of each.

Every number is an integer. A price is counted in units of ``10**-price_scale``
of the quote asset per ONE whole unit of the base asset (BTC-USD at
``price_scale`` 2: ``6500012`` is USD 65,000.12 per BTC). Quantities are counted
in the base asset's minor units (``10_000`` is 0.0001 BTC). The matching engine
works in ticks and lots; :mod:`bourse.trading.instruments` converts.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from bourse.assets.amounts import MAX_SCALE
from bourse.assets.models import Asset
from bourse.db import Base
from bourse.sqltypes import BigId, StrEnumType, UTCDateTime, enum_values, utcnow

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


# -- Orders and trades ----------------------------------------------------------------------


class OrderStatus(StrEnum):
    pending = "pending"  # accepted by the API, its funds held; the matcher has not sequenced it yet
    open = "open"  # resting, nothing filled yet
    partially_filled = "partially_filled"  # resting with some filled
    filled = "filled"  # done: everything traded
    cancelled = "cancelled"  # done: the remainder will never trade (see cancel_reason)
    rejected = "rejected"  # done: the matcher refused it (see reject_reason); nothing traded


# An open order rests in the book; a pending one is waiting for the matcher; a done one
# never comes back.
OPEN_STATUSES = (OrderStatus.open, OrderStatus.partially_filled)
LIVE_STATUSES = (OrderStatus.pending, *OPEN_STATUSES)
DONE_STATUSES = frozenset({OrderStatus.filled, OrderStatus.cancelled, OrderStatus.rejected})
MAX_REASON = 32
# What the matcher reads as its commands: orders not yet sequenced, and cancels requested
# of orders that are still live (spelled once here: the partial index and the query).
PENDING_COMMANDS_SQL = (
    "status = 'pending' OR (cancel_requested_at IS NOT NULL AND status IN ('open', 'partially_filled'))"
)
MAX_CLIENT_ORDER_ID = 64
MAX_BUST_REASON = 200
_SIDES = "'buy', 'sell'"
_KINDS = "'limit', 'market'"
_TIFS = "'gtc', 'ioc', 'fok'"
# An order may be done without ever having been sequenced: cancelled while pending (by
# its owner, or by a halt), or rejected by the matcher before the book saw it.
_UNSEQUENCED = "'pending', 'cancelled', 'rejected'"


class Order(Base):
    """An order as placed and as it stands.

    The API inserts it ``pending``, its funds held; the instrument's matcher gives it
    its ``sequence`` (the instrument's sequence of its Accepted event), which is its time
    priority and its id in the book: ids are allocated by concurrent API transactions
    and commit out of order, so they say nothing about arrival. A cancel is requested by
    setting ``cancel_requested_at``; the matcher carries it out at ``cancel_sequence``
    (NULL if the order was cancelled before it was sequenced, or by anything else).

    ``price`` is at the instrument's price_scale (NULL for market orders), ``quantity``
    and ``filled_quantity`` in base minor units, ``quote_budget`` and ``quote_spent`` in
    quote minor units (what was paid for the fills, fees excluded). The fee rates are
    those in force when the order was accepted.
    """

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("user_id", "client_order_id"),
        UniqueConstraint("user_id", "idempotency_key"),
        UniqueConstraint("instrument", "sequence"),
        CheckConstraint(f"side IN ({_SIDES})", name="side"),
        CheckConstraint(f"kind IN ({_KINDS})", name="kind"),
        CheckConstraint(f"tif IN ({_TIFS})", name="tif"),
        CheckConstraint(f"status IN ({enum_values(OrderStatus)})", name="status"),
        CheckConstraint("(kind = 'limit') = (price IS NOT NULL)", name="price_iff_limit"),
        CheckConstraint("price IS NULL OR price > 0", name="price_positive"),
        CheckConstraint("kind = 'limit' OR tif <> 'gtc'", name="market_not_gtc"),
        CheckConstraint("quantity > 0", name="quantity_positive"),
        CheckConstraint("filled_quantity >= 0 AND filled_quantity <= quantity", name="filled_within_quantity"),
        CheckConstraint("quote_budget IS NULL OR (kind = 'market' AND side = 'buy')", name="budget_on_market_buy"),
        CheckConstraint("quote_budget IS NULL OR quote_budget > 0", name="budget_positive"),
        CheckConstraint("quote_spent >= 0", name="quote_spent_not_negative"),
        CheckConstraint("maker_bps >= 0 AND taker_bps >= 0", name="fees_not_negative"),
        CheckConstraint("status <> 'filled' OR filled_quantity = quantity", name="filled_means_all"),
        CheckConstraint(f"status IN ({_UNSEQUENCED}) OR sequence IS NOT NULL", name="sequenced"),
        CheckConstraint("(status = 'rejected') = (reject_reason IS NOT NULL)", name="rejected_has_reason"),
        CheckConstraint(
            "idempotency_key IS NULL OR request_fingerprint IS NOT NULL", name="idempotency_key_has_fingerprint"
        ),
        Index("ix_orders_user_id_status", "user_id", "status"),
        Index("ix_orders_instrument_status_id", "instrument", "status", "id"),
        Index(
            "ix_orders_instrument_pending",
            "instrument",
            "id",
            postgresql_where=text(PENDING_COMMANDS_SQL),
            sqlite_where=text(PENDING_COMMANDS_SQL),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instrument: Mapped[str] = mapped_column(String(MAX_SYMBOL), ForeignKey("instruments.symbol"))
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    client_order_id: Mapped[str | None] = mapped_column(String(MAX_CLIENT_ORDER_ID), default=None)
    side: Mapped[str] = mapped_column(String(4))
    kind: Mapped[str] = mapped_column(String(8))
    tif: Mapped[str] = mapped_column(String(3))
    stp: Mapped[str] = mapped_column(String(16))
    price: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quantity: Mapped[int] = mapped_column(BigInteger)
    filled_quantity: Mapped[int] = mapped_column(BigInteger, default=0)
    quote_budget: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quote_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    hold_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("holds.id"))
    status: Mapped[OrderStatus] = mapped_column(StrEnumType(OrderStatus), default=OrderStatus.pending)
    cancel_reason: Mapped[str | None] = mapped_column(String(MAX_REASON), default=None)
    reject_reason: Mapped[str | None] = mapped_column(String(MAX_REASON), default=None)
    maker_bps: Mapped[int] = mapped_column(Integer)
    taker_bps: Mapped[int] = mapped_column(Integer)
    # The instrument's sequence of its Accepted event: its time priority, and its id in the book.
    sequence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    cancel_sequence: Mapped[int | None] = mapped_column(BigInteger, default=None)
    # The client's Idempotency-Key, unique per user, and the request it came with: a retry
    # finds the order itself (its state as it is now), never a stored copy of an old answer.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), default=None)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @property
    def remaining(self) -> int:
        return self.quantity - self.filled_quantity


class Trade(Base):
    """One fill, at the maker's price, settled by the journal entry ``entry_id``.

    ``quote_amount`` is what the base changed hands for (quote minor units, rounded
    down); each side's fee is in quote minor units too, and went to the ``fees`` account.
    """

    __tablename__ = "trades"
    __table_args__ = (
        UniqueConstraint("instrument", "sequence"),
        CheckConstraint("price > 0 AND quantity > 0", name="price_quantity_positive"),
        CheckConstraint("quote_amount >= 0 AND maker_fee >= 0 AND taker_fee >= 0", name="amounts_not_negative"),
        CheckConstraint(f"taker_side IN ({_SIDES})", name="taker_side"),
        CheckConstraint("maker_order_id <> taker_order_id", name="two_orders"),
        Index("ix_trades_maker_user_id_id", "maker_user_id", "id"),
        Index("ix_trades_taker_user_id_id", "taker_user_id", "id"),
        CheckConstraint(
            "(busted_at IS NULL) = (busted_by IS NULL)"
            " AND (busted_at IS NULL) = (bust_reason IS NULL)"
            " AND (busted_at IS NULL) = (bust_entry_id IS NULL)",
            name="bust_complete",
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    instrument: Mapped[str] = mapped_column(String(MAX_SYMBOL), ForeignKey("instruments.symbol"))
    sequence: Mapped[int] = mapped_column(BigInteger)
    price: Mapped[int] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(BigInteger)
    maker_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("orders.id"))
    taker_order_id: Mapped[int] = mapped_column(BigId, ForeignKey("orders.id"))
    maker_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    taker_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    taker_side: Mapped[str] = mapped_column(String(4))
    quote_amount: Mapped[int] = mapped_column(BigInteger)
    maker_fee: Mapped[int] = mapped_column(BigInteger)
    taker_fee: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("journal_entries.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set together when an operator busts the trade (bourse.trading.busts): who, when, why,
    # and the reversal entry. The trade row itself stays as the history of the fill.
    busted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    busted_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"), default=None)
    bust_reason: Mapped[str | None] = mapped_column(String(MAX_BUST_REASON), default=None)
    bust_entry_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("journal_entries.id"), default=None)
