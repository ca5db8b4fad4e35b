"""Operator endpoints on trades and books: bust a trade, and see an instrument's whole book.

Operators and admins only (a client gets 403 ``forbidden``). A bust is logged with the
operator's id and reason, and recorded on the trade itself. A bust claws back the
trade's commissions through the hook the composition root passes to
:func:`trading_admin_router` (trading never imports commissions, which stands above it).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from bourse.api.routing import DbSession, router
from bourse.errors import raises
from bourse.identity.dependencies import Principal, require_roles
from bourse.identity.models import Role
from bourse.inputs import Id
from bourse.trading import busts
from bourse.trading.errors import TradeNotFound, UnknownInstrument
from bourse.trading.instruments import format_price, format_quantity, get_instrument

Staff = Annotated[Principal, Depends(require_roles(Role.operator, Role.admin))]


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


def trading_admin_router(claw_back: busts.ClawBack) -> APIRouter:
    """The operator endpoints; a bust claws back the trade's commissions with ``claw_back``."""
    trading_admin = router(prefix="/api/v1/admin", tags=["trading admin"])

    @raises(TradeNotFound, busts.TradeAlreadyBusted, busts.BustInsufficientFunds, busts.InvalidBustReason)
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
