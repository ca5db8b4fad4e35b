"""The pure commission arithmetic: a commission never exceeds the fee, whatever the plans."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bourse.commissions.service import cap_to_fee, level_commission, per_lot_amount
from bourse.referrals.models import PlanKind
from bourse.referrals.service import Plan

SYMBOL = "BTC-USD"


def plan(levels: tuple[int, ...] = (), amounts: dict[str, str] | None = None) -> Plan:
    return Plan(
        id=uuid.uuid4(),
        ib_user_id=uuid.uuid4(),
        kind=PlanKind.per_lot if amounts is not None else PlanKind.percent_of_fee,
        valid_from=datetime(2026, 1, 1, tzinfo=UTC),
        valid_to=None,
        created_by=None,
        levels=levels,
        amounts=amounts or {},
    )


def test_per_lot_is_multiplied_before_it_is_floored() -> None:
    assert per_lot_amount("0.005", 10, 2) == 5
    assert per_lot_amount("0.005", 1, 2) == 0
    assert per_lot_amount("1.5", 3, 2) == 450
    assert per_lot_amount("0", 1000, 8) == 0
    assert per_lot_amount("0.12345678", 3, 2) == 37  # 0.37037034 -> 37


def at(p: Plan | None, level: int) -> int:
    """A 15.55 fee on 7 lots at scale 2."""
    return level_commission(p, level, fee=1555, symbol=SYMBOL, lots=7, quote_scale=2)


def test_levels_read_each_plan_at_its_own_level() -> None:
    assert at(plan((3000, 1000)), 1) == 466
    assert at(plan((3000, 1000)), 2) == 155
    assert at(plan((3000,)), 2) == 0
    assert at(None, 1) == 0
    assert at(plan(amounts={SYMBOL: "0.10"}), 1) == 70
    assert at(plan(amounts={SYMBOL: "0.10"}), 2) == 0
    assert at(plan(amounts={"ETH-USD": "0.10"}), 1) == 0


def test_cap_grants_level_one_first() -> None:
    assert cap_to_fee(100, [70, 50, 10]) == [70, 30, 0]
    assert cap_to_fee(100, [10, 20]) == [10, 20]
    with pytest.raises(ValueError, match="never negative"):
        cap_to_fee(-1, [])


_levels = st.lists(st.integers(0, 10_000), min_size=1, max_size=5)
_amount = st.from_regex(r"(0|[1-9][0-9]{0,6})(\.[0-9]{1,8})?", fullmatch=True)


@given(
    fee=st.integers(0, 10**15),
    lots=st.integers(0, 10**6),
    scale=st.integers(0, 8),
    plans=st.lists(
        st.one_of(
            st.none(),
            _levels.filter(lambda ls: sum(ls) <= 10_000).map(lambda ls: plan(tuple(ls))),
            _amount.map(lambda a: plan(amounts={SYMBOL: a})),
        ),
        max_size=5,
    ),
)
def test_a_commission_never_exceeds_the_fee(fee: int, lots: int, scale: int, plans: list[Plan | None]) -> None:
    wanted = [
        level_commission(p, level, fee=fee, symbol=SYMBOL, lots=lots, quote_scale=scale)
        for level, p in enumerate(plans, start=1)
    ]
    granted = cap_to_fee(fee, wanted)
    assert sum(granted) <= fee
    assert all(0 <= g <= w for g, w in zip(granted, wanted, strict=True))
    if sum(wanted) <= fee:
        assert granted == wanted
