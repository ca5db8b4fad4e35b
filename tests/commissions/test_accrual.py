"""Accrual from real trades on SQLite and PostgreSQL: exact multi-level amounts, per-lot plans,
the cap at the fee, and a job that credits once however often it runs."""

from __future__ import annotations

from sqlalchemy import func, select

from bourse.commissions.models import CommissionAccrual
from bourse.db import Database, unit_of_work
from bourse.ledger.models import JournalEntry
from bourse.queue.registry import JobContext, load_jobs
from bourse.settings import Settings
from tests.commissions.support import client_takes, fees, hierarchy, payable, queued, refer, run_accrual, set_plan
from tests.support.auth import make_user
from tests.support.ledger import fund, verify
from tests.trading.orders_support import new_user, place


def accruals(database: Database, trade_id: int) -> list[tuple[str, int, int]]:
    with unit_of_work(database) as session:
        rows = session.scalars(
            select(CommissionAccrual)
            .where(CommissionAccrual.trade_id == trade_id)
            .order_by(CommissionAccrual.side, CommissionAccrual.level)
        ).all()
        return [(row.side, row.level, row.amount) for row in rows]


def entries(database: Database, trade_id: int) -> int:
    with unit_of_work(database) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(JournalEntry)
                .where(JournalEntry.idempotency_key.like(f"commission:{trade_id}:%"))
            )
            or 0
        )


