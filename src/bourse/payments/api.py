"""Payments endpoints: deposits and withdrawals for clients, the provider webhook inbox,
and the operators' review, approval and reconciliation screens.

Clients see their own deposits and withdrawals only (another user's is a 404).
Creating either takes an ``Idempotency-Key``. Every state change is in the audit
trail, which operators read on the detail endpoints.
"""

from __future__ import annotations

import threading
import time
import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from bourse.api.errors import request_id_of
from bourse.api.routing import DbSession, router
from bourse.assets import errors as asset_errors
from bourse.assets import service as assets
from bourse.assets.amounts import AmountError, format_amount, parse_amount
from bourse.errors import family, raises
from bourse.idempotency.dependencies import Idempotent
from bourse.identity.dependencies import CurrentPrincipal, Principal, require_roles
from bourse.identity.errors import InvalidTotpCode, TotpRequired
from bourse.identity.models import Role
from bourse.inputs import Timestamp
from bourse.ledger.errors import InsufficientFunds
from bourse.logging import get_logger
from bourse.payments import deposits, queries, reconcile, withdrawals
from bourse.payments.audit import Actor, audit_trail
from bourse.payments.connectors import connector_named
from bourse.payments.errors import (
    AlreadyApproved,
    CoolingOff,
    DailyLimitExceeded,
    DepositCurrencyMismatch,
    DepositNotFound,
    InvalidState,
    ReceivedAmountUnknown,
    ReportNotFound,
    SelfApproval,
    UnknownConnector,
    WithdrawalNotFound,
    WithdrawalsBlocked,
)
from bourse.payments.inbox import receive as receive_event
from bourse.payments.models import Deposit, DepositState, ReconciliationReport, Withdrawal, WithdrawalState
from bourse.payments.schemas import (
    ApprovalOut,
    ApproveIn,
    AuditOut,
    DepositIn,
    DepositOut,
    DepositsOut,
    ReconcileIn,
    RejectIn,
    ReportOut,
    ReportsOut,
    ReviewIn,
    WebhookAck,
    WithdrawalIn,
    WithdrawalOut,
    WithdrawalsOut,
)
from bourse.psp.connectors.base import (
    Capability,
    ConnectorError,
    ExpiredSignature,
    InvalidSignature,
    MalformedEvent,
    PspRefused,
    PspUnavailable,
    Unsupported,
)
from bourse.settings import Settings

log = get_logger("bourse.payments.api")
security_log = get_logger("bourse.security")

payments = router(prefix="/api/v1", tags=["payments"])
inbox = router(prefix="/api/v1/psp", tags=["payments"])
payments_admin = router(prefix="/api/v1/admin", tags=["payments admin"])

Staff = Annotated[Principal, Depends(require_roles(Role.operator, Role.admin))]
Limit = Annotated[int, Query(ge=1, le=200)]
# A connector is named and then called: it may be unknown, unable, or fail.
CONNECTOR = (UnknownConnector, Unsupported)
PROVIDER = (ConnectorError, PspRefused, PspUnavailable)
# The webhook's body is the provider's signed event, read as bytes before any parsing.
_EVENT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The provider's event, exactly as signed",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }
}


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _actor(request: Request, principal: Principal) -> Actor:
    return Actor(f"user:{principal.user_id}", request_id_of(request))


def _scale(session: Session, code: str) -> int:
    return assets.scale_of(session, code)


def _audit(session: Session, subject: str, subject_id: uuid.UUID) -> list[AuditOut]:
    return [
        AuditOut(
            from_state=line.from_state,
            to_state=line.to_state,
            actor=line.actor,
            reason=line.reason,
            request_id=line.request_id,
            at=line.created_at,
        )
        for line in audit_trail(session, subject, subject_id)
    ]


def _deposit_out(session: Session, deposit: Deposit, *, with_audit: bool = False) -> DepositOut:
    scale = _scale(session, deposit.asset)
    return DepositOut(
        id=deposit.id,
        user_id=deposit.user_id,
        asset=deposit.asset,
        amount=format_amount(deposit.amount, scale),
        connector=deposit.connector,
        state=deposit.state,
        psp_reference=deposit.psp_reference,
        checkout_url=deposit.checkout_url,
        received_amount=format_amount(deposit.received_amount, scale) if deposit.received_amount is not None else None,
        received_currency=deposit.received_currency,
        reversed_amount=format_amount(deposit.reversed_amount, scale),
        failure_reason=deposit.failure_reason,
        created_at=deposit.created_at,
        settled_at=deposit.settled_at,
        credited_at=deposit.credited_at,
        audit=_audit(session, deposits.SUBJECT, deposit.id) if with_audit else None,
    )


