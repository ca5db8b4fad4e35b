"""Ledger tables.

- ``accounts`` hold one asset each and carry their balance, the number of
  postings so far (``seq``) and the hash at the head of their chain.
- ``journal_entries`` and ``postings`` are append-only (database triggers
  refuse UPDATE and DELETE). Every entry's postings sum to zero per asset.
- ``holds`` track two-phase transfers: money parked in the user's ``held``
  account until it is captured or released.

See docs/decisions/0009-ledger-locking.md for how balances change safely.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from bourse.db import Base
from bourse.sqltypes import BigId, StrEnumType, UTCDateTime, enum_values, utcnow

GENESIS_HASH = "0" * 64


class AccountKind(StrEnum):
    # A user's own money, free to use.
    available = "available"
    # A user's money reserved by holds (open orders, pending withdrawals).
    held = "held"
    # Money in transit with a payment provider; ``ref`` names the connector.
    psp_clearing = "psp_clearing"
    # Trading fees collected.
    fees = "fees"
    # Commissions owed to introducing brokers, not yet paid out.
    commissions_payable = "commissions_payable"
    # The brokerage's own equity: the other side of adjustments and rounding.
    house = "house"
    # What a user owes after a refund or chargeback of money already spent; ``ref``
    # is the user's id. Negative while owed (the user's withdrawals are blocked).
    chargeback_receivable = "chargeback_receivable"


USER_KINDS = frozenset({AccountKind.available, AccountKind.held})
_USER_KINDS_SQL = ", ".join(f"'{kind.value}'" for kind in sorted(USER_KINDS))


class HoldState(StrEnum):
    open = "open"
    captured = "captured"
    released = "released"


class Account(Base):
    __tablename__ = "accounts"
    __table_args__ = (
        UniqueConstraint("kind", "ref", "asset", name="uq_accounts_kind_ref_asset"),
        CheckConstraint(f"kind IN ({enum_values(AccountKind)})", name="kind"),
        CheckConstraint(f"(kind IN ({_USER_KINDS_SQL})) = (user_id IS NOT NULL)", name="user_kinds_have_a_user"),
        # The last line of defence: the service refuses first, with a clear code.
        CheckConstraint(f"kind NOT IN ({_USER_KINDS_SQL}) OR balance >= 0", name="user_balance_not_negative"),
        CheckConstraint("seq >= 0", name="seq_not_negative"),
        Index("ix_accounts_user_id", "user_id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[AccountKind] = mapped_column(StrEnumType(AccountKind))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    user_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"), default=None)
    # What makes the account unique beside kind and asset: the user's id for
    # user accounts, the connector for a PSP clearing account, "" otherwise.
    ref: Mapped[str] = mapped_column(String(64), default="")
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64), default=GENESIS_HASH)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class JournalEntry(Base):
    __tablename__ = "journal_entries"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(32))
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    # ``metadata`` is reserved on declarative classes, hence the attribute name.
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # Who caused it: "user:<id>", "system", or "job:<name>".
    actor: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    # A correction points at the entry it reverses; an entry is reversed at most once.
    reverses_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("journal_entries.id"), unique=True, default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Posting(Base):
    __tablename__ = "postings"
    __table_args__ = (
        UniqueConstraint("account_id", "seq", name="uq_postings_account_id_seq"),
        CheckConstraint("amount <> 0", name="amount_not_zero"),
        Index("ix_postings_entry_id", "entry_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("journal_entries.id"))
    account_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("accounts.id"))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    amount: Mapped[int] = mapped_column(BigInteger)
    # This posting's place in its account's chain (1, 2, ...) and the balance after it.
    seq: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class Hold(Base):
    __tablename__ = "holds"
    __table_args__ = (
        CheckConstraint(f"state IN ({enum_values(HoldState)})", name="state"),
        CheckConstraint("amount > 0 AND captured >= 0 AND released >= 0", name="amounts_not_negative"),
        CheckConstraint("captured + released <= amount", name="not_over_settled"),
        Index("ix_holds_user_id", "user_id"),
        Index("ix_holds_held_account_id_state", "held_account_id", "state"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    available_account_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("accounts.id"))
    held_account_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)
    captured: Mapped[int] = mapped_column(BigInteger, default=0)
    released: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[HoldState] = mapped_column(StrEnumType(HoldState), default=HoldState.open)
    # What the hold is for, e.g. "order:<id>" or "withdrawal:<id>".
    reference: Mapped[str | None] = mapped_column(String(128), default=None)
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("journal_entries.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    @property
    def remaining(self) -> int:
        return self.amount - self.captured - self.released
