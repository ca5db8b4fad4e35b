"""Webhooks: signatures the connector verifies, retries with backoff, and the delivery faults."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import pytest

from bourse.psp import signing
from bourse.psp.connectors.base import EventKind, ExpiredSignature, InvalidSignature, MalformedEvent
from bourse.psp.connectors.simulator import SimulatorConnector
from bourse.psp.sim.delivery import EventRecord, WebhookDispatcher
from bourse.psp.sim.faults import FaultSwitchboard
from tests.support.psp_sim import SECRET, Receiver, Simulator, unique
from tests.support.waiting import wait_until_async

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
    # How long the window holds them is checked in process below, with the dispatcher's sleep held.
    sim.set_faults(out_of_order_window_seconds=1.0)  # the three approvals land in one window
    deposits = [sim.deposit() for _ in range(3)]
    for deposit in deposits:
        sim.approve(deposit["id"])
    references = {d["reference"] for d in deposits}
    deliveries = receiver.wait(lambda d: d.reference in references, count=3)
    assert [d.reference for d in deliveries] == [d["reference"] for d in reversed(deposits)]
    records = [sim.event(d.event["id"]) for d in deliveries]
    assert [(r["window_seconds"], r["delay_seconds"]) for r in records] == [(1.0, 0.0)] * 3


def test_webhook_delay_fault(sim: Simulator, receiver: Receiver) -> None:
    # That nothing is sent before the delay is over is checked in process below.
    sim.set_faults(webhook_delay_seconds=0.5)
    deposit = sim.deposit()
    sim.approve(deposit["id"])
    delivery = receiver.for_reference(deposit["reference"])[0]
    record = sim.event(delivery.event["id"])
    assert (record["delay_seconds"], record["window_seconds"], record["attempts"]) == (0.5, 0.0, 1)


# --- The dispatcher in this process, its sleep held by the test -------------------------------


class HeldSleep:
    """The dispatcher's ``sleep``: records each wait it is asked for, and lets none end until released."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self._released = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        await self._released.wait()

    def release(self) -> None:
        self._released.set()


def _dispatch_held(
    receiver: Receiver, faults: dict[str, Any], references: list[str]
) -> tuple[list[EventRecord], list[float]]:
    """Emit one event per reference under ``faults`` with every sleep held, check none is sent, release.

    Returns the records, once all are delivered, and the waits the dispatcher asked for.
    """
    switchboard = FaultSwitchboard()
    switchboard.update(faults)
    sleep = HeldSleep()

    async def scenario() -> list[EventRecord]:
        dispatcher = WebhookDispatcher(receiver.url, SECRET, switchboard, sleep=sleep)
        await dispatcher.start()
        try:
            records = [
                dispatcher.emit("deposit.succeeded", {"id": unique("dep"), "reference": reference})
                for reference in references
            ]
            # An event emitted after them without the fault goes out meanwhile; they are not even tried.
            switchboard.reset()
            control = dispatcher.emit("deposit.succeeded", {"id": unique("dep"), "reference": unique()})
            await wait_until_async(lambda: control.delivered, "an event without the fault to be delivered")
            assert [record.attempts for record in records] == [0] * len(records)
            sleep.release()
            await wait_until_async(lambda: all(record.delivered for record in records), "every event to be delivered")
            return records
        finally:
            await dispatcher.stop()

    return asyncio.run(scenario()), sleep.asked


def test_the_delay_fault_waits_its_seconds_before_the_first_attempt(receiver: Receiver) -> None:
    reference = unique()
    [record], asked = _dispatch_held(receiver, {"webhook_delay_seconds": 1.5}, [reference])
    assert asked == [1.5]
    assert (record.delay_seconds, record.attempts) == (1.5, 1)
    assert len(receiver.for_reference(reference)) == 1


def test_the_out_of_order_window_holds_every_event_then_sends_the_newest_first(receiver: Receiver) -> None:
    references = [unique() for _ in range(3)]
    records, asked = _dispatch_held(receiver, {"out_of_order_window_seconds": 0.5}, references)
    assert asked == [0.5]  # one window for all three, opened by the first
    assert [(record.window_seconds, record.attempts) for record in records] == [(0.5, 1)] * 3
    deliveries = receiver.wait(lambda d: d.reference in references, count=3)
    assert [d.reference for d in deliveries] == list(reversed(references))
