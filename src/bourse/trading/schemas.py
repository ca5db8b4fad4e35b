"""Wire shapes of trading's API: instruments, orders and trades, busts and the operators' book.

Prices and quantities are decimal strings, never numbers. (Market data's shapes, which the
WebSocket shares, are built in :mod:`bourse.trading.market_data`.)
"""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from bourse.assets.amounts import AmountText
from bourse.inputs import StrictJsonInt
from bourse.trading.models import InstrumentStatus


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstrumentOut(BaseModel):
    symbol: str = Field(examples=["BTC-USD"])
    base_asset: str
    quote_asset: str
    price_scale: int = Field(description="Decimals of a price, in quote units per one whole base unit")
    tick_size: str = Field(description="The price increment, in quote units", examples=["0.01"])
    lot_size: str = Field(description="The quantity increment, in base units", examples=["0.0001"])
    min_quantity: str
    max_quantity: str
    price_band_bps: int = Field(description="A limit price may be at most this far from last_price, in basis points")
    status: InstrumentStatus
    last_price: str | None = Field(description="The last trade's price; null before the first trade")
    sequence: int = Field(description="The instrument's market-data sequence number")
    created_at: datetime
    updated_at: datetime


class InstrumentIn(_In):
    symbol: str = Field(description="BASE-QUOTE, e.g. BTC-USD", examples=["BTC-EUR"])
    base_asset: str
    quote_asset: str
    price_scale: StrictJsonInt = Field(description="Decimals of a price, 0 to 8. It can never change later.")
    tick_size: AmountText = Field(description="The price increment in quote units, at price_scale")
    lot_size: AmountText = Field(description="The quantity increment in base units")
    min_quantity: AmountText
    max_quantity: AmountText
    price_band_bps: StrictJsonInt = Field(description="1 to 10000 basis points")


class InstrumentPatch(_In):
    """Only the fields sent change. price_scale and the assets are accepted only to refuse a change (409)."""

    tick_size: AmountText | None = None
    lot_size: AmountText | None = None
    min_quantity: AmountText | None = None
    max_quantity: AmountText | None = None
    price_band_bps: StrictJsonInt | None = None
    price_scale: StrictJsonInt | None = None
    base_asset: str | None = None
    quote_asset: str | None = None


class StatusChangeIn(_In):
    reason: str = Field(description="Why, in 3 to 500 characters; logged with the operator's id")


class StatusChangeOut(BaseModel):
    instrument: InstrumentOut
    reason: str
    actor: str = Field(description="Who changed the status, as user:<id>")


# -- Orders -------------------------------------------------------------------------------


class OrderIn(_In):
    """A new order. Prices, quantities and budgets are decimal strings; a JSON number is refused."""

    instrument: str = Field(examples=["BTC-USD"])
    side: str = Field(description="buy or sell")
    type: str = Field(default="limit", description="limit or market")
    tif: str | None = Field(default=None, description="gtc, ioc or fok; a market order is ioc or fok")
    price: AmountText | None = Field(default=None, description="A limit order's price, in quote units")
    quantity: AmountText | None = Field(default=None, description="In base units; optional for a market buy")
    quote_budget: AmountText | None = Field(default=None, description="A market buy's most to spend, fees included")
    client_order_id: str | None = Field(default=None, max_length=64)
    stp: str | None = Field(default=None, description="none, cancel_newest (default), cancel_oldest, cancel_both")


class TradeOut(BaseModel):
    id: int
    instrument: str
    sequence: int
    price: str
    quantity: str
    side: str = Field(description="My side of the trade")
    liquidity: str = Field(description="maker or taker")
    quote_amount: str
    fee: str = Field(description="My fee, in the quote asset")
    order_id: int
    created_at: datetime


class OrderOut(BaseModel):
    id: int
    instrument: str
    client_order_id: str | None
    side: str
    type: str
    tif: str
    stp: str
    price: str | None
    quantity: str
    filled_quantity: str
    quote_budget: str | None
    quote_spent: str
    status: str = Field(
        description="pending (accepted, funds held, not yet matched), open, partially_filled, filled,"
        " cancelled or rejected"
    )
    cancel_reason: str | None
    reject_reason: str | None = Field(
        default=None, description="Why the matcher refused the order (status rejected): an order rule's code"
    )
    cancel_requested: bool = Field(
        default=False, description="A cancel was asked for and the matcher has not carried it out yet"
    )
    created_at: datetime
    updated_at: datetime
    fills: list[TradeOut] = Field(default_factory=list)


class OrdersOut(BaseModel):
    data: list[OrderOut]


class TradesOut(BaseModel):
    data: list[TradeOut]


# -- Operators: busts and the whole book ---------------------------------------------------


class BustIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(description="Why the trade is busted, 1 to 200 characters; recorded on the trade")


class BustOut(BaseModel):
    trade_id: int
    instrument: str
    busted_at: datetime
    busted_by: uuid.UUID
    reason: str
    reversal_entry_id: uuid.UUID = Field(description="The journal entry that reversed the fill")
    release_entry_id: uuid.UUID | None = Field(description="The entry that moved the reversed funds out of held")
    commissions_clawed_back: int = Field(description="How many commission accruals were reversed")


class BookOrderOut(BaseModel):
    id: int
    user_id: uuid.UUID
    side: str
    price: str
    quantity: str
    remaining: str
    status: str
    created_at: datetime


class OperatorBookOut(BaseModel):
    instrument: str
    sequence: int
    data: list[BookOrderOut] = Field(description="Bids best first, then asks best first; oldest first per price")