def _withdrawal_out(session: Session, withdrawal: Withdrawal, *, with_audit: bool = False) -> WithdrawalOut:
    scale = _scale(session, withdrawal.asset)
    return WithdrawalOut(
        id=withdrawal.id,
        user_id=withdrawal.user_id,
        asset=withdrawal.asset,
        amount=format_amount(withdrawal.amount, scale),
        connector=withdrawal.connector,
        destination=withdrawal.destination,
        state=withdrawal.state,
        required_approvals=withdrawal.required_approvals,
        approvals=[
            ApprovalOut(operator_id=a.operator_id, at=a.created_at)
            for a in withdrawals.approvals_of(session, withdrawal.id)
        ],
        hold_id=withdrawal.hold_id,
        psp_reference=withdrawal.psp_reference,
        failure_reason=withdrawal.failure_reason,
        created_at=withdrawal.created_at,
        settled_at=withdrawal.settled_at,
        audit=_audit(session, withdrawals.SUBJECT, withdrawal.id) if with_audit else None,
    )


def _next_before(rows: list[Deposit] | list[Withdrawal], limit: int) -> datetime | None:
    return rows[-1].created_at if len(rows) == limit else None


# --- Deposits --------------------------------------------------------------------------


@raises(asset_errors.UnknownAsset, asset_errors.AssetInactive, *family(AmountError), *CONNECTOR, *PROVIDER)
@payments.post(
    "/deposits",
    status_code=201,
    summary="Start a deposit: returns the provider's checkout URL (on psp_unavailable nothing was kept: retry)",
    response_model=DepositOut,
)
def create_deposit(
    body: DepositIn, request: Request, session: DbSession, principal: CurrentPrincipal, idempotent: Idempotent
) -> JSONResponse:
    def produce() -> DepositOut:
        asset = assets.lookup(session, body.asset, for_new_money=True)
        amount = parse_amount(body.amount, asset.scale)
        connector = connector_named(_settings(request), body.connector, Capability.deposits)
        deposit = deposits.create(
            session,
            user_id=principal.user_id,
            asset=asset,
            amount=amount,
            connector=connector,
            actor=_actor(request, principal),
        )
        return _deposit_out(session, deposit)

    return idempotent.run(body, produce, status_code=201)


@payments.get("/deposits", summary="My deposits, newest first", response_model=DepositsOut)
def list_deposits(
    session: DbSession,
    principal: CurrentPrincipal,
    state: Annotated[list[DepositState] | None, Query()] = None,
    before: Timestamp | None = None,
    limit: Limit = 50,
) -> DepositsOut:
    rows = queries.listing(session, Deposit, user_id=principal.user_id, states=state or (), before=before, limit=limit)
    return DepositsOut(data=[_deposit_out(session, d) for d in rows], next_before=_next_before(rows, limit))


@raises(DepositNotFound)
@payments.get("/deposits/{deposit_id}", summary="One of my deposits", response_model=DepositOut)
def get_deposit(deposit_id: uuid.UUID, session: DbSession, principal: CurrentPrincipal) -> DepositOut:
    return _deposit_out(session, queries.get(session, Deposit, deposit_id, user_id=principal.user_id))


# --- Withdrawals -----------------------------------------------------------------------


@raises(
    asset_errors.UnknownAsset,
    *family(AmountError),
    *CONNECTOR,
    TotpRequired,
    InvalidTotpCode,
    InsufficientFunds,
    WithdrawalsBlocked,
    CoolingOff,
    DailyLimitExceeded,
)
@payments.post(
    "/withdrawals",
    status_code=201,
    summary="Ask to withdraw: the funds are held at once",
    response_model=WithdrawalOut,
)
def create_withdrawal(
    body: WithdrawalIn, request: Request, session: DbSession, principal: CurrentPrincipal, idempotent: Idempotent
) -> JSONResponse:
    def produce() -> WithdrawalOut:
        settings = _settings(request)
        # An inactive asset takes no new money, but what clients hold in it can still leave.
        asset = assets.lookup(session, body.asset)
        amount = parse_amount(body.amount, asset.scale)
        connector = connector_named(settings, body.connector, Capability.payouts)
        withdrawal = withdrawals.create(
            session,
            settings=settings,
            user_id=principal.user_id,
            asset=asset,
            amount=amount,
            destination=body.destination,
            connector=connector,
            totp_code=body.totp_code,
            actor=_actor(request, principal),
            idempotency_key=idempotent.ledger_key("withdrawal"),
        )
        return _withdrawal_out(session, withdrawal)

    return idempotent.run(body, produce, status_code=201)


