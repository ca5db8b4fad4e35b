"""Public market data: the order book snapshot, recent trades and OHLCV candles.

Everything here is read from the database, the journal of the matching engine (see
docs/decisions/0011-matching-single-writer.md), so any API replica answers the same
thing. Prices and quantities go out as decimal strings at the instrument's scales.

A book snapshot carries the instrument's ``sequence``: the levels are exactly those
left by the command that set it. Under READ COMMITTED two statements may see
different commits, so the sequence is read before and after the levels and the
read is repeated if a command committed in between (the sequence only grows).

The queries and wire shapes only; the public endpoints are in
:mod:`bourse.trading.api.market_data`, and the market-data feed
(:mod:`bourse.trading.feed`) builds its messages with the same shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import format_amount
from bourse.trading.errors import BookBusy, InvalidInterval
from bourse.trading.instruments import Scaled, format_price, format_quantity, get_instrument
from bourse.trading.models import OPEN_STATUSES, Instrument, Order, Trade

INTERVALS: dict[str, int] = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86_400}
MAX_DEPTH = 200
DEFAULT_DEPTH = 20
MAX_TRADES = 500
MAX_CANDLES = 1000
_SNAPSHOT_ATTEMPTS = 5

Level = tuple[int, int, int]  # (price, total remaining quantity, order count), in stored units


# -- Queries --------------------------------------------------------------------------------


def _sequence(session: Session, symbol: str) -> int:
    return int(session.scalar(select(Instrument.sequence).where(Instrument.symbol == symbol)) or 0)


def levels(
    session: Session, symbol: str, *, depth: int | None = None, prices: Iterable[tuple[str, int]] | None = None
) -> tuple[list[Level], list[Level]]:
    """The aggregated resting levels (bids best first, asks best first).

    ``depth`` keeps the best N of each side; ``prices`` restricts the answer to the
    given (side, price) levels, for a delta after a command.
    """
    remaining = func.sum(Order.quantity - Order.filled_quantity)
    query = (
        select(Order.side, Order.price, remaining, func.count())
        .where(Order.instrument == symbol, Order.status.in_(OPEN_STATUSES))
        .group_by(Order.side, Order.price)
    )
    if prices is not None:
        wanted = set(prices)
        if not wanted:
            return [], []
        query = query.where(Order.price.in_({price for _, price in wanted}))
    else:
        wanted = set()
    bids: list[Level] = []
    asks: list[Level] = []
    for side, price, quantity, count in session.execute(query):
        if prices is not None and (side, price) not in wanted:
            continue
        (bids if side == "buy" else asks).append((int(price or 0), int(quantity), int(count)))
    bids.sort(reverse=True)
    asks.sort()
    if depth is not None:
        bids, asks = bids[:depth], asks[:depth]
    return bids, asks


@dataclass(frozen=True, slots=True)
class BookSnapshot:
    instrument: Instrument
    sequence: int
    bids: list[Level]
    asks: list[Level]

    def wire(self) -> dict[str, Any]:
        return {
            "instrument": self.instrument.symbol,
            "sequence": self.sequence,
            "bids": [level_wire(self.instrument, level) for level in self.bids],
            "asks": [level_wire(self.instrument, level) for level in self.asks],
        }


def level_wire(instrument: Scaled, level: Level) -> list[str | int]:
    price, quantity, count = level
    return [format_price(instrument, price), format_quantity(instrument, quantity), count]


def book_snapshot(session: Session, symbol: str, depth: int = DEFAULT_DEPTH) -> BookSnapshot:
    """The best ``depth`` levels of each side and the sequence they correspond to.

    The GROUP BY reads every resting order of the instrument once; the depth cut is
    applied afterwards, which is proportional to the number of distinct prices.
    """
    instrument = get_instrument(session, symbol)
    before = _sequence(session, symbol)
    for _ in range(_SNAPSHOT_ATTEMPTS):
        bids, asks = levels(session, symbol, depth=depth)
        after = _sequence(session, symbol)
        if after == before:
            return BookSnapshot(instrument, after, bids, asks)
        before = after
    raise BookBusy(f"The book of {symbol} changed during {_SNAPSHOT_ATTEMPTS} reads; try again")


def recent_trades(session: Session, symbol: str, limit: int = 100) -> list[Trade]:
    """The instrument's latest trades, newest first."""
    query = select(Trade).where(Trade.instrument == symbol).order_by(Trade.id.desc()).limit(limit)
    return list(session.scalars(query))


class TradeRow(Protocol):
    """What a trade's wire shape reads: a :class:`Trade`, or the feed's copy of one."""

    @property
    def id(self) -> int: ...

    @property
    def sequence(self) -> int: ...

    @property
    def price(self) -> int: ...

    @property
    def quantity(self) -> int: ...

    @property
    def taker_side(self) -> str: ...

    @property
    def created_at(self) -> datetime: ...


def trade_wire(instrument: Scaled, trade: TradeRow) -> dict[str, Any]:
    return {
        "id": trade.id,
        "sequence": trade.sequence,
        "price": format_price(instrument, trade.price),
        "quantity": format_quantity(instrument, trade.quantity),
        "side": trade.taker_side,
        "time": trade.created_at.isoformat(),
    }


@dataclass(slots=True)
class Candle:
    start: datetime
    open: int
    high: int
    low: int
    close: int
    volume: int  # base minor units
    quote_volume: int  # quote minor units
    trades: int


def bucket_start(moment: datetime, seconds: int) -> datetime:
    """The start of the UTC-aligned bucket of ``seconds`` that contains ``moment``."""
    epoch = int(moment.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def candles(session: Session, symbol: str, interval: str, limit: int, end: datetime | None = None) -> list[Candle]:
    """The last ``limit`` buckets of ``interval`` up to the one containing ``end`` (now by default).

    Buckets without trades are left out. The trades of the window are fetched in id
    order and bucketed here, which reads the same on SQLite and PostgreSQL.
    """
    seconds = INTERVALS.get(interval)
    if seconds is None:
        raise InvalidInterval(f"interval is one of {', '.join(INTERVALS)}, not {interval!r}")
    get_instrument(session, symbol)
    last = bucket_start(end or datetime.now(UTC), seconds)
    first = last - timedelta(seconds=seconds * (limit - 1))
    stop = last + timedelta(seconds=seconds)
    rows = session.execute(
        select(Trade.created_at, Trade.price, Trade.quantity, Trade.quote_amount)
        .where(Trade.instrument == symbol, Trade.created_at >= first, Trade.created_at < stop)
        .order_by(Trade.id)
    )
    found: dict[datetime, Candle] = {}
    for created_at, price, quantity, quote in rows:
        start = bucket_start(created_at, seconds)
        candle = found.get(start)
        if candle is None:
            found[start] = Candle(start, price, price, price, price, quantity, quote, 1)
            continue
        candle.high = max(candle.high, price)
        candle.low = min(candle.low, price)
        candle.close = price
        candle.volume += quantity
        candle.quote_volume += quote
        candle.trades += 1
    return [found[start] for start in sorted(found)]


def candle_wire(instrument: Instrument, candle: Candle) -> dict[str, Any]:
    return {
        "time": candle.start.isoformat(),
        "open": format_price(instrument, candle.open),
        "high": format_price(instrument, candle.high),
        "low": format_price(instrument, candle.low),
        "close": format_price(instrument, candle.close),
        "volume": format_quantity(instrument, candle.volume),
        "quote_volume": format_amount(candle.quote_volume, instrument.quote_scale),
        "trades": candle.trades,
    }
