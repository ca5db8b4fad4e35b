"""Access-token verification: every attack case gets 401 ``invalid_token``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient

from bourse.identity.errors import InvalidToken
from bourse.identity.models import Role
from bourse.identity.tokens import LEEWAY_SECONDS, VerifiedTokens, decode_access_token, issue_access_token
from bourse.settings import Settings
from tests.identity.helpers import auth_header, login, register, unique_email
from tests.support.services import make_settings

SECRET = "s" * 40
ME = "/api/v1/auth/me"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], key: bytes, digest: Any = hashlib.sha256) -> str:
    """A token built by hand, so the header can claim any algorithm."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def _claims(settings: Settings, user_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = int(datetime.now(UTC).timestamp())
    claims: dict[str, Any] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "role": "client",
        "email": "x@example.com",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    return {key: value for key, value in claims.items() if value is not None}


@pytest.fixture
def signed_in(client: TestClient) -> tuple[uuid.UUID, str]:
    email = unique_email()
    user_id = uuid.UUID(str(register(client, email=email)["id"]))
    return user_id, login(client, email)["access_token"]


def _attacks(settings: Settings, user_id: uuid.UUID) -> dict[str, str]:
    secret = settings.jwt_secret.get_secret_value().encode()
    good_header = {"alg": "HS256", "typ": "JWT", "kid": settings.jwt_key_id}
    claims = _claims(settings, user_id)
    valid = _forge(good_header, claims, secret)
    head, body, signature = valid.split(".")
    now = int(datetime.now(UTC).timestamp())
    return {
        "alg none": f"{_b64(json.dumps({'alg': 'none', 'kid': settings.jwt_key_id}).encode())}.{body}.",
        "alg None capitalised": f"{_b64(json.dumps({'alg': 'None', 'kid': settings.jwt_key_id}).encode())}.{body}.",
        "HS512 with the right secret": _forge({**good_header, "alg": "HS512"}, claims, secret, hashlib.sha512),
        "HS384 with the right secret": _forge({**good_header, "alg": "HS384"}, claims, secret, hashlib.sha384),
        "RS256 header, secret as HMAC key": _forge({**good_header, "alg": "RS256"}, claims, secret),
        "wrong key": _forge(good_header, claims, b"another secret that is long enough!!"),
        "expired": _forge(
            good_header, _claims(settings, user_id, iat=now - 1000, nbf=now - 1000, exp=now - 60), secret
        ),
        "not yet valid": _forge(good_header, _claims(settings, user_id, nbf=now + 120), secret),
        "wrong issuer": _forge(good_header, _claims(settings, user_id, iss="someone-else"), secret),
        "wrong audience": _forge(good_header, _claims(settings, user_id, aud="another-api"), secret),
        "unknown kid": _forge({**good_header, "kid": "k-unknown"}, claims, secret),
        "no kid": _forge({"alg": "HS256", "typ": "JWT"}, claims, secret),
        "no exp": _forge(good_header, _claims(settings, user_id, exp=None), secret),
        "no jti": _forge(good_header, _claims(settings, user_id, jti=None), secret),
        "unknown role": _forge(good_header, _claims(settings, user_id, role="superuser"), secret),
        "sub not a uuid": _forge(good_header, _claims(settings, user_id, sub="42"), secret),
        "payload tampered (role admin)": (
            f"{head}.{_b64(json.dumps(_claims(settings, user_id, role='admin')).encode())}.{signature}"
        ),
        "signature stripped": f"{head}.{body}.",
        "malformed: two segments": f"{head}.{body}",
        "malformed: garbage": "not-a-jwt",
        "malformed: bad base64": f"{head}.%%%.{signature}",
        "malformed: header not json": f"{_b64(b'nope')}.{body}.{signature}",
    }


def test_a_forged_valid_token_is_accepted(
    client: TestClient, settings: Settings, signed_in: tuple[uuid.UUID, str]
) -> None:
    """The forging helper itself produces tokens the server accepts: the attacks below
    fail because of what each changes, not because the helper is broken."""
    user_id, _ = signed_in
    secret = settings.jwt_secret.get_secret_value().encode()
    token = _forge({"alg": "HS256", "typ": "JWT", "kid": settings.jwt_key_id}, _claims(settings, user_id), secret)
    assert client.get(ME, headers=auth_header(token)).status_code == 200


