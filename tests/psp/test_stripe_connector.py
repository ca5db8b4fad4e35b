"""The Stripe connector against signed webhook payloads and a local stand-in for Stripe's API.

Signatures are computed here from Stripe's documented scheme (HMAC-SHA256 of
``"<t>.<body>"``), independently of the SDK the connector verifies with. API calls
go over real HTTP, through the SDK, to a real ``http.server`` on loopback that
plays Stripe (``stripe_stub``): the tests see exactly what the SDK put on the
wire, and nothing reaches the network.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import pytest

from bourse.psp.connectors.base import (
    Capability,
    Checkout,
    ConnectorError,
    EventKind,
    ExpiredSignature,
    InvalidSignature,
    MalformedEvent,
    PaymentEvent,
    PaymentState,
    PaymentStatus,
    PspRefused,
    PspUnavailable,
    Unsupported,
)
from bourse.psp.connectors.stripe import StripeConnector
from bourse.psp.registry import connectors
from bourse.settings import load_settings
from tests.support.processes import free_port

API_KEY = "sk_test_51BourseExampleKey"
SECRET = "whsec_test_bourse_secret"
PUBLIC_URL = "https://bourse.example/wallet/deposits"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
CREATED = NOW - 5


def connector(api_base: str | None = None, **options: Any) -> StripeConnector:
    return StripeConnector(API_KEY, SECRET, public_url=PUBLIC_URL, api_base=api_base, **options)


def signature(body: bytes, *, secret: str = SECRET, timestamp: int = NOW) -> str:
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def event_body(event_type: str, obj: dict[str, Any], *, event_id: str = "evt_3QbourseEvt0001") -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "api_version": "2025-09-30.clover",
        "created": CREATED,
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }
    return json.dumps(event, indent=2).encode()


def parse(body: bytes, header: str | None = None, *, now: float | None = NOW) -> PaymentEvent:
    headers = {"content-type": "application/json"}
    headers["stripe-signature"] = signature(body) if header is None else header
    return connector().parse_webhook(body=body, headers=headers, now=now)


def payment_intent(**fields: Any) -> dict[str, Any]:
    intent: dict[str, Any] = {
        "id": "pi_3QbourseIntent01",
        "object": "payment_intent",
        "amount": 12_345,
        "amount_capturable": 0,
        "amount_received": 12_345,
        "capture_method": "automatic_async",
        "client_secret": "pi_3QbourseIntent01_secret_abc",
        "created": CREATED - 60,
        "currency": "usd",
        "last_payment_error": None,
        "latest_charge": "ch_3QbourseCharge01",
        "livemode": False,
        "metadata": {"bourse_reference": "dep_01JBOURSE"},
        "payment_method_types": ["card"],
        "status": "succeeded",
    }
    intent.update(fields)
    return intent


def charge(**fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": "ch_3QbourseCharge01",
        "object": "charge",
        "amount": 12_345,
        "amount_captured": 12_345,
        "amount_refunded": 2_000,
        "captured": True,
        "created": CREATED - 3600,
        "currency": "eur",
        "livemode": False,
        "metadata": {"bourse_reference": "dep_01JBOURSE"},
        "paid": True,
        "payment_intent": "pi_3QbourseIntent01",
        "refunded": False,
        "status": "succeeded",
    }
    value.update(fields)
    return value


def dispute(**fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": "du_1QbourseDispute1",
        "object": "dispute",
        "amount": 12_345,
        "charge": "ch_3QbourseCharge01",
        "created": CREATED,
        "currency": "usd",
        "is_charge_refundable": False,
        "livemode": False,
        "metadata": {},
        "payment_intent": "pi_3QbourseIntent01",
        "reason": "fraudulent",
        "status": "needs_response",
    }
    value.update(fields)
    return value


OCCURRED = dt.datetime.fromtimestamp(CREATED, tz=dt.UTC)


# --- A local Stripe ----------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def form(self) -> dict[str, str]:
        """The form-encoded body, one value per key (the SDK never repeats a key)."""
        parsed = parse_qs(self.body.decode("ascii"), keep_blank_values=True, strict_parsing=bool(self.body))
        assert all(len(values) == 1 for values in parsed.values()), parsed
        return {key: values[0] for key, values in parsed.items()}


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    delay: float = 0.0


@dataclass
class StripeStub:
    server: ThreadingHTTPServer
    requests: list[Recorded] = field(default_factory=list)
    replies: deque[Reply] = field(default_factory=deque)
    released: threading.Event = field(default_factory=threading.Event)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def reply(self, status: int, body: dict[str, Any], *, delay: float = 0.0) -> None:
        self.replies.append(Reply(status, body, delay))

    def error(self, status: int, error_type: str, message: str, code: str | None = None) -> None:
        """Queue an error the way Stripe shapes one."""
        error: dict[str, Any] = {"type": error_type, "message": message}
        if code:
            error["code"] = code
        self.reply(status, {"error": error})


def _handler(stub_ref: list[StripeStub]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            stub = stub_ref[0]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {name.lower(): value for name, value in self.headers.items()}
            stub.requests.append(Recorded(self.command, self.path, headers, body))
            reply = (
                stub.replies.popleft()
                if stub.replies
                else Reply(404, {"error": {"type": "invalid_request_error", "message": "no reply queued"}})
            )
            if reply.delay and stub.released.wait(reply.delay):
                return  # the test is over; nobody is listening any more
            payload = json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", f"req_stub{len(stub.requests)}")
            self.end_headers()
            self.wfile.write(payload)

        do_GET = _serve  # noqa: N815 - http.server's naming
        do_POST = _serve  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up (the timeout test) is expected, not a failure to print."""


