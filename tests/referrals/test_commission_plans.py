"""Commission plans: admins replace them, every version is kept, plan_at finds the one in force."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import IntegrityError

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.referrals import service
from bourse.referrals.errors import PlanExceedsFee, PlanInvalid, PlanTooDeep
from bourse.referrals.models import CommissionPlan, PlanKind
from tests.referrals.helpers import Headers
from tests.support.auth import TestUser, make_user
from tests.support.clients import AppFactory

T0 = datetime(2027, 1, 4, 9, 0, tzinfo=UTC)


@pytest.fixture
def admin(database: Database) -> TestUser:
    return make_user(database, role=Role.admin)


def _url(ib_user_id: uuid.UUID, what: str = "plan") -> str:
    return f"/api/v1/admin/ib/{ib_user_id}/{what}"


def _put(client: TestClient, headers: dict[str, str], ib: TestUser, body: object) -> Any:
    return client.put(_url(ib.id), json=body, headers=headers)


def test_an_admin_sets_a_percent_of_fee_plan(
    client: TestClient, ib: TestUser, admin: TestUser, headers: Headers
) -> None:
    response = _put(client, headers(admin), ib, {"kind": "percent_of_fee", "levels": [3000, 1000]})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["kind"], plan["levels"], plan["amounts"]) == ("percent_of_fee", [3000, 1000], None)
    assert (plan["ib_user_id"], plan["created_by"], plan["valid_to"]) == (str(ib.id), str(admin.id), None)
    assert client.get(_url(ib.id), headers=headers(admin)).json() == plan


def test_an_admin_sets_a_per_lot_plan(client: TestClient, ib: TestUser, admin: TestUser, headers: Headers) -> None:
    amounts = {"BTC-USD": "2.50", "EURUSD2-USD": "0.00000001", "ETH-EUR": "0"}
    response = _put(client, headers(admin), ib, {"kind": "per_lot", "amounts": amounts})
    assert response.status_code == 200, response.text
    plan = response.json()
    assert (plan["kind"], plan["levels"], plan["amounts"]) == ("per_lot", None, amounts)
    assert client.get(_url(ib.id), headers=headers(admin)).json()["amounts"] == amounts


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"kind": "percent_of_fee", "levels": [6000, 5000]}, "plan_exceeds_fee"),
        ({"kind": "percent_of_fee", "levels": [3000, 1000, 500]}, "plan_too_deep"),
        ({"kind": "percent_of_fee", "levels": [10001]}, "plan_invalid"),
        ({"kind": "percent_of_fee", "levels": [-1]}, "plan_invalid"),
        ({"kind": "percent_of_fee", "levels": []}, "plan_invalid"),
        ({"kind": "percent_of_fee", "levels": ["3000"]}, "validation_error"),
        ({"kind": "percent_of_fee", "levels": [30.5]}, "validation_error"),
        ({"kind": "percent_of_fee", "levels": [True]}, "validation_error"),
        ({"kind": "percent_of_fee", "levels": [3000], "amounts": {}}, "validation_error"),
        ({"kind": "percent_of_fee", "levels": [1] * 65}, "validation_error"),
        ({"kind": "per_lot", "amounts": {}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"btc-usd": "1"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"BTCUSD": "1"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"B-USD": "1"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"BTC-USD": "1.123456789"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"BTC-USD": "-1"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"BTC-USD": "01"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"BTC-USD": "1e3"}}, "plan_invalid"),
        ({"kind": "per_lot", "amounts": {"BTC-USD": 2.5}}, "amount_must_be_string"),
        ({"kind": "per_lot", "amounts": {"BTC-USD": "1"}, "levels": [1]}, "validation_error"),
        ({"kind": "flat", "levels": [1]}, "validation_error"),
        ({"levels": [1]}, "validation_error"),
    ],
)
def test_plans_are_validated(
    client: TestClient, ib: TestUser, admin: TestUser, headers: Headers, body: object, code: str
) -> None:
    response = _put(client, headers(admin), ib, body)
    assert (response.status_code, response.json()["error"]) == (422, code), response.text
    assert client.get(_url(ib.id), headers=headers(admin)).json()["error"] == "plan_not_found"


def test_the_depth_limit_is_the_setting(
    make_client: AppFactory, ib: TestUser, admin: TestUser, headers: Headers
) -> None:
    body = {"kind": "percent_of_fee", "levels": [3000, 1000, 500]}
    assert _put(make_client(ib_max_depth=3), headers(admin), ib, body).status_code == 200
    shallow = make_client(ib_max_depth=1)
    response = _put(shallow, headers(admin), ib, {"kind": "percent_of_fee", "levels": [3000, 1000]})
    assert (response.status_code, response.json()["error"]) == (422, "plan_too_deep")
    assert _put(shallow, headers(admin), ib, {"kind": "percent_of_fee", "levels": [10000]}).status_code == 200


def test_only_ibs_have_plans(client: TestClient, database: Database, admin: TestUser, headers: Headers) -> None:
    body = {"kind": "percent_of_fee", "levels": [3000]}
    client_user = make_user(database)
    response = client.put(_url(client_user.id), json=body, headers=headers(admin))
    assert (response.status_code, response.json()["error"]) == (422, "not_an_ib")
    response = client.put(_url(uuid.uuid4()), json=body, headers=headers(admin))
    assert (response.status_code, response.json()["error"]) == (404, "ib_not_found")
    response = client.put("/api/v1/admin/ib/not-a-uuid/plan", json=body, headers=headers(admin))
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")


@pytest.mark.parametrize("role", [Role.client, Role.ib, Role.operator])
def test_plan_endpoints_are_for_admins(
    client: TestClient, database: Database, ib: TestUser, headers: Headers, role: Role
) -> None:
    caller = ib if role is Role.ib else make_user(database, role=role)
    calls = [
        _put(client, headers(caller), ib, {"kind": "percent_of_fee", "levels": [10000]}),
        client.get(_url(ib.id), headers=headers(caller)),
        client.get(_url(ib.id, "plans"), headers=headers(caller)),
    ]
    assert [(r.status_code, r.json()["error"]) for r in calls] == [(403, "forbidden")] * 3


def test_a_new_plan_closes_the_old_one(client: TestClient, ib: TestUser, admin: TestUser, headers: Headers) -> None:
    first = _put(client, headers(admin), ib, {"kind": "percent_of_fee", "levels": [3000, 1000]}).json()
    second = _put(client, headers(admin), ib, {"kind": "per_lot", "amounts": {"BTC-USD": "1"}}).json()
    third = _put(client, headers(admin), ib, {"kind": "percent_of_fee", "levels": [2500]}).json()
    assert client.get(_url(ib.id), headers=headers(admin)).json() == third

    history = client.get(_url(ib.id, "plans"), headers=headers(admin)).json()["plans"]
    assert [p["id"] for p in history] == [third["id"], second["id"], first["id"]]
    assert history[0]["valid_to"] is None
    # Back to back: each version ends exactly when its successor starts.
    assert history[1]["valid_to"] == history[0]["valid_from"]
    assert history[2]["valid_to"] == history[1]["valid_from"]


def test_plan_at_finds_the_plan_in_force(database: Database, ib: TestUser) -> None:
    t1, t2 = T0, T0 + timedelta(days=30)
    with unit_of_work(database) as session:
        assert service.plan_at(session, ib.id, t1) is None
        a = service.set_plan(session, ib.id, kind=PlanKind.percent_of_fee, levels=[3000, 1000], max_depth=2, now=t1)
        b = service.set_plan(session, ib.id, kind=PlanKind.per_lot, amounts={"BTC-USD": "1.5"}, max_depth=2, now=t2)
    with unit_of_work(database) as session:

        def at(when: datetime) -> uuid.UUID | None:
            plan = service.plan_at(session, ib.id, when)
            return None if plan is None else plan.id

        assert at(t1 - timedelta(microseconds=1)) is None
        assert at(t1) == a.id
        assert at(t2 - timedelta(microseconds=1)) == a.id
        assert at(t2) == b.id
        assert at(t2 + timedelta(days=3650)) == b.id
        found = service.plan_at(session, ib.id, t1 + timedelta(days=1))
        assert found is not None
        assert (found.kind, found.levels, found.valid_to) == (PlanKind.percent_of_fee, (3000, 1000), t2)
        found = service.plan_at(session, ib.id, t2)
        assert found is not None
        assert (found.kind, dict(found.amounts), found.valid_to) == (PlanKind.per_lot, {"BTC-USD": "1.5"}, None)
        with pytest.raises(ValueError, match="aware"):
            service.plan_at(session, ib.id, datetime(2027, 1, 1))  # noqa: DTZ001 - the refusal under test


def test_a_clock_that_stepped_back_does_not_break_the_history(database: Database, ib: TestUser) -> None:
    with unit_of_work(database) as session:
        old = service.set_plan(session, ib.id, kind=PlanKind.percent_of_fee, levels=[3000], max_depth=2, now=T0)
        new = service.set_plan(
            session, ib.id, kind=PlanKind.percent_of_fee, levels=[2000], max_depth=2, now=T0 - timedelta(hours=1)
        )
    with unit_of_work(database) as session:
        history = service.plan_history(session, ib.id)
        assert [p.id for p in history] == [new.id, old.id]
        assert history[1].valid_to == history[1].valid_from == history[0].valid_from == T0
        found = service.plan_at(session, ib.id, T0)
        assert found is not None
        assert found.id == new.id


def test_the_database_allows_one_current_plan_per_ib(database: Database, ib: TestUser) -> None:
    with unit_of_work(database) as session:
        service.set_plan(session, ib.id, kind=PlanKind.percent_of_fee, levels=[3000], max_depth=2, now=T0)
    session = database.sessions()
    try:
        session.add(
            CommissionPlan(ib_user_id=ib.id, kind=PlanKind.percent_of_fee, terms={"levels": [1]}, valid_from=T0)
        )
        with pytest.raises(IntegrityError):
            session.flush()
    finally:
        session.rollback()
        session.close()


def test_the_service_checks_the_terms_itself(database: Database, ib: TestUser) -> None:
    """Accrual and admin tooling may call the service directly: the same codes apply."""
    cases: list[tuple[list[object], type[Exception]]] = [
        ([5000, 5001], PlanExceedsFee),
        ([1, 1, 1], PlanTooDeep),
        ([True], PlanInvalid),
        ([1.5], PlanInvalid),
    ]
    with unit_of_work(database) as session:
        for levels, error in cases:
            with pytest.raises(error):
                service.set_plan(session, ib.id, kind=PlanKind.percent_of_fee, levels=levels, max_depth=2)
        with pytest.raises(PlanInvalid):
            service.set_plan(session, ib.id, kind=PlanKind.per_lot, amounts={"BTC-USD": 1}, max_depth=2)
        with pytest.raises(PlanInvalid):
            service.set_plan(session, ib.id, kind=PlanKind.per_lot, levels=[1], max_depth=2)
        assert service.current_plan(session, ib.id) is None
