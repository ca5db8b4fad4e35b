"""Registering with a referral code links the new user to the IB, in the same transaction."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role, User
from bourse.referrals import service
from bourse.referrals.errors import AlreadyReferred, SelfReferral
from bourse.referrals.models import Referral, ReferralCode
from tests.identity.helpers import PASSWORD, unique_email
from tests.referrals.helpers import CODES, Headers, create_code, register, unique_code
from tests.support.auth import TestUser, make_user


def _user_exists(database: Database, email: str) -> bool:
    with unit_of_work(database) as session:
        return session.scalar(select(User.id).where(User.email == email)) is not None


def _referral(database: Database, user: TestUser) -> Referral | None:
    with unit_of_work(database) as session:
        return session.get(Referral, user.id)


def test_registration_without_a_code_refers_nobody(client: TestClient, database: Database) -> None:
    user = register(client)
    assert user.role is Role.client
    assert _referral(database, user) is None


def test_registration_with_a_code_links_the_user_to_its_ib(
    client: TestClient, database: Database, ib: TestUser, headers: Headers
) -> None:
    code = create_code(client, headers(ib), unique_code())
    # What people type: any case, stray spaces.
    user = register(client, f" {code.lower()} ")
    assert user.role is Role.client
    referral = _referral(database, user)
    assert referral is not None
    assert (referral.ib_user_id, referral.code) == (ib.id, code)

    listed = client.get("/api/v1/ib/referrals", headers=headers(ib)).json()["referrals"]
    assert [(r["user_id"], r["email"], r["code"]) for r in listed] == [(str(user.id), user.email, code)]
    assert listed[0]["joined"]
    assert client.get(CODES, headers=headers(ib)).json()["codes"][0]["referred_users"] == 1


@pytest.mark.parametrize("kind", ["unknown", "inactive", "malformed"])
def test_a_bad_code_creates_no_user(
    client: TestClient, database: Database, ib: TestUser, headers: Headers, kind: str
) -> None:
    if kind == "unknown":
        code = unique_code("NOSUCH")
    elif kind == "inactive":
        code = create_code(client, headers(ib), unique_code())
        assert client.delete(f"{CODES}/{code}", headers=headers(ib)).status_code == 204
    else:
        code = "not a code!"
    email = unique_email("refused")
    response = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD, "referral_code": code})
    assert (response.status_code, response.json()["error"]) == (422, "unknown_referral_code")
    assert not _user_exists(database, email)
    # Nothing was left behind: the same email registers fine without the code.
    assert register(client, email=email).email == email


def test_an_invalid_email_with_a_good_code_refers_nobody(
    client: TestClient, database: Database, ib: TestUser, headers: Headers
) -> None:
    code = create_code(client, headers(ib), unique_code())
    response = client.post(
        "/api/v1/auth/register", json={"email": "not-an-email", "password": PASSWORD, "referral_code": code}
    )
    assert (response.status_code, response.json()["error"]) == (422, "invalid_email")
    assert client.get(CODES, headers=headers(ib)).json()["codes"][0]["referred_users"] == 0


@pytest.mark.parametrize("value", ["", 42, None])
def test_the_code_field_is_typed(client: TestClient, value: object) -> None:
    body = {"email": unique_email(), "password": PASSWORD, "referral_code": value}
    response = client.post("/api/v1/auth/register", json=body)
    if value is None:  # null is the same as leaving it out
        assert response.status_code == 201
    else:
        assert (response.status_code, response.json()["error"]) == (422, "validation_error")


def test_self_referral_is_impossible(database: Database) -> None:
    """Registration links only a user being created to an existing IB's code, so it
    cannot name the user itself; the service and the database refuse it anyway."""
    ib = make_user(database, role=Role.ib)
    with unit_of_work(database) as session:
        code = service.create_code(session, ib.id, unique_code())
    with unit_of_work(database) as session:
        code = session.get_one(ReferralCode, code.code)
        with pytest.raises(SelfReferral):
            service.refer(session, ib.id, code)
    session = database.sessions()
    try:
        session.add(Referral(user_id=ib.id, ib_user_id=ib.id, code=code.code))
        with pytest.raises(IntegrityError):
            session.flush()
    finally:
        session.rollback()
        session.close()
    with unit_of_work(database) as session:
        assert session.get(Referral, ib.id) is None
        assert service.upline(session, ib.id, 5) == []


def test_a_user_is_referred_once(database: Database) -> None:
    first, second = make_user(database, role=Role.ib), make_user(database, role=Role.ib)
    user = make_user(database)
    with unit_of_work(database) as session:
        codes = [service.create_code(session, ib.id) for ib in (first, second)]
        service.refer(session, user.id, codes[0])
    with unit_of_work(database) as session, pytest.raises(AlreadyReferred):
        service.refer(session, user.id, session.get_one(ReferralCode, codes[1].code))
    with unit_of_work(database) as session:
        assert service.referrer_of(session, user.id) == first.id
