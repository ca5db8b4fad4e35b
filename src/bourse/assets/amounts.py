"""Exact money: integer minor units inside Bourse, decimal strings on the wire.

An amount of an asset with scale ``s`` is stored as an integer number of minor
units, ``value * 10**s``: USD 12.50 is ``1250``, BTC 0.00000001 is ``1``. Those
integers go into BIGINT columns, so every amount must fit in a signed 64-bit
integer. On the wire an amount is a JSON *string* such as ``"12.50"``: a JSON
number would pass through a float in most clients, and a float cannot hold 0.1.

Parsing is strict and never rounds. The grammar is ``digits[.digits]`` with an
optional leading ``-`` (so a negative amount gets the precise refusal
``amount_not_positive`` rather than a syntax error). Exponents, ``+``, spaces,
``"1."`` and ``".5"`` are refused, because a money field with a surprising
reading is worse than a refused one. A value with more decimals than the
asset's scale is refused even when the extra digits are zeros, so that what a
client sends is exactly what Bourse stores and echoes.

See docs/decisions/0008-money-and-rounding.md.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field
from pydantic_core import PydanticCustomError

from bourse.errors import Unprocessable, field_error_code, refused_with

MAX_SCALE = 8
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

_AMOUNT = re.compile(r"(-?)(0|[1-9][0-9]*)(?:\.([0-9]+))?")
# Enough digits for any int64 at any scale, with room for leading zeros of the
# fraction; longer strings are refused before any arithmetic on them.
_MAX_TEXT = 40
_POW10: tuple[int, ...] = tuple(10**n for n in range(MAX_SCALE + 1))


class AmountError(Unprocessable):
    """Base class of the amount refusals; all are 422."""

    code = "amount_invalid"


class AmountInvalid(AmountError):
    code = "amount_invalid"


class AmountMustBeString(AmountError):
    code = "amount_must_be_string"


class AmountPrecision(AmountError):
    code = "amount_precision"


class AmountNotPositive(AmountError):
    code = "amount_not_positive"


class AmountTooLarge(AmountError):
    code = "amount_too_large"


def check_scale(scale: int) -> int:
    if not 0 <= scale <= MAX_SCALE:
        raise ValueError(f"an asset's scale is between 0 and {MAX_SCALE}, not {scale}")
    return scale


def parse_amount(text: str, scale: int, *, positive: bool = True) -> int:
    """The exact number of minor units ``text`` denotes at ``scale``.

    Raises an :class:`AmountError` subclass; never rounds.
    """
    check_scale(scale)
    if not isinstance(text, str):
        raise AmountMustBeString('Amounts are decimal strings such as "12.50", not JSON numbers')
    match = _AMOUNT.fullmatch(text) if len(text) <= _MAX_TEXT else None
    if match is None:
        raise AmountInvalid(f'{text[:_MAX_TEXT]!r} is not a decimal amount such as "12.50"')
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if len(fraction) > scale:
        raise AmountPrecision(f"{text!r} has {len(fraction)} decimals; this asset allows at most {scale}")
    minor = int(whole) * _POW10[scale] + (int(fraction.ljust(scale, "0")) if scale else 0)
    if sign:
        minor = -minor
    if minor > INT64_MAX or minor < INT64_MIN:
        raise AmountTooLarge(f"{text!r} is beyond the largest amount Bourse can hold")
    if positive and minor <= 0:
        raise AmountNotPositive(f"The amount must be greater than zero, not {text!r}")
    return minor


def format_amount(minor: int, scale: int) -> str:
    """Minor units as the wire string, always with exactly ``scale`` decimals."""
    check_scale(scale)
    if isinstance(minor, bool) or not isinstance(minor, int):
        raise TypeError(f"amounts are integers of minor units, not {type(minor).__name__}")
    sign = "-" if minor < 0 else ""
    digits = str(abs(minor)).rjust(scale + 1, "0")
    if scale == 0:
        return f"{sign}{digits}"
    return f"{sign}{digits[:-scale]}.{digits[-scale:]}"


_MUST_BE_STRING = field_error_code("amount_must_be_string")
_INVALID = field_error_code("amount_invalid")


def _must_be_string(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError(_MUST_BE_STRING, 'Amounts are decimal strings such as "12.50", not JSON numbers')
    raise PydanticCustomError(_INVALID, 'An amount is a decimal string such as "12.50"')


# A request field holding an amount. Its scale depends on the asset named next
# to it, so only the type is checked here; services call parse_amount().
AmountText = Annotated[
    str,
    BeforeValidator(_must_be_string),
    Field(
        description='A decimal string in the asset\'s units, e.g. "12.50"',
        examples=["12.50"],
        # The grammar, for clients and schema checks; parse_amount() enforces it with its own codes.
        json_schema_extra={
            "pattern": r"^-?(0|[1-9][0-9]*)(\.[0-9]+)?$",
            "maxLength": _MAX_TEXT,
            **refused_with(_MUST_BE_STRING, _INVALID),
        },
    ),
]