@pytest.fixture
def stripe_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StripeStub]:
    # requests honours proxy variables; the stub is on loopback and must be reached directly.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    stub_ref: list[StripeStub] = []
    server = _QuietServer(("127.0.0.1", 0), _handler(stub_ref))
    stub = StripeStub(server)
    stub_ref.append(stub)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.released.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- Webhook events ----------------------------------------------------------------------


def test_payment_intent_succeeded_is_a_succeeded_deposit() -> None:
    body = event_body("payment_intent.succeeded", payment_intent(amount=20_000, amount_received=12_345))
    assert parse(body) == PaymentEvent(
        event_id="evt_3QbourseEvt0001",
        kind=EventKind.deposit_succeeded,
        provider_type="payment_intent.succeeded",
        reference="dep_01JBOURSE",
        psp_reference="pi_3QbourseIntent01",
        amount=12_345,  # what was received, not what was asked
        currency="USD",
        occurred_at=OCCURRED,
    )


def test_payment_intent_failed_is_a_failed_deposit_with_the_reason() -> None:
    error = {
        "type": "card_error",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "message": "Your card has insufficient funds.",
        "doc_url": "https://stripe.com/docs/error-codes/card-declined",
    }
    intent = payment_intent(
        status="requires_payment_method", amount_received=0, currency="eur", last_payment_error=error
    )
    event = parse(event_body("payment_intent.payment_failed", intent, event_id="evt_failed"))
    assert event == PaymentEvent(
        event_id="evt_failed",
        kind=EventKind.deposit_failed,
        provider_type="payment_intent.payment_failed",
        reference="dep_01JBOURSE",
        psp_reference="pi_3QbourseIntent01",
        amount=12_345,
        currency="EUR",
        occurred_at=OCCURRED,
        detail={
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": "Your card has insufficient funds.",
        },
    )


def test_payment_failed_without_an_error_has_an_empty_detail() -> None:
    event = parse(event_body("payment_intent.payment_failed", payment_intent(status="canceled")))
    assert event.kind is EventKind.deposit_failed
    assert event.detail == {}


def test_deposit_without_bourse_metadata_still_names_the_payment_intent() -> None:
    event = parse(event_body("payment_intent.succeeded", payment_intent(metadata={})))
    assert event.reference is None
    assert event.psp_reference == "pi_3QbourseIntent01"


