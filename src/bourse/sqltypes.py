"""Column types every domain shares: aware UTC timestamps and string enums."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import DateTime, TypeDecorator

# A 64-bit auto-incrementing key: BIGINT on PostgreSQL; on SQLite only an
# INTEGER PRIMARY KEY auto-increments (and it is 64-bit there anyway).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend.

    PostgreSQL stores ``timestamptz``; SQLite has no time zones and hands back
    naive values, which could not be compared with ``datetime.now(UTC)``. Values
    are stored in UTC and always come back aware. Naive values are refused.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - base signature
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:  # noqa: ARG002 - base signature
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


E = TypeVar("E", bound=StrEnum)


class StrEnumType(TypeDecorator[E]):
    """A ``StrEnum`` stored as its value in a VARCHAR, loaded back as the enum.

    A VARCHAR with a CHECK constraint (declared on the table, see
    :func:`enum_values`) rather than a native PostgreSQL enum: adding a value
    later is then an ordinary migration on both backends.
    """

    impl = String(32)
    cache_ok = True

    def __init__(self, enum: type[E]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: E | str | None, dialect: Dialect) -> str | None:  # noqa: ARG002 - base signature
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: Any, dialect: Dialect) -> E | None:  # noqa: ARG002 - base signature
        return None if value is None else self.enum(value)


def enum_values(enum: type[StrEnum]) -> str:
    """``'a', 'b'`` for a CHECK constraint ``column IN (...)``."""
    return ", ".join(f"'{member.value}'" for member in enum)
