"""Wire shapes of the payments API. Amounts are decimal strings, never numbers."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from bourse.assets.amounts import AmountText
from bourse.inputs import Day
from bourse.payments.models import DepositState, WithdrawalState


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


ConnectorName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=500)]


class DepositIn(_In):
    asset: str
    amount: AmountText
    connector: ConnectorName | None = Field(default=None, description="The first active connector if omitted")


class AuditOut(BaseModel):
    from_state: str | None
    to_state: str
    actor: str
    reason: str | None
    request_id: str | None
    at: datetime


class DepositOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    asset: str
    amount: str
    connector: str
    state: DepositState
    psp_reference: str | None
    checkout_url: str | None
    received_amount: str | None = None
    received_currency: str | None = None
    reversed_amount: str
    failure_reason: str | None
    created_at: datetime
    settled_at: datetime | None
    credited_at: datetime | None
    audit: list[AuditOut] | None = None


class DepositsOut(BaseModel):
    data: list[DepositOut]
    next_before: datetime | None


class WithdrawalIn(_In):
    asset: str
    amount: AmountText
    destination: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] = Field(
        description="Where the provider pays: an IBAN, an account or a wallet address"
    )
    connector: ConnectorName | None = None
    totp_code: str | None = Field(default=None, description="Required when the user has two-factor sign-in on")


class ApprovalOut(BaseModel):
    operator_id: uuid.UUID
    at: datetime


class WithdrawalOut(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    asset: str
    amount: str
    connector: str
    destination: str
    state: WithdrawalState
    required_approvals: int
    approvals: list[ApprovalOut]
    hold_id: uuid.UUID
    psp_reference: str | None
    failure_reason: str | None
    created_at: datetime
    settled_at: datetime | None
    audit: list[AuditOut] | None = None


class WithdrawalsOut(BaseModel):
    data: list[WithdrawalOut]
    next_before: datetime | None


class ApproveIn(_In):
    reason: Reason | None = None


class RejectIn(_In):
    reason: Reason


class ReviewIn(_In):
    """An operator's decision on a deposit under review: always with a reason, kept in the audit trail."""

    reason: Reason


class WebhookAck(BaseModel):
    received: bool
    duplicate: bool


class ReconcileIn(_In):
    connector: ConnectorName
    day: Day


class ReportOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    connector: str
    day: date
    psp_transactions: int
    matched: int
    mismatch_count: int
    missing_here: list[dict[str, Any]]
    missing_at_psp: list[dict[str, Any]]
    mismatches: list[dict[str, Any]]
    actor: str
    created_at: datetime


class ReportsOut(BaseModel):
    data: list[ReportOut]
