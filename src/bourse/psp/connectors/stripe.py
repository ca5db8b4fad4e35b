"""The Stripe connector: deposits through Checkout, Stripe's webhooks, payment status.

Deposits open a hosted Checkout Session; the payer's money arrives as a
``payment_intent.succeeded`` event carrying Bourse's reference in the
PaymentIntent's metadata. Payouts and transaction lists are not supported here:
Stripe pays out to the brokerage's own bank account, not to its clients.

Amounts: Stripe counts in the currency's smallest unit, and this connector
assumes the Bourse asset's scale equals that unit. That holds for the currencies
it accepts (USD, EUR, GBP: two decimals in both); a zero-decimal currency such as
JPY or a three-decimal one such as KWD would not line up, so any currency outside
:data:`SUPPORTED_CURRENCIES` is refused rather than converted.

The SDK is used through a :class:`stripe.StripeClient` owned by the connector (the
module-global ``stripe.api_key`` is never set), with the SDK's own retries off:
Bourse's job queue retries, with the same idempotency key, so one attempt here is
one HTTP request.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import stripe
from stripe.params.checkout import SessionCreateParams

from bourse.psp.connectors.base import (
    Capability,
    Checkout,
    Connector,
    EventKind,
    ExpiredSignature,
    InvalidSignature,
    MalformedEvent,
    PaymentEvent,
    PaymentState,
    PaymentStatus,
    PspRefused,
    PspUnavailable,
    read_event_json,
    storable,
)

SIGNATURE_HEADER = "stripe-signature"
#: Stripe's own default, and the window the connector interface promises.
TOLERANCE_SECONDS = 300
#: Currencies whose Stripe minor unit is the Bourse asset's scale (two decimals).
SUPPORTED_CURRENCIES = frozenset({"USD", "EUR", "GBP"})
#: Stripe's limit on ``client_reference_id``; metadata values allow more.
MAX_REFERENCE_LENGTH = 200
METADATA_KEY = "bourse_reference"

_PAYMENT_INTENT_PREFIX = "pi_"
_CHECKOUT_SESSION_PREFIX = "cs_"
_HTTP_CONFLICT = 409
_HTTP_CLIENT_ERROR = 400
_HTTP_SERVER_ERROR = 500

# PaymentIntent statuses that are final. Everything else (requires_payment_method
# after a declined card, requires_action, processing, requires_capture) may still
# end in success, so it reads as pending.
_INTENT_STATES: dict[str, PaymentState] = {
    "succeeded": PaymentState.succeeded,
    "canceled": PaymentState.failed,
}


class StripeConnector(Connector):
    """Stripe through its official SDK. Safe to share across threads."""

    name = "stripe"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.deposits, Capability.webhooks, Capability.status}
    )
    #: Stripe's amount field takes at most eight digits (99999999: $999,999.99).
    max_amount: ClassVar[int] = 99_999_999

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        *,
        public_url: str,
        timeout: float = 10.0,
        api_base: str | None = None,
        name: str = "stripe",
    ) -> None:
        """``api_base`` points the SDK at another host (``BOURSE_STRIPE_API_BASE``: stripe-mock, a proxy,
        a local stub in tests); None is Stripe's own API."""
        if not api_key.strip():
            raise ValueError("the Stripe API key is empty")
        if not webhook_secret.strip():
            raise ValueError("the Stripe webhook secret is empty")
        if timeout <= 0:
            raise ValueError("the Stripe timeout must be positive")
        if not _is_absolute_http_url(public_url):
            raise ValueError(f"public_url must be an absolute http(s) URL, not {public_url!r}")
        self.name = name
        self._webhook_secret = webhook_secret
        self._public_url = public_url
        # The requests-based client is the SDK's default; building it here is the
        # only way to give it our timeout (the SDK's own default is 80 s).
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else None,
            max_network_retries=0,
            http_client=stripe.RequestsClient(timeout=timeout),
        )

    # --- Deposits --------------------------------------------------------------------

    def create_deposit(
        self,
        *,
        reference: str,
        amount: int,
        currency: str,
        idempotency_key: str,
        return_url: str | None = None,
    ) -> Checkout:
        """Open a Checkout Session for ``amount`` minor units of ``currency``.

        Stripe replays the first answer for a repeated idempotency key (for 24
        hours), so a retried job gets the same session back instead of a second one.
        """
        if not reference or len(reference) > MAX_REFERENCE_LENGTH:
            raise PspRefused(f"Stripe needs a reference of 1 to {MAX_REFERENCE_LENGTH} characters")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise PspRefused(f"Stripe deposits need a positive integer amount in minor units, not {amount!r}")
        code = currency.upper()
        if code not in SUPPORTED_CURRENCIES:
            supported = ", ".join(sorted(SUPPORTED_CURRENCIES))
            raise PspRefused(
                f"The {self.name} connector takes {supported}; {currency!r} is not one of them "
                "(its minor unit may not match the asset's scale)"
            )
        if not idempotency_key:
            raise PspRefused("Stripe deposits need an idempotency key")
        landing = return_url or self._public_url
        if not _is_absolute_http_url(landing):
            raise PspRefused(f"return_url must be an absolute http(s) URL, not {landing!r}")
        metadata = {METADATA_KEY: reference}
        params: SessionCreateParams = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": code.lower(),
                        "unit_amount": amount,
                        "product_data": {"name": f"Deposit ({code})"},
                    },
                }
            ],
            "client_reference_id": reference,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            # The landing page learns which way the payer came back; the deposit's
            # outcome itself only ever comes from the webhook.
            "success_url": _with_query(landing, checkout="success"),
            "cancel_url": _with_query(landing, checkout="cancelled"),
        }
        try:
            session = self._client.v1.checkout.sessions.create(
                params=params, options={"idempotency_key": idempotency_key}
            )
        except stripe.StripeError as exc:
            _raise_mapped(exc)
        if not session.url:
            raise PspRefused(f"Stripe returned Checkout Session {session.id} without a URL")
        return Checkout(psp_reference=session.id, checkout_url=session.url)

    # --- Webhooks --------------------------------------------------------------------

    def parse_webhook(self, *, body: bytes, headers: Mapping[str, str], now: float | None = None) -> PaymentEvent:
        """Verify a Stripe delivery and say what it means to Bourse.

        The SDK's ``WebhookSignature.verify_header`` checks the HMAC (constant
        time, any of several ``v1`` values while a secret rotates). It reads the
        clock itself and has no way to take ``now``, so it is called without a
        tolerance and the age is checked here against ``now`` (default: the
        current time): more than 300 s away in either direction is
        :class:`ExpiredSignature`, whereas the SDK alone would accept a timestamp
        from the future.

        ``charge.refunded`` carries ``amount_refunded``, Stripe's cumulative total
        refunded on the charge so far, not the amount of this one refund.
        """
        header = headers.get(SIGNATURE_HEADER)
        if header is not None and not header.isascii():
            # A real signature is ASCII; the SDK's compare_digest would raise TypeError on anything else.
            raise InvalidSignature("Stripe signature rejected: the header is not ASCII")
        try:
            stripe.WebhookSignature.verify_header(body, header, self._webhook_secret, tolerance=None)
        except stripe.SignatureVerificationError as exc:
            raise InvalidSignature(f"Stripe signature rejected: {exc.user_message or exc}") from exc
        except UnicodeDecodeError as exc:
            # Stripe signs UTF-8 text; the SDK cannot even compute a signature otherwise.
            raise InvalidSignature("Stripe signature rejected: the body is not UTF-8") from exc
        timestamp = _signed_timestamp(header or "")
        current = time.time() if now is None else now
        try:
            skew = abs(current - timestamp)
        except OverflowError:  # a signed timestamp too large for a float is simply far away
            skew = math.inf
        if skew > TOLERANCE_SECONDS:
            raise ExpiredSignature(f"Stripe signature timestamp {timestamp} is more than {TOLERANCE_SECONDS}s away")
        return storable(_read_event(read_event_json(body, "Stripe")))

    # --- Status ----------------------------------------------------------------------

    def payment_status(self, psp_reference: str) -> PaymentStatus:
        """Where a deposit stands, by PaymentIntent (``pi_``) or Checkout Session (``cs_``) id."""
        try:
            if psp_reference.startswith(_PAYMENT_INTENT_PREFIX):
                return self._intent_status(psp_reference)
            if psp_reference.startswith(_CHECKOUT_SESSION_PREFIX):
                return self._session_status(psp_reference)
        except stripe.StripeError as exc:
            _raise_mapped(exc)
        raise PspRefused(f"{psp_reference!r} is neither a Stripe PaymentIntent nor a Checkout Session id")

    def _intent_status(self, psp_reference: str) -> PaymentStatus:
        intent = self._client.v1.payment_intents.retrieve(psp_reference)
        state = _INTENT_STATES.get(intent.status, PaymentState.pending)
        amount = intent.amount_received if state is PaymentState.succeeded else intent.amount
        return PaymentStatus(psp_reference=intent.id, state=state, amount=amount, currency=intent.currency.upper())

    def _session_status(self, psp_reference: str) -> PaymentStatus:
        session = self._client.v1.checkout.sessions.retrieve(psp_reference)
        # A completed session may still be unpaid (a bank debit clearing), so
        # ``payment_status`` decides success; only an expired session has failed.
        if session.payment_status == "paid":
            state = PaymentState.succeeded
        elif session.status == "expired":
            state = PaymentState.failed
        else:
            state = PaymentState.pending
        if session.amount_total is None or session.currency is None:
            raise PspRefused(f"Stripe Checkout Session {session.id} has no amount")
        return PaymentStatus(
            psp_reference=session.id,
            state=state,
            amount=session.amount_total,
            currency=session.currency.upper(),
        )


