"""Commission accrual, payout and clawback.

**Who earns what.** For each side of a trade (the maker with the maker fee, the taker
with the taker fee) the side's user's upline (:func:`bourse.referrals.service.upline`)
earns, level by level, what *each IB's own plan* in force at the trade's time
(:func:`bourse.referrals.service.plan_at`) gives the level that IB sits at:

- ``percent_of_fee``: ``levels[n - 1]`` basis points of the fee at level ``n`` (an IB
  whose plan has fewer levels earns nothing that deep), each amount floored;
- ``per_lot``: only at level 1, the plan's amount for the instrument times the lots
  traded (``quantity // lot_size``), converted at the quote asset's scale and floored.

Plans are set per IB, so a level-1 IB cannot decide what the IBs above them earn.
Because every IB's plan is checked on its own, the levels together could ask for more
than the fee: amounts are granted in level order (level 1 first) and capped at what
is left of the fee, so the total never exceeds it. Whatever is not granted, rounding
included, stays in ``fees``.

**Money.** Accrual moves the amounts from ``fees`` to each IB's ``commissions_payable``
(ref: the IB's user id) in one entry per (trade, side). A payout moves an IB's unpaid
accruals in one asset to their ``available`` wallet. A clawback (a busted trade) moves
unpaid accruals back from ``commissions_payable`` to ``fees``, and paid ones from the
IB's wallet, booking any shortfall on their ``chargeback_receivable`` so that no
wallet goes negative. Every step is idempotent: its rows and its ledger keys say
whether it already happened.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import format_amount
from bourse.assets.models import Asset
from bourse.commissions.errors import PayoutNotFound
from bourse.commissions.models import MAX_REASON, CommissionAccrual, CommissionPayout
from bourse.ledger.accounts import AccountKey, lock_accounts, system_account, user_account
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Leg, post_entry
from bourse.logging import get_logger
from bourse.referrals.models import PlanKind
from bourse.referrals.service import Plan, plan_at, split_commission, upline
from bourse.sqltypes import utcnow
from bourse.trading.errors import TradeNotFound
from bourse.trading.models import Instrument, Trade

log = get_logger(__name__)

ACCRUE_JOB = "commissions.accrue"
PAYOUT_JOB = "commissions.payout"


# -- The arithmetic (pure) ----------------------------------------------------------------


def per_lot_amount(amount_text: str, lots: int, quote_scale: int) -> int:
    """``amount_text`` (a decimal in quote units) times ``lots``, in quote minor units, floored.

    The product is taken before rounding, so ``"0.005"`` per lot on 10 lots at scale 2
    is 5 minor units, not 0.
    """
    if lots < 0:
        raise ValueError("lots are never negative")
    whole, _, fraction = amount_text.partition(".")
    numerator = int(whole + fraction) if (whole + fraction) else 0
    places: int = 10 ** len(fraction)
    unit: int = 10**quote_scale
    return numerator * lots * unit // places


def level_commission(plan: Plan | None, level: int, *, fee: int, symbol: str, lots: int, quote_scale: int) -> int:
    """What ``plan`` asks for at ``level`` (1-based) of one side of a trade, before the cap."""
    if plan is None:
        return 0
    if plan.kind is PlanKind.percent_of_fee:
        if level > len(plan.levels):
            return 0
        return split_commission(fee, [plan.levels[level - 1]])[0]
    if level != 1:
        return 0
    amount = plan.amounts.get(symbol)
    return 0 if amount is None else per_lot_amount(amount, lots, quote_scale)


def cap_to_fee(fee: int, wanted: Sequence[int]) -> list[int]:
    """Grant ``wanted`` (level 1 first) out of ``fee``: each level gets at most what is left."""
    if fee < 0 or any(amount < 0 for amount in wanted):
        raise ValueError("a fee and the commissions on it are never negative")
    left = fee
    granted: list[int] = []
    for amount in wanted:
        take = min(amount, left)
        granted.append(take)
        left -= take
    return granted


# -- Accrual ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Accrued:
    trade_id: int
    side: str
    entries: int  # ledger entries posted by this run: 0 when already accrued or nothing is due
    amounts: dict[int, int]  # level -> amount granted (only positive ones), this run or before


def _payable(session: Session, ib_user_id: uuid.UUID, asset: str) -> uuid.UUID:
    return system_account(session, AccountKind.commissions_payable, asset, ref=str(ib_user_id))


def _fees(session: Session, asset: str) -> uuid.UUID:
    return system_account(session, AccountKind.fees, asset)


def _accrue_side(  # noqa: PLR0917 - one side of one trade
    session: Session,
    trade: Trade,
    instrument: Instrument,
    side: str,
    client: uuid.UUID,
    fee: int,
    max_depth: int,
    actor: str,
) -> Accrued:
    existing = session.scalars(
        select(CommissionAccrual).where(CommissionAccrual.trade_id == trade.id, CommissionAccrual.side == side)
    ).all()
    if existing:
        return Accrued(trade.id, side, 0, {row.level: row.amount for row in existing})
    chain = upline(session, client, max_depth) if fee > 0 else []
    plans = [plan_at(session, ib, trade.created_at) for ib in chain]
    lots = trade.quantity // instrument.lot_size
    wanted = [
        level_commission(plan, level, fee=fee, symbol=instrument.symbol, lots=lots, quote_scale=instrument.quote_scale)
        for level, plan in enumerate(plans, start=1)
    ]
    granted = cap_to_fee(fee, wanted)
    if not any(granted):
        return Accrued(trade.id, side, 0, {})
    asset = instrument.quote_asset
    legs = [Leg(_fees(session, asset), -sum(granted))]
    legs += [Leg(_payable(session, ib, asset), amount) for ib, amount in zip(chain, granted, strict=True) if amount]
    posted = post_entry(
        session,
        kind="commission",
        legs=legs,
        idempotency_key=f"commission:{trade.id}:{side}",
        actor=actor,
        metadata={"trade_id": trade.id, "side": side, "instrument": instrument.symbol},
    )
    amounts: dict[int, int] = {}
    for level, (ib, plan, amount) in enumerate(zip(chain, plans, granted, strict=True), start=1):
        if not amount or plan is None:
            continue
        amounts[level] = amount
        session.add(
            CommissionAccrual(
                trade_id=trade.id,
                side=side,
                level=level,
                ib_user_id=ib,
                client_user_id=client,
                plan_id=plan.id,
                instrument=instrument.symbol,
                asset=asset,
                fee=fee,
                amount=amount,
                entry_id=posted.entry_id,
                traded_at=trade.created_at,
            )
        )
    session.flush()
    log.info("commission_accrued", trade_id=trade.id, side=side, levels=amounts, entry_id=str(posted.entry_id))
    return Accrued(trade.id, side, 1, amounts)


def accrue(session: Session, trade_id: int, *, max_depth: int, actor: str = "system:commissions") -> list[Accrued]:
    """Accrue the commissions on both sides of a trade. Running it again changes nothing."""
    # The trade row is locked, as a bust locks it: an accrual and a bust of the same trade
    # run one after the other, so the bust claws back whatever the accrual granted.
    trade = session.scalar(
        select(Trade).where(Trade.id == trade_id).with_for_update().execution_options(populate_existing=True)
    )
    if trade is None:
        raise TradeNotFound(f"There is no trade {trade_id}")
    if trade.busted_at is not None:
        # A bust claws back what was accrued; a job that runs after it must not grant it again.
        log.info("commission_skipped_busted_trade", trade_id=trade_id)
        return []
    instrument = session.get_one(Instrument, trade.instrument)
    return [
        _accrue_side(session, trade, instrument, "maker", trade.maker_user_id, trade.maker_fee, max_depth, actor),
        _accrue_side(session, trade, instrument, "taker", trade.taker_user_id, trade.taker_fee, max_depth, actor),
    ]


# -- Payout -------------------------------------------------------------------------------


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def due_payouts(session: Session, through: date) -> list[tuple[uuid.UUID, str]]:
    """(IB, asset) pairs with unpaid accruals of trades up to the end of ``through`` (UTC)."""
    rows = session.execute(
        select(CommissionAccrual.ib_user_id, CommissionAccrual.asset)
        .where(
            CommissionAccrual.payout_id.is_(None),
            CommissionAccrual.clawed_back_at.is_(None),
            CommissionAccrual.traded_at < _day_start(through + timedelta(days=1)),
        )
        .distinct()
        .order_by(CommissionAccrual.ib_user_id, CommissionAccrual.asset)
    ).all()
    return [(row[0], row[1]) for row in rows]


def _scale(session: Session, asset: str) -> int:
    return int(session.get_one(Asset, asset).scale)


def build_statement(accruals: Iterable[CommissionAccrual], scale: int) -> dict[str, Any]:
    """The payout's statement: one line per (trading day, client, instrument), sorted."""
    groups: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for row in accruals:
        key = (row.traded_at.astimezone(UTC).date().isoformat(), str(row.client_user_id), row.instrument)
        groups[key][0] += row.amount
        groups[key][1] += 1
    lines = [
        {
            "day": day,
            "client_user_id": client,
            "instrument": instrument,
            "amount": format_amount(amount, scale),
            "amount_minor": amount,
            "accruals": count,
        }
        for (day, client, instrument), (amount, count) in sorted(groups.items())
    ]
    return {"lines": lines}