@payments.get("/withdrawals", summary="My withdrawals, newest first", response_model=WithdrawalsOut)
def list_withdrawals(
    session: DbSession,
    principal: CurrentPrincipal,
    state: Annotated[list[WithdrawalState] | None, Query()] = None,
    before: Timestamp | None = None,
    limit: Limit = 50,
) -> WithdrawalsOut:
    rows = queries.listing(
        session, Withdrawal, user_id=principal.user_id, states=state or (), before=before, limit=limit
    )
    return WithdrawalsOut(data=[_withdrawal_out(session, w) for w in rows], next_before=_next_before(rows, limit))


@raises(WithdrawalNotFound)
@payments.get("/withdrawals/{withdrawal_id}", summary="One of my withdrawals", response_model=WithdrawalOut)
def get_withdrawal(withdrawal_id: uuid.UUID, session: DbSession, principal: CurrentPrincipal) -> WithdrawalOut:
    return _withdrawal_out(session, queries.get(session, Withdrawal, withdrawal_id, user_id=principal.user_id))


@raises(WithdrawalNotFound, InvalidState)
@payments.post(
    "/withdrawals/{withdrawal_id}/cancel",
    summary="Cancel my withdrawal while it waits for review; the funds are released",
    response_model=WithdrawalOut,
)
def cancel_withdrawal(
    withdrawal_id: uuid.UUID, request: Request, session: DbSession, principal: CurrentPrincipal
) -> WithdrawalOut:
    withdrawal = withdrawals.cancel(session, withdrawal_id, user_id=principal.user_id, actor=_actor(request, principal))
    return _withdrawal_out(session, withdrawal)


# --- The webhook inbox -----------------------------------------------------------------


class _SecurityLogLimiter:
    """At most one security log line per connector per interval, counting the rest.

    A flood of forged webhooks must not become a flood of log lines.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """The number of lines suppressed since the last one, or None to stay quiet."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(key, -self.interval) < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._suppressed.pop(key, 0)


_security_limiter = _SecurityLogLimiter()


async def _raw_body(request: Request) -> bytes:
    return await request.body()


@raises(*CONNECTOR, InvalidSignature, ExpiredSignature, MalformedEvent)
@inbox.post(
    "/{connector}/webhook",
    summary="Provider events (signed); stored once, processed by the queue (nothing is stored unless signed)",
    response_model=WebhookAck,
    openapi_extra=_EVENT_BODY,
)
def receive_webhook(
    connector: str, request: Request, session: DbSession, body: Annotated[bytes, Depends(_raw_body)]
) -> WebhookAck:
    active = connector_named(_settings(request), connector, Capability.webhooks)
    headers = {key.lower(): value for key, value in request.headers.items()}
    try:
        event = active.parse_webhook(body=body, headers=headers)
    except InvalidSignature as exc:
        suppressed = _security_limiter.allow(f"{connector}:{exc.code}")
        if suppressed is not None:
            security_log.warning(
                "webhook_signature_refused",
                connector=connector,
                error=exc.code,
                client=request.client.host if request.client else None,
                suppressed_since_last=suppressed,
            )
        raise
    received = receive_event(session, active.name, event, body)
    if received.duplicate:
        log.info("webhook_replayed", connector=connector, event_id=event.event_id)
    return WebhookAck(received=True, duplicate=received.duplicate)


# --- Operators -------------------------------------------------------------------------


@payments_admin.get("/withdrawals", summary="Withdrawals, e.g. those pending review", response_model=WithdrawalsOut)
def admin_list_withdrawals(
    session: DbSession,
    _staff: Staff,
    state: Annotated[list[WithdrawalState] | None, Query()] = None,
    user_id: uuid.UUID | None = None,
    before: Timestamp | None = None,
    limit: Limit = 50,
) -> WithdrawalsOut:
    rows = queries.listing(session, Withdrawal, user_id=user_id, states=state or (), before=before, limit=limit)
    return WithdrawalsOut(data=[_withdrawal_out(session, w) for w in rows], next_before=_next_before(rows, limit))


@raises(WithdrawalNotFound)
@payments_admin.get(
    "/withdrawals/{withdrawal_id}", summary="A withdrawal with its audit trail", response_model=WithdrawalOut
)
def admin_get_withdrawal(withdrawal_id: uuid.UUID, session: DbSession, _staff: Staff) -> WithdrawalOut:
    return _withdrawal_out(session, queries.get(session, Withdrawal, withdrawal_id), with_audit=True)


@raises(WithdrawalNotFound, SelfApproval, InvalidState, AlreadyApproved, WithdrawalsBlocked)
@payments_admin.post(
    "/withdrawals/{withdrawal_id}/approve",
    summary="Approve a withdrawal (four eyes: never your own; two operators above the second threshold)",
    response_model=WithdrawalOut,
)
def approve_withdrawal(
    withdrawal_id: uuid.UUID, body: ApproveIn, request: Request, session: DbSession, operator: Staff
) -> WithdrawalOut:
    withdrawal = withdrawals.approve(
        session,
        withdrawal_id,
        operator_id=operator.user_id,
        reason=body.reason,
        actor=_actor(request, operator),
    )
    return _withdrawal_out(session, withdrawal, with_audit=True)


