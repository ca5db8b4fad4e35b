"""Public market data over HTTP: the order book snapshot, recent trades and OHLCV candles.

The queries and wire shapes are in :mod:`bourse.trading.market_data`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from bourse.api.routing import DbSession, router
from bourse.errors import raises
from bourse.inputs import Timestamp
from bourse.trading.errors import BookBusy, InvalidInterval, UnknownInstrument
from bourse.trading.instruments import get_instrument
from bourse.trading.market_data import (
    DEFAULT_DEPTH,
    MAX_CANDLES,
    MAX_DEPTH,
    MAX_TRADES,
    book_snapshot,
    candle_wire,
    candles,
    recent_trades,
    trade_wire,
)

market_data = router(prefix="/api/v1", tags=["market data"])


@raises(UnknownInstrument, BookBusy)
@market_data.get("/instruments/{symbol}/book", summary="Order book snapshot (public)")
def get_book(
    symbol: str, session: DbSession, depth: Annotated[int, Query(ge=1, le=MAX_DEPTH)] = DEFAULT_DEPTH
) -> dict[str, Any]:
    return book_snapshot(session, symbol, depth).wire()


@raises(UnknownInstrument)
@market_data.get("/instruments/{symbol}/trades", summary="Recent trades, newest first (public)")
def get_trades(
    symbol: str, session: DbSession, limit: Annotated[int, Query(ge=1, le=MAX_TRADES)] = 100
) -> dict[str, Any]:
    instrument = get_instrument(session, symbol)
    return {
        "instrument": symbol,
        "data": [trade_wire(instrument, trade) for trade in recent_trades(session, symbol, limit)],
    }


@raises(UnknownInstrument, InvalidInterval)
@market_data.get("/instruments/{symbol}/candles", summary="OHLCV candles, oldest first (public)")
def get_candles(
    symbol: str,
    session: DbSession,
    interval: str = "1m",
    limit: Annotated[int, Query(ge=1, le=MAX_CANDLES)] = 100,
    end: Timestamp | None = None,
) -> dict[str, Any]:
    instrument = get_instrument(session, symbol)
    rows = candles(session, symbol, interval, limit, end)
    return {"instrument": symbol, "interval": interval, "data": [candle_wire(instrument, row) for row in rows]}