def test_charge_refunded_reports_the_cumulative_refunded_amount() -> None:
    body = event_body("charge.refunded", charge(amount_refunded=5_000, refunded=False), event_id="evt_refund")
    assert parse(body) == PaymentEvent(
        event_id="evt_refund",
        kind=EventKind.refunded,
        provider_type="charge.refunded",
        reference="dep_01JBOURSE",
        psp_reference="pi_3QbourseIntent01",
        amount=5_000,
        currency="EUR",
        occurred_at=OCCURRED,
        detail={"charge": "ch_3QbourseCharge01", "fully_refunded": False},
    )


def test_full_refund_without_charge_metadata() -> None:
    event = parse(event_body("charge.refunded", charge(amount_refunded=12_345, refunded=True, metadata={})))
    assert event.kind is EventKind.refunded
    assert (event.reference, event.psp_reference, event.amount) == (None, "pi_3QbourseIntent01", 12_345)
    assert event.detail["fully_refunded"] is True


def test_refund_of_a_charge_bourse_cannot_have_made_is_ignored() -> None:
    event = parse(event_body("charge.refunded", charge(payment_intent=None, metadata={})))
    assert event.kind is EventKind.ignored
    assert "ch_3QbourseCharge01" in event.detail["reason"]


def test_dispute_created_is_a_chargeback() -> None:
    body = event_body("charge.dispute.created", dispute(amount=10_000), event_id="evt_dispute")
    assert parse(body) == PaymentEvent(
        event_id="evt_dispute",
        kind=EventKind.chargeback,
        provider_type="charge.dispute.created",
        reference=None,
        psp_reference="pi_3QbourseIntent01",
        amount=10_000,
        currency="USD",
        occurred_at=OCCURRED,
        detail={
            "dispute": "du_1QbourseDispute1",
            "charge": "ch_3QbourseCharge01",
            "reason": "fraudulent",
            "status": "needs_response",
        },
    )


@pytest.mark.parametrize(
    ("event_type", "obj"),
    [
        ("payment_intent.created", payment_intent(status="requires_payment_method", amount_received=0)),
        ("checkout.session.completed", {"id": "cs_test_a1", "object": "checkout.session"}),
        ("customer.created", {"id": "cus_1", "object": "customer"}),
    ],
)
def test_an_unhandled_event_type_is_ignored(event_type: str, obj: dict[str, Any]) -> None:
    event = parse(event_body(event_type, obj, event_id="evt_other"))
    assert event == PaymentEvent(
        event_id="evt_other", kind=EventKind.ignored, provider_type=event_type, occurred_at=OCCURRED
    )


# --- Signatures --------------------------------------------------------------------------

BODY = event_body("payment_intent.succeeded", payment_intent())


def rejected(body: bytes, headers: dict[str, str], *, now: float = NOW) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        connector().parse_webhook(body=body, headers=headers, now=now)
    return caught.value


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"t={NOW},v1={'0' * 64}", id="wrong-signature"),
        pytest.param(signature(BODY, secret="whsec_someone_else"), id="other-secret"),
        pytest.param(f"t={NOW},v1={signature(BODY, timestamp=NOW - 1).split('v1=')[1]}", id="timestamp-changed"),
        pytest.param(signature(BODY).replace("v1=", "v0="), id="no-v1-scheme"),
        pytest.param("garbage", id="malformed"),
        pytest.param(f"v1={signature(BODY).split('v1=')[1]}", id="no-timestamp"),
        pytest.param("", id="empty"),
    ],
)
def test_a_bad_signature_is_invalid(header: str) -> None:
    error = rejected(BODY, {"stripe-signature": header})
    assert type(error) is InvalidSignature
    assert error.code == "invalid_signature"
    assert error.status_code == 401


def test_a_missing_header_is_invalid() -> None:
    error = rejected(BODY, {"content-type": "application/json"})
    assert type(error) is InvalidSignature
    assert "No Stripe-Signature header" in error.detail