@raises(WithdrawalNotFound, InvalidState)
@payments_admin.post(
    "/withdrawals/{withdrawal_id}/reject",
    summary="Reject a withdrawal with a reason; the funds are released",
    response_model=WithdrawalOut,
)
def reject_withdrawal(
    withdrawal_id: uuid.UUID, body: RejectIn, request: Request, session: DbSession, operator: Staff
) -> WithdrawalOut:
    withdrawal = withdrawals.reject(session, withdrawal_id, reason=body.reason, actor=_actor(request, operator))
    return _withdrawal_out(session, withdrawal, with_audit=True)


@payments_admin.get("/deposits", summary="Deposits, e.g. those that need review", response_model=DepositsOut)
def admin_list_deposits(
    session: DbSession,
    _staff: Staff,
    state: Annotated[list[DepositState] | None, Query()] = None,
    user_id: uuid.UUID | None = None,
    before: Timestamp | None = None,
    limit: Limit = 50,
) -> DepositsOut:
    rows = queries.listing(session, Deposit, user_id=user_id, states=state or (), before=before, limit=limit)
    return DepositsOut(data=[_deposit_out(session, d) for d in rows], next_before=_next_before(rows, limit))


@raises(DepositNotFound)
@payments_admin.get("/deposits/{deposit_id}", summary="A deposit with its audit trail", response_model=DepositOut)
def admin_get_deposit(deposit_id: uuid.UUID, session: DbSession, _staff: Staff) -> DepositOut:
    return _deposit_out(session, queries.get(session, Deposit, deposit_id), with_audit=True)


@raises(DepositNotFound, SelfApproval, InvalidState, ReceivedAmountUnknown, DepositCurrencyMismatch)
@payments_admin.post(
    "/deposits/{deposit_id}/credit",
    summary="Credit a deposit under review with the amount the provider reported as received (its own currency"
    " only; never your own deposit)",
    response_model=DepositOut,
)
def credit_reviewed_deposit(  # noqa: PLR0917 - FastAPI passes dependencies by name
    deposit_id: uuid.UUID, body: ReviewIn, request: Request, session: DbSession, operator: Staff, idempotent: Idempotent
) -> JSONResponse:
    def produce() -> DepositOut:
        deposit = deposits.credit_reviewed(
            session, deposit_id, operator_id=operator.user_id, reason=body.reason, actor=_actor(request, operator)
        )
        return _deposit_out(session, deposit, with_audit=True)

    return idempotent.run(body, produce)


@raises(DepositNotFound, SelfApproval, InvalidState)
@payments_admin.post(
    "/deposits/{deposit_id}/reject",
    summary="Refuse a deposit under review with a reason: it fails and nothing is credited (never your own deposit)",
    response_model=DepositOut,
)
def reject_reviewed_deposit(
    deposit_id: uuid.UUID, body: ReviewIn, request: Request, session: DbSession, operator: Staff
) -> DepositOut:
    deposit = deposits.reject_reviewed(
        session, deposit_id, operator_id=operator.user_id, reason=body.reason, actor=_actor(request, operator)
    )
    return _deposit_out(session, deposit, with_audit=True)


@payments_admin.get(
    "/reconciliation-reports", summary="Reconciliation reports, newest first", response_model=ReportsOut
)
def list_reports(session: DbSession, _staff: Staff, connector: str | None = None, limit: Limit = 30) -> ReportsOut:
    return ReportsOut(
        data=[ReportOut.model_validate(r) for r in reconcile.listing(session, connector=connector, limit=limit)]
    )


@raises(ReportNotFound)
@payments_admin.get(
    "/reconciliation-reports/{report_id}", summary="One reconciliation report", response_model=ReportOut
)
def get_report(report_id: uuid.UUID, session: DbSession, _staff: Staff) -> ReportOut:
    report = session.get(ReconciliationReport, report_id)
    if report is None:
        raise ReportNotFound(f"There is no report {report_id}")
    return ReportOut.model_validate(report)


@raises(*CONNECTOR, *PROVIDER)
@payments_admin.post(
    "/reconciliation-reports",
    status_code=201,
    summary="Reconcile one connector's day now",
    response_model=ReportOut,
)
def run_reconciliation(body: ReconcileIn, request: Request, session: DbSession, operator: Staff) -> ReportOut:
    connector = connector_named(_settings(request), body.connector, Capability.transactions)
    report = reconcile.reconcile(session, connector, body.day, actor=f"user:{operator.user_id}")
    return ReportOut.model_validate(report)
