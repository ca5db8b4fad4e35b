"""Fuzzing the webhook parsers: the simulator's and Stripe's.

Whatever arrives (arbitrary bytes, arbitrary headers and signatures, well-signed
JSON of any shape), ``parse_webhook`` either returns an event the inbox can store
or raises a :class:`ConnectorError` (``invalid_signature``, ``signature_expired``,
``malformed_event``): never anything else, which the API would turn into a 500.
The explicit examples are the crashes these properties found; the last tests send
the same inputs through the real endpoint, on both backends.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import example, given
from hypothesis import strategies as st

from bourse.app import create_app
from bourse.assets.amounts import INT64_MAX
from bourse.db import Database
from bourse.psp import signing
from bourse.psp.connectors.base import ConnectorError, PaymentEvent
from bourse.psp.connectors.simulator import EVENT_KINDS, SimulatorConnector
from bourse.psp.connectors.stripe import StripeConnector
from tests.support.fuzz import FUZZ, dumps, header_text, json_scalars, json_values
from tests.support.services import make_settings

SIM_SECRET = "fuzz-sim-webhook-secret-0123456789"
STRIPE_SECRET = "whsec_fuzz_stripe_secret_0123456789"
NOW = 1_767_225_600
DEEP = b"[" * 100_000 + b"]" * 100_000

simulator = SimulatorConnector("http://127.0.0.1:9", "unused-api-key", SIM_SECRET)
stripe = StripeConnector("sk_test_unused", STRIPE_SECRET, public_url="https://bourse.example")


def stripe_signature(body: bytes, timestamp: int = NOW, secret: str = STRIPE_SECRET) -> str:
    """Stripe's documented scheme: HMAC-SHA256 of ``"<t>.<body>"``, computed here independently."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def sim_signature(body: bytes, timestamp: int = NOW) -> str:
    return signing.sign(SIM_SECRET, body, timestamp)


def assert_storable(event: PaymentEvent) -> None:
    """What the inbox writes must fit its columns on PostgreSQL and SQLite alike."""
    for value in (event.event_id, event.provider_type, event.reference, event.psp_reference, event.currency):
        if value is not None:
            assert isinstance(value, str)
            assert "\x00" not in value
            value.encode("utf-8")  # no lone surrogates
    assert event.event_id
    if event.currency is not None:
        assert 1 <= len(event.currency) <= 12
    if event.amount is not None:
        assert type(event.amount) is int
        assert 0 <= event.amount <= INT64_MAX
    # The detail is stored as JSON and shown again on admin pages: its text must be clean too.
    json.dumps(event.detail, ensure_ascii=False).encode("utf-8")
    assert "\x00" not in json.dumps(event.detail, ensure_ascii=False)


def outcome(parse: Callable[[], PaymentEvent]) -> PaymentEvent | ConnectorError:
    """Parse, and let anything but a ConnectorError fail the property."""
    try:
        event = parse()
    except ConnectorError as exc:
        return exc
    assert isinstance(event, PaymentEvent)
    assert_storable(event)
    return event


def sim_parse(body: bytes, headers: Mapping[str, str]) -> PaymentEvent | ConnectorError:
    # A float clock, as in production (time.time()).
    return outcome(lambda: simulator.parse_webhook(body=body, headers=headers, now=float(NOW)))


def stripe_parse(body: bytes, headers: Mapping[str, str]) -> PaymentEvent | ConnectorError:
    return outcome(lambda: stripe.parse_webhook(body=body, headers=headers, now=float(NOW)))


# Signature headers: well formed, nearly well formed, and junk.
hex_or_junk = st.one_of(st.text("0123456789abcdef", min_size=64, max_size=64), header_text)
timestamps = st.one_of(st.integers(min_value=0, max_value=2 * NOW), header_text)
signature_headers = st.one_of(
    header_text,
    st.builds(lambda t, v: f"t={t},v1={v}", timestamps, hex_or_junk),
    st.lists(st.tuples(st.sampled_from(["t", "v1", "v0", "", " t"]), header_text), max_size=5).map(
        lambda items: ",".join(f"{k}={v}" for k, v in items)
    ),
)
header_maps = st.dictionaries(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20).map(str.lower),
    header_text,
    max_size=5,
)


# --- Unsigned junk: arbitrary bytes, headers and signatures -------------------------------------


@FUZZ
@given(body=st.binary(max_size=300), headers=header_maps, signature=signature_headers)
@example(body=b"{}", headers={}, signature="t=1,v1=\xe9")  # compare_digest refuses non-ASCII: TypeError
@example(body=b"{}", headers={}, signature="t=\xb2,v1=00")  # "²".isdigit() but int("²") fails: ValueError
def test_simulator_parser_survives_anything_unsigned(body: bytes, headers: dict[str, str], signature: str) -> None:
    assert isinstance(sim_parse(body, headers), ConnectorError)
    assert isinstance(sim_parse(body, {**headers, "psp-signature": signature}), ConnectorError)


