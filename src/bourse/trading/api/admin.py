"""Operator endpoints on trades and books: bust a trade, and see an instrument's whole book.

Operators and admins only (a client gets 403 ``forbidden``). A bust is logged with the
operator's id and reason, and recorded on the trade itself. A bust claws back the
trade's commissions through the hook the composition root passes to
:func:`trading_admin_router` (trading never imports commissions, which stands above it).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from bourse.api.routing import DbSession, router
from bourse.errors import raises
from bourse.identity.dependencies import Principal, require_roles
from bourse.identity.models import Role
from bourse.inputs import Id
from bourse.trading import busts
from bourse.trading.errors import (
    BustInsufficientFunds,
    InvalidBustReason,
    TradeAlreadyBusted,
    TradeNotFound,
    UnknownInstrument,
)
from bourse.trading.instruments import format_price, format_quantity, get_instrument
from bourse.trading.schemas import BookOrderOut, BustIn, BustOut, OperatorBookOut

Staff = Annotated[Principal, Depends(require_roles(Role.operator, Role.admin))]


def trading_admin_router(claw_back: busts.ClawBack) -> APIRouter:
    """The operator endpoints; a bust claws back the trade's commissions with ``claw_back``."""
    trading_admin = router(prefix="/api/v1/admin", tags=["trading admin"])

    @raises(TradeNotFound, TradeAlreadyBusted, BustInsufficientFunds, InvalidBustReason)
    @trading_admin.post(
        "/trades/{trade_id}/bust",
        summary="Bust a trade: reverse its funds and claw back its commissions (operator, admin)",
    )
    def bust_trade(trade_id: Id, body: BustIn, session: DbSession, operator: Staff) -> BustOut:
        done = busts.bust_trade(
            session, trade_id, reason=body.reason, operator_id=operator.user_id, claw_back=claw_back
        )
        trade = done.trade
        if trade.busted_at is None or trade.bust_reason is None:
            raise RuntimeError(f"trade {trade_id} was busted without its record")
        return BustOut(
            trade_id=trade.id,
            instrument=trade.instrument,
            busted_at=trade.busted_at,
            busted_by=operator.user_id,
            reason=trade.bust_reason,
            reversal_entry_id=done.reversal_entry_id,
            release_entry_id=done.release_entry_id,
            commissions_clawed_back=done.commissions_clawed_back,
        )

    @raises(UnknownInstrument)
    @trading_admin.get(
        "/instruments/{symbol}/orders",
        summary="Every resting order of an instrument, in priority order (operator, admin)",
    )
    def operator_book(symbol: str, session: DbSession, _: Staff) -> OperatorBookOut:
        orders = busts.operator_book(session, symbol)
        instrument = get_instrument(session, symbol)
        return OperatorBookOut(
            instrument=symbol,
            sequence=instrument.sequence,
            data=[
                BookOrderOut(
                    id=order.id,
                    user_id=order.user_id,
                    side=order.side,
                    price=format_price(instrument, order.price or 0),
                    quantity=format_quantity(instrument, order.quantity),
                    remaining=format_quantity(instrument, order.remaining),
                    status=order.status.value,
                    created_at=order.created_at,
                )
                for order in orders
            ],
        )

    return trading_admin