# --- SDK errors --------------------------------------------------------------------------


def _raise_mapped(exc: stripe.StripeError) -> NoReturn:
    """Transient failures (retry with the same key) become PspUnavailable, refusals PspRefused."""
    status = exc.http_status
    message = exc.user_message or str(exc) or type(exc).__name__
    detail = f"Stripe: {message}" if status is None else f"Stripe ({status}): {message}"
    if isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError):
        raise PspUnavailable(detail) from exc
    if isinstance(exc, stripe.APIError) and (
        # No status or a 5xx: Stripe or the path to it failed. 409: a request with
        # the same idempotency key is still in flight. 1xx-3xx: an answer the SDK
        # could not read, so whether it took effect is unknown; the key makes a
        # retry safe.
        status is None or status == _HTTP_CONFLICT or status >= _HTTP_SERVER_ERROR or status < _HTTP_CLIENT_ERROR
    ):
        raise PspUnavailable(detail) from exc
    # InvalidRequestError, CardError, AuthenticationError, PermissionError,
    # IdempotencyError (the key reused for different parameters) and any other
    # 4xx: repeating the request cannot change the answer.
    raise PspRefused(detail) from exc


# --- Events ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What every Stripe event carries, ready to stamp on the PaymentEvent it becomes."""

    event_id: str
    provider_type: str
    occurred_at: dt.datetime

    def event(self, kind: EventKind, **fields: Any) -> PaymentEvent:
        return PaymentEvent(
            event_id=self.event_id,
            kind=kind,
            provider_type=self.provider_type,
            occurred_at=self.occurred_at,
            **fields,
        )


