"""Parsing and formatting exact amounts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bourse.assets.amounts import (
    INT64_MAX,
    MAX_SCALE,
    AmountInvalid,
    AmountMustBeString,
    AmountNotPositive,
    AmountPrecision,
    AmountTooLarge,
    format_amount,
    parse_amount,
)


@pytest.mark.parametrize(
    ("text", "scale", "minor"),
    [
        ("12.50", 2, 1250),
        ("12.5", 2, 1250),
        ("12", 2, 1200),
        ("0.01", 2, 1),
        ("0.00000001", 8, 1),
        ("21000000", 8, 2_100_000_000_000_000),
        ("7", 0, 7),
        ("92233720368547758.07", 2, INT64_MAX),
    ],
)
def test_parse(text: str, scale: int, minor: int) -> None:
    assert parse_amount(text, scale) == minor


@pytest.mark.parametrize(
    ("minor", "scale", "text"),
    [(1250, 2, "12.50"), (1, 2, "0.01"), (0, 2, "0.00"), (-5, 2, "-0.05"), (1, 8, "0.00000001"), (7, 0, "7")],
)
def test_format(minor: int, scale: int, text: str) -> None:
    assert format_amount(minor, scale) == text


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("12.501", AmountPrecision),
        ("12.500", AmountPrecision),  # trailing zeros beyond the scale are refused too
        ("0", AmountNotPositive),
        ("0.00", AmountNotPositive),
        ("-1", AmountNotPositive),
        ("92233720368547758.08", AmountTooLarge),
        ("99999999999999999999999", AmountTooLarge),
        ("1e3", AmountInvalid),
        ("+1", AmountInvalid),
        (" 1", AmountInvalid),
        ("1.", AmountInvalid),
        (".5", AmountInvalid),
        ("01", AmountInvalid),
        ("1,5", AmountInvalid),
        ("NaN", AmountInvalid),
        ("Infinity", AmountInvalid),
        ("١٢", AmountInvalid),  # non-ASCII digits
        ("", AmountInvalid),
        ("1" * 41, AmountInvalid),
    ],
)
def test_refusals_have_their_own_codes(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_amount(text, 2)


def test_codes_are_the_documented_ones() -> None:
    assert AmountMustBeString.code == "amount_must_be_string"
    assert AmountPrecision.code == "amount_precision"
    assert AmountNotPositive.code == "amount_not_positive"
    assert AmountTooLarge.code == "amount_too_large"
    assert {AmountPrecision.status_code, AmountTooLarge.status_code, AmountMustBeString.status_code} == {422}


@pytest.mark.parametrize("value", [12.5, 12, True, None])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(AmountMustBeString):
        parse_amount(value, 2)  # type: ignore[arg-type]


def test_format_refuses_floats_and_bad_scales() -> None:
    with pytest.raises(TypeError):
        format_amount(1.5, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale"):
        format_amount(1, MAX_SCALE + 1)


def test_non_positive_allowed_when_asked() -> None:
    assert parse_amount("-0.05", 2, positive=False) == -5
    assert parse_amount("0", 2, positive=False) == 0


scales = st.integers(min_value=0, max_value=MAX_SCALE)


@given(minor=st.integers(min_value=1, max_value=INT64_MAX), scale=scales)
def test_format_then_parse_round_trips(minor: int, scale: int) -> None:
    assert parse_amount(format_amount(minor, scale), scale) == minor


@given(minor=st.integers(min_value=-INT64_MAX, max_value=INT64_MAX), scale=scales)
def test_round_trip_including_negatives_and_zero(minor: int, scale: int) -> None:
    text = format_amount(minor, scale)
    assert parse_amount(text, scale, positive=False) == minor
    # Exactly `scale` decimals, always.
    assert (text.split(".")[1] if "." in text else "") == ("" if scale == 0 else text[-scale:])


@given(whole=st.integers(min_value=0, max_value=10**9), fraction=st.text("0123456789", min_size=1, max_size=8))
def test_parse_then_format_keeps_the_value(whole: int, fraction: str) -> None:
    text = f"{whole}.{fraction}"
    minor = parse_amount(text, 8, positive=False)
    assert format_amount(minor, 8) == f"{whole}.{fraction.ljust(8, '0')}"