def test_two_levels_are_exact_and_the_remainder_stays_in_fees(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    trade = client_takes(database, h)
    # 7.777 at 1000.00 is 7,777.00 (777,700 minor units). The client took: 20 bps is 1555.4 -> 1555;
    # the unreferred maker paid 10 bps, 777.7 -> 777. Both sit in fees until the job runs.
    assert (trade.quote_amount, trade.taker_fee, trade.maker_fee) == (777_700, 1555, 777)
    assert fees(database, h.quote) == 2332
    assert queued(database, trade.id).job == "commissions.accrue"

    run_accrual(database, settings, trade.id)

    # Level 1 (the sub-IB's own plan, 2000 bps): 1555 * 0.2 = 311.0 -> 311.
    # Level 2 (the IB's own plan at its level 2, 1000 bps): 1555 * 0.1 = 155.5 -> 155.
    assert accruals(database, trade.id) == [("taker", 1, 311), ("taker", 2, 155)]
    assert payable(database, h.sub.id, h.quote) == 311
    assert payable(database, h.ib.id, h.quote) == 155
    assert fees(database, h.quote) == 2332 - 311 - 155  # 1866: the rest of both fees, rounding included
    assert verify(database).ok


def test_running_the_job_twice_credits_once(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    trade = client_takes(database, h)
    run_accrual(database, settings, trade.id, remove=False)
    run_accrual(database, settings, trade.id)
    assert accruals(database, trade.id) == [("taker", 1, 311), ("taker", 2, 155)]
    assert entries(database, trade.id) == 1
    assert payable(database, h.sub.id, h.quote) == 311
    assert payable(database, h.ib.id, h.quote) == 155
    assert fees(database, h.quote) == 1866
    assert verify(database).ok


def test_a_per_lot_plan_pays_at_level_one_only(database: Database, settings: Settings) -> None:
    h = hierarchy(database, sub_levels=[])
    set_plan(database, h.sub.id, amounts={h.symbol: "0.001"})
    trade = client_takes(database, h)
    run_accrual(database, settings, trade.id)
    # 7.777 is 7777 lots of 0.001; 7777 x 0.001 = 7.777 quote units -> 777 minor units, floored.
    # The IB above still earns its level-2 rate on the fee: 155.
    assert accruals(database, trade.id) == [("taker", 1, 777), ("taker", 2, 155)]
    assert fees(database, h.quote) == 2332 - 777 - 155
    assert verify(database).ok


def test_commissions_are_capped_at_the_fee_level_one_first(database: Database, settings: Settings) -> None:
    h = hierarchy(database, sub_levels=[])
    set_plan(database, h.sub.id, amounts={h.symbol: "1"})  # 7777.00 per trade: far more than the 15.55 fee
    trade = client_takes(database, h)
    run_accrual(database, settings, trade.id)
    # Level 1 takes the whole taker fee; nothing is left for level 2 (no row for a zero amount).
    assert accruals(database, trade.id) == [("taker", 1, 1555)]
    assert payable(database, h.ib.id, h.quote) == 0
    assert fees(database, h.quote) == 777  # the maker's fee only
    assert verify(database).ok


def test_both_sides_of_a_trade_accrue_separately(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    # The client rests the sell (maker); a client the IB referred directly takes it.

    taker = make_user(database)
    refer(database, h.ib.id, taker.id)  # level 1 under the IB: 3000 bps
    fund(database, h.client.id, h.base, 10**12)
    fund(database, taker.id, h.quote, 10**12)
    place(database, h.client.id, h.symbol, side="sell", price_text="1000.00", quantity_text="7.777")
    _, [trade] = place(database, taker.id, h.symbol, side="buy", price_text="1000.00", quantity_text="7.777")
    run_accrual(database, settings, trade.id)
    # Maker (the client) fee 777: sub 20% = 155 (155.4), IB 10% = 77 (77.7).
    # Taker fee 1555: the IB at level 1, 30% = 466 (466.5).
    assert accruals(database, trade.id) == [("maker", 1, 155), ("maker", 2, 77), ("taker", 1, 466)]
    assert entries(database, trade.id) == 2
    assert payable(database, h.ib.id, h.quote) == 77 + 466
    assert fees(database, h.quote) == 777 + 1555 - 155 - 77 - 466
    assert verify(database).ok


def test_a_trade_without_referred_users_accrues_nothing(database: Database, settings: Settings) -> None:
    h = hierarchy(database)

    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, h.base, 10**12)
    fund(database, buyer, h.quote, 10**12)
    place(database, seller, h.symbol, side="sell", price_text="1000.00", quantity_text="1")
    _, [trade] = place(database, buyer, h.symbol, side="buy", price_text="1000.00", quantity_text="1")
    run_accrual(database, settings, trade.id)
    assert accruals(database, trade.id) == []
    assert entries(database, trade.id) == 0
    assert verify(database).ok


def test_one_job_accrues_every_trade_of_a_matcher_batch(database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    makers = [new_user(database) for _ in range(3)]
    for maker in makers:
        fund(database, maker, h.base, 10**12)
        place(database, maker, h.symbol, side="sell", price_text="1000.00", quantity_text="1.000")
    fund(database, h.client.id, h.quote, 10**12)
    _, trades = place(database, h.client.id, h.symbol, side="buy", price_text="1000.00", quantity_text="3.000")
    assert len(trades) == 3
    jobs = {queued(database, trade.id).id for trade in trades}
    assert len(jobs) == 1  # one batch, one job naming its three trades
    run_accrual(database, settings, trades[0].id)
    for trade in trades:
        # 1,000.00 of notional, 20 bps taker fee: 200.00 -> 20000; level 1 gets 20%, level 2 10%.
        assert accruals(database, trade.id) == [("taker", 1, trade.taker_fee // 5), ("taker", 2, trade.taker_fee // 10)]
    assert verify(database).ok


def test_a_job_queued_for_one_trade_before_batches_still_accrues(database: Database, settings: Settings) -> None:
    """Jobs already queued when a matcher that batches is deployed name one ``trade_id``."""
    h = hierarchy(database)
    trade = client_takes(database, h)
    spec = load_jobs()["commissions.accrue"]
    with unit_of_work(database) as session:
        spec.handler(JobContext(session, {"trade_id": trade.id}, "legacy", 1, "commissions", None, settings))
    assert accruals(database, trade.id) == [("taker", 1, 311), ("taker", 2, 155)]
    run_accrual(database, settings, trade.id)  # the batch's own job then finds it done
    assert entries(database, trade.id) == 1
    assert verify(database).ok
