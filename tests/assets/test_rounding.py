"""The rounding policy: exact rates, one final round down, remainder to the house."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bourse.assets.rounding import bps, portion, rate, split


def test_rates_are_exact_and_never_floats() -> None:
    assert rate("0.0025") == Fraction(1, 400)
    assert rate("0.1") * 3 == Fraction(3, 10)  # a float would give 0.30000000000000004
    assert bps(25) == rate("0.0025")
    with pytest.raises(TypeError):
        rate(0.1)  # type: ignore[arg-type]
    for bad in ("-0.1", "1e-3", "abc", ".5"):
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies by input
            rate(bad)


def test_portion_rounds_down_once_at_the_end() -> None:
    # 0.25% of 1.99 USD is 0.4975 cents: the client pays 0, not 1.
    assert portion(199, bps(25)) == 0
    # Chained rates are multiplied exactly and rounded once: 30% of 0.25% of 1_399 is
    # 1.04925 -> 1. Rounding after the first step (3.4975 -> 3, then 0.9 -> 0) would give 0.
    assert portion(1_399, bps(25), rate("0.3")) == 1
    assert portion(portion(1_399, bps(25)), rate("0.3")) == 0
    assert portion(333, rate("1") / 3) == 111


def test_split_gives_the_remainder_to_the_house() -> None:
    result = split(1001, {"ib": rate("0.3")})
    assert result.parts == {"ib": 300}
    assert result.house == 701  # 700.7 of its own share plus the 0.3 the IB's share lost in rounding
    three = split(100, {"a": Fraction(1, 3), "b": Fraction(1, 3), "c": Fraction(1, 3)})
    assert three.parts == {"a": 33, "b": 33, "c": 33}
    assert three.house == 1


def test_split_refuses_more_than_the_whole() -> None:
    with pytest.raises(ValueError, match="more than the whole"):
        split(100, {"a": rate("0.6"), "b": rate("0.5")})


amounts = st.integers(min_value=0, max_value=2**63 - 1)
fractions = st.fractions(min_value=0, max_value=1, max_denominator=10**6)


@given(amount=amounts, factor=fractions)
def test_portion_is_the_floor_of_the_exact_value(amount: int, factor: Fraction) -> None:
    result = portion(amount, factor)
    exact = amount * factor
    assert result <= exact < result + 1


@given(total=amounts, shares=st.lists(st.fractions(min_value=0, max_value=Fraction(1, 4)), max_size=4))
def test_split_never_creates_or_loses_money(total: int, shares: list[Fraction]) -> None:
    result = split(total, {f"p{i}": share for i, share in enumerate(shares)})
    assert result.total == total
    assert result.house >= 0
    for name, share in zip(result.parts, shares, strict=True):
        assert result.parts[name] <= total * share < result.parts[name] + 1
