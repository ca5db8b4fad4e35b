"""split_commission: each level's share of a fee, rounded down; the house keeps the rest."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bourse.assets.rounding import BPS
from bourse.referrals.service import split_commission

fees = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def plans(draw: st.DrawFn) -> list[int]:
    """Level lists whose basis points add up to at most the whole fee."""
    levels: list[int] = []
    room = BPS
    for _ in range(draw(st.integers(min_value=0, max_value=5))):
        value = draw(st.integers(min_value=0, max_value=room))
        levels.append(value)
        room -= value
    return levels


@pytest.mark.parametrize(
    ("fee", "levels", "expected"),
    [
        (1001, [3000, 1000], [300, 100]),
        (1000, [3000, 1000], [300, 100]),
        (999, [3000, 1000], [299, 99]),
        (1, [5000, 5000], [0, 0]),
        (9, [3333, 3333, 3334], [2, 2, 3]),
        (12345, [10000], [12345]),
        (12345, [0, 0], [0, 0]),
        (0, [3000, 1000], [0, 0]),
        (500, [], []),
        (2**63 - 1, [1], [(2**63 - 1) // BPS]),
    ],
)
def test_examples_exact_to_the_minor_unit(fee: int, levels: list[int], expected: list[int]) -> None:
    assert split_commission(fee, levels) == expected


@given(fee=fees, levels=plans())
def test_each_level_is_its_share_rounded_down(fee: int, levels: list[int]) -> None:
    shares = split_commission(fee, levels)
    assert len(shares) == len(levels)
    for share, level in zip(shares, levels, strict=True):
        # share <= fee * level / BPS < share + 1, in integers.
        assert share * BPS <= fee * level < (share + 1) * BPS


@given(fee=fees, levels=plans())
def test_the_shares_never_exceed_the_fee_and_the_house_keeps_the_rest(fee: int, levels: list[int]) -> None:
    shares = split_commission(fee, levels)
    house = fee - sum(shares)
    assert 0 <= sum(shares) <= fee
    assert all(share >= 0 for share in shares)
    # The house keeps the unallocated part exactly, plus under one minor unit per level.
    unallocated = fee * (BPS - sum(levels))
    assert unallocated <= house * BPS < unallocated + max(1, len(levels)) * BPS


@pytest.mark.parametrize(
    ("fee", "levels"),
    [
        (-1, [1000]),
        (100, [10001]),
        (100, [-1]),
        (100, [6000, 4001]),
        (100, [True]),
        (True, [1000]),
        (100.0, [1000]),
        (100, [10.5]),
    ],
)
def test_refusals(fee: object, levels: list[object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each refusal has its own message
        split_commission(fee, levels)  # type: ignore[arg-type]
