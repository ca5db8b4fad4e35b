"""Optional TOTP second factor: enrol, confirm, sign in with it, disable."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import pyotp
import pytest
from fastapi.testclient import TestClient

from bourse.db import Database, unit_of_work
from bourse.identity import service, totp
from bourse.identity.errors import InvalidTotpCode, TotpNotEnrolled, TotpRequired
from bourse.identity.models import User
from bourse.settings import Settings
from tests.identity.helpers import PASSWORD, auth_header, login, register, unique_email
from tests.support.auth import make_user
from tests.support.services import make_settings

AUTH = "/api/v1/auth"


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    """The identity service's clock, stopped one second into a 30-second step.

    So the codes for the previous, current and next steps all stay inside the
    server's window for the whole test, however long it takes, and nothing waits for
    a step to begin. The step is the current one, or the one before if this one has
    barely started: the stopped clock is never ahead of the real one, which tokens
    issued on it are checked against.
    """
    now = time.time()
    stopped = now - now % 30 + 1
    if stopped > now:
        stopped -= 30
    monkeypatch.setattr(service, "_now", lambda: datetime.fromtimestamp(stopped, UTC))
    return stopped


def test_enrol_confirm_login_disable(client: TestClient, database: Database, frozen_clock: float) -> None:
    email = unique_email()
    user_id = uuid.UUID(str(register(client, email=email)["id"]))
    headers = auth_header(login(client, email)["access_token"])

    enrolment = client.post(f"{AUTH}/totp/enrol", headers=headers)
    assert enrolment.status_code == 200
    secret = enrolment.json()["secret"]
    uri = enrolment.json()["provisioning_uri"]
    assert uri.startswith("otpauth://totp/")
    assert f"secret={secret}" in uri
    assert "issuer=Bourse" in uri
    # Not in force before confirmation: login needs no code yet.
    assert login(client, email)["access_token"]

    t0 = frozen_clock
    previous, current, following = (pyotp.TOTP(secret).at(t0, counter_offset=n) for n in (-1, 0, 1))
    wrong = next(code for code in ("000000", "111111") if code not in {previous, current, following})
    refused = client.post(f"{AUTH}/totp/confirm", headers=headers, json={"code": wrong})
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_totp_code")
    confirmed = client.post(f"{AUTH}/totp/confirm", headers=headers, json={"code": previous})
    assert confirmed.status_code == 200
    assert confirmed.json()["totp_enabled"] is True
    again = client.post(f"{AUTH}/totp/enrol", headers=headers)
    assert (again.status_code, again.json()["error"]) == (409, "totp_already_enabled")

    # The secret is stored encrypted.
    with unit_of_work(database) as session:
        stored = session.get_one(User, user_id).totp_secret_encrypted
    assert stored is not None
    assert secret not in stored

    missing = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
    assert (missing.status_code, missing.json()["error"]) == (401, "totp_required")
    bad = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD, "totp_code": wrong})
    assert (bad.status_code, bad.json()["error"]) == (401, "invalid_totp_code")
    # The code used to confirm cannot be used again: each code works once.
    replay = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD, "totp_code": previous})
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_totp_code")
    tokens = login(client, email, totp_code=current)
    assert client.get(f"{AUTH}/me", headers=auth_header(tokens["access_token"])).json()["totp_enabled"] is True
    # A right code does not rescue a wrong password.
    wrong_pw = client.post(f"{AUTH}/login", json={"email": email, "password": "x" * 20, "totp_code": following})
    assert wrong_pw.json()["error"] == "invalid_credentials"

    reused = client.post(f"{AUTH}/totp/disable", headers=headers, json={"code": current})
    assert (reused.status_code, reused.json()["error"]) == (401, "invalid_totp_code")
    disabled = client.post(f"{AUTH}/totp/disable", headers=headers, json={"code": following})
    assert disabled.status_code == 200
    assert disabled.json()["totp_enabled"] is False
    with unit_of_work(database) as session:
        assert session.get_one(User, user_id).totp_secret_encrypted is None
    assert login(client, email)["access_token"]
    not_on = client.post(f"{AUTH}/totp/disable", headers=headers, json={"code": following})
    assert (not_on.status_code, not_on.json()["error"]) == (409, "totp_not_enrolled")


def test_confirm_without_enrolment(client: TestClient) -> None:
    email = unique_email()
    register(client, email=email)
    headers = auth_header(login(client, email)["access_token"])
    response = client.post(f"{AUTH}/totp/confirm", headers=headers, json={"code": "123456"})
    assert (response.status_code, response.json()["error"]) == (409, "totp_not_enrolled")


def test_totp_endpoints_need_a_token(client: TestClient) -> None:
    for path in ("enrol", "confirm", "disable"):
        response = client.post(f"{AUTH}/totp/{path}", json={"code": "123456"})
        assert (response.status_code, response.json()["error"]) == (401, "invalid_token")


def test_verify_totp_if_enrolled(database: Database, settings: Settings) -> None:
    user = make_user(database)
    now = datetime.now(UTC)
    with unit_of_work(database) as session:
        assert service.verify_totp_if_enrolled(session, user.id, None, settings=settings) is False
        secret = service.start_totp_enrolment(session, settings, user.id).secret
        # Enrolled but not confirmed: not in force.
        assert service.verify_totp_if_enrolled(session, user.id, None, settings=settings) is False
        service.confirm_totp(session, settings, user.id, pyotp.TOTP(secret).at(now), now=now)
    later = now + timedelta(seconds=60)
    with unit_of_work(database) as session:
        with pytest.raises(TotpRequired):
            service.verify_totp_if_enrolled(session, user.id, None, settings=settings, now=later)
        with pytest.raises(InvalidTotpCode):
            service.verify_totp_if_enrolled(session, user.id, "000000x", settings=settings, now=later)
        code = pyotp.TOTP(secret).at(later)
        assert service.verify_totp_if_enrolled(session, user.id, code, settings=settings, now=later) is True
        with pytest.raises(InvalidTotpCode):  # once only
            service.verify_totp_if_enrolled(session, user.id, code, settings=settings, now=later)
        # A code from two steps ago is outside the window.
        with pytest.raises(InvalidTotpCode):
            service.verify_totp_if_enrolled(
                session, user.id, pyotp.TOTP(secret).at(later + timedelta(seconds=120)), settings=settings, now=later
            )
    with unit_of_work(database) as session, pytest.raises(TotpNotEnrolled):
        service.disable_totp(session, settings, make_user(session).id, "123456")


def test_secret_encryption_round_trip_and_tamper_detection(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, totp_key="k" * 40)
    secret = totp.new_secret()
    stored = totp.encrypt_secret(settings, secret)
    assert secret not in stored
    assert totp.encrypt_secret(settings, secret) != stored  # a fresh nonce every time
    assert totp.decrypt_secret(settings, stored) == secret

    version, _, encoded = stored.partition(":")
    flipped = encoded[:30] + ("A" if encoded[30] != "A" else "B") + encoded[31:]
    for bad in (f"{version}:{flipped}", f"v9:{encoded}", f"{version}:{encoded[:20]}", f"{version}:!!!"):
        with pytest.raises(totp.TotpSecretUnreadable):
            totp.decrypt_secret(settings, bad)
    with pytest.raises(totp.TotpSecretUnreadable):
        totp.decrypt_secret(make_settings(sqlite_url, totp_key="z" * 40), stored)


def test_matching_step_window() -> None:
    secret = totp.new_secret()
    now = datetime.now(UTC)
    current = pyotp.TOTP(secret).timecode(now)
    for offset in (-1, 0, 1):
        assert totp.matching_step(secret, pyotp.TOTP(secret).at(now, counter_offset=offset), now) == current + offset
    for bad in ("", "12345", "1234567", "abcdef"):
        assert totp.matching_step(secret, bad, now) is None


# Arabic-Indic, fullwidth, and a superscript: all str.isdigit(), none ASCII.
@pytest.mark.parametrize(
    "code", ["\u0661\u0662\u0663\u0664\u0665\u0666", "\uff11\uff12\uff13\uff14\uff15\uff16", "12345\u00b2"]
)
def test_a_code_of_other_digits_is_wrong_not_a_500(client: TestClient, code: str) -> None:
    """Six characters that are digits to str.isdigit() but not ASCII: comparing them with
    hmac.compare_digest raised TypeError (a 500). They are simply a wrong code."""
    email = unique_email()
    register(client, email=email)
    headers = auth_header(login(client, email)["access_token"])
    assert client.post(f"{AUTH}/totp/enrol", headers=headers).status_code == 200
    response = client.post(f"{AUTH}/totp/confirm", headers=headers, json={"code": code})
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_totp_code"