def test_a_tampered_body_is_invalid() -> None:
    header = signature(BODY)
    tampered = BODY.replace(b'"amount_received": 12345', b'"amount_received": 99999')
    assert tampered != BODY
    assert type(rejected(tampered, {"stripe-signature": header})) is InvalidSignature


def test_a_body_that_is_not_utf8_is_invalid() -> None:
    body = b"\xff\xfe" + BODY
    assert type(rejected(body, {"stripe-signature": signature(body)})) is InvalidSignature


@pytest.mark.parametrize("age", [301, 3600, -301])
def test_a_timestamp_outside_five_minutes_is_expired(age: int) -> None:
    header = signature(BODY, timestamp=NOW - age)
    error = rejected(BODY, {"stripe-signature": header})
    assert type(error) is ExpiredSignature
    assert error.code == "signature_expired"


@pytest.mark.parametrize("age", [300, -300, 0])
def test_a_timestamp_within_five_minutes_is_accepted(age: int) -> None:
    event = parse(BODY, signature(BODY, timestamp=NOW - age))
    assert event.kind is EventKind.deposit_succeeded


def test_a_stale_header_with_a_wrong_signature_is_invalid_not_expired() -> None:
    header = signature(BODY, secret="whsec_someone_else", timestamp=NOW - 3600)
    assert type(rejected(BODY, {"stripe-signature": header})) is InvalidSignature


def test_without_now_the_current_clock_decides() -> None:
    fresh = signature(BODY, timestamp=int(time.time()))
    assert parse(BODY, fresh, now=None).kind is EventKind.deposit_succeeded
    stale = signature(BODY, timestamp=int(time.time()) - 600)
    with pytest.raises(ExpiredSignature):
        parse(BODY, stale, now=None)


def test_any_v1_signature_may_match_while_a_secret_rotates() -> None:
    old = signature(BODY, secret="whsec_retired").split("v1=")[1]
    header = f"{signature(BODY)},v1={old}"
    assert parse(BODY, header).psp_reference == "pi_3QbourseIntent01"
    reversed_order = f"t={NOW},v1={old},v1={signature(BODY).split('v1=')[1]}"
    assert parse(BODY, reversed_order).psp_reference == "pi_3QbourseIntent01"


# --- Malformed events --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"id": "evt_1", "object": "event", ', id="truncated-json"),
        pytest.param(b"not json at all", id="not-json"),
        pytest.param(b"[1, 2, 3]", id="not-an-object"),
        pytest.param(json.dumps({"id": "evt_1", "object": "v2.core.event", "type": "x"}).encode(), id="thin-event"),
        pytest.param(event_body("payment_intent.succeeded", payment_intent())[:-1] + b', "type": 7}', id="bad-type"),
        pytest.param(
            json.dumps({"id": "evt_1", "object": "event", "type": "charge.refunded", "created": CREATED}).encode(),
            id="no-data",
        ),
        pytest.param(event_body("payment_intent.succeeded", payment_intent(amount_received="12345")), id="str-amount"),
        pytest.param(event_body("payment_intent.succeeded", payment_intent(amount_received=12.5)), id="float-amount"),
        pytest.param(event_body("payment_intent.succeeded", payment_intent(amount_received=-1)), id="negative"),
        pytest.param(event_body("payment_intent.succeeded", payment_intent(amount_received=True)), id="bool-amount"),
        pytest.param(event_body("payment_intent.succeeded", payment_intent(currency=None)), id="no-currency"),
        pytest.param(event_body("payment_intent.succeeded", charge()), id="wrong-object"),
        pytest.param(event_body("charge.refunded", charge(payment_intent={"id": "pi_1"})), id="expanded-intent"),
        pytest.param(event_body("charge.dispute.created", dispute(amount=None)), id="dispute-no-amount"),
    ],
)
def test_a_well_signed_but_unreadable_event_is_malformed(body: bytes) -> None:
    error = rejected(body, {"stripe-signature": signature(body)})
    assert type(error) is MalformedEvent
    assert error.code == "malformed_event"
    assert error.status_code == 400


