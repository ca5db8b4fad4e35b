"""Payouts with statements and clawbacks before and after payout, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from bourse.commissions import service
from bourse.commissions.models import CommissionPayout
from bourse.db import Database, unit_of_work
from bourse.ledger.adjustments import adjust
from bourse.ledger.posting import Context
from bourse.settings import Settings
from tests.commissions.support import (
    Hierarchy,
    client_takes,
    fees,
    hierarchy,
    payable,
    receivable,
    refer,
    run_accrual,
)
from tests.support.auth import make_user
from tests.support.ledger import balance, verify
from tests.trading.orders_support import market


def today() -> datetime:
    return datetime.now(UTC)


def pay_all(database: Database) -> dict[uuid.UUID, CommissionPayout]:
    with unit_of_work(database) as session:
        paid = service.pay_out_all(session, today().date())
        session.expunge_all()
    return {payout.ib_user_id: payout for payout in paid}


def accrued_trades(database: Database, settings: Settings, h: Hierarchy, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        trade = client_takes(database, h)
        run_accrual(database, settings, trade.id)
        ids.append(trade.id)
    return ids


def test_payout_moves_the_sum_with_a_statement_and_pays_once(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    accrued_trades(database, settings, h, 2)
    paid = pay_all(database)
    sub, ib = paid[h.sub.id], paid[h.ib.id]
    assert (sub.asset, sub.amount, sub.accruals) == (h.quote, 2 * 311, 2)
    assert (ib.amount, ib.accruals) == (2 * 155, 2)
    assert balance(database, h.sub.id, h.quote) == 622
    assert balance(database, h.ib.id, h.quote) == 310
    assert payable(database, h.sub.id, h.quote) == 0
    assert payable(database, h.ib.id, h.quote) == 0
    # Both trades: same day, same client, same instrument -> one line.
    assert sub.statement["lines"] == [
        {
            "day": today().date().isoformat(),
            "client_user_id": str(h.client.id),
            "instrument": h.symbol,
            "amount": "6.22",
            "amount_minor": 622,
            "accruals": 2,
        }
    ]
    assert verify(database).ok

    assert h.sub.id not in pay_all(database)  # nothing new to pay
    assert h.ib.id not in pay_all(database)
    assert balance(database, h.sub.id, h.quote) == 622
    assert verify(database).ok


def test_a_statement_groups_by_client_and_instrument(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    accrued_trades(database, settings, h, 1)
    # The same IBs over a second client, on a second market.
    other = make_user(database)
    refer(database, h.sub.id, other.id)
    symbol, base, quote = market(database)
    second = Hierarchy(ib=h.ib, sub=h.sub, client=other, symbol=symbol, base=base, quote=quote)
    accrued_trades(database, settings, second, 1)
    # A second trade of the first client on the second market.
    accrued_trades(database, settings, Hierarchy(h.ib, h.sub, h.client, symbol, base, quote), 1)
    paid = pay_all(database)
    # Two assets: one payout per asset.
    with unit_of_work(database) as session:
        payouts = service.list_payouts(session, h.sub.id)
        by_asset = {p.asset: p.statement["lines"] for p in payouts}
    assert [(line["instrument"], line["amount_minor"]) for line in by_asset[h.quote]] == [(h.symbol, 311)]
    lines = by_asset[quote]
    assert sorted((line["client_user_id"], line["amount_minor"]) for line in lines) == sorted(
        [(str(h.client.id), 311), (str(other.id), 311)]
    )
    assert paid[h.sub.id].amount in {311, 622}
    assert verify(database).ok


def test_clawback_before_payout_returns_the_commissions_to_fees(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    [trade_id] = accrued_trades(database, settings, h, 1)
    assert fees(database, h.quote) == 1866
    with unit_of_work(database) as session:
        done = service.claw_back(session, trade_id, "trade busted")
    assert (done.accruals, done.from_payable, done.from_wallet, done.to_receivable) == (2, 466, 0, 0)
    assert payable(database, h.sub.id, h.quote) == 0
    assert payable(database, h.ib.id, h.quote) == 0
    assert fees(database, h.quote) == 2332
    with unit_of_work(database) as session:
        again = service.claw_back(session, trade_id, "trade busted")
    assert again.accruals == 0
    assert fees(database, h.quote) == 2332
    assert h.sub.id not in pay_all(database)  # clawed-back accruals are never paid
    assert verify(database).ok


def test_clawback_after_payout_takes_from_the_wallet(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    [trade_id] = accrued_trades(database, settings, h, 1)
    pay_all(database)
    with unit_of_work(database) as session:
        done = service.claw_back(session, trade_id, "trade busted")
    assert (done.from_payable, done.from_wallet, done.to_receivable) == (0, 466, 0)
    assert balance(database, h.sub.id, h.quote) == 0
    assert balance(database, h.ib.id, h.quote) == 0
    assert fees(database, h.quote) == 2332
    assert receivable(database, h.sub.id, h.quote) == 0
    assert verify(database).ok


def test_a_short_wallet_books_the_shortfall_as_a_receivable(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    [trade_id] = accrued_trades(database, settings, h, 1)
    pay_all(database)
    # The sub-IB spent all but 1.00 of the 3.11 paid out.
    with unit_of_work(database) as session:
        adjust(
            session,
            user_id=h.sub.id,
            asset=h.quote,
            amount=211,
            credit=False,
            reason="spent",
            context=Context(actor="system", idempotency_key=f"test:{uuid.uuid4()}"),
        )
    with unit_of_work(database) as session:
        done = service.claw_back(session, trade_id, "trade busted")
    assert (done.from_wallet, done.to_receivable) == (100 + 155, 211)
    assert balance(database, h.sub.id, h.quote) == 0  # never negative
    assert receivable(database, h.sub.id, h.quote) == -211  # owed by the sub-IB
    assert balance(database, h.ib.id, h.quote) == 0
    assert receivable(database, h.ib.id, h.quote) == 0
    assert fees(database, h.quote) == 2332
    with unit_of_work(database) as session:
        assert service.claw_back(session, trade_id, "again").accruals == 0
    assert receivable(database, h.sub.id, h.quote) == -211
    assert verify(database).ok
