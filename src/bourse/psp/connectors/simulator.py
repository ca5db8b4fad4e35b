"""The connector for Bourse's PSP simulator (``bourse psp-sim``).

Speaks the simulator's HTTP API over one shared, thread-safe ``httpx2.Client``.
Transport failures, timeouts and 5xx answers become :class:`PspUnavailable`
(retrying with the same idempotency key is safe: the simulator replays the
stored answer); any other 4xx becomes :class:`PspRefused` naming the
simulator's error code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx2 as httpx

from bourse.psp import signing
from bourse.psp.connectors.base import (
    Capability,
    Checkout,
    Connector,
    ConnectorError,
    EventKind,
    ExpiredSignature,
    InvalidSignature,
    MalformedEvent,
    PaymentEvent,
    PaymentState,
    PaymentStatus,
    Payout,
    PspRefused,
    PspUnavailable,
    Transaction,
    TransactionKind,
    read_event_json,
    storable,
)
from bourse.psp.sim.store import MAX_AMOUNT

EVENT_KINDS = {
    "deposit.succeeded": EventKind.deposit_succeeded,
    "deposit.failed": EventKind.deposit_failed,
    "deposit.refunded": EventKind.refunded,
    "deposit.disputed": EventKind.chargeback,
    "payout.succeeded": EventKind.payout_succeeded,
    "payout.failed": EventKind.payout_failed,
}
# A refunded or disputed deposit did succeed first; what happened next arrives as its own event.
PAYMENT_STATES = {
    "pending": PaymentState.pending,
    "succeeded": PaymentState.succeeded,
    "failed": PaymentState.failed,
    "refunded": PaymentState.succeeded,
    "disputed": PaymentState.succeeded,
}
_SERVER_ERROR = 500
_CLIENT_ERROR = 400


def _is_int(value: object) -> bool:
    return type(value) is int


def _utc(timestamp: object) -> dt.datetime:
    if not _is_int(timestamp):
        raise ValueError("not a Unix timestamp")
    return dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)  # type: ignore[arg-type]


class SimulatorConnector(Connector):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    max_amount: ClassVar[int] = MAX_AMOUNT

    def __init__(
        self, base_url: str, api_key: str, webhook_secret: str, *, timeout: float = 10.0, name: str = "simulator"
    ) -> None:
        self.name = name
        self._secret = webhook_secret
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        )

    def __repr__(self) -> str:
        return f"SimulatorConnector(name={self.name!r}, base_url={str(self._client.base_url)!r})"

    def close(self) -> None:
        self._client.close()

    # --- HTTP -----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        try:
            response = self._client.request(method, path, json=json_body, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise PspUnavailable(f"The simulator did not answer {method} {path} in time") from exc
        except httpx.HTTPError as exc:
            raise PspUnavailable(f"The simulator is unreachable ({type(exc).__name__})") from exc
        if response.status_code >= _SERVER_ERROR:
            raise PspUnavailable(f"The simulator answered {response.status_code} to {method} {path}")
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code >= _CLIENT_ERROR:
            code = payload.get("error") if isinstance(payload, dict) else None
            detail = payload.get("detail") if isinstance(payload, dict) else None
            raise PspRefused(f"{code or response.status_code}: {detail or 'refused'}")
        if not isinstance(payload, dict):
            raise ConnectorError(f"The simulator answered {method} {path} with something other than a JSON object")
        return payload

    # --- Operations -----------------------------------------------------------------

    def create_deposit(
        self,
        *,
        reference: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        return_url: str | None = None,
    ) -> Checkout:
        body = {"reference": reference, "amount": amount, "currency": currency, "return_url": return_url}
        data = self._call("POST", "/v1/deposits", json_body=body, idempotency_key=idempotency_key)
        try:
            return Checkout(psp_reference=str(data["id"]), checkout_url=str(data["checkout_url"]))
        except KeyError as exc:
            raise ConnectorError(f"The simulator's deposit lacks {exc}") from None

    def create_payout(
        self,
        *,
        reference: str,
        amount: int,
        currency: str,
        destination: str,
        idempotency_key: str,
    ) -> Payout:
        body = {"reference": reference, "amount": amount, "currency": currency, "destination": destination}
        data = self._call("POST", "/v1/payouts", json_body=body, idempotency_key=idempotency_key)
        try:
            return Payout(
                psp_reference=str(data["id"]),
                state=PAYMENT_STATES[data["status"]],
                failure_reason=data.get("failure_reason"),
            )
        except KeyError as exc:
            raise ConnectorError(f"The simulator's payout is unreadable ({exc})") from None

    def payment_status(self, psp_reference: str) -> PaymentStatus:
        if psp_reference.startswith("dep_"):
            path = f"/v1/deposits/{psp_reference}"
        elif psp_reference.startswith("po_"):
            path = f"/v1/payouts/{psp_reference}"
        else:
            raise PspRefused(f"not_found: {psp_reference!r} is not a simulator deposit or payout id")
        data = self._call("GET", path)
        try:
            return PaymentStatus(
                psp_reference=str(data["id"]),
                state=PAYMENT_STATES[data["status"]],
                amount=int(data["amount"]),
                currency=str(data["currency"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConnectorError(f"The simulator's payment is unreadable ({exc})") from None

    def transactions(self, day: dt.date) -> list[Transaction]:
        data = self._call("GET", "/v1/transactions", params={"date": day.isoformat()})
        rows = data.get("data")
        if not isinstance(rows, list):
            raise ConnectorError("The simulator's transaction list is unreadable")
        try:
            return [
                Transaction(
                    psp_reference=str(row["id"]),
                    kind=TransactionKind(row["type"]),
                    reference=row.get("reference"),
                    amount=int(row["amount"]),
                    currency=str(row["currency"]),
                    occurred_at=_utc(row["created_at"]),
                )
                for row in rows
            ]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConnectorError(f"The simulator's transaction list is unreadable ({exc})") from None

    # --- Webhooks -------------------------------------------------------------------

    def parse_webhook(self, *, body: bytes, headers: Mapping[str, str], now: float | None = None) -> PaymentEvent:
        try:
            signing.verify(self._secret, body, headers.get("psp-signature"), now=now)
        except signing.SignatureError as exc:
            if exc.expired:
                raise ExpiredSignature(str(exc)) from None
            raise InvalidSignature(str(exc)) from None
        event = read_event_json(body, "simulator")
        if not isinstance(event, dict):
            raise MalformedEvent("The event is not a JSON object")
        event_id, event_type = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not event_id or not isinstance(event_type, str):
            raise MalformedEvent("The event lacks an id or a type")
        kind = EVENT_KINDS.get(event_type)
        if kind is None:
            return storable(PaymentEvent(event_id=event_id, kind=EventKind.ignored, provider_type=event_type))
        return storable(self._payment_event(event_id, event_type, kind, event))

    @staticmethod
    def _payment_event(event_id: str, event_type: str, kind: EventKind, event: dict[str, Any]) -> PaymentEvent:
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise MalformedEvent("The event has no data.object")
        psp_reference, reference = obj.get("id"), obj.get("reference")
        amount, currency = obj.get("amount"), obj.get("currency")
        if (
            not isinstance(psp_reference, str)
            or not isinstance(reference, str)
            or not _is_int(amount)
            or not isinstance(currency, str)
        ):
            raise MalformedEvent("The event's object lacks id, reference, amount or currency")
        try:
            occurred_at = _utc(event.get("created"))
        except (ValueError, OverflowError, OSError):
            raise MalformedEvent("The event's created time is not a Unix timestamp") from None
        detail = {k: obj[k] for k in ("status", "failure_reason") if obj.get(k) is not None}
        return PaymentEvent(
            event_id=event_id,
            kind=kind,
            provider_type=event_type,
            reference=reference,
            psp_reference=psp_reference,
            amount=amount,
            currency=currency,
            occurred_at=occurred_at,
            detail=detail,
        )
