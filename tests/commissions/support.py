"""An IB hierarchy over a client, real trades through the order service, and queued accrual jobs run in process."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.ledger.models import Account, AccountKind
from bourse.queue.models import QueueJob
from bourse.queue.registry import JobContext, load_jobs
from bourse.referrals import service as referrals
from bourse.referrals.models import PlanKind
from bourse.settings import Settings
from bourse.trading.models import Trade
from tests.support.auth import TestUser, make_user
from tests.support.ledger import fund
from tests.trading.orders_support import market, new_user, place

# Plans start a minute in the past, so a trade placed right after is inside them on any clock.
_PLAN_START = timedelta(minutes=1)


@dataclass(frozen=True)
class Hierarchy:
    ib: TestUser  # level 2 above the client
    sub: TestUser  # level 1: referred the client
    client: TestUser
    symbol: str
    base: str
    quote: str


def set_plan(
    database: Database, ib_user_id: uuid.UUID, *, levels: list[int] | None = None, amounts: dict[str, str] | None = None
) -> None:
    with unit_of_work(database) as session:
        kind = PlanKind.percent_of_fee if levels is not None else PlanKind.per_lot
        referrals.set_plan(
            session,
            ib_user_id,
            kind=kind,
            max_depth=2,
            levels=levels,
            amounts=amounts or None,
            now=datetime.now(UTC) - _PLAN_START,
        )


def refer(database: Database, ib_user_id: uuid.UUID, user_id: uuid.UUID) -> None:
    with unit_of_work(database) as session:
        code = referrals.create_code(session, ib_user_id)
        referrals.refer(session, user_id, code)


def hierarchy(
    database: Database, *, ib_levels: list[int] | None = None, sub_levels: list[int] | None = None
) -> Hierarchy:
    """IB (plan ``[3000, 1000]``) over a sub-IB (plan ``[2000]``) over a client, on a fresh market."""
    ib, sub = make_user(database, role=Role.ib), make_user(database, role=Role.ib)
    client = make_user(database)
    refer(database, ib.id, sub.id)
    refer(database, sub.id, client.id)
    set_plan(database, ib.id, levels=ib_levels or [3000, 1000])
    if sub_levels != []:
        set_plan(database, sub.id, levels=sub_levels or [2000])
    symbol, base, quote = market(database)
    return Hierarchy(ib=ib, sub=sub, client=client, symbol=symbol, base=base, quote=quote)


def client_takes(database: Database, h: Hierarchy, quantity: str = "7.777", price: str = "1000.00") -> Trade:
    """An unreferred maker rests a sell; the client buys it all as taker: one trade."""
    maker = new_user(database)
    fund(database, maker, h.base, 10**12)
    fund(database, h.client.id, h.quote, 10**12)
    place(database, maker, h.symbol, side="sell", price_text=price, quantity_text=quantity)
    _, trades = place(database, h.client.id, h.symbol, side="buy", price_text=price, quantity_text=quantity)
    [trade] = trades
    return trade


def queued(database: Database, trade_id: int) -> QueueJob:
    """The one queued job that accrues the trade's commissions (one job per matcher batch names its trades)."""
    with database.sessions() as session:
        rows = session.scalars(select(QueueJob).where(QueueJob.job == "commissions.accrue")).all()
        [row] = [job for job in rows if trade_id in json.loads(job.payload)["trade_ids"]]
        session.expunge_all()
    return row


def run_accrual(database: Database, settings: Settings, trade_id: int, *, remove: bool = True) -> None:
    """Run the trade's queued ``commissions.accrue`` job by its registered handler, as a worker does."""
    job = queued(database, trade_id)
    spec = load_jobs()[job.job]
    with unit_of_work(database) as session:
        payload: dict[str, Any] = json.loads(job.payload)
        spec.handler(JobContext(session, payload, job.uuid, 1, job.queue, None, settings))
        if remove:
            session.execute(delete(QueueJob).where(QueueJob.id == job.id))


def system_balance(database: Database, kind: AccountKind, asset: str, ref: str = "") -> int:
    with unit_of_work(database) as session:
        found = session.scalar(
            select(Account.balance).where(Account.kind == kind, Account.asset == asset, Account.ref == ref)
        )
    return int(found or 0)


def payable(database: Database, ib_user_id: uuid.UUID, asset: str) -> int:
    return system_balance(database, AccountKind.commissions_payable, asset, str(ib_user_id))


def receivable(database: Database, ib_user_id: uuid.UUID, asset: str) -> int:
    return system_balance(database, AccountKind.chargeback_receivable, asset, str(ib_user_id))


def fees(database: Database, asset: str) -> int:
    """Every fee the brokerage keeps in ``asset``: the pool and each instrument's fee account."""
    with unit_of_work(database) as session:
        found = session.scalar(
            select(func.sum(Account.balance)).where(Account.kind == AccountKind.fees, Account.asset == asset)
        )
    return int(found or 0)