def _read_event(payload: Any) -> PaymentEvent:
    if not isinstance(payload, dict) or payload.get("object") != "event":
        raise MalformedEvent("The body is not a Stripe event object")
    event_id = _text(payload, "id", "event")
    event_type = _text(payload, "type", "event")
    created = _count(payload, "created", "event")
    data = payload.get("data")
    obj = data.get("object") if isinstance(data, dict) else None
    if not isinstance(obj, dict):
        raise MalformedEvent("The Stripe event has no data.object")
    try:
        occurred_at = dt.datetime.fromtimestamp(created, tz=dt.UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedEvent(f"The Stripe event's created time {created} is out of range") from exc
    envelope = _Envelope(event_id, event_type, occurred_at)
    reader = _READERS.get(event_type)
    return envelope.event(EventKind.ignored) if reader is None else reader(envelope, obj)


def _intent_succeeded(envelope: _Envelope, obj: Mapping[str, Any]) -> PaymentEvent:
    _expect_object(obj, "payment_intent")
    return envelope.event(
        EventKind.deposit_succeeded,
        reference=_reference(obj),
        psp_reference=_text(obj, "id", "payment_intent"),
        amount=_count(obj, "amount_received", "payment_intent"),
        currency=_text(obj, "currency", "payment_intent").upper(),
    )


def _intent_failed(envelope: _Envelope, obj: Mapping[str, Any]) -> PaymentEvent:
    """One failed attempt. Checkout lets the payer try another card in the same session,
    so this need not be the deposit's end: the PaymentIntent goes back to
    ``requires_payment_method``, which :meth:`StripeConnector.payment_status` reads as pending."""
    _expect_object(obj, "payment_intent")
    return envelope.event(
        EventKind.deposit_failed,
        reference=_reference(obj),
        psp_reference=_text(obj, "id", "payment_intent"),
        amount=_count(obj, "amount", "payment_intent"),
        currency=_text(obj, "currency", "payment_intent").upper(),
        detail=_payment_error(obj),
    )


def _charge_refunded(envelope: _Envelope, obj: Mapping[str, Any]) -> PaymentEvent:
    """``amount`` is ``amount_refunded``: Stripe's running total for the charge, not this refund alone."""
    _expect_object(obj, "charge")
    charge_id = _text(obj, "id", "charge")
    intent = _optional_text(obj, "payment_intent", "charge")
    reference = _reference(obj)
    if intent is None and reference is None:
        return envelope.event(EventKind.ignored, detail={"reason": _UNRELATED.format(f"charge {charge_id}")})
    return envelope.event(
        EventKind.refunded,
        reference=reference,
        psp_reference=intent,
        amount=_count(obj, "amount_refunded", "charge"),
        currency=_text(obj, "currency", "charge").upper(),
        detail={"charge": charge_id, "fully_refunded": obj.get("refunded") is True},
    )


def _dispute_created(envelope: _Envelope, obj: Mapping[str, Any]) -> PaymentEvent:
    _expect_object(obj, "dispute")
    dispute_id = _text(obj, "id", "dispute")
    intent = _optional_text(obj, "payment_intent", "dispute")
    reference = _reference(obj)
    if intent is None and reference is None:
        return envelope.event(EventKind.ignored, detail={"reason": _UNRELATED.format(f"dispute {dispute_id}")})
    detail = {"dispute": dispute_id}
    detail.update({key: value for key in ("charge", "reason", "status") if isinstance(value := obj.get(key), str)})
    return envelope.event(
        EventKind.chargeback,
        reference=reference,
        psp_reference=intent,
        amount=_count(obj, "amount", "dispute"),
        currency=_text(obj, "currency", "dispute").upper(),
        detail=detail,
    )


_READERS: dict[str, Callable[[_Envelope, Mapping[str, Any]], PaymentEvent]] = {
    "payment_intent.succeeded": _intent_succeeded,
    "payment_intent.payment_failed": _intent_failed,
    "charge.refunded": _charge_refunded,
    "charge.dispute.created": _dispute_created,
}

# A refund or dispute without a PaymentIntent cannot be about a Bourse deposit: every
# Bourse deposit is a Checkout Session, which always pays through a PaymentIntent.
_UNRELATED = "{} has no payment_intent and no Bourse reference"


def _payment_error(intent: Mapping[str, Any]) -> dict[str, str]:
    error = intent.get("last_payment_error")
    if not isinstance(error, dict):
        return {}
    return {key: value for key in ("code", "decline_code", "message") if isinstance(value := error.get(key), str)}


def _reference(obj: Mapping[str, Any]) -> str | None:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    value = metadata.get(METADATA_KEY)
    return value if isinstance(value, str) and value else None


def _expect_object(obj: Mapping[str, Any], kind: str) -> None:
    if obj.get("object") != kind:
        raise MalformedEvent(f"The Stripe event's data.object is not a {kind}")


def _text(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"The Stripe {where} has no {key}")
    return value


def _optional_text(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        # An expanded object here would mean a payload shape this connector does not read.
        raise MalformedEvent(f"The Stripe {where}'s {key} is not an id")
    return value


def _count(obj: Mapping[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedEvent(f"The Stripe {where}'s {key} is not a non-negative integer")
    return value


# --- Helpers -----------------------------------------------------------------------------


def _signed_timestamp(header: str) -> int:
    """The ``t=`` value, read exactly as the SDK read it to check the signature (the first one)."""
    for item in header.split(","):
        parts = item.split("=", 2)
        if parts[0] == "t":
            return int(parts[1])
    raise InvalidSignature("Stripe signature header has no timestamp")  # pragma: no cover - the SDK checked


def _is_absolute_http_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in {"http", "https"} and bool(parts.netloc)


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), *params.items()]
    return urlunsplit(parts._replace(query=urlencode(query)))