@FUZZ
@given(body=st.binary(max_size=300), headers=header_maps, signature=signature_headers)
@example(body=b"{}", headers={}, signature="t=1,v1=\xe9")  # the SDK's compare_digest: TypeError
@example(body=b"\xff", headers={}, signature="t=1,v1=00")
def test_stripe_parser_survives_anything_unsigned(body: bytes, headers: dict[str, str], signature: str) -> None:
    assert isinstance(stripe_parse(body, headers), ConnectorError)
    assert isinstance(stripe_parse(body, {**headers, "stripe-signature": signature}), ConnectorError)


# --- Well signed: any bytes, any JSON, event-shaped JSON -------------------------------------------


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), json_values.map(dumps)))
@example(body=DEEP)  # json.loads: RecursionError
@example(body=json.dumps({"id": "evt_1", "type": "x"}).encode("utf-16"))  # UTF-16 JSON: NULs in the stored body
def test_simulator_parser_survives_any_signed_body(body: bytes) -> None:
    sim_parse(body, {"psp-signature": sim_signature(body)})


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), json_values.map(dumps)))
@example(body=DEEP)  # json.loads: RecursionError
@example(body=json.dumps({"id": "evt_1", "object": "event"}).encode("utf-16-le"))
def test_stripe_parser_survives_any_signed_body(body: bytes) -> None:
    stripe_parse(body, {"stripe-signature": stripe_signature(body)})


def field(names: list[str]) -> st.SearchStrategy[Any]:
    """A plausible value for a field most of the time, anything JSON otherwise."""
    return st.one_of(st.sampled_from(names), json_values)


sim_events = st.fixed_dictionaries(
    {
        "id": field(["evt_1", "evt_\x00", "\ud800"]),
        "type": field([*EVENT_KINDS, "something.else"]),
        "created": st.one_of(st.integers(), json_values),
        "data": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {
                    "object": st.fixed_dictionaries(
                        {
                            "id": field(["dep_1", "po_1", "dep_\x00"]),
                            "reference": field(["ref_1", "\ud800"]),
                            "amount": st.one_of(st.integers(), st.integers(min_value=2**62, max_value=2**80)),
                            "currency": field(["USD", "EUR", "usd", "NOTACURRENCYCODE", "\x00"]),
                        },
                        optional={"status": json_values, "failure_reason": json_values},
                    )
                }
            ),
        ),
    }
)


@FUZZ
@given(event=sim_events)
@example(
    event={
        "id": "evt_big",
        "type": "deposit.succeeded",
        "created": NOW,
        "data": {"object": {"id": "dep_1", "reference": "r", "amount": 2**64, "currency": "USD"}},
    }
)  # beyond BIGINT: the inbox's INSERT would fail on PostgreSQL
@example(
    event={
        "id": "evt_\x00",
        "type": "deposit.succeeded",
        "created": NOW,
        "data": {"object": {"id": "dep_1", "reference": "r", "amount": 1, "currency": "USD"}},
    }
)  # NUL: PostgreSQL text cannot hold it
@example(
    event={
        "id": "evt_cur",
        "type": "deposit.succeeded",
        "created": NOW,
        "data": {"object": {"id": "dep_1", "reference": "r", "amount": 1, "currency": "NOTACURRENCYCODE"}},
    }
)  # longer than the currency column
@example(
    event={
        "id": "evt_detail",
        "type": "deposit.failed",
        "created": NOW,
        "data": {"object": {"id": "dep_1", "reference": "r", "amount": 1, "currency": "USD", "status": "\ud800"}},
    }
)  # a lone surrogate in the detail: storable as JSON, but unencodable when shown again
def test_simulator_parser_on_signed_event_shaped_json(event: dict[str, Any]) -> None:
    body = dumps(event)
    sim_parse(body, {"psp-signature": sim_signature(body)})


stripe_objects = st.fixed_dictionaries(
    {
        "object": field(["payment_intent", "charge", "dispute"]),
        "id": field(["pi_1", "ch_1", "dp_1", "\x00"]),
    },
    optional={
        "amount": st.one_of(st.integers(), json_values),
        "amount_received": st.one_of(st.integers(), st.integers(min_value=2**62, max_value=2**80)),
        "amount_refunded": st.one_of(st.integers(), json_values),
        "currency": field(["usd", "eur", "gbp", "notacurrencycode", "\ud800"]),
        "metadata": st.one_of(json_values, st.fixed_dictionaries({"bourse_reference": field(["dep_1", "\x00"])})),
        "payment_intent": field(["pi_1", "\x00"]),
        "last_payment_error": json_values,
        "refunded": json_values,
        "charge": json_values,
        "reason": json_values,
        "status": json_values,
    },
)
stripe_events = st.fixed_dictionaries(
    {
        "id": field(["evt_1", "\x00"]),
        "object": field(["event"]),
        "type": field(
            ["payment_intent.succeeded", "payment_intent.payment_failed", "charge.refunded", "charge.dispute.created"]
        ),
        "created": st.one_of(st.integers(), json_values),
        "data": st.one_of(json_values, st.fixed_dictionaries({"object": st.one_of(stripe_objects, json_values)})),
    }
)


