"""Fuzzing the amount parser: any input is an exact amount or an AmountError.

``parse_amount`` is the gate every money field passes through; whatever a client
sends (any text, any JSON value), it either returns an exact count of minor units
that formats back to the same value, or raises an :class:`AmountError` subclass
(a 422 with a stable code). Nothing else.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from bourse.assets.amounts import INT64_MAX, INT64_MIN, MAX_SCALE, AmountError, format_amount, parse_amount
from tests.support.fuzz import FUZZ, json_values

scales = st.integers(min_value=0, max_value=MAX_SCALE)
# Text that looks like a number more often than st.text() alone would produce.
numberish = st.one_of(
    st.text(max_size=60),
    st.text("0123456789.-+eE _,", max_size=45),
    st.from_regex(r"-?[0-9]{1,25}(\.[0-9]{0,12})?", fullmatch=True),
    st.sampled_from(
        ["\u0663", "\uff11\uff12", "1\u00a0000", "\u00b2", "1.\u0663", "0x10", "1e3", "Infinity", "NaN", "-0"]
    ),
)
_CANONICAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")


def parse_or_refuse(value: Any, scale: int, *, positive: bool = True) -> int | AmountError:
    """The parse, or the refusal; anything else raised fails the property."""
    try:
        return parse_amount(value, scale, positive=positive)
    except AmountError as exc:
        return exc


@FUZZ
@given(text=numberish, scale=scales, positive=st.booleans())
@example(text="92233720368547758.08", scale=2, positive=True)  # one past INT64_MAX
@example(text="-92233720368547758.08", scale=2, positive=False)  # INT64_MIN itself
@example(text="9" * 40, scale=8, positive=True)
def test_any_text_is_an_exact_amount_or_an_amount_error(text: str, scale: int, positive: bool) -> None:
    minor = parse_or_refuse(text, scale, positive=positive)
    if isinstance(minor, AmountError):
        assert minor.status_code == 422
        assert minor.code.startswith("amount_")
        return
    assert type(minor) is int
    assert INT64_MIN <= minor <= INT64_MAX
    if positive:
        assert minor > 0
    # What was accepted is a plain decimal and means exactly what formatting says.
    assert _CANONICAL.fullmatch(text)
    assert parse_amount(format_amount(minor, scale), scale, positive=False) == minor


@FUZZ
@given(value=json_values, scale=scales)
def test_any_json_value_is_an_amount_or_an_amount_error(value: Any, scale: int) -> None:
    if not isinstance(parse_or_refuse(value, scale), AmountError):
        assert isinstance(value, str)
