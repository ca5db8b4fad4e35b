"""Referral codes over the API: IBs only, unique for ever, deactivated by their owner only."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.referrals import service
from bourse.referrals.service import CODE_PATTERN, GENERATED_CODE_LENGTH, MAX_ACTIVE_CODES_PER_IB
from tests.referrals.helpers import CODES, Headers, create_code, register, unique_code
from tests.support.auth import TestUser, make_user


def test_an_ib_creates_a_random_code_and_lists_it(client: TestClient, ib: TestUser, headers: Headers) -> None:
    response = client.post(CODES, headers=headers(ib))
    assert response.status_code == 201, response.text
    created = response.json()
    assert CODE_PATTERN.match(created["code"])
    assert len(created["code"]) == GENERATED_CODE_LENGTH
    assert created["active"] is True
    assert created["referred_users"] == 0

    listed = client.get(CODES, headers=headers(ib)).json()["codes"]
    assert [code["code"] for code in listed] == [created["code"]]


def test_an_ib_picks_a_code_which_is_stored_upper_case(client: TestClient, ib: TestUser, headers: Headers) -> None:
    wanted = unique_code("alice").lower()
    assert create_code(client, headers(ib), f"  {wanted} ") == wanted.upper()


def test_a_code_is_unique_across_ibs(client: TestClient, database: Database, ib: TestUser, headers: Headers) -> None:
    code = create_code(client, headers(ib), unique_code())
    other = make_user(database, role=Role.ib)
    for owner in (ib, other):
        response = client.post(CODES, json={"code": code.lower()}, headers=headers(owner))
        assert (response.status_code, response.json()["error"]) == (409, "referral_code_taken")
    assert [c["code"] for c in client.get(CODES, headers=headers(other)).json()["codes"]] == []


@pytest.mark.parametrize("code", ["ABC12", "A" * 33, "HAS SPACE", "CAFÉ-CODE", "UNDER_SCORE"])
def test_a_malformed_code_is_refused(client: TestClient, ib: TestUser, headers: Headers, code: str) -> None:
    response = client.post(CODES, json={"code": code}, headers=headers(ib))
    assert (response.status_code, response.json()["error"]) == (422, "invalid_referral_code")


def test_the_body_is_strict(client: TestClient, ib: TestUser, headers: Headers) -> None:
    response = client.post(CODES, json={"code": unique_code(), "owner": "me"}, headers=headers(ib))
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")
    response = client.post(CODES, json={"code": 123456}, headers=headers(ib))
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")


@pytest.mark.parametrize("role", [Role.client, Role.operator, Role.admin])
def test_ib_endpoints_refuse_other_roles(
    client: TestClient, database: Database, headers: Headers, ib: TestUser, role: Role
) -> None:
    code = create_code(client, headers(ib), unique_code())
    user = make_user(database, role=role)
    calls = [
        client.post(CODES, json={"code": unique_code()}, headers=headers(user)),
        client.get(CODES, headers=headers(user)),
        client.delete(f"{CODES}/{code}", headers=headers(user)),
        client.get("/api/v1/ib/referrals", headers=headers(user)),
        client.get("/api/v1/ib/referrals/tree", headers=headers(user)),
    ]
    assert [(r.status_code, r.json()["error"]) for r in calls] == [(403, "forbidden")] * len(calls)
    # The IB's code is untouched by the refused deactivation.
    assert client.get(CODES, headers=headers(ib)).json()["codes"][0]["active"] is True


def test_ib_endpoints_need_a_token(client: TestClient) -> None:
    response = client.get(CODES)
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")


def test_an_ib_deactivates_their_own_code(client: TestClient, ib: TestUser, headers: Headers) -> None:
    code = create_code(client, headers(ib), unique_code())
    referred = register(client, code)
    assert client.delete(f"{CODES}/{code.lower()}", headers=headers(ib)).status_code == 204
    # Again: harmless.
    assert client.delete(f"{CODES}/{code}", headers=headers(ib)).status_code == 204

    listed = client.get(CODES, headers=headers(ib)).json()["codes"]
    assert [(c["code"], c["active"], c["referred_users"]) for c in listed] == [(code, False, 1)]
    # Nobody can register with it any more; who already did stays referred.
    response = client.post(
        "/api/v1/auth/register",
        json={"email": f"late-{referred.email}", "password": referred.password, "referral_code": code},
    )
    assert (response.status_code, response.json()["error"]) == (422, "unknown_referral_code")
    referrals = client.get("/api/v1/ib/referrals", headers=headers(ib)).json()["referrals"]
    assert [r["user_id"] for r in referrals] == [str(referred.id)]
    # And the code can never be taken again, not even by its owner.
    response = client.post(CODES, json={"code": code}, headers=headers(ib))
    assert (response.status_code, response.json()["error"]) == (409, "referral_code_taken")


def test_another_ibs_code_is_not_found(client: TestClient, database: Database, ib: TestUser, headers: Headers) -> None:
    code = create_code(client, headers(ib), unique_code())
    other = make_user(database, role=Role.ib)
    for target in (code, unique_code("NONE")):
        response = client.delete(f"{CODES}/{target}", headers=headers(other))
        assert (response.status_code, response.json()["error"]) == (404, "referral_code_not_found")
    assert client.get(CODES, headers=headers(ib)).json()["codes"][0]["active"] is True
    register(client, code)  # still usable


def test_active_codes_are_capped_per_ib(client: TestClient, database: Database, headers: Headers) -> None:
    ib = make_user(database, role=Role.ib)
    with unit_of_work(database) as session:
        for _ in range(MAX_ACTIVE_CODES_PER_IB - 1):
            service.create_code(session, ib.id)
    last = create_code(client, headers(ib))
    response = client.post(CODES, headers=headers(ib))
    assert (response.status_code, response.json()["error"]) == (409, "too_many_referral_codes")
    # Deactivated codes do not count.
    assert client.delete(f"{CODES}/{last}", headers=headers(ib)).status_code == 204
    create_code(client, headers(ib))
