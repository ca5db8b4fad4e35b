"""The simulator's in-memory state: deposits, payouts, transactions, idempotency records.

Every mutation happens under one re-entrant lock and never awaits while holding
it, so the store is safe from the event loop and from threads alike. Creating an
object and recording its idempotency key happen in the same critical section,
which is what guarantees that concurrent requests with one key create one object.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The largest amount, in minor units, the simulator takes in one deposit or payout.
MAX_AMOUNT = 10**15

DEPOSIT_STATUSES = ("pending", "succeeded", "failed", "refunded", "disputed")
TRANSACTION_TYPES = ("deposit", "payout", "refund", "chargeback")


class SimError(Exception):
    """A refusal rendered as ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


@dataclass
class Deposit:
    id: str
    reference: str
    amount: int
    currency: str
    return_url: str | None
    checkout_url: str
    status: str = "pending"
    failure_reason: str | None = None
    created_at: int = field(default_factory=now)
    updated_at: int = field(default_factory=now)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "deposit",
            "reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status,
            "failure_reason": self.failure_reason,
            "return_url": self.return_url,
            "checkout_url": self.checkout_url,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class Payout:
    id: str
    reference: str
    amount: int
    currency: str
    destination: str
    #: Decided when the payout is accepted, from the ``fail_payouts`` fault.
    will_fail: bool = False
    status: str = "pending"
    failure_reason: str | None = None
    created_at: int = field(default_factory=now)
    updated_at: int = field(default_factory=now)

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "payout",
            "reference": self.reference,
            "amount": self.amount,
            "currency": self.currency,
            "destination": self.destination,
            "status": self.status,
            "failure_reason": self.failure_reason,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass
class TransactionRow:
    id: str
    type: str
    reference: str
    amount: int
    currency: str
    created_at: int

    def to_api(self, amount: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "reference": self.reference,
            "amount": self.amount if amount is None else amount,
            "currency": self.currency,
            "created_at": self.created_at,
        }


@dataclass(frozen=True)
class StoredResponse:
    fingerprint: str
    status: int
    body: dict[str, Any]


def _day_bounds(day: dt.date) -> tuple[int, int]:
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return start, start + 86400


class Store:
    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._deposits: dict[str, Deposit] = {}
        self._payouts: dict[str, Payout] = {}
        self._transactions: list[TransactionRow] = []
        # Reconciliation tampering: the amount the listing reports for an id.
        self._amount_overrides: dict[str, int] = {}
        self._idempotency: dict[tuple[str, str], StoredResponse] = {}

    # --- Idempotency ----------------------------------------------------------------

    def idempotent(
        self, scope: str, key: str, fingerprint: str, create: Callable[[], tuple[int, dict[str, Any]]]
    ) -> tuple[StoredResponse, bool]:
        """The stored response for ``key`` (replayed), or ``create()``'s, stored atomically.

        Returns ``(response, replayed)``. A key reused with another body is refused.
        """
        with self._lock:
            stored = self._idempotency.get((scope, key))
            if stored is not None:
                if stored.fingerprint != fingerprint:
                    raise SimError(409, "idempotency_key_reused", "This Idempotency-Key was used with another body")
                return stored, True
            status, body = create()
            stored = StoredResponse(fingerprint, status, body)
            self._idempotency[(scope, key)] = stored
            return stored, False

    # --- Deposits -------------------------------------------------------------------

    def add_deposit(self, deposit: Deposit) -> Deposit:
        with self._lock:
            self._deposits[deposit.id] = deposit
            return deposit

    def deposit(self, deposit_id: str) -> Deposit:
        with self._lock:
            found = self._deposits.get(deposit_id)
            if found is None:
                raise SimError(404, "not_found", f"No deposit {deposit_id}")
            return found

    def decide_deposit(self, deposit_id: str, *, approve: bool, failure_reason: str | None = None) -> Deposit:
        """Move a pending deposit to ``succeeded`` (recording the settlement) or ``failed``."""
        with self._lock:
            deposit = self.deposit(deposit_id)
            if deposit.status != "pending":
                raise SimError(409, "invalid_state", f"Deposit {deposit_id} is already {deposit.status}")
            deposit.updated_at = now()
            if approve:
                deposit.status = "succeeded"
                self._record(deposit.id, "deposit", deposit.reference, deposit.amount, deposit.currency)
            else:
                deposit.status = "failed"
                deposit.failure_reason = failure_reason
            return deposit

    def reverse_deposit(self, deposit_id: str, *, kind: str) -> Deposit:
        """Refund or charge back a succeeded deposit (``kind`` is ``refund`` or ``chargeback``)."""
        with self._lock:
            deposit = self.deposit(deposit_id)
            if deposit.status != "succeeded":
                raise SimError(409, "invalid_state", f"Deposit {deposit_id} is {deposit.status}, not succeeded")
            deposit.status = "refunded" if kind == "refund" else "disputed"
            deposit.updated_at = now()
            self._record(deposit.id, kind, deposit.reference, deposit.amount, deposit.currency)
            return deposit

    # --- Payouts --------------------------------------------------------------------

    def add_payout(self, payout: Payout) -> Payout:
        with self._lock:
            self._payouts[payout.id] = payout
            return payout

    def payout(self, payout_id: str) -> Payout:
        with self._lock:
            found = self._payouts.get(payout_id)
            if found is None:
                raise SimError(404, "not_found", f"No payout {payout_id}")
            return found

    def payouts_by_reference(self, reference: str) -> list[Payout]:
        with self._lock:
            return [p for p in self._payouts.values() if p.reference == reference]

    def settle_payout(self, payout_id: str) -> Payout:
        with self._lock:
            payout = self.payout(payout_id)
            if payout.status != "pending":
                return payout
            payout.updated_at = now()
            if payout.will_fail:
                payout.status = "failed"
                payout.failure_reason = "beneficiary_account_closed"
            else:
                payout.status = "succeeded"
                self._record(payout.id, "payout", payout.reference, payout.amount, payout.currency)
            return payout

    # --- Transactions ---------------------------------------------------------------

    def _record(self, row_id: str, kind: str, reference: str, amount: int, currency: str) -> None:
        self._transactions.append(TransactionRow(row_id, kind, reference, amount, currency, now()))

    def add_foreign_transaction(
        self, kind: str, reference: str, amount: int, currency: str, day: dt.date
    ) -> TransactionRow:
        """A transaction only the PSP knows about, dated midday of ``day``."""
        with self._lock:
            row = TransactionRow(new_id("tx"), kind, reference, amount, currency, _day_bounds(day)[0] + 43200)
            self._transactions.append(row)
            return row

    def override_amount(self, row_id: str, amount: int) -> list[dict[str, Any]]:
        """Report ``amount`` for every listed transaction with ``row_id`` from now on."""
        with self._lock:
            rows = [row for row in self._transactions if row.id == row_id]
            if not rows:
                raise SimError(404, "not_found", f"No transaction {row_id}")
            self._amount_overrides[row_id] = amount
            return [row.to_api(amount) for row in rows]

    def transactions_on(self, day: dt.date) -> list[dict[str, Any]]:
        start, end = _day_bounds(day)
        with self._lock:
            return [
                row.to_api(self._amount_overrides.get(row.id))
                for row in self._transactions
                if start <= row.created_at < end
            ]
