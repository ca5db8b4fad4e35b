"""Reading orders and trades: one order, a user's orders and trades, an order's trades.

Plain reads in the caller's transaction; they take no lock and change nothing. (The
public market data, books, trades and candles, is in :mod:`bourse.trading.market_data`.)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import or_, select, text
from sqlalchemy.orm import Session

from bourse.trading.errors import OrderNotFound
from bourse.trading.models import OPEN_STATUSES, PENDING_COMMANDS_SQL, Order, Trade


def get_order(session: Session, order_id: int, *, user_id: uuid.UUID | None = None) -> Order:
    """The order, or 404 ``order_not_found`` (also for another user's order)."""
    order = session.get(Order, order_id) if isinstance(order_id, int) else None
    if order is None or (user_id is not None and order.user_id != user_id):
        raise OrderNotFound(f"There is no order {order_id}")
    return order


def list_orders(session: Session, *, user_id: uuid.UUID, open_only: bool, limit: int = 200) -> list[Order]:
    query = select(Order).where(Order.user_id == user_id)
    if open_only:
        query = query.where(Order.status.in_(OPEN_STATUSES))
    return list(session.scalars(query.order_by(Order.id.desc()).limit(limit)))


def trades_of_order(session: Session, order_id: int) -> list[Trade]:
    query = select(Trade).where(or_(Trade.maker_order_id == order_id, Trade.taker_order_id == order_id))
    return list(session.scalars(query.order_by(Trade.id)))


def list_trades(session: Session, *, user_id: uuid.UUID, limit: int = 200) -> list[Trade]:
    query = select(Trade).where(or_(Trade.maker_user_id == user_id, Trade.taker_user_id == user_id))
    return list(session.scalars(query.order_by(Trade.id.desc()).limit(limit)))


def open_orders(session: Session, symbol: str) -> Iterable[Order]:
    """Every resting order of an instrument, in id (time) order."""
    return session.scalars(
        select(Order).where(Order.instrument == symbol, Order.status.in_(OPEN_STATUSES)).order_by(Order.id)
    )


def any_outstanding(session: Session, order_ids: Iterable[int]) -> bool:
    """Whether the matcher still has a command to carry out on any of ``order_ids``."""
    query = select(Order.id).where(Order.id.in_(list(order_ids)), text(f"({PENDING_COMMANDS_SQL})")).limit(1)
    return session.scalar(query) is not None
