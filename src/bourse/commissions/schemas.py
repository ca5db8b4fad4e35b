"""Response bodies of the IB commission reports and payouts. Amounts are decimal strings."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

GroupBy = Literal["day", "client", "instrument"]


class CommissionLineOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str  # the day (YYYY-MM-DD), the client's user id or the instrument symbol
    asset: str
    amount: str
    accruals: int


class CommissionsOut(BaseModel):
    group_by: GroupBy
    start: date | None
    end: date | None
    lines: list[CommissionLineOut]


class PayoutOut(BaseModel):
    id: uuid.UUID
    asset: str
    amount: str
    accruals: int
    entry_id: uuid.UUID
    created_at: datetime


class PayoutsOut(BaseModel):
    payouts: list[PayoutOut]


class PayoutDetailOut(PayoutOut):
    statement: dict[str, Any]
