"""What a payment provider connector does, and the plain data it answers with.

A connector translates between Bourse and one provider. It never touches the
database: the payments service decides what an answer means for a deposit or a
withdrawal. Every amount is an integer in the asset's minor units; every
currency is an upper-case asset code (``USD``).

Each connector declares its :class:`Capability` set; the service refuses an
operation a connector does not support with ``connector_unsupported`` before it
calls it.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from bourse.errors import BadGateway, BadRequest, TemporarilyUnavailable, Unauthorized, Unprocessable


class Capability(StrEnum):
    deposits = "deposits"  # start a deposit: a hosted checkout URL
    webhooks = "webhooks"  # verify and parse the provider's events
    payouts = "payouts"  # send money out
    status = "status"  # fetch one payment's status
    transactions = "transactions"  # list a day's transactions, for reconciliation


class EventKind(StrEnum):
    """What a provider event means to Bourse, whatever the provider calls it."""

    deposit_succeeded = "deposit_succeeded"
    deposit_failed = "deposit_failed"
    payout_succeeded = "payout_succeeded"
    payout_failed = "payout_failed"
    refunded = "refunded"  # money of a succeeded deposit was returned to the payer
    chargeback = "chargeback"  # the payer disputed a succeeded deposit
    ignored = "ignored"  # a well-signed event Bourse has no use for


class PaymentState(StrEnum):
    pending = "pending"
    succeeded = "succeeded"
    failed = "failed"


class TransactionKind(StrEnum):
    deposit = "deposit"
    payout = "payout"
    refund = "refund"
    chargeback = "chargeback"


@dataclass(frozen=True, slots=True)
class Checkout:
    """A started deposit: the provider's id for it and where the payer goes to pay."""

    psp_reference: str
    checkout_url: str


@dataclass(frozen=True, slots=True)
class PaymentEvent:
    """One verified provider event.

    ``reference`` is Bourse's own id (a deposit's or a withdrawal's) when the
    provider echoes it back; ``psp_reference`` is the provider's id of the payment
    the event is about. At least one of them is set for every kind but
    ``ignored``. ``amount`` and ``currency`` are what the provider says moved;
    for ``refunded`` the amount is the running total refunded on the payment so
    far, for ``chargeback`` the disputed amount.
    """

    event_id: str
    kind: EventKind
    provider_type: str
    reference: str | None = None
    psp_reference: str | None = None
    amount: int | None = None
    currency: str | None = None
    occurred_at: dt.datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Payout:
    psp_reference: str
    state: PaymentState
    failure_reason: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentStatus:
    psp_reference: str
    state: PaymentState
    amount: int
    currency: str


@dataclass(frozen=True, slots=True)
class Transaction:
    """One line of the provider's own record of a day, for reconciliation."""

    psp_reference: str
    kind: TransactionKind
    reference: str | None
    amount: int
    currency: str
    occurred_at: dt.datetime


# --- Errors ----------------------------------------------------------------------------

# How long a client is told to wait after a provider's transient failure.
PSP_RETRY_AFTER_SECONDS = 5


class ConnectorError(BadGateway):
    code = "psp_error"


class InvalidSignature(Unauthorized, ConnectorError):
    """The webhook's signature is missing, malformed or wrong."""

    code = "invalid_signature"


class ExpiredSignature(InvalidSignature):
    """The signature is right but its timestamp is too old (a replayed capture)."""

    code = "signature_expired"


class MalformedEvent(BadRequest, ConnectorError):
    """Well signed, but not an event this connector can read."""

    code = "malformed_event"


class PspUnavailable(TemporarilyUnavailable, ConnectorError):
    """A transient failure (timeout, 5xx, connection refused): retrying is safe (``Retry-After``)."""

    code = "psp_unavailable"

    def __init__(self, detail: str | None = None, *, retry_after: int = PSP_RETRY_AFTER_SECONDS) -> None:
        super().__init__(detail, retry_after=retry_after)


class PspRefused(ConnectorError):
    """The provider said no, for good (a 4xx other than a conflict in progress)."""

    code = "psp_refused"


class Unsupported(Unprocessable, ConnectorError):
    code = "connector_unsupported"


# --- Reading events ----------------------------------------------------------------------

#: The largest amount the inbox (and the ledger) can hold: a signed 64-bit count of minor units.
MAX_EVENT_AMOUNT = 2**63 - 1
_CURRENCY = re.compile(r"[A-Za-z0-9]{1,12}")


