"""The auth API end to end, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient
from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.identity.models import RefreshToken, Role, User, UserStatus
from bourse.identity.service import set_user_status
from bourse.identity.tokens import decode_access_token, hash_refresh_token, issue_access_token
from bourse.settings import Settings
from tests.identity.helpers import PASSWORD, auth_header, login, register, unique_email
from tests.support.auth import make_user

AUTH = "/api/v1/auth"


def test_register_login_me_refresh_logout(client: TestClient, settings: Settings) -> None:
    email = unique_email("Flow")
    created = register(client, email=f"  {email.upper()} ")
    assert created["email"] == email.lower()
    assert created["role"] == "client"
    assert created["status"] == "active"
    assert created["totp_enabled"] is False

    tokens = login(client, email.lower())
    assert tokens["token_type"] == "bearer"
    assert tokens["expires_in"] == 900
    claims = decode_access_token(settings, tokens["access_token"])
    assert str(claims.user_id) == created["id"]
    assert claims.role is Role.client

    me = client.get(f"{AUTH}/me", headers=auth_header(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json() == created

    rotated = client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert client.get(f"{AUTH}/me", headers=auth_header(new["access_token"])).status_code == 200

    assert client.post(f"{AUTH}/logout", json={"refresh_token": new["refresh_token"]}).status_code == 204
    after = client.post(f"{AUTH}/refresh", json={"refresh_token": new["refresh_token"]})
    assert after.status_code == 401
    assert after.json()["error"] == "invalid_token"
    # Logging out twice, or with a token nobody issued, is harmless.
    assert client.post(f"{AUTH}/logout", json={"refresh_token": new["refresh_token"]}).status_code == 204
    assert client.post(f"{AUTH}/logout", json={"refresh_token": "never-issued"}).status_code == 204


def test_login_email_is_normalised(client: TestClient) -> None:
    email = unique_email()
    register(client, email=email)
    assert login(client, f" {email.upper()}  ")["access_token"]
    # Spaces are trimmed; a control character (a tab here) is refused, never stripped.
    refused = client.post(f"{AUTH}/login", json={"email": f"{email}\t", "password": PASSWORD})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "control_character"


def test_refresh_tokens_are_stored_only_as_hashes(client: TestClient, database: Database) -> None:
    email = unique_email()
    register(client, email=email)
    token = login(client, email)["refresh_token"]
    with unit_of_work(database) as session:
        rows = session.scalars(select(RefreshToken).join(User).where(User.email == email)).all()
        assert [row.token_hash for row in rows] == [hash_refresh_token(token)]
        assert token not in {row.token_hash for row in rows}


def test_reusing_a_rotated_refresh_token_revokes_the_whole_family(client: TestClient, database: Database) -> None:
    email = unique_email()
    register(client, email=email)
    first = login(client, email)
    other_device = login(client, email)  # a separate family, untouched by the reuse
    second = client.post(f"{AUTH}/refresh", json={"refresh_token": first["refresh_token"]}).json()
    third = client.post(f"{AUTH}/refresh", json={"refresh_token": second["refresh_token"]}).json()

    # An attacker replays the first token, already rotated.
    replay = client.post(f"{AUTH}/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401
    assert replay.json()["error"] == "invalid_token"
    assert replay.headers["www-authenticate"].startswith("Bearer")

    # The legitimate holder's newest token died with the family: the revocation was
    # committed although the request that triggered it was refused.
    newest = client.post(f"{AUTH}/refresh", json={"refresh_token": third["refresh_token"]})
    assert newest.status_code == 401
    with unit_of_work(database) as session:
        family = session.scalars(
            select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(first["refresh_token"]))
        ).one()
        members = session.scalars(select(RefreshToken).where(RefreshToken.family_id == family.family_id)).all()
        assert len(members) == 3
        assert {member.revoked_reason for member in members} == {"reuse_detected"}
    assert client.post(f"{AUTH}/refresh", json={"refresh_token": other_device["refresh_token"]}).status_code == 200


def test_refresh_refuses_unknown_and_expired_tokens(client: TestClient, database: Database) -> None:
    email = unique_email()
    register(client, email=email)
    tokens = login(client, email)
    assert client.post(f"{AUTH}/refresh", json={"refresh_token": "x" * 43}).status_code == 401
    with unit_of_work(database) as session:
        row = session.scalars(
            select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(tokens["refresh_token"]))
        ).one()
        row.expires_at = row.created_at
    expired = client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert expired.status_code == 401
    assert expired.json()["error"] == "invalid_token"


def test_register_refusals(client: TestClient) -> None:
    email = unique_email("dup")
    register(client, email=email)
    cases = [
        ({"email": email.upper(), "password": PASSWORD}, 409, "email_taken"),
        ({"email": unique_email(), "password": "elevenchars"}, 422, "password_too_short"),
        ({"email": unique_email(), "password": "x" * 1025}, 422, "password_too_long"),
        ({"email": "not-an-email", "password": PASSWORD}, 422, "invalid_email"),
        ({"email": "a b@example.com", "password": PASSWORD}, 422, "invalid_email"),
        ({"email": "someone@localhost", "password": PASSWORD}, 422, "invalid_email"),
        (
            {"email": "jonathan.smith@example.com", "password": "my Jonathan.Smith password"},
            422,
            "password_contains_email",
        ),
        # Self-registration never lets the caller choose a role.
        ({"email": unique_email(), "password": PASSWORD, "role": "admin"}, 422, "validation_error"),
    ]
    for body, status, code in cases:
        response = client.post(f"{AUTH}/register", json=body)
        assert (response.status_code, response.json()["error"]) == (status, code), body
        # Passwords are never echoed back.
        assert str(body["password"]) not in response.text


def test_wrong_password_and_unknown_email_look_the_same(client: TestClient) -> None:
    email = unique_email()
    register(client, email=email)
    wrong = client.post(f"{AUTH}/login", json={"email": email, "password": "not the password at all"})
    unknown = client.post(f"{AUTH}/login", json={"email": unique_email(), "password": "not the password at all"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json()["error"] == unknown.json()["error"] == "invalid_credentials"
    assert wrong.json()["detail"] == unknown.json()["detail"]


def test_a_locked_user_is_refused_everywhere(client: TestClient, database: Database) -> None:
    email = unique_email()
    user_id = uuid.UUID(str(register(client, email=email)["id"]))
    tokens = login(client, email)
    with unit_of_work(database) as session:
        set_user_status(session, user_id, UserStatus.locked)

    me = client.get(f"{AUTH}/me", headers=auth_header(tokens["access_token"]))
    assert (me.status_code, me.json()["error"]) == (403, "account_locked")
    refreshed = client.post(f"{AUTH}/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401  # locking revoked the refresh tokens
    wrong = client.post(f"{AUTH}/login", json={"email": email, "password": "not the password at all"})
    assert wrong.json()["error"] == "invalid_credentials"  # nothing revealed without the password
    right = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
    assert (right.status_code, right.json()["error"]) == (403, "account_locked")

    with unit_of_work(database) as session:
        set_user_status(session, user_id, UserStatus.active)
    assert client.get(f"{AUTH}/me", headers=auth_header(login(client, email)["access_token"])).status_code == 200


def test_a_token_for_a_user_that_no_longer_exists_is_invalid(client: TestClient, settings: Settings) -> None:
    ghost = User(id=uuid.uuid4(), email=unique_email(), role=Role.admin)
    response = client.get(f"{AUTH}/me", headers=auth_header(issue_access_token(settings, ghost)))
    assert (response.status_code, response.json()["error"]) == (401, "invalid_token")


def test_login_rehashes_a_password_hashed_with_old_parameters(
    client: TestClient, database: Database, settings: Settings
) -> None:
    user = make_user(database)  # hashed with the cheapest parameters
    with unit_of_work(database) as session:
        before = session.get_one(User, user.id).password_hash
    assert "m=8,t=1,p=1" in before
    login(client, user.email, user.password)
    with unit_of_work(database) as session:
        after = session.get_one(User, user.id).password_hash
    expected = (
        f"m={settings.password_hash_memory_kib},t={settings.password_hash_time_cost},"
        f"p={settings.password_hash_parallelism}"
    )
    assert after.startswith("$argon2id$")
    assert expected in after
    login(client, user.email, user.password)  # the new hash verifies


def test_every_identity_endpoint_acts_on_the_caller_only(client: TestClient) -> None:
    """There are no user ids in the auth API: each endpoint acts on the token's own user,
    so one user can never read or change another's profile, sessions or second factor."""
    alice, bob = unique_email("alice"), unique_email("bob")
    alice_id = register(client, email=alice)["id"]
    bob_id = register(client, email=bob)["id"]
    alice_tokens, bob_tokens = login(client, alice), login(client, bob)
    as_alice, as_bob = auth_header(alice_tokens["access_token"]), auth_header(bob_tokens["access_token"])

    assert client.get(f"{AUTH}/me", headers=as_alice).json()["id"] == alice_id
    assert client.get(f"{AUTH}/me", headers=as_bob).json()["id"] == bob_id
    # Query parameters naming someone else change nothing.
    assert (
        client.get(f"{AUTH}/me", params={"id": str(bob_id), "user_id": str(bob_id)}, headers=as_alice).json()["id"]
        == alice_id
    )

    # Alice turns on two-factor: Bob's sign-in and second factor are untouched.
    assert client.post(f"{AUTH}/totp/enrol", headers=as_alice).status_code == 200
    bob_disable = client.post(f"{AUTH}/totp/disable", headers=as_bob, json={"code": "123456"})
    assert (bob_disable.status_code, bob_disable.json()["error"]) == (409, "totp_not_enrolled")
    assert client.get(f"{AUTH}/me", headers=as_bob).json()["totp_enabled"] is False

    # A refresh token is bound to its user: Alice's yields Alice's tokens, whoever sends it.
    rotated = client.post(f"{AUTH}/refresh", json={"refresh_token": alice_tokens["refresh_token"]}, headers=as_bob)
    assert client.get(f"{AUTH}/me", headers=auth_header(rotated.json()["access_token"])).json()["id"] == alice_id