def test_every_attack_is_refused_with_invalid_token(
    client: TestClient, settings: Settings, signed_in: tuple[uuid.UUID, str]
) -> None:
    user_id, _ = signed_in
    for name, token in _attacks(settings, user_id).items():
        with pytest.raises(InvalidToken):
            decode_access_token(settings, token)
        response = client.get(ME, headers=auth_header(token))
        assert response.status_code == 401, name
        assert response.json()["error"] == "invalid_token", name
        assert response.headers["www-authenticate"].startswith("Bearer"), name


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b"],
)
def test_missing_or_malformed_authorization_header(client: TestClient, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = client.get(ME, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_the_token_carries_the_pinned_header_and_every_claim(settings: Settings) -> None:
    subject = type("S", (), {"id": uuid.uuid4(), "role": Role.operator, "email": "op@example.com"})()
    now = datetime.now(UTC).replace(microsecond=0)
    token = issue_access_token(settings, subject, now=now)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": "k1", "typ": "JWT"}
    payload = jwt.decode(token, options={"verify_signature": False})
    assert set(payload) >= {"iss", "aud", "exp", "nbf", "iat", "sub", "role", "jti"}
    assert payload["exp"] - payload["iat"] == 15 * 60
    assert (payload["iss"], payload["aud"], payload["role"]) == ("bourse", "bourse-api", "operator")


def test_expiry_is_enforced_at_fifteen_minutes(settings: Settings) -> None:
    subject = type("S", (), {"id": uuid.uuid4(), "role": Role.client, "email": "c@example.com"})()
    fresh = issue_access_token(settings, subject, now=datetime.now(UTC) - timedelta(minutes=14))
    assert decode_access_token(settings, fresh).user_id == subject.id
    stale = issue_access_token(settings, subject, now=datetime.now(UTC) - timedelta(minutes=15, seconds=10))
    with pytest.raises(InvalidToken):
        decode_access_token(settings, stale)


def test_key_rotation_by_kid(sqlite_url: str) -> None:
    subject = type("S", (), {"id": uuid.uuid4(), "role": Role.client, "email": "c@example.com"})()
    old = make_settings(sqlite_url, jwt_secret=SECRET, jwt_key_id="2026-01")
    old_token = issue_access_token(old, subject)

    rotated = make_settings(
        sqlite_url, jwt_secret="n" * 40, jwt_key_id="2026-02", jwt_previous_keys=f"2026-01:{SECRET}"
    )
    # Tokens signed with the retired key still verify while it is listed ...
    assert decode_access_token(rotated, old_token).user_id == subject.id
    new_token = issue_access_token(rotated, subject)
    assert jwt.get_unverified_header(new_token)["kid"] == "2026-02"
    assert decode_access_token(rotated, new_token).user_id == subject.id
    # ... and not once it is dropped.
    retired = make_settings(sqlite_url, jwt_secret="n" * 40, jwt_key_id="2026-02")
    with pytest.raises(InvalidToken):
        decode_access_token(retired, old_token)
    # A kid names its own key only: the old kid with the new key's signature fails.
    forged = _forge({"alg": "HS256", "typ": "JWT", "kid": "2026-01"}, _claims(rotated, subject.id), b"n" * 40)
    with pytest.raises(InvalidToken):
        decode_access_token(rotated, forged)


# -- The cache of verified tokens --------------------------------------------------------


class _Wall:
    """A wall clock the test moves by hand (seconds since the epoch)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def _client_subject() -> Any:
    return type("S", (), {"id": uuid.uuid4(), "role": Role.client, "email": "c@example.com"})()


def test_a_verified_token_is_served_from_the_cache_until_it_expires(settings: Settings) -> None:
    wall = _Wall()
    cache = VerifiedTokens(clock=wall)
    subject = _client_subject()
    token = issue_access_token(settings, subject, now=datetime.now(UTC) - timedelta(minutes=14))
    claims = decode_access_token(settings, token, cache=cache)
    assert len(cache) == 1
    # Served as stored: the same claims object, not a second verification.
    assert decode_access_token(settings, token, cache=cache) is claims
    # One second before the expiry plus the leeway the full check allows, still served ...
    wall.now = claims.expires_at.timestamp() + LEEWAY_SECONDS - 1
    assert decode_access_token(settings, token, cache=cache) is claims
    # ... and at that instant the entry is gone, so the token is checked again in full.
    wall.now += 1
    assert len(cache) == 1
    fresh = decode_access_token(settings, token, cache=cache)
    assert fresh is not claims
    assert fresh == claims


def test_a_token_cached_under_one_set_of_keys_is_refused_once_its_key_is_retired(sqlite_url: str) -> None:
    cache = VerifiedTokens()
    subject = _client_subject()
    old = make_settings(sqlite_url, jwt_secret=SECRET, jwt_key_id="2026-01")
    old_token = issue_access_token(old, subject)
    rotated = make_settings(
        sqlite_url, jwt_secret="n" * 40, jwt_key_id="2026-02", jwt_previous_keys=f"2026-01:{SECRET}"
    )
    assert decode_access_token(rotated, old_token, cache=cache).user_id == subject.id
    assert len(cache) == 1
    retired = make_settings(sqlite_url, jwt_secret="n" * 40, jwt_key_id="2026-02")
    with pytest.raises(InvalidToken):
        decode_access_token(retired, old_token, cache=cache)
    # Another audience or issuer is another verifier too.
    elsewhere = make_settings(
        sqlite_url,
        jwt_secret="n" * 40,
        jwt_key_id="2026-02",
        jwt_previous_keys=f"2026-01:{SECRET}",
        jwt_audience="another-api",
    )
    with pytest.raises(InvalidToken):
        decode_access_token(elsewhere, old_token, cache=cache)


def test_refused_tokens_are_never_cached(settings: Settings, signed_in: tuple[uuid.UUID, str]) -> None:
    cache = VerifiedTokens()
    user_id, _ = signed_in
    for name, token in _attacks(settings, user_id).items():
        with pytest.raises(InvalidToken):
            decode_access_token(settings, token, cache=cache)
        assert len(cache) == 0, name
    stale = issue_access_token(settings, _client_subject(), now=datetime.now(UTC) - timedelta(minutes=16))
    with pytest.raises(InvalidToken):
        decode_access_token(settings, stale, cache=cache)
    assert len(cache) == 0


def test_the_cache_keeps_the_most_recently_used_tokens(settings: Settings) -> None:
    cache = VerifiedTokens(max_entries=2)
    first, second, third = (issue_access_token(settings, _client_subject()) for _ in range(3))
    claims = decode_access_token(settings, first, cache=cache)
    decode_access_token(settings, second, cache=cache)
    assert decode_access_token(settings, first, cache=cache) is claims  # first is now the most recent
    decode_access_token(settings, third, cache=cache)  # so second goes
    assert len(cache) == 2
    assert decode_access_token(settings, first, cache=cache) is claims
    with pytest.raises(ValueError, match="at least 1"):
        VerifiedTokens(max_entries=0)