def pay_out(
    session: Session, ib_user_id: uuid.UUID, asset: str, *, through: date, actor: str = "system:commissions"
) -> CommissionPayout | None:
    """Pay the IB their unpaid accruals in ``asset`` up to the end of ``through``; None if none."""
    accruals = session.scalars(
        select(CommissionAccrual)
        .where(
            CommissionAccrual.ib_user_id == ib_user_id,
            CommissionAccrual.asset == asset,
            CommissionAccrual.payout_id.is_(None),
            CommissionAccrual.clawed_back_at.is_(None),
            CommissionAccrual.traded_at < _day_start(through + timedelta(days=1)),
        )
        .order_by(CommissionAccrual.id)
        .with_for_update()
    ).all()
    if not accruals:
        return None
    amount = sum(row.amount for row in accruals)
    payout_id = uuid.uuid4()
    posted = post_entry(
        session,
        kind="commission_payout",
        legs=[
            Leg(_payable(session, ib_user_id, asset), -amount),
            Leg(user_account(session, ib_user_id, asset), amount),
        ],
        idempotency_key=f"commission-payout:{payout_id}",
        actor=actor,
        metadata={"ib_user_id": str(ib_user_id), "payout_id": str(payout_id), "through": through.isoformat()},
    )
    payout = CommissionPayout(
        id=payout_id,
        ib_user_id=ib_user_id,
        asset=asset,
        amount=amount,
        accruals=len(accruals),
        entry_id=posted.entry_id,
        statement={"through": through.isoformat(), **build_statement(accruals, _scale(session, asset))},
        created_at=utcnow(),
    )
    session.add(payout)
    session.flush()
    for row in accruals:
        row.payout_id = payout_id
    session.flush()
    log.info("commission_paid_out", ib_user_id=str(ib_user_id), asset=asset, amount=amount, payout_id=str(payout_id))
    return payout


