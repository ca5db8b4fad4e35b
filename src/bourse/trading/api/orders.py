"""Orders endpoints: place (with an ``Idempotency-Key``), list, read, cancel; my trades.

A client sees only its own orders and trades (another user's order is a 404).
Amounts are decimal strings on the wire, at the instrument's scales.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Header, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bourse.api.errors import request_id_of
from bourse.api.routing import DbSession, LeasedDatabase, end_request_transaction, lease_again, release_lease, router
from bourse.assets.amounts import AmountError, format_amount
from bourse.db import Database, unit_of_work
from bourse.errors import family, raises
from bourse.idempotency import service as idempotency
from bourse.idempotency.dependencies import REPLAYED_HEADER
from bourse.idempotency.errors import (
    IdempotencyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
)
from bourse.idempotency.service import check_key
from bourse.identity.dependencies import CurrentPrincipal, Principal
from bourse.inputs import Id
from bourse.ledger.errors import InsufficientFunds
from bourse.ledger.posting import Context, user_actor
from bourse.settings import Settings
from bourse.trading import orders as commands
from bourse.trading import queries
from bourse.trading.errors import (
    InvalidOrder,
    MarketHalted,
    OrderNotFound,
    OrderNotOpen,
    OrderRuleError,
    UnknownInstrument,
)
from bourse.trading.instruments import format_price, format_quantity, get_instrument
from bourse.trading.models import DONE_STATUSES, Instrument, Order, OrderStatus, Trade
from bourse.trading.results import order_results
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
        reject_reason=order.reject_reason,
        cancel_requested=order.cancel_requested_at is not None and order.status not in DONE_STATUSES,
        created_at=order.created_at,
        updated_at=order.updated_at,
        fills=[_trade_out(instrument, trade, principal) for trade in (fills or [])],
    )


# -- Placing and cancelling: accepted here, carried out by the matcher ---------------------
#
# A request takes a mark of this process's outcomes, commits its command in a
# transaction of its own (so that the matcher can see it), then waits up to
# BOURSE_ORDER_WAIT_MS for the matcher to announce the order, and answers with the
# order as it is then: 201 (200 for a cancel) once the matcher has carried the command
# out, 202 while it is still pending. See docs/decisions/0027-matcher-per-instrument-shard.md.

_POLL_SECONDS = 0.05
_PENDING_ANSWER = (
    "Accepted, not carried out yet: the matcher did not finish within the wait. The order is returned"
    " as it stands; its outcome arrives on the private WebSocket channel and at GET /orders/{id}."
)


async def _await_outcome(request: Request, database: Database, order_ids: list[int], mark: int) -> None:
    """Wait (bounded) until the matcher has carried out the commands on ``order_ids``."""
    settings: Settings = request.app.state.settings
    wait = settings.order_wait_ms / 1000
    if not order_ids or wait <= 0:
        return
    outcomes = order_results()
    # The wait needs no connection: the lease goes to requests that need one meanwhile (a
    # request cancelled while it waits holds none, and its boundary gives back none).
    release_lease(request)
    if outcomes.listening:
        await outcomes.wait(order_ids, after=mark, timeout=wait)
    else:
        # Nobody in this process hears the matcher (a pooled database without a direct URL):
        # look at the orders, a lease for each look, until they are carried out or the wait is over.
        deadline = asyncio.get_running_loop().time() + wait
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(_POLL_SECONDS)
            await lease_again(request)
            outstanding = await run_in_threadpool(_any_outstanding, database, order_ids)
            release_lease(request)
            if not outstanding:
                break
    await lease_again(request)


def _any_outstanding(database: Database, order_ids: list[int]) -> bool:
    with unit_of_work(database) as session:
        return queries.any_outstanding(session, order_ids)


def _outstanding(order: Order) -> bool:
    return order.status is OrderStatus.pending or (
        order.cancel_requested_at is not None and order.status not in DONE_STATUSES
    )


def _answer(database: Database, order_ids: list[int], principal: Principal) -> tuple[list[OrderOut], bool]:
    """The orders as they stand, with their fills, and whether the matcher has carried them all out."""
    with unit_of_work(database) as session:
        rows = [queries.get_order(session, order_id, user_id=principal.user_id) for order_id in order_ids]
        out = [_order_out(session, order, principal, queries.trades_of_order(session, order.id)) for order in rows]
        return out, not any(_outstanding(order) for order in rows)


def _accept(  # noqa: PLR0917 - the request's parts, handed to one thread call
    database: Database, body: OrderIn, principal: Principal, key: str, fingerprint: str, fees: Any
) -> tuple[int, bool, bool]:
    """Accept the order (or find it, on a retry): its id, whether it was a replay, and
    whether the matcher still has it to carry out."""
    with unit_of_work(database) as session:
        accepted = commands.accept_order(
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
            idempotency_key=key,
            request_fingerprint=fingerprint,
            context=Context(actor=user_actor(principal.user_id), idempotency_key=key),
            fees=fees,
        )
        return accepted.order.id, accepted.replayed, _outstanding(accepted.order)


@raises(
    UnknownInstrument,
    MarketHalted,
    InvalidOrder,
    *family(OrderRuleError),
    *family(AmountError),
    InsufficientFunds,
    IdempotencyKeyRequired,
    IdempotencyKeyInvalid,
    IdempotencyKeyReused,
    IdempotencyInProgress,
)
@orders.post(
    "/orders",
    status_code=201,
    summary="Place an order",
    response_model=OrderOut,
    responses={202: {"model": OrderOut, "description": _PENDING_ANSWER}},
    description=(
        "The order is accepted (its funds held) and handed to the instrument's matcher. The answer"
        " waits briefly for the matcher: `201` with the order's state and fills once it has been"
        " matched (resting, filled, cancelled or rejected), or `202` with `status: pending` if the"
        " wait ran out. Retrying with the same `Idempotency-Key` and body returns the same order as"
        " it stands then (`Idempotent-Replayed: true`), never a second one."
    ),
)
async def place_order(
    body: OrderIn,
    request: Request,
    database: LeasedDatabase,
    principal: CurrentPrincipal,
    idempotency_key: Annotated[
        str | None,
        Header(
            description="A unique key per order (e.g. a UUID). Retrying with the same key and body "
            "returns the order placed the first time instead of placing another.",
            json_schema_extra={"pattern": "^[!-~]{1,255}$"},
        ),
    ] = None,
) -> JSONResponse:
    settings: Settings = request.app.state.settings
    key = check_key(idempotency_key)
    await end_request_transaction(request)
    fingerprint = idempotency.fingerprint("POST", request.url.path, body.model_dump(mode="json"))
    mark = order_results().mark()
    fees = commands.fees_from_settings(settings)
    order_id, replayed, outstanding = await run_in_threadpool(
        _accept, database, body, principal, key, fingerprint, fees
    )
    if outstanding:  # a retry of an order the matcher already carried out has nothing to wait for
        await _await_outcome(request, database, [order_id], mark)
    [out], done = await run_in_threadpool(_answer, database, [order_id], principal)
    return JSONResponse(
        jsonable_encoder(out),
        status_code=201 if done else 202,
        headers={REPLAYED_HEADER: "true" if replayed else "false"},
    )


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


def _request_cancel(database: Database, principal: Principal, order_id: int) -> list[int]:
    with unit_of_work(database) as session:
        return [commands.request_cancel(session, user_id=principal.user_id, order_id=order_id).id]


def _request_cancel_all(database: Database, principal: Principal, symbol: str | None) -> list[int]:
    with unit_of_work(database) as session:
        return [order.id for order in commands.request_cancel_all(session, user_id=principal.user_id, symbol=symbol)]


async def _carry_out(
    request: Request, database: Database, principal: Principal, ask: Callable[..., list[int]], *args: Any
) -> tuple[list[OrderOut], bool]:
    """Commit the request ``ask`` makes of the matcher, wait for it, and read the orders it names."""
    await end_request_transaction(request)
    mark = order_results().mark()
    ids = await run_in_threadpool(ask, database, principal, *args)
    await _await_outcome(request, database, ids, mark)
    return await run_in_threadpool(_answer, database, ids, principal)


@raises(OrderNotFound, OrderNotOpen)
@orders.delete(
    "/orders/{order_id}",
    summary="Cancel one of my orders",
    response_model=OrderOut,
    responses={202: {"model": OrderOut, "description": _PENDING_ANSWER}},
    description=(
        "Asks the matcher to cancel the order, then waits briefly: `200` with the order once the"
        " matcher has carried the cancel out (cancelled, or filled if the fill came first), `202`"
        " with `cancel_requested: true` if the wait ran out. `409 order_not_open` if it was already done."
    ),
)
async def cancel_order(
    order_id: Id, request: Request, database: LeasedDatabase, principal: CurrentPrincipal
) -> JSONResponse:
    [out], done = await _carry_out(request, database, principal, _request_cancel, order_id)
    return JSONResponse(jsonable_encoder(out), status_code=200 if done else 202)


@raises(UnknownInstrument)
@orders.delete(
    "/orders",
    summary="Cancel all my live orders (on one instrument)",
    response_model=OrdersOut,
    responses={202: {"model": OrdersOut, "description": _PENDING_ANSWER}},
    description=(
        "Asks the matcher to cancel every live order (pending or resting), then waits briefly:"
        " `200` once it has carried them all out, `202` with those still to do marked `cancel_requested`."
    ),
)
async def cancel_all(
    request: Request, database: LeasedDatabase, principal: CurrentPrincipal, instrument: str | None = None
) -> JSONResponse:
    out, done = await _carry_out(request, database, principal, _request_cancel_all, instrument)
    return JSONResponse(jsonable_encoder(OrdersOut(data=out)), status_code=200 if done else 202)


@orders.get("/trades", summary="My fills, newest first", response_model=TradesOut)
def list_trades(
    session: DbSession, principal: CurrentPrincipal, limit: Annotated[int, Query(ge=1, le=200)] = 100
) -> TradesOut:
    rows = queries.list_trades(session, user_id=principal.user_id, limit=limit)
    data = [_trade_out(get_instrument(session, trade.instrument), trade, principal) for trade in rows]
    return TradesOut(data=data)