# --- Deposits against the stub API -------------------------------------------------------

SESSION_ID = "cs_test_a1B2c3D4e5F6bourse"
SESSION_URL = f"https://checkout.stripe.com/c/pay/{SESSION_ID}#fidkdWxOYHwnPyd1blpxYHZxWjA0"


def session(**fields: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": SESSION_ID,
        "object": "checkout.session",
        "amount_subtotal": 12_345,
        "amount_total": 12_345,
        "client_reference_id": "dep_01JBOURSE",
        "currency": "usd",
        "livemode": False,
        "metadata": {"bourse_reference": "dep_01JBOURSE"},
        "mode": "payment",
        "payment_intent": None,
        "payment_status": "unpaid",
        "status": "open",
        "url": SESSION_URL,
    }
    value.update(fields)
    return value


def test_create_deposit_opens_a_checkout_session(stripe_stub: StripeStub) -> None:
    stripe_stub.reply(200, session())
    checkout = connector(stripe_stub.base_url).create_deposit(
        reference="dep_01JBOURSE", amount=12_345, currency="USD", idempotency_key="deposit-dep_01JBOURSE"
    )
    assert checkout == Checkout(psp_reference=SESSION_ID, checkout_url=SESSION_URL)

    [request] = stripe_stub.requests
    assert (request.method, request.path) == ("POST", "/v1/checkout/sessions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["idempotency-key"] == "deposit-dep_01JBOURSE"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {
        "mode": "payment",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "12345",
        "line_items[0][price_data][product_data][name]": "Deposit (USD)",
        "client_reference_id": "dep_01JBOURSE",
        "metadata[bourse_reference]": "dep_01JBOURSE",
        "payment_intent_data[metadata][bourse_reference]": "dep_01JBOURSE",
        "success_url": f"{PUBLIC_URL}?checkout=success",
        "cancel_url": f"{PUBLIC_URL}?checkout=cancelled",
    }


def test_create_deposit_returns_to_the_given_url_keeping_its_query(stripe_stub: StripeStub) -> None:
    stripe_stub.reply(200, session(currency="gbp"))
    connector(stripe_stub.base_url).create_deposit(
        reference="dep_2",
        amount=500,
        currency="gbp",
        idempotency_key="k-2",
        return_url="https://app.bourse.example/return?account=acc_7",
    )
    form = stripe_stub.requests[0].form()
    assert form["line_items[0][price_data][currency]"] == "gbp"
    assert form["success_url"] == "https://app.bourse.example/return?account=acc_7&checkout=success"
    assert form["cancel_url"] == "https://app.bourse.example/return?account=acc_7&checkout=cancelled"


@pytest.mark.parametrize(
    ("fields", "detail"),
    [
        ({"currency": "JPY"}, "'JPY' is not one of them"),
        ({"currency": "KWD"}, "'KWD' is not one of them"),
        ({"amount": 0}, "positive integer amount"),
        ({"amount": -5}, "positive integer amount"),
        ({"return_url": "/relative/path"}, "absolute http(s) URL"),
        ({"return_url": "javascript:alert(1)"}, "absolute http(s) URL"),
        ({"reference": ""}, "reference of 1 to 200"),
        ({"reference": "d" * 201}, "reference of 1 to 200"),
        ({"idempotency_key": ""}, "idempotency key"),
    ],
)
def test_create_deposit_refuses_what_stripe_cannot_take(
    stripe_stub: StripeStub, fields: dict[str, Any], detail: str
) -> None:
    arguments: dict[str, Any] = {"reference": "dep_1", "amount": 100, "currency": "EUR", "idempotency_key": "k"}
    arguments.update(fields)
    with pytest.raises(PspRefused) as caught:
        connector(stripe_stub.base_url).create_deposit(**arguments)
    assert detail in caught.value.detail
    assert stripe_stub.requests == []