def pay_out_all(session: Session, through: date, *, actor: str = "system:commissions") -> list[CommissionPayout]:
    """Every IB's payout in every asset, in one transaction (the CLI's path)."""
    paid = [pay_out(session, ib, asset, through=through, actor=actor) for ib, asset in due_payouts(session, through)]
    return [payout for payout in paid if payout is not None]


def get_payout(session: Session, payout_id: uuid.UUID, *, ib_user_id: uuid.UUID) -> CommissionPayout:
    payout = session.get(CommissionPayout, payout_id)
    if payout is None or payout.ib_user_id != ib_user_id:
        raise PayoutNotFound("No such payout")
    return payout


def list_payouts(
    session: Session, ib_user_id: uuid.UUID, *, limit: int = 100, offset: int = 0
) -> list[CommissionPayout]:
    return list(
        session.scalars(
            select(CommissionPayout)
            .where(CommissionPayout.ib_user_id == ib_user_id)
            .order_by(CommissionPayout.created_at.desc(), CommissionPayout.id)
            .limit(limit)
            .offset(offset)
        )
    )


# -- Clawback -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClawedBack:
    trade_id: int
    accruals: int  # reversed by this call (0 when already done or nothing was accrued)
    from_payable: int
    from_wallet: int
    to_receivable: int


