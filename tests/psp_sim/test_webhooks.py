"""Webhooks: signatures the connector verifies, retries with backoff, and the delivery faults."""

from __future__ import annotations

import datetime as dt
import json
import time

import pytest

from bourse.psp import signing
from bourse.psp.connectors.base import EventKind, ExpiredSignature, InvalidSignature, MalformedEvent
from bourse.psp.connectors.simulator import SimulatorConnector
from tests.support.psp_sim import SECRET, Receiver, Simulator

pytestmark = pytest.mark.process


def test_a_delivery_verifies_and_parses(sim: Simulator, receiver: Receiver, connector: SimulatorConnector) -> None:
    deposit = sim.deposit(amount=2500)
    sim.approve(deposit["id"])
    delivery = receiver.for_reference(deposit["reference"])[0]
    assert delivery.headers["content-type"] == "application/json"
    raw = delivery.event
    assert raw["id"].startswith("evt_")
    assert raw["object"] == "event"
    assert raw["data"]["object"]["status"] == "succeeded"

    event = connector.parse_webhook(body=delivery.body, headers=delivery.headers)
    assert event.event_id == raw["id"]
    assert event.kind == EventKind.deposit_succeeded
    assert event.provider_type == "deposit.succeeded"
    assert (event.reference, event.psp_reference, event.amount, event.currency) == (
        deposit["reference"],
        deposit["id"],
        2500,
        "USD",
    )
    assert event.occurred_at == dt.datetime.fromtimestamp(raw["created"], tz=dt.UTC)


def test_tampered_stale_or_foreign_deliveries_are_refused(
    sim: Simulator, receiver: Receiver, connector: SimulatorConnector
) -> None:
    deposit = sim.deposit(amount=2500)
    sim.approve(deposit["id"])
    delivery = receiver.for_reference(deposit["reference"])[0]
    tampered = delivery.body.replace(b'"amount":2500', b'"amount":2501')
    assert tampered != delivery.body
    with pytest.raises(InvalidSignature) as refused:
        connector.parse_webhook(body=tampered, headers=delivery.headers)
    assert not isinstance(refused.value, ExpiredSignature)
    with pytest.raises(ExpiredSignature):
        connector.parse_webhook(body=delivery.body, headers=delivery.headers, now=time.time() + 301)
    with pytest.raises(InvalidSignature):
        connector.parse_webhook(body=delivery.body, headers={})
    foreign = SimulatorConnector(sim.url, "k", "another-secret")
    try:
        with pytest.raises(InvalidSignature):
            foreign.parse_webhook(body=delivery.body, headers=delivery.headers)
    finally:
        foreign.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"type":"deposit.succeeded"}',
        b'{"id":"evt_1","type":"deposit.succeeded","created":1}',
        b'{"id":"evt_1","type":"deposit.succeeded","created":1,"data":{"object":{"id":"dep_1","amount":"5"}}}',
        (
            b'{"id":"evt_1","type":"payout.failed","created":"x","data":{"object":'
            b'{"id":"po_1","reference":"r","amount":5,"currency":"USD"}}}'
        ),
    ],
)
def test_well_signed_but_unreadable_events_are_malformed(connector: SimulatorConnector, body: bytes) -> None:
    with pytest.raises(MalformedEvent):
        connector.parse_webhook(body=body, headers={"psp-signature": signing.sign(SECRET, body)})


def test_unknown_event_types_are_ignored(connector: SimulatorConnector) -> None:
    body = json.dumps({"id": "evt_x", "type": "balance.available", "created": 1, "data": {}}).encode()
    event = connector.parse_webhook(body=body, headers={"psp-signature": signing.sign(SECRET, body)})
    assert (event.kind, event.event_id, event.provider_type) == (EventKind.ignored, "evt_x", "balance.available")


def test_failed_deliveries_are_retried_until_2xx(sim: Simulator, receiver: Receiver) -> None:
    # The waits between attempts (backoff) are checked in test_delivery.py, without a clock.
    deposit = sim.deposit()
    receiver.fail(deposit["reference"], 2)
    sim.approve(deposit["id"])
    deliveries = receiver.for_reference(deposit["reference"], count=3, timeout=10)
    assert len({d.event["id"] for d in deliveries}) == 1
    assert len({d.body for d in deliveries}) == 1
    event_id = deliveries[0].event["id"]
    record = sim.wait_for_event(event_id, lambda event: event["delivered"], "the simulator to record the 200")
    assert record["object_id"] == deposit["id"]
    assert (record["attempts"], record["delivered"], record["last_status"], record["last_error"]) == (
        3,
        True,
        200,
        None,
    )


def test_admin_events_show_failures_and_redeliver_sends_another_copy(sim: Simulator, receiver: Receiver) -> None:
    deposit = sim.deposit()
    receiver.fail(deposit["reference"], 1000)
    sim.approve(deposit["id"])
    event_id = receiver.for_reference(deposit["reference"])[0].event["id"]
    record = sim.wait_for_event(event_id, lambda event: event["last_status"] == 500, "the simulator to record the 500")
    assert (record["delivered"], record["last_status"], record["last_error"]) == (False, 500, "HTTP 500")

    receiver.fail(deposit["reference"], 0)
    response = sim.client.post(f"/admin/events/{event_id}/redeliver")
    assert response.status_code == 200
    assert response.json()["delivered"] is True
    assert response.json()["last_status"] == 200
    assert receiver.matching(lambda d: d.event["id"] == event_id)[-1].event["id"] == event_id


def test_duplicate_webhooks_fault(sim: Simulator, receiver: Receiver) -> None:
    sim.set_faults(duplicate_webhooks=2)
    deposit = sim.deposit()
    sim.approve(deposit["id"])
    event_id = receiver.for_reference(deposit["reference"], count=3)[0].event["id"]
    # Every copy the simulator sent is an attempt on its record: once all three are
    # answered, the receiver must have exactly as many as the simulator sent.
    record = sim.wait_for_event(
        event_id,
        lambda event: event["attempts"] >= 3 and event["last_status"] == 200,
        "the simulator to record three answered copies",
    )
    deliveries = receiver.for_reference(deposit["reference"])
    assert len(deliveries) == record["attempts"] == 3
    assert len({d.body for d in deliveries}) == 1


def test_out_of_order_fault_delivers_newest_first(sim: Simulator, receiver: Receiver) -> None:
    sim.set_faults(out_of_order_window_seconds=0.5)
    deposits = [sim.deposit() for _ in range(3)]
    started = time.monotonic()
    for deposit in deposits:
        sim.approve(deposit["id"])
    references = {d["reference"] for d in deposits}
    deliveries = receiver.wait(lambda d: d.reference in references, count=3)
    assert [d.reference for d in deliveries] == [d["reference"] for d in reversed(deposits)]
    assert deliveries[0].at - started >= 0.45


def test_webhook_delay_fault(sim: Simulator, receiver: Receiver) -> None:
    sim.set_faults(webhook_delay_seconds=1.0)
    deposit = sim.deposit()
    approved_at = time.monotonic()
    sim.approve(deposit["id"])
    time.sleep(0.5)
    assert receiver.matching(lambda d: d.reference == deposit["reference"]) == []
    delivery = receiver.for_reference(deposit["reference"], timeout=5)[0]
    assert delivery.at - approved_at >= 0.95
