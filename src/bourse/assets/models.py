"""The assets table: what can be held, and its number of decimals."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from bourse.assets.amounts import MAX_SCALE
from bourse.db import Base
from bourse.sqltypes import UTCDateTime, utcnow

# Upper-case letters and digits, 2 to 12 characters: ISO 4217 codes, tickers.
ASSET_CODE_PATTERN = r"[A-Z][A-Z0-9]{1,11}"


class Asset(Base):
    """A currency or coin. Its scale never changes once it exists.

    Changing the scale would silently reinterpret every stored amount (1250
    minor units are USD 12.50 at scale 2 and USD 1.250 at scale 3), so there is
    no operation for it; a new scale means a new asset code.
    """

    __tablename__ = "assets"
    __table_args__ = (CheckConstraint(f"scale >= 0 AND scale <= {MAX_SCALE}", name="scale_range"),)

    code: Mapped[str] = mapped_column(String(12), primary_key=True)
    scale: Mapped[int] = mapped_column(SmallInteger)
    name: Mapped[str] = mapped_column(String(64))
    # An inactive asset keeps its accounts and history but takes no new money.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