@FUZZ
@given(event=stripe_events)
@example(
    event={
        "id": "evt_big",
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": NOW,
        "data": {
            "object": {
                "object": "payment_intent",
                "id": "pi_1",
                "amount_received": 2**64,
                "currency": "usd",
                "metadata": {"bourse_reference": "dep_1"},
            }
        },
    }
)
@example(
    event={
        "id": "evt_\x00",
        "object": "event",
        "type": "charge.refunded",
        "created": NOW,
        "data": {
            "object": {
                "object": "charge",
                "id": "ch_1",
                "payment_intent": "pi_\ud800",
                "amount_refunded": 1,
                "currency": "usd",
            }
        },
    }
)
def test_stripe_parser_on_signed_event_shaped_json(event: dict[str, Any]) -> None:
    body = dumps(event)
    stripe_parse(body, {"stripe-signature": stripe_signature(body)})


@FUZZ
@given(timestamp=st.one_of(st.integers(), st.integers(min_value=10**17)), scalar=json_scalars)
@example(timestamp=10**400, scalar=None)  # time.time() - 10**400: OverflowError
@example(timestamp=-(10**400), scalar=None)
def test_stripe_parser_with_any_signed_timestamp(timestamp: int, scalar: Any) -> None:
    body = dumps({"id": "evt_1", "object": "event", "extra": scalar})
    stripe_parse(body, {"stripe-signature": stripe_signature(body, timestamp)})


@FUZZ
@given(timestamp=st.integers(min_value=0, max_value=10**12 - 1))
def test_simulator_parser_with_any_signed_timestamp(timestamp: int) -> None:
    body = dumps({"id": "evt_1", "type": "other"})
    result = sim_parse(body, {"psp-signature": sim_signature(body, timestamp)})
    assert isinstance(result, PaymentEvent) == (abs(NOW - timestamp) <= signing.DEFAULT_TOLERANCE_SECONDS)


# --- The same inputs through the real endpoint ------------------------------------------------------


@pytest.fixture
def inbox(database_url: str, database: Database) -> Iterator[TestClient]:
    settings = make_settings(
        database_url,
        psp_secret=SIM_SECRET,
        psp_sim_url="http://127.0.0.1:9",
        psp_connectors=("simulator", "stripe"),
        stripe_api_key="sk_test_unused",
        stripe_webhook_secret=STRIPE_SECRET,
    )
    with TestClient(create_app(settings, database=database), raise_server_exceptions=False) as client:
        yield client


def post(client: TestClient, connector: str, body: bytes, signature: str | bytes) -> tuple[int, str]:
    header = "PSP-Signature" if connector == "simulator" else "Stripe-Signature"
    response = client.post(
        f"/api/v1/psp/{connector}/webhook",
        content=body,
        headers={"Content-Type": "application/json", header: signature},  # type: ignore[arg-type]  # bytes on purpose
    )
    return response.status_code, response.json().get("error", "")


@pytest.mark.parametrize("connector", ["simulator", "stripe"])
def test_a_non_ascii_signature_is_refused_not_a_500(inbox: TestClient, connector: str) -> None:
    assert post(inbox, connector, b"{}", "t=1,v1=\xe9".encode("latin-1")) == (401, "invalid_signature")


def test_a_signed_but_unstorable_event_is_malformed_not_a_500(inbox: TestClient) -> None:
    now = int(time.time())
    cases = {
        "nul-in-id": dumps({"id": "evt_\x00", "type": "something.else"}),
        "utf-16": json.dumps({"id": "evt_utf16", "type": "something.else"}).encode("utf-16"),
        "beyond-bigint": dumps(
            {
                "id": "evt_bigint",
                "type": "deposit.succeeded",
                "created": now,
                "data": {"object": {"id": "dep_1", "reference": "r", "amount": 2**64, "currency": "USD"}},
            }
        ),
        "deep": DEEP,
    }
    for name, body in cases.items():
        status = post(inbox, "simulator", body, signing.sign(SIM_SECRET, body, now))
        assert status == (400, "malformed_event"), name
    huge = dumps({"id": "evt_1", "object": "event"})
    assert post(inbox, "stripe", huge, stripe_signature(huge, 10**400)) == (401, "signature_expired")