def claw_back(session: Session, trade_id: int, reason: str, *, actor: str = "system:commissions") -> ClawedBack:
    """Reverse every commission accrued on a trade (a busted trade), in one ledger entry.

    Unpaid accruals go back from ``commissions_payable`` to ``fees``. Paid ones come
    out of the IB's ``available`` wallet as far as it reaches; the rest is booked
    on the IB's ``chargeback_receivable`` (negative while owed). Idempotent: a second
    call finds nothing left to reverse.
    """
    if session.get(Trade, trade_id) is None:
        raise TradeNotFound(f"There is no trade {trade_id}")
    rows = session.scalars(
        select(CommissionAccrual)
        .where(CommissionAccrual.trade_id == trade_id, CommissionAccrual.clawed_back_at.is_(None))
        .order_by(CommissionAccrual.id)
        .with_for_update()
    ).all()
    if not rows:
        return ClawedBack(trade_id, 0, 0, 0, 0)
    asset = rows[0].asset  # a trade's fees are all in its quote asset
    unpaid: dict[uuid.UUID, int] = defaultdict(int)
    paid: dict[uuid.UUID, int] = defaultdict(int)
    for row in rows:
        (unpaid if row.payout_id is None else paid)[row.ib_user_id] += row.amount
    # Every account the entry may post to, locked in one statement in the ledger's order before
    # any wallet is read, so the split between wallet and receivable holds until commit. A paid
    # IB's receivable is opened (empty) if it does not exist yet.
    fees: AccountKey = (AccountKind.fees, asset, None)
    keys: list[AccountKey] = [(AccountKind.commissions_payable, asset, ib) for ib in unpaid]
    for ib in paid:
        keys += [(AccountKind.available, asset, ib), (AccountKind.chargeback_receivable, asset, ib)]
    locked = lock_accounts(session, [*keys, fees])
    legs: list[Leg] = []
    for ib, amount in sorted(unpaid.items()):
        legs.append(Leg(locked[AccountKind.commissions_payable, asset, ib].id, -amount))
    from_wallet = to_receivable = 0
    for ib, amount in sorted(paid.items()):
        wallet = locked[AccountKind.available, asset, ib]
        take = min(amount, max(wallet.balance, 0))
        if take:
            legs.append(Leg(wallet.id, -take))
        if amount - take:
            legs.append(Leg(locked[AccountKind.chargeback_receivable, asset, ib].id, -(amount - take)))
        from_wallet += take
        to_receivable += amount - take
    total = sum(row.amount for row in rows)
    legs.append(Leg(locked[fees].id, total))
    short_reason = reason.strip()[:MAX_REASON] or "clawback"
    posted = post_entry(
        session,
        kind="commission_clawback",
        legs=legs,
        idempotency_key=f"commission-clawback:{trade_id}:{rows[0].id}",
        actor=actor,
        metadata={"trade_id": trade_id, "reason": short_reason},
    )
    now = utcnow()
    for row in rows:
        row.clawed_back_at = now
        row.clawback_entry_id = posted.entry_id
        row.clawback_reason = short_reason
    session.flush()
    result = ClawedBack(trade_id, len(rows), sum(unpaid.values()), from_wallet, to_receivable)
    log.info(
        "commission_clawed_back",
        trade_id=trade_id,
        accruals=len(rows),
        from_payable=result.from_payable,
        from_wallet=from_wallet,
        to_receivable=to_receivable,
    )
    return result


# -- Reports ------------------------------------------------------------------------------

GROUPS = ("day", "client", "instrument")


@dataclass(frozen=True)
class ReportLine:
    key: str
    asset: str
    amount: str
    accruals: int


def report(
    session: Session,
    ib_user_id: uuid.UUID,
    *,
    group_by: str,
    start: date | None = None,
    end: date | None = None,
) -> list[ReportLine]:
    """The IB's accruals (clawed-back ones excluded) summed per group and asset.

    ``start`` and ``end`` are inclusive UTC trading days.
    """
    if group_by not in GROUPS:
        raise ValueError(f"group_by is one of {GROUPS}")
    query = select(CommissionAccrual).where(
        CommissionAccrual.ib_user_id == ib_user_id, CommissionAccrual.clawed_back_at.is_(None)
    )
    if start is not None:
        query = query.where(CommissionAccrual.traded_at >= _day_start(start))
    if end is not None:
        query = query.where(CommissionAccrual.traded_at < _day_start(end + timedelta(days=1)))
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    # Grouped here rather than in SQL: a UTC day is extracted differently by each backend.
    for row in session.scalars(query):
        if group_by == "day":
            key = row.traded_at.astimezone(UTC).date().isoformat()
        elif group_by == "client":
            key = str(row.client_user_id)
        else:
            key = row.instrument
        sums[key, row.asset][0] += row.amount
        sums[key, row.asset][1] += 1
    scales = {
        code: int(scale)
        for code, scale in session.execute(select(Asset.code, Asset.scale).where(Asset.code.in_({a for _, a in sums})))
    }
    return [
        ReportLine(key=key, asset=asset, amount=format_amount(amount, scales[asset]), accruals=count)
        for (key, asset), (amount, count) in sorted(sums.items())
    ]


def unpaid_total(session: Session, ib_user_id: uuid.UUID, asset: str) -> int:
    return int(
        session.scalar(
            select(func.coalesce(func.sum(CommissionAccrual.amount), 0)).where(
                CommissionAccrual.ib_user_id == ib_user_id,
                CommissionAccrual.asset == asset,
                CommissionAccrual.payout_id.is_(None),
                CommissionAccrual.clawed_back_at.is_(None),
            )
        )
        or 0
    )
