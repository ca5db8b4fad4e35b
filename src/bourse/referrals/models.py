"""Referral tables: referral codes, referral links and commission plans.

``referrals.user_id`` is the primary key: a user is referred at most once, for
ever. The link is written in the transaction that creates the user, from a code
an existing IB owns, so a user can never be their own referrer and the graph
can never have a cycle; both are still refused by the database and the code
that walks it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, String, Uuid, text
from sqlalchemy.orm import Mapped, mapped_column

from bourse.db import Base
from bourse.sqltypes import StrEnumType, UTCDateTime, enum_values, utcnow

CODE_MIN_LENGTH = 6
CODE_MAX_LENGTH = 32


class PlanKind(StrEnum):
    """How an IB's commission is computed.

    ``percent_of_fee``: basis points of the fee the referred client paid, per level
    of the upline. ``per_lot``: a fixed amount of the quote asset per lot traded,
    level 1 only.
    """

    percent_of_fee = "percent_of_fee"
    per_lot = "per_lot"


_PLAN_KINDS = enum_values(PlanKind)


class ReferralCode(Base):
    """A code an IB hands out. Deactivated codes stay, so a code is never reused."""

    __tablename__ = "referral_codes"
    __table_args__ = (
        CheckConstraint(f"length(code) >= {CODE_MIN_LENGTH} AND length(code) <= {CODE_MAX_LENGTH}", name="code_length"),
    )

    # Upper-case letters, digits and "-" (checked by the service).
    code: Mapped[str] = mapped_column(String(CODE_MAX_LENGTH), primary_key=True)
    ib_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"), index=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Referral(Base):
    """``user_id`` was referred by ``ib_user_id`` with ``code``."""

    __tablename__ = "referrals"
    __table_args__ = (
        CheckConstraint("user_id <> ib_user_id", name="not_self"),
        Index("ix_referrals_ib_user_id_created_at", "ib_user_id", "created_at"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"), primary_key=True)
    ib_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    code: Mapped[str] = mapped_column(String(CODE_MAX_LENGTH), ForeignKey("referral_codes.code"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CommissionPlan(Base):
    """One version of an IB's commission plan, in force from ``valid_from`` until ``valid_to``.

    The current plan has no ``valid_to``; a partial unique index allows one per IB.
    Replacing a plan closes the current row rather than editing it, so the plan in
    force at any past moment can still be found.
    """

    __tablename__ = "commission_plans"
    __table_args__ = (
        CheckConstraint(f"kind IN ({_PLAN_KINDS})", name="kind"),
        CheckConstraint("valid_to IS NULL OR valid_to >= valid_from", name="valid_period"),
        Index("ix_commission_plans_ib_user_id_valid_from", "ib_user_id", "valid_from"),
        Index(
            "ix_commission_plans_one_current",
            "ib_user_id",
            unique=True,
            postgresql_where=text("valid_to IS NULL"),
            sqlite_where=text("valid_to IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    ib_user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    kind: Mapped[PlanKind] = mapped_column(StrEnumType(PlanKind))
    # percent_of_fee: {"levels": [bps, ...]}; per_lot: {"amounts": {symbol: "decimal"}}.
    terms: Mapped[dict[str, Any]] = mapped_column(JSON)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime())
    valid_to: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The admin who set the plan.
    created_by: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("users.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
