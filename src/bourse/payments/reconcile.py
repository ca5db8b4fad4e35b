"""Reconciliation: the provider's record of a day against ours.

Each provider transaction is matched to a deposit or a withdrawal by the
provider's reference, then compared by amount and currency. What the provider
settled that Bourse did not credit or pay is ``missing_here``; what Bourse
credited or paid that the provider does not list is ``missing_at_psp``.
Every run stores a report; nothing is corrected automatically: a mismatch is
for operators to investigate.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.payments.deposits import CREDITED
from bourse.payments.models import (
    Deposit,
    DepositState,
    ReconciliationReport,
    Withdrawal,
    WithdrawalState,
)
from bourse.psp.connectors.base import Capability, Connector, Transaction, TransactionKind

_REVERSED = {
    TransactionKind.refund: DepositState.refunded,
    TransactionKind.chargeback: DepositState.charged_back,
}


def _line(tx: Transaction, problem: str) -> dict[str, Any]:
    return {
        "kind": tx.kind.value,
        "psp_reference": tx.psp_reference,
        "reference": tx.reference,
        "amount": tx.amount,
        "currency": tx.currency,
        "problem": problem,
    }


def _compare(tx: Transaction, ours_amount: int, ours_asset: str) -> str | None:
    if tx.currency != ours_asset:
        return f"currency {tx.currency} at the provider, {ours_asset} here"
    if tx.amount != ours_amount:
        return f"amount {tx.amount} at the provider, {ours_amount} here"
    return None


def _match(session: Session, connector: str, tx: Transaction) -> tuple[bool, str | None]:
    """Whether Bourse has the transaction settled, and how it differs (None: it agrees)."""
    if tx.kind is TransactionKind.payout:
        withdrawal = session.scalar(
            select(Withdrawal).where(Withdrawal.connector == connector, Withdrawal.psp_reference == tx.psp_reference)
        )
        if withdrawal is None or withdrawal.state is not WithdrawalState.succeeded:
            return False, f"paid at the provider, {withdrawal.state.value if withdrawal else 'unknown'} here"
        return True, _compare(tx, withdrawal.amount, withdrawal.asset)
    deposit = session.scalar(
        select(Deposit).where(Deposit.connector == connector, Deposit.psp_reference == tx.psp_reference)
    )
    state = deposit.state.value if deposit else "unknown"
    if tx.kind is TransactionKind.deposit:
        if deposit is None or deposit.state not in CREDITED:
            return False, f"settled at the provider, {state} here"
        return True, _compare(tx, deposit.amount, deposit.asset)
    if deposit is None or deposit.state is not _REVERSED[tx.kind]:
        return False, f"{tx.kind.value} at the provider, {state} here"
    return True, _compare(tx, deposit.reversed_amount, deposit.asset)


def reconcile(session: Session, connector: Connector, day: date, *, actor: str) -> ReconciliationReport:
    connector.require(Capability.transactions)
    transactions = connector.transactions(day)
    matched = 0
    missing_here: list[dict[str, Any]] = []
    mismatches: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for tx in transactions:
        found, problem = _match(session, connector.name, tx)
        if not found:
            missing_here.append(_line(tx, problem or "unknown here"))
            continue
        seen.add((tx.kind.value, tx.psp_reference))
        if problem is None:
            matched += 1
        else:
            mismatches.append(_line(tx, problem))

    start = datetime.combine(day, time.min, tzinfo=UTC)
    end = start + timedelta(days=1)
    missing_at_psp: list[dict[str, Any]] = []
    ours_deposits = session.scalars(
        select(Deposit).where(
            Deposit.connector == connector.name,
            Deposit.state.in_(CREDITED),
            Deposit.settled_at >= start,
            Deposit.settled_at < end,
        )
    )
    missing_at_psp.extend(
        {
            "kind": "deposit",
            "psp_reference": deposit.psp_reference,
            "reference": str(deposit.id),
            "amount": deposit.amount,
            "currency": deposit.asset,
            "problem": "credited here, not listed by the provider",
        }
        for deposit in ours_deposits
        if ("deposit", deposit.psp_reference or "") not in seen
    )
    ours_withdrawals = session.scalars(
        select(Withdrawal).where(
            Withdrawal.connector == connector.name,
            Withdrawal.state == WithdrawalState.succeeded,
            Withdrawal.settled_at >= start,
            Withdrawal.settled_at < end,
        )
    )
    missing_at_psp.extend(
        {
            "kind": "payout",
            "psp_reference": withdrawal.psp_reference,
            "reference": str(withdrawal.id),
            "amount": withdrawal.amount,
            "currency": withdrawal.asset,
            "problem": "paid here, not listed by the provider",
        }
        for withdrawal in ours_withdrawals
        if ("payout", withdrawal.psp_reference or "") not in seen
    )
    report = ReconciliationReport(
        connector=connector.name,
        day=day,
        psp_transactions=len(transactions),
        matched=matched,
        missing_here=missing_here,
        missing_at_psp=missing_at_psp,
        mismatches=mismatches,
        mismatch_count=len(missing_here) + len(missing_at_psp) + len(mismatches),
        actor=actor,
    )
    session.add(report)
    session.flush()
    return report


def listing(session: Session, *, connector: str | None = None, limit: int = 30) -> list[ReconciliationReport]:
    query = select(ReconciliationReport).order_by(ReconciliationReport.created_at.desc()).limit(limit)
    if connector is not None:
        query = query.where(ReconciliationReport.connector == connector)
    return list(session.scalars(query))
