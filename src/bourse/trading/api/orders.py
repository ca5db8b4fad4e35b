"""Orders endpoints: place (with an ``Idempotency-Key``), list, read, cancel; my trades.

A client sees only its own orders and trades (another user's order is a 404).
Amounts are decimal strings on the wire, at the instrument's scales.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from bourse.api.errors import request_id_of
from bourse.api.routing import DbSession, router
from bourse.assets.amounts import AmountError, format_amount
from bourse.errors import family, raises
from bourse.idempotency.dependencies import Idempotent
from bourse.identity.dependencies import CurrentPrincipal, Principal
from bourse.inputs import Id
from bourse.ledger.errors import InsufficientFunds
from bourse.ledger.posting import Context, user_actor
from bourse.settings import Settings
from bourse.trading import orders as commands
from bourse.trading import queries
from bourse.trading.errors import (
    InstrumentBusy,
    InvalidOrder,
    MarketHalted,
    OrderNotFound,
    OrderNotOpen,
    OrderRuleError,
    UnknownInstrument,
)
from bourse.trading.instruments import format_price, format_quantity, get_instrument
from bourse.trading.models import Instrument, Order, Trade
from bourse.trading.schemas import OrderIn, OrderOut, OrdersOut, TradeOut, TradesOut

orders = router(prefix="/api/v1", tags=["orders"])


def _context(request: Request, principal: Principal, key: str) -> Context:
    return Context(actor=user_actor(principal.user_id), idempotency_key=key, request_id=request_id_of(request))


def _trade_out(instrument: Instrument, trade: Trade, principal: Principal) -> TradeOut:
    maker = trade.maker_user_id == principal.user_id and trade.taker_user_id != principal.user_id
    taker_side = trade.taker_side
    side = ("sell" if taker_side == "buy" else "buy") if maker else taker_side
    return TradeOut(
        id=trade.id,
        instrument=trade.instrument,
        sequence=trade.sequence,
        price=format_price(instrument, trade.price),
        quantity=format_quantity(instrument, trade.quantity),
        side=side,
        liquidity="maker" if maker else "taker",
        quote_amount=format_amount(trade.quote_amount, instrument.quote_scale),
        fee=format_amount(trade.maker_fee if maker else trade.taker_fee, instrument.quote_scale),
        order_id=trade.maker_order_id if maker else trade.taker_order_id,
        created_at=trade.created_at,
    )


def _order_out(session: Session, order: Order, principal: Principal, fills: list[Trade] | None = None) -> OrderOut:
    instrument = get_instrument(session, order.instrument)
    quote_scale = instrument.quote_scale
    return OrderOut(
        id=order.id,
        instrument=order.instrument,
        client_order_id=order.client_order_id,
        side=order.side,
        type=order.kind,
        tif=order.tif,
        stp=order.stp,
        price=None if order.price is None else format_price(instrument, order.price),
        quantity=format_quantity(instrument, order.quantity),
        filled_quantity=format_quantity(instrument, order.filled_quantity),
        quote_budget=None if order.quote_budget is None else format_amount(order.quote_budget, quote_scale),
        quote_spent=format_amount(order.quote_spent, quote_scale),
        status=order.status.value,
        cancel_reason=order.cancel_reason,
        created_at=order.created_at,
        updated_at=order.updated_at,
        fills=[_trade_out(instrument, trade, principal) for trade in (fills or [])],
    )


@raises(
    UnknownInstrument,
    MarketHalted,
    InvalidOrder,
    *family(OrderRuleError),
    *family(AmountError),
    InsufficientFunds,
    InstrumentBusy,
)
@orders.post("/orders", status_code=201, summary="Place an order", response_model=OrderOut)
def place_order(
    body: OrderIn, request: Request, session: DbSession, principal: CurrentPrincipal, idempotent: Idempotent
) -> JSONResponse:
    settings: Settings = request.app.state.settings

    def produce() -> OrderOut:
        order, trades = commands.place_order(
            session,
            user_id=principal.user_id,
            symbol=body.instrument,
            side=body.side,
            kind=body.type,
            tif=body.tif,
            price_text=body.price,
            quantity_text=body.quantity,
            quote_budget_text=body.quote_budget,
            client_order_id=body.client_order_id,
            stp=body.stp,
            context=_context(request, principal, idempotent.ledger_key("order")),
            fees=commands.fees_from_settings(settings),
        )
        return _order_out(session, order, principal, trades)

    return idempotent.run(body, produce, status_code=201)


@orders.get("/orders", summary="My orders, newest first", response_model=OrdersOut)
def list_orders(
    session: DbSession,
    principal: CurrentPrincipal,
    status: Annotated[str, Query(pattern="^(open|all)$")] = "open",
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> OrdersOut:
    rows = queries.list_orders(session, user_id=principal.user_id, open_only=status == "open", limit=limit)
    return OrdersOut(data=[_order_out(session, order, principal) for order in rows])


@raises(OrderNotFound)
@orders.get("/orders/{order_id}", summary="One of my orders, with its fills", response_model=OrderOut)
def get_order(order_id: Id, session: DbSession, principal: CurrentPrincipal) -> OrderOut:
    order = queries.get_order(session, order_id, user_id=principal.user_id)
    return _order_out(session, order, principal, queries.trades_of_order(session, order.id))


@raises(OrderNotFound, OrderNotOpen, InstrumentBusy)
@orders.delete("/orders/{order_id}", summary="Cancel one of my orders", response_model=OrderOut)
def cancel_order(order_id: Id, request: Request, session: DbSession, principal: CurrentPrincipal) -> OrderOut:
    context = _context(request, principal, f"cancel:{order_id}")
    order = commands.cancel_order(session, user_id=principal.user_id, order_id=order_id, context=context)
    return _order_out(session, order, principal)


@raises(UnknownInstrument, InstrumentBusy)
@orders.delete("/orders", summary="Cancel all my open orders (on one instrument)", response_model=OrdersOut)
def cancel_all(
    request: Request, session: DbSession, principal: CurrentPrincipal, instrument: str | None = None
) -> OrdersOut:
    context = _context(request, principal, "cancel-all")
    cancelled = commands.cancel_all(session, user_id=principal.user_id, symbol=instrument, context=context)
    return OrdersOut(data=[_order_out(session, order, principal) for order in cancelled])


@orders.get("/trades", summary="My fills, newest first", response_model=TradesOut)
def list_trades(
    session: DbSession, principal: CurrentPrincipal, limit: Annotated[int, Query(ge=1, le=200)] = 100
) -> TradesOut:
    rows = queries.list_trades(session, user_id=principal.user_id, limit=limit)
    data = [_trade_out(get_instrument(session, trade.instrument), trade, principal) for trade in rows]
    return TradesOut(data=data)
