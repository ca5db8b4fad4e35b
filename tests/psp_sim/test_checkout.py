"""The hosted checkout page, driven over HTTP the way a browser submits its forms."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx2 as httpx
import pytest

from bourse.psp.connectors.base import EventKind
from bourse.psp.connectors.simulator import SimulatorConnector
from tests.support.psp_sim import Receiver, Simulator, unique

pytestmark = pytest.mark.process


def test_page_shows_the_payment_escaped_with_both_forms(sim: Simulator) -> None:
    reference = f"<script>alert('{unique()}')</script>"
    deposit = sim.deposit(reference=reference, amount=4321)
    response = httpx.get(deposit["checkout_url"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert "4321" in page
    assert "USD" in page
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;" in page
    assert f'<form method="post" action="/checkout/{deposit["id"]}/approve">' in page
    assert f'<form method="post" action="/checkout/{deposit["id"]}/decline">' in page


def test_approve_succeeds_and_a_second_decision_is_refused(sim: Simulator, receiver: Receiver) -> None:
    deposit = sim.deposit()
    response = sim.approve(deposit["id"])
    assert response.status_code == 200
    assert "approved" in response.text
    assert sim.client.get(f"/v1/deposits/{deposit['id']}").json()["status"] == "succeeded"
    assert [d.event["type"] for d in receiver.for_reference(deposit["reference"])] == ["deposit.succeeded"]

    for again in (sim.approve, sim.decline):
        refused = again(deposit["id"])
        assert refused.status_code == 409
        assert refused.headers["content-type"].startswith("text/html")
        assert "already decided" in refused.text
    assert sim.client.get(f"/v1/deposits/{deposit['id']}").json()["status"] == "succeeded"
    # The decided page no longer offers the forms.
    assert "<form" not in httpx.get(deposit["checkout_url"]).text


def test_decline_redirects_to_the_return_url(sim: Simulator, receiver: Receiver, connector: SimulatorConnector) -> None:
    deposit = sim.deposit(return_url="https://shop.example/back?cart=7")
    response = sim.decline(deposit["id"])
    assert response.status_code == 303
    location = urlsplit(response.headers["location"])
    assert (location.scheme, location.netloc, location.path) == ("https", "shop.example", "/back")
    assert parse_qs(location.query) == {"cart": ["7"], "deposit": [deposit["id"]], "status": ["failed"]}
    stored = sim.client.get(f"/v1/deposits/{deposit['id']}").json()
    assert (stored["status"], stored["failure_reason"]) == ("failed", "declined_by_payer")

    delivery = receiver.for_reference(deposit["reference"])[0]
    event = connector.parse_webhook(body=delivery.body, headers=delivery.headers)
    assert event.kind == EventKind.deposit_failed
    assert event.detail["failure_reason"] == "declined_by_payer"


def test_approve_redirects_with_succeeded(sim: Simulator) -> None:
    deposit = sim.deposit(return_url="http://127.0.0.1:9/done")
    response = sim.approve(deposit["id"])
    assert response.status_code == 303
    assert response.headers["location"] == f"http://127.0.0.1:9/done?deposit={deposit['id']}&status=succeeded"


def test_decline_deposits_fault_turns_approve_into_a_decline(sim: Simulator, receiver: Receiver) -> None:
    sim.set_faults(decline_deposits=True)
    deposit = sim.deposit()
    response = sim.approve(deposit["id"])
    assert response.status_code == 200
    assert "Card declined" in response.text
    stored = sim.client.get(f"/v1/deposits/{deposit['id']}").json()
    assert (stored["status"], stored["failure_reason"]) == ("failed", "card_declined")
    assert receiver.for_reference(deposit["reference"])[0].event["type"] == "deposit.failed"


def test_unknown_checkout_is_404(sim: Simulator) -> None:
    assert httpx.get(f"{sim.url}/checkout/dep_nope").status_code == 404
    assert httpx.post(f"{sim.url}/checkout/dep_nope/approve").status_code == 404
