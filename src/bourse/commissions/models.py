"""Commission accruals (one per trade, side and upline level) and the payouts that settle them.

Amounts are integers in the quote asset's minor units. An accrual is written in the
transaction that posts its ledger entry, so the rows and the money never disagree.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, SmallInteger, String, Uuid
from sqlalchemy import UniqueConstraint as Unique
from sqlalchemy.orm import Mapped, mapped_column

from bourse.db import Base
from bourse.sqltypes import BigId, UTCDateTime, utcnow

SIDES = ("maker", "taker")
MAX_REASON = 200


class CommissionPayout(Base):
    """One IB's commissions in one asset moved from ``commissions_payable`` to their wallet.

    ``statement`` lists what was paid, grouped by trading day, client and instrument.
    """

    __tablename__ = "commission_payouts"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("accruals > 0", name="accruals_positive"),
        Index("ix_commission_payouts_ib_user_id_created_at", "ib_user_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    ib_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    amount: Mapped[int] = mapped_column(BigInteger)
    accruals: Mapped[int] = mapped_column(Integer)
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("journal_entries.id"))
    statement: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CommissionAccrual(Base):
    """What one IB earned at one level of one side (maker or taker) of one trade.

    ``payout_id`` is set once paid out; ``clawed_back_at`` once reversed (a busted
    trade). Only positive amounts are recorded: a level that earns nothing leaves no row.
    """

    __tablename__ = "commission_accruals"
    __table_args__ = (
        Unique("trade_id", "side", "level"),
        CheckConstraint("side IN ('maker', 'taker')", name="side"),
        CheckConstraint("level >= 1", name="level_positive"),
        CheckConstraint("amount > 0 AND amount <= fee", name="amount_within_fee"),
        Index("ix_commission_accruals_ib_user_id_traded_at", "ib_user_id", "traded_at"),
        Index("ix_commission_accruals_payout_id", "payout_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    trade_id: Mapped[int] = mapped_column(BigId, ForeignKey("trades.id"))
    side: Mapped[str] = mapped_column(String(5))
    level: Mapped[int] = mapped_column(SmallInteger)
    ib_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    client_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    plan_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("commission_plans.id"))
    instrument: Mapped[str] = mapped_column(String(25), ForeignKey("instruments.symbol"))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    fee: Mapped[int] = mapped_column(BigInteger)
    amount: Mapped[int] = mapped_column(BigInteger)
    entry_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("journal_entries.id"))
    traded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    payout_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("commission_payouts.id"), default=None)
    clawed_back_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    clawback_entry_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("journal_entries.id"), default=None)
    clawback_reason: Mapped[str | None] = mapped_column(String(MAX_REASON), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