def test_a_session_without_a_url_is_refused(stripe_stub: StripeStub) -> None:
    stripe_stub.reply(200, session(url=None))
    with pytest.raises(PspRefused, match="without a URL"):
        connector(stripe_stub.base_url).create_deposit(
            reference="dep_1", amount=100, currency="USD", idempotency_key="k"
        )


# --- Errors from Stripe ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "expected"),
    [
        (500, "api_error", PspUnavailable),
        (502, "api_error", PspUnavailable),
        (503, "api_error", PspUnavailable),
        (429, "invalid_request_error", PspUnavailable),
        (409, "invalid_request_error", PspUnavailable),  # the same key is still in flight
        (400, "invalid_request_error", PspRefused),
        (400, "idempotency_error", PspRefused),  # the key was used for other parameters
        (401, "invalid_request_error", PspRefused),
        (402, "card_error", PspRefused),
        (403, "invalid_request_error", PspRefused),
        (404, "invalid_request_error", PspRefused),
    ],
)
def test_stripe_errors_map_to_retryable_or_final(
    stripe_stub: StripeStub, status: int, error_type: str, expected: type[ConnectorError]
) -> None:
    stripe_stub.error(status, error_type, f"Stripe says {status}", code="some_code")
    with pytest.raises(ConnectorError) as caught:
        connector(stripe_stub.base_url).create_deposit(
            reference="dep_1", amount=100, currency="USD", idempotency_key="k"
        )
    assert type(caught.value) is expected
    assert f"Stripe ({status}): Stripe says {status}" == caught.value.detail
    assert len(stripe_stub.requests) == 1  # the SDK's own retries are off: our queue retries


def test_a_refused_connection_is_unavailable() -> None:
    unused = connector(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(PspUnavailable):
        unused.create_deposit(reference="dep_1", amount=100, currency="USD", idempotency_key="k")
    with pytest.raises(PspUnavailable):
        unused.payment_status("pi_3QbourseIntent01")


@pytest.mark.timeout(30)  # the stub answers only when the test is over: a client without our timeout hangs here
def test_a_slow_stripe_is_unavailable_after_the_timeout(stripe_stub: StripeStub) -> None:
    stripe_stub.reply(200, session(), delay=300)
    with pytest.raises(PspUnavailable) as caught:
        connector(stripe_stub.base_url, timeout=0.3).create_deposit(
            reference="dep_1", amount=100, currency="USD", idempotency_key="k"
        )
    # The SDK's read timeout, set to the connector's, is what ended the call.
    assert "Read timed out. (read timeout=0.3)" in caught.value.detail


# --- Payment status ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "amount_received", "expected"),
    [
        ("succeeded", 12_345, PaymentStatus("pi_3QbourseIntent01", PaymentState.succeeded, 12_345, "USD")),
        ("processing", 0, PaymentStatus("pi_3QbourseIntent01", PaymentState.pending, 20_000, "USD")),
        ("requires_payment_method", 0, PaymentStatus("pi_3QbourseIntent01", PaymentState.pending, 20_000, "USD")),
        ("requires_action", 0, PaymentStatus("pi_3QbourseIntent01", PaymentState.pending, 20_000, "USD")),
        ("canceled", 0, PaymentStatus("pi_3QbourseIntent01", PaymentState.failed, 20_000, "USD")),
    ],
)
def test_payment_status_of_a_payment_intent(
    stripe_stub: StripeStub, status: str, amount_received: int, expected: PaymentStatus
) -> None:
    stripe_stub.reply(200, payment_intent(status=status, amount=20_000, amount_received=amount_received))
    assert connector(stripe_stub.base_url).payment_status("pi_3QbourseIntent01") == expected
    [request] = stripe_stub.requests
    assert (request.method, request.path, request.body) == ("GET", "/v1/payment_intents/pi_3QbourseIntent01", b"")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize(
    ("status", "payment_status", "expected"),
    [
        ("complete", "paid", PaymentState.succeeded),
        ("complete", "unpaid", PaymentState.pending),  # a bank debit still clearing
        ("open", "unpaid", PaymentState.pending),
        ("expired", "unpaid", PaymentState.failed),
    ],
)
def test_payment_status_of_a_checkout_session(
    stripe_stub: StripeStub, status: str, payment_status: str, expected: PaymentState
) -> None:
    stripe_stub.reply(200, session(status=status, payment_status=payment_status, currency="eur"))
    answer = connector(stripe_stub.base_url).payment_status(SESSION_ID)
    assert answer == PaymentStatus(SESSION_ID, expected, 12_345, "EUR")
    assert stripe_stub.requests[0].path == f"/v1/checkout/sessions/{SESSION_ID}"


