"""What every API input must fit before it reaches a query or any arithmetic.

Everything a client sends is bounded where it is parsed, so that no value can reach
PostgreSQL or SQLite (or Python's own date arithmetic) that they cannot hold. A value
outside these bounds is malformed input: ``422``, never a ``500``.

- **Integers** in a path or a query are 64-bit, like the BIGINT columns they are
  compared with: :data:`Id` (a BIGINT key such as an order or a trade) and
  :data:`Offset` (how many rows to skip). Page sizes carry their own, smaller bounds
  at each route. An integer in a JSON body is :data:`JsonInt` or :data:`StrictJsonInt`:
  within +/-(2**53 - 1), the integers every JSON client reads exactly (the schema
  states that bound exactly, which it could not for 2**63 - 1); the service then
  checks its own range with its own code. Out of range is ``422 validation_error``.
- **Times** are :data:`Timestamp` (a date and time; one without a time zone is read as
  UTC) and :data:`Day` (a calendar day), both from 1970 up to the end of 2999. Out of
  range is ``422 time_out_of_range``.
- **Text** holds no control character (Unicode category Cc: U+0000 to U+001F and
  U+007F to U+009F). PostgreSQL text cannot hold U+0000 at all, and no field of Bourse
  is meant to hold any of them, so they are refused rather than stripped. The routes
  of the API check every path, query and header parameter and every string and key
  of a JSON body (see :mod:`bourse.api.routing`): ``422 control_character``, naming
  the field.

This module is plain pydantic, so request bodies (``schemas.py``) and route
parameters share the same types.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt
from pydantic_core import PydanticCustomError

from bourse.errors import field_error_code, refused_with

INT64_MAX = 2**63 - 1

Id = Annotated[int, Field(ge=1, le=INT64_MAX)]
"""A BIGINT key: a positive 64-bit integer."""

Offset = Annotated[int, Field(ge=0, le=INT64_MAX)]
"""How many rows to skip: 0 or more, within 64 bits."""

JSON_SAFE_MAX = 2**53 - 1

JsonInt = Annotated[int, Field(ge=-JSON_SAFE_MAX, le=JSON_SAFE_MAX)]
"""An integer field of a JSON body; the service checks its own range."""

StrictJsonInt = Annotated[StrictInt, Field(ge=-JSON_SAFE_MAX, le=JSON_SAFE_MAX)]
"""Like :data:`JsonInt`, but a JSON integer only (no ``"3"``, no ``3.0``)."""

# -- Times ------------------------------------------------------------------------------

EARLIEST_TIME = datetime(1970, 1, 1, tzinfo=UTC)
END_OF_TIME = datetime(3000, 1, 1, tzinfo=UTC)  # exclusive
EARLIEST_DAY = EARLIEST_TIME.date()
LATEST_DAY = date(2999, 12, 31)

TIME_OUT_OF_RANGE = field_error_code("time_out_of_range")


def _bounded_timestamp(value: datetime) -> datetime:
    # Compared while still in its own offset: converting first could overflow.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not EARLIEST_TIME <= aware < END_OF_TIME:
        raise PydanticCustomError(TIME_OUT_OF_RANGE, "A time is from 1970-01-01T00:00:00Z to the end of 2999")
    return aware.astimezone(UTC)


def _bounded_day(value: date) -> date:
    if not EARLIEST_DAY <= value <= LATEST_DAY:
        raise PydanticCustomError(TIME_OUT_OF_RANGE, "A day is from 1970-01-01 to 2999-12-31")
    return value


Timestamp = Annotated[
    datetime,
    AfterValidator(_bounded_timestamp),
    Field(
        description="An ISO 8601 date and time from 1970 to 2999; without an offset it is read as UTC",
        json_schema_extra=refused_with(TIME_OUT_OF_RANGE),
    ),
]
"""A point in time, aware and in UTC once parsed."""

Day = Annotated[
    date,
    AfterValidator(_bounded_day),
    Field(description="A day (YYYY-MM-DD) from 1970 to 2999", json_schema_extra=refused_with(TIME_OUT_OF_RANGE)),
]
"""A calendar day."""

# -- Text -------------------------------------------------------------------------------

CONTROL_CHARACTER = field_error_code("control_character")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Location = tuple[str | int, ...]


def has_control_character(text: str) -> bool:
    return _CONTROL.search(text) is not None


def control_characters(value: Any, location: Location) -> Iterator[Location]:
    """Where, in a decoded JSON value, a string or an object key holds a control character.

    Iterative, so a deeply nested document cannot exhaust the stack.
    """
    pending: deque[tuple[Any, Location]] = deque([(value, location)])
    while pending:
        current, at = pending.popleft()
        if isinstance(current, str):
            if has_control_character(current):
                yield at
        elif isinstance(current, dict):
            for key, item in current.items():
                if isinstance(key, str) and has_control_character(key):
                    yield (*at, key)
                pending.append((item, (*at, key)))
        elif isinstance(current, list):
            pending.extend((item, (*at, index)) for index, item in enumerate(current))
