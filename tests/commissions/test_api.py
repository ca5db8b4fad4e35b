"""The IB commission endpoints over the real app: reports, payouts, statements, and isolation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from bourse.app import create_app
from bourse.commissions import service
from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.settings import Settings
from tests.commissions.support import client_takes, hierarchy, run_accrual
from tests.support.auth import bearer, make_user


@pytest.fixture
def api(settings: Settings, database: Database) -> Iterator[TestClient]:
    with TestClient(create_app(settings, database=database), raise_server_exceptions=False) as test_client:
        yield test_client


def test_an_ib_sees_its_commissions_and_payouts(api: TestClient, database: Database, settings: Settings) -> None:
    h = hierarchy(database)
    trade = client_takes(database, h)
    run_accrual(database, settings, trade.id)
    day = datetime.now(UTC).date()
    sub = bearer(settings, h.sub)

    for group_by, key in (("day", day.isoformat()), ("client", str(h.client.id)), ("instrument", h.symbol)):
        response = api.get("/api/v1/ib/commissions", params={"group_by": group_by}, headers=sub)
        assert response.status_code == 200, response.text
        assert response.json()["lines"] == [{"key": key, "asset": h.quote, "amount": "3.11", "accruals": 1}]
    earlier = (day - timedelta(days=3)).isoformat()
    response = api.get("/api/v1/ib/commissions", params={"to": earlier}, headers=sub)
    assert response.json()["lines"] == []
    response = api.get("/api/v1/ib/commissions", params={"from": day.isoformat(), "to": earlier}, headers=sub)
    assert (response.status_code, response.json()["error"]) == (422, "invalid_period")
    response = api.get("/api/v1/ib/commissions", params={"group_by": "planet"}, headers=sub)
    assert response.status_code == 422
    assert "error" in response.json()

    with unit_of_work(database) as session:
        paid = service.pay_out(session, h.sub.id, h.quote, through=day)
        assert paid is not None
        payout_id = str(paid.id)
    listed = api.get("/api/v1/ib/payouts", headers=sub).json()["payouts"]
    assert [(p["id"], p["amount"], p["accruals"]) for p in listed] == [(payout_id, "3.11", 1)]
    detail = api.get(f"/api/v1/ib/payouts/{payout_id}", headers=sub)
    assert detail.status_code == 200
    assert detail.json()["statement"]["lines"][0]["amount"] == "3.11"

    # Another IB, even the one above, never sees it; a client may not ask at all.
    other = api.get(f"/api/v1/ib/payouts/{payout_id}", headers=bearer(settings, h.ib))
    assert (other.status_code, other.json()["error"]) == (404, "payout_not_found")
    assert api.get("/api/v1/ib/payouts", headers=bearer(settings, h.ib)).json()["payouts"] == []
    client = api.get("/api/v1/ib/payouts", headers=bearer(settings, h.client))
    assert client.status_code == 403
    stranger = make_user(database, role=Role.ib)
    response = api.get("/api/v1/ib/commissions", headers=bearer(settings, stranger))
    assert response.json()["lines"] == []