def test_payment_status_of_an_unknown_id_is_refused_without_asking(stripe_stub: StripeStub) -> None:
    with pytest.raises(PspRefused, match="neither"):
        connector(stripe_stub.base_url).payment_status("ch_3QbourseCharge01")
    assert stripe_stub.requests == []


def test_payment_status_errors_are_mapped(stripe_stub: StripeStub) -> None:
    stripe_stub.error(404, "invalid_request_error", "No such payment_intent: 'pi_missing'", code="resource_missing")
    stripe_stub.error(500, "api_error", "Something went wrong")
    stripe = connector(stripe_stub.base_url)
    with pytest.raises(PspRefused, match="No such payment_intent"):
        stripe.payment_status("pi_missing")
    with pytest.raises(PspUnavailable):
        stripe.payment_status("pi_missing")


# --- What the connector is ---------------------------------------------------------------


def test_capabilities_and_name() -> None:
    stripe = connector()
    assert stripe.name == "stripe"
    assert StripeConnector(API_KEY, SECRET, public_url=PUBLIC_URL, name="stripe_eu").name == "stripe_eu"
    assert {c for c in Capability if stripe.supports(c)} == {
        Capability.deposits,
        Capability.webhooks,
        Capability.status,
    }


def test_payouts_and_transactions_are_unsupported() -> None:
    stripe = connector()
    with pytest.raises(Unsupported) as payout:
        stripe.create_payout(reference="wd_1", amount=100, currency="USD", destination="acct_1", idempotency_key="k")
    assert payout.value.code == "connector_unsupported"
    assert payout.value.status_code == 422
    with pytest.raises(Unsupported) as listing:
        stripe.transactions(dt.date(2026, 1, 1))
    assert listing.value.code == "connector_unsupported"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"api_key": " ", "webhook_secret": SECRET, "public_url": PUBLIC_URL}, "API key"),
        ({"api_key": API_KEY, "webhook_secret": "", "public_url": PUBLIC_URL}, "webhook secret"),
        ({"api_key": API_KEY, "webhook_secret": SECRET, "public_url": "bourse.example"}, "public_url"),
        ({"api_key": API_KEY, "webhook_secret": SECRET, "public_url": PUBLIC_URL, "timeout": 0}, "timeout"),
    ],
)
def test_misconfiguration_fails_at_construction(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        StripeConnector(**arguments)


def test_bourse_stripe_api_base_points_the_active_connector_at_another_host(
    stripe_stub: StripeStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stripe-mock or a proxy: the setting reaches the connector the registry builds."""
    monkeypatch.setenv("BOURSE_PSP_CONNECTORS", "stripe")
    monkeypatch.setenv("BOURSE_STRIPE_API_KEY", API_KEY)
    monkeypatch.setenv("BOURSE_STRIPE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("BOURSE_STRIPE_API_BASE", stripe_stub.base_url + "/")
    stripe_stub.reply(200, session())
    checkout = connectors(load_settings())["stripe"].create_deposit(
        reference="dep_01JBOURSE", amount=12_345, currency="USD", idempotency_key="deposit-dep_01JBOURSE"
    )
    assert checkout.psp_reference == SESSION_ID
    [request] = stripe_stub.requests
    assert (request.method, request.path) == ("POST", "/v1/checkout/sessions")
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
