"""Wire shapes of the ledger API. Amounts are decimal strings, never numbers."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bourse.assets.amounts import AmountText
from bourse.inputs import JsonInt
from bourse.ledger.models import AccountKind, HoldState


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AssetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    scale: int
    name: str
    active: bool


class AssetIn(_In):
    code: str = Field(description="2 to 12 upper-case letters and digits, e.g. USD or BTC")
    scale: JsonInt = Field(description="Decimals of the asset, 0 to 8. It can never change later.")
    name: str


class AssetPatch(_In):
    active: bool


class WalletOut(BaseModel):
    asset: str
    available: str
    held: str
    available_account_id: uuid.UUID | None
    held_account_id: uuid.UUID | None


class WalletsOut(BaseModel):
    wallets: list[WalletOut]


class StatementLineOut(BaseModel):
    seq: int
    entry_id: uuid.UUID
    kind: str
    amount: str
    balance_after: str
    created_at: datetime


class StatementOut(BaseModel):
    account_id: uuid.UUID
    asset: str
    kind: AccountKind
    balance: str
    postings: list[StatementLineOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page; null on the last page")


class EntryPostingOut(BaseModel):
    account_id: uuid.UUID
    account_kind: AccountKind
    asset: str
    amount: str
    balance_after: str


class EntryOut(BaseModel):
    id: uuid.UUID
    kind: str
    created_at: datetime
    reverses_id: uuid.UUID | None
    metadata: dict[str, Any]
    postings: list[EntryPostingOut]


class HoldOut(BaseModel):
    id: uuid.UUID
    asset: str
    amount: str
    captured: str
    released: str
    remaining: str
    state: HoldState
    reference: str | None
    created_at: datetime


class HoldsOut(BaseModel):
    holds: list[HoldOut]


class TransferIn(_In):
    to_user_id: uuid.UUID
    asset: str
    amount: AmountText


class TransferOut(BaseModel):
    entry_id: uuid.UUID
    from_user_id: uuid.UUID
    to_user_id: uuid.UUID
    asset: str
    amount: str
    created_at: datetime


class Direction(StrEnum):
    credit = "credit"
    debit = "debit"


class AdjustmentIn(_In):
    user_id: uuid.UUID
    asset: str
    amount: AmountText
    direction: Direction
    reason: str = Field(min_length=3, max_length=500, description="Why; kept in the journal with the operator's id")


class AdjustmentOut(BaseModel):
    entry_id: uuid.UUID
    user_id: uuid.UUID
    asset: str
    amount: str
    direction: Direction
    reason: str
    operator_id: uuid.UUID
    created_at: datetime


class ReversalIn(_In):
    reason: str = Field(min_length=3, max_length=500)


class ReversalOut(BaseModel):
    entry_id: uuid.UUID
    reverses_id: uuid.UUID
    created_at: datetime
