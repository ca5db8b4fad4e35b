"""The rounding policy: exact until the last step, then down to the minor unit.

Fees and commissions are computed from rates (basis points, percentages, IB
shares). Each rate is an exact :class:`fractions.Fraction`, built from an
integer or a decimal string and never from a float. A chain of rates is
multiplied exactly, and only the final amount is rounded, **down**, to a whole
minor unit. Rounding down means Bourse never charges a client more than the
stated rate, and never pays a commission it did not earn.

When one collected amount is split between several parties (an introducing
broker's share of a fee, say), each share is rounded down and the remainder
(always less than one minor unit per share) goes to the house account. So the
parts always add up to exactly the total: money is neither created nor lost.

See docs/decisions/0008-money-and-rounding.md.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction

_RATE = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]{1,18}))?")

BPS = 10_000


def rate(value: str | int | Fraction) -> Fraction:
    """An exact, non-negative rate from ``"0.0025"``, ``1`` or a Fraction. Floats are refused."""
    if isinstance(value, bool | float):
        raise TypeError("rates are exact: pass a decimal string, an int or a Fraction, never a float")
    if isinstance(value, Fraction):
        result = value
    elif isinstance(value, int):
        result = Fraction(value)
    else:
        match = _RATE.fullmatch(value)
        if match is None:
            raise ValueError(f"{value!r} is not a decimal rate such as '0.0025'")
        result = Fraction(value)
    if result < 0:
        raise ValueError(f"a rate is never negative, not {value!r}")
    return result


def bps(basis_points: int) -> Fraction:
    """A rate in basis points: ``bps(25)`` is 0.25%."""
    if isinstance(basis_points, bool) or not isinstance(basis_points, int) or basis_points < 0:
        raise ValueError(f"basis points are a non-negative integer, not {basis_points!r}")
    return Fraction(basis_points, BPS)


def portion(amount: int, *rates: Fraction) -> int:
    """``amount`` times every rate, exactly, rounded down once at the end."""
    if amount < 0:
        raise ValueError("portion() takes a non-negative amount of minor units")
    exact = Fraction(amount)
    for factor in rates:
        exact *= factor
    return exact.numerator // exact.denominator


@dataclass(frozen=True, slots=True)
class Split:
    """A total split into rounded-down parts; ``house`` is what is left over."""

    parts: Mapping[str, int]
    house: int

    @property
    def total(self) -> int:
        return sum(self.parts.values()) + self.house


def split(total: int, shares: Mapping[str, Fraction]) -> Split:
    """Give each party its share of ``total`` rounded down; the house keeps the rest.

    The shares must add up to at most 1. ``split(1001, {"ib": rate("0.3")})``
    gives the IB 300 and the house 701, the 0.3 unit of rounding included.
    """
    if total < 0:
        raise ValueError("split() takes a non-negative amount of minor units")
    if sum(shares.values(), Fraction(0)) > 1:
        raise ValueError("the shares of a split add up to more than the whole")
    parts = {name: portion(total, share) for name, share in shares.items()}
    return Split(parts=parts, house=total - sum(parts.values()))