def read_event_json(body: bytes, provider: str) -> Any:
    """The JSON value of a webhook body, which providers send as UTF-8.

    Other encodings (``json.loads`` would also accept UTF-16 and UTF-32, and the
    inbox would then store text full of NULs) and JSON nested deeper than the
    parser can recurse are :class:`MalformedEvent`, like any other unreadable body.
    """
    try:
        return json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MalformedEvent(f"The {provider} event is not UTF-8 JSON") from None


def _clean(value: str | None) -> bool:
    """Text PostgreSQL and SQLite can store: no NUL, no lone surrogate (from a ``\\ud800`` escape)."""
    if value is None:
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def _clean_json(value: Any) -> bool:
    """Every string in a JSON value (keys included) is clean; it is stored, then shown again."""
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, Mapping):
        return all(_clean(str(key)) and _clean_json(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_clean_json(item) for item in value)
    return True


def storable(event: PaymentEvent) -> PaymentEvent:
    """``event`` if the inbox can store it as it is; otherwise :class:`MalformedEvent`.

    A verified event still comes from outside: an amount beyond BIGINT, a NUL in an
    id or a currency longer than an asset code would fail the inbox's INSERT (a 500
    for the provider, retried for days) instead of being refused once.
    """
    for name in ("event_id", "provider_type", "reference", "psp_reference", "currency"):
        if not _clean(getattr(event, name)):
            raise MalformedEvent(f"The event's {name} is not storable text")
    if event.currency is not None and not _CURRENCY.fullmatch(event.currency):
        raise MalformedEvent("The event's currency is not an asset code")
    if event.amount is not None and not 0 <= event.amount <= MAX_EVENT_AMOUNT:
        raise MalformedEvent("The event's amount is out of range")
    if not _clean_json(event.detail):
        raise MalformedEvent("The event's detail is not storable text")
    return event


# --- The interface ---------------------------------------------------------------------


class Connector(ABC):
    """One configured provider. Instances are shared across threads: keep them stateless."""

    #: The name in ``/api/v1/psp/{name}/webhook`` and on the ``psp_clearing`` account.
    name: str
    capabilities: ClassVar[frozenset[Capability]]
    #: The largest amount, in minor units, the provider takes in one deposit or payout.
    #: Bourse refuses a larger one itself (422 ``amount_too_large``) rather than send it.
    max_amount: ClassVar[int] = MAX_EVENT_AMOUNT

    def supports(self, capability: Capability) -> bool:
        return capability in self.capabilities

    def require(self, capability: Capability) -> None:
        if capability not in self.capabilities:
            raise Unsupported(f"The {self.name} connector does not support {capability.value}")

    @abstractmethod
    def create_deposit(
        self,
        *,
        reference: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        return_url: str | None = None,
    ) -> Checkout:
        """Open a hosted checkout for ``amount``; the same key returns the same checkout."""

    @abstractmethod
    def parse_webhook(self, *, body: bytes, headers: Mapping[str, str], now: float | None = None) -> PaymentEvent:
        """Verify the signature (constant time, 5-minute tolerance) and read the event.

        ``headers`` keys are lower-case. Raises :class:`InvalidSignature`,
        :class:`ExpiredSignature` or :class:`MalformedEvent`.
        """

    def create_payout(
        self,
        *,
        reference: str,  # noqa: ARG002 - the interface
        amount: int,  # noqa: ARG002 - the interface
        currency: str,  # noqa: ARG002 - the interface
        destination: str,  # noqa: ARG002 - the interface
        idempotency_key: str,  # noqa: ARG002 - the interface
    ) -> Payout:
        """Send ``amount`` to ``destination``; the same key never pays twice."""
        self.require(Capability.payouts)
        raise NotImplementedError  # pragma: no cover - require() raised

    def payment_status(self, psp_reference: str) -> PaymentStatus:  # noqa: ARG002 - the interface
        self.require(Capability.status)
        raise NotImplementedError  # pragma: no cover - require() raised

    def transactions(self, day: dt.date) -> list[Transaction]:  # noqa: ARG002 - the interface
        """Every settled transaction the provider recorded on ``day`` (UTC)."""
        self.require(Capability.transactions)
        raise NotImplementedError  # pragma: no cover - require() raised
