"""Deposits, withdrawals, the provider event inbox, the audit trail and reconciliation reports."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from bourse.db import Base
from bourse.sqltypes import BigId, StrEnumType, UTCDateTime, enum_values, utcnow


class DepositState(StrEnum):
    pending = "pending"  # the payer has not finished the checkout
    succeeded = "succeeded"  # credited
    failed = "failed"  # declined or abandoned at the provider
    expired = "expired"  # left pending too long
    needs_review = "needs_review"  # the provider's amount or currency did not match: nothing credited
    refunded = "refunded"  # credited, then returned to the payer
    charged_back = "charged_back"  # credited, then disputed by the payer


class WithdrawalState(StrEnum):
    pending_review = "pending_review"  # waiting for operators' approval
    approved = "approved"  # a payout job is queued
    processing = "processing"  # the provider accepted the payout
    succeeded = "succeeded"  # paid: the hold was captured
    failed = "failed"  # the provider refused or failed it: the hold was released
    cancelled = "cancelled"  # by the client, while pending review
    rejected = "rejected"  # by an operator, with a reason


# A withdrawal still counts against the daily limit unless it ended without paying.
UNPAID_WITHDRAWAL_STATES = frozenset({WithdrawalState.failed, WithdrawalState.cancelled, WithdrawalState.rejected})


class Deposit(Base):
    __tablename__ = "deposits"
    __table_args__ = (
        CheckConstraint(f"state IN ({enum_values(DepositState)})", name="state"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("reversed_amount >= 0 AND reversed_amount <= amount", name="reversed_within_amount"),
        CheckConstraint("refunded_amount >= 0 AND refunded_amount <= reversed_amount", name="refunded_within_reversed"),
        UniqueConstraint("connector", "psp_reference", name="uq_deposits_connector_psp_reference"),
        Index("ix_deposits_user_id_created_at", "user_id", "created_at"),
        Index("ix_deposits_state_created_at", "state", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    amount: Mapped[int] = mapped_column(BigInteger)
    connector: Mapped[str] = mapped_column(String(32))
    state: Mapped[DepositState] = mapped_column(StrEnumType(DepositState), default=DepositState.pending)
    psp_reference: Mapped[str | None] = mapped_column(String(128), default=None)
    checkout_url: Mapped[str | None] = mapped_column(String(1024), default=None)
    # What the provider said arrived, when it differs from what was asked (needs_review).
    received_amount: Mapped[int | None] = mapped_column(BigInteger, default=None)
    received_currency: Mapped[str | None] = mapped_column(String(12), default=None)
    # Refunds and chargebacks reverse at most the credited amount, in total.
    reversed_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    # The refunds' part of it: providers report refunds as a running total.
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0)
    failure_reason: Mapped[str | None] = mapped_column(String(255), default=None)
    credit_entry_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("journal_entries.id"), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # When the provider says the money moved, and when Bourse credited it.
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    credited_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class Withdrawal(Base):
    __tablename__ = "withdrawals"
    __table_args__ = (
        CheckConstraint(f"state IN ({enum_values(WithdrawalState)})", name="state"),
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("required_approvals >= 0 AND required_approvals <= 2", name="required_approvals_range"),
        UniqueConstraint("connector", "psp_reference", name="uq_withdrawals_connector_psp_reference"),
        Index("ix_withdrawals_user_id_created_at", "user_id", "created_at"),
        Index("ix_withdrawals_state_created_at", "state", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    asset: Mapped[str] = mapped_column(String(12), ForeignKey("assets.code"))
    amount: Mapped[int] = mapped_column(BigInteger)
    connector: Mapped[str] = mapped_column(String(32))
    destination: Mapped[str] = mapped_column(String(200))
    state: Mapped[WithdrawalState] = mapped_column(StrEnumType(WithdrawalState))
    required_approvals: Mapped[int] = mapped_column(SmallInteger, default=0)
    hold_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("holds.id"), unique=True)
    psp_reference: Mapped[str | None] = mapped_column(String(128), default=None)
    failure_reason: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    settled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class WithdrawalApproval(Base):
    __tablename__ = "withdrawal_approvals"
    __table_args__ = (UniqueConstraint("withdrawal_id", "operator_id", name="uq_withdrawal_approvals_operator"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    withdrawal_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("withdrawals.id"))
    operator_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PspEvent(Base):
    """The inbox: every verified provider event, stored once under its provider id."""

    __tablename__ = "psp_events"
    __table_args__ = (
        UniqueConstraint("connector", "event_id", name="uq_psp_events_connector_event_id"),
        Index("ix_psp_events_processed_at", "processed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    connector: Mapped[str] = mapped_column(String(32))
    event_id: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))
    provider_type: Mapped[str] = mapped_column(String(64))
    reference: Mapped[str | None] = mapped_column(String(128), default=None)
    psp_reference: Mapped[str | None] = mapped_column(String(128), default=None)
    amount: Mapped[int | None] = mapped_column(BigInteger, default=None)
    currency: Mapped[str | None] = mapped_column(String(12), default=None)
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The body exactly as received, for audit and reprocessing.
    body: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # What processing did: applied, duplicate, recorded (not applied), unmatched.
    outcome: Mapped[str | None] = mapped_column(String(32), default=None)
    note: Mapped[str | None] = mapped_column(String(255), default=None)


class PaymentAudit(Base):
    """Every state change of a deposit or a withdrawal: who, why, from what to what."""

    __tablename__ = "payment_audit"
    __table_args__ = (Index("ix_payment_audit_subject", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subject_type: Mapped[str] = mapped_column(String(16))  # "deposit" or "withdrawal"
    subject_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    from_state: Mapped[str | None] = mapped_column(String(32), default=None)
    to_state: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ReconciliationReport(Base):
    __tablename__ = "reconciliation_reports"
    __table_args__ = (Index("ix_reconciliation_reports_connector_day", "connector", "day"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    connector: Mapped[str] = mapped_column(String(32))
    day: Mapped[date] = mapped_column(Date)
    psp_transactions: Mapped[int] = mapped_column(Integer)
    matched: Mapped[int] = mapped_column(Integer)
    # Lists of {"kind", "psp_reference", "reference", "amount", "currency", ...}.
    missing_here: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    missing_at_psp: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    mismatches: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    mismatch_count: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
