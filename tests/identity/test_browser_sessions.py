"""Browser sessions: the refresh token in an HttpOnly cookie, CSRF on what the cookie
authenticates (docs/decisions/0029-browser-sessions.md), on SQLite and PostgreSQL.

The test client speaks plain http to ``testserver``, where a cookie jar would keep a
``Secure`` cookie to itself; these tests read ``Set-Cookie`` and send ``Cookie``
themselves, which is also how they check each attribute exactly.
"""

from __future__ import annotations

from http.cookies import SimpleCookie
from typing import Any

import httpx2 as httpx
from fastapi.testclient import TestClient
from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.identity.models import RefreshToken
from bourse.identity.tokens import hash_refresh_token
from bourse.settings import Settings
from tests.identity.helpers import PASSWORD, auth_header, register, unique_email

SESSION = "/api/v1/auth/session"
REFRESH = f"{SESSION}/refresh"
COOKIE = "bourse_refresh"
CSRF = {"X-Bourse-CSRF": "1"}


def _set_cookie(response: httpx.Response) -> dict[str, Any]:
    """The one ``Set-Cookie`` of a response: its value and every attribute, names lower-cased."""
    [header] = response.headers.get_list("set-cookie")
    jar: SimpleCookie = SimpleCookie()
    jar.load(header)
    assert list(jar) == [COOKIE], header
    morsel = jar[COOKIE]
    attributes = {name: value for name, value in morsel.items() if value not in ("", False)}
    # SimpleCookie does not report the flags it parsed unless they were set; check the raw text too.
    flags = {part.strip().lower() for part in header.split(";")[1:]}
    return {"value": morsel.value, "attributes": attributes, "flags": flags}


def _sign_in(client: TestClient, email: str, **extra: object) -> tuple[dict[str, Any], str]:
    response = client.post(SESSION, json={"email": email, "password": PASSWORD, **extra})
    assert response.status_code == 200, response.text
    return response.json(), _set_cookie(response)["value"]


def _refresh(client: TestClient, cookie: str | None, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = dict(CSRF if headers is None else headers)
    if cookie is not None:
        sent["Cookie"] = f"{COOKIE}={cookie}"
    return client.post(REFRESH, headers=sent)


def _assert_cleared(response: httpx.Response) -> None:
    cleared = _set_cookie(response)
    assert cleared["value"] == ""
    assert cleared["attributes"]["max-age"] == "0"
    assert cleared["attributes"]["path"] == SESSION


def _family(database: Database, token: str) -> list[RefreshToken]:
    with unit_of_work(database) as session:
        row = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(token))).one()
        members = list(session.scalars(select(RefreshToken).where(RefreshToken.family_id == row.family_id)))
        session.expunge_all()
        return members


def test_signing_in_sets_the_refresh_cookie_with_exactly_these_attributes(
    client: TestClient, settings: Settings
) -> None:
    email = unique_email()
    register(client, email=email)
    response = client.post(SESSION, json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "token_type", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == settings.access_token_ttl_seconds
    assert response.headers["cache-control"] == "no-store"
    cookie = _set_cookie(response)
    assert cookie["value"]
    # The body never carries the refresh token, under any name.
    assert cookie["value"] not in response.text
    assert cookie["attributes"] == {
        "path": SESSION,
        "max-age": str(settings.refresh_token_ttl_seconds),
        "samesite": "strict",
        "httponly": True,
        "secure": True,
    }
    assert {"httponly", "secure", "samesite=strict", f"path={SESSION}"} <= cookie["flags"]
    assert not any(flag.startswith("domain=") for flag in cookie["flags"])
    assert client.get("/api/v1/auth/me", headers=auth_header(body["access_token"])).status_code == 200


def test_signing_in_is_refused_as_login_is(client: TestClient) -> None:
    email = unique_email()
    register(client, email=email)
    wrong = client.post(SESSION, json={"email": email, "password": "not the password at all"})
    assert (wrong.status_code, wrong.json()["error"]) == (401, "invalid_credentials")
    assert "set-cookie" not in wrong.headers


def test_refresh_rotates_the_cookie_and_a_reused_one_ends_the_session(client: TestClient, database: Database) -> None:
    email = unique_email()
    register(client, email=email)
    _, first = _sign_in(client, email)

    rotated = _refresh(client, first)
    assert rotated.status_code == 200, rotated.text
    assert set(rotated.json()) == {"access_token", "token_type", "expires_in"}
    second = _set_cookie(rotated)["value"]
    assert second
    assert second != first
    assert second not in rotated.text
    assert client.get("/api/v1/auth/me", headers=auth_header(rotated.json()["access_token"])).status_code == 200

    # The old cookie comes back (stolen, or a second tab that lost the race): refused,
    # cleared, and every token of this sign-in revoked, the newest one too.
    replay = _refresh(client, first)
    assert (replay.status_code, replay.json()["error"]) == (401, "invalid_token")
    _assert_cleared(replay)
    assert {member.revoked_reason for member in _family(database, first)} == {"reuse_detected"}
    newest = _refresh(client, second)
    assert (newest.status_code, newest.json()["error"]) == (401, "invalid_token")


def test_refresh_without_a_cookie_or_with_a_bad_one_is_invalid_token_and_clears_it(client: TestClient) -> None:
    for cookie in (None, "never-issued", "x" * 600):
        response = _refresh(client, cookie)
        assert (response.status_code, response.json()["error"]) == (401, "invalid_token"), cookie
        assert response.headers["www-authenticate"].startswith("Bearer")
        _assert_cleared(response)


def test_deleting_the_session_revokes_it_and_clears_the_cookie(client: TestClient, database: Database) -> None:
    email = unique_email()
    register(client, email=email)
    _, cookie = _sign_in(client, email)
    deleted = client.delete(SESSION, headers={**CSRF, "Cookie": f"{COOKIE}={cookie}"})
    assert deleted.status_code == 204, deleted.text
    _assert_cleared(deleted)
    assert {member.revoked_reason for member in _family(database, cookie)} == {"logout"}
    assert _refresh(client, cookie).status_code == 401
    # Without a cookie, or twice: still 204, still cleared.
    again = client.delete(SESSION, headers=CSRF)
    assert again.status_code == 204
    _assert_cleared(again)


def test_cookie_authenticated_operations_refuse_a_missing_csrf_header_or_a_foreign_origin(
    client: TestClient, database: Database
) -> None:
    email = unique_email()
    register(client, email=email)
    _, cookie = _sign_in(client, email)
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    refusals = [
        jar,  # no header: what a cross-site form sends
        {**jar, "X-Bourse-CSRF": "0"},
        {**jar, **CSRF, "Origin": "https://evil.example"},
        {**jar, **CSRF, "Origin": "http://testserver:8080"},  # another port is another origin
        {**jar, **CSRF, "Origin": "http://testserver.evil.example"},
        {**jar, **CSRF, "Origin": "null"},
    ]
    for headers in refusals:
        for method, path in (("POST", REFRESH), ("DELETE", SESSION)):
            response = client.request(method, path, headers=headers)
            assert (response.status_code, response.json()["error"]) == (403, "csrf_refused"), (method, headers)
            # A forged request changes nothing, not even the cookie.
            assert "set-cookie" not in response.headers
    assert {member.revoked_at for member in _family(database, cookie)} == {None}
    # Our own origin, as a browser sends it (no default port), is accepted.
    accepted = _refresh(client, cookie, headers={**CSRF, "Origin": "http://testserver"})
    assert accepted.status_code == 200, accepted.text


def test_a_foreign_origin_cannot_sign_a_browser_in(client: TestClient) -> None:
    email = unique_email()
    register(client, email=email)
    response = client.post(
        SESSION, json={"email": email, "password": PASSWORD}, headers={"Origin": "https://evil.example"}
    )
    assert (response.status_code, response.json()["error"]) == (403, "csrf_refused")
    assert "set-cookie" not in response.headers


def test_the_origin_is_compared_with_the_scheme_where_the_server_knows_it(client: TestClient) -> None:
    email = unique_email()
    register(client, email=email)
    _, cookie = _sign_in(client, email)
    # Seen as https (TLS here, or X-Forwarded-Proto from a trusted proxy, which uvicorn
    # applies to the scope as the test client's base URL does): an http page is foreign.
    behind = TestClient(client.app, base_url="https://bourse.example", raise_server_exceptions=False)
    jar = {**CSRF, "Cookie": f"{COOKIE}={cookie}"}
    refused = behind.post(REFRESH, headers={**jar, "Origin": "http://bourse.example"})
    assert (refused.status_code, refused.json()["error"]) == (403, "csrf_refused")
    other_port = behind.post(REFRESH, headers={**jar, "Origin": "https://bourse.example:8443"})
    assert (other_port.status_code, other_port.json()["error"]) == (403, "csrf_refused")
    accepted = behind.post(REFRESH, headers={**jar, "Origin": "https://bourse.example"})
    assert accepted.status_code == 200, accepted.text
    # Seen as http, the request may have come through a TLS proxy the server does not
    # trust (a Kubernetes ingress outside BOURSE_FORWARDED_ALLOW_IPS): the https page of
    # the same host and default port is ours.
    rotated = _set_cookie(accepted)["value"]
    through_tls = client.post(
        REFRESH, headers={**CSRF, "Cookie": f"{COOKIE}={rotated}", "Origin": "https://testserver"}
    )
    assert through_tls.status_code == 200, through_tls.text


def test_the_schema_documents_the_session_operations(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    created = paths[SESSION]["post"]
    assert "Set-Cookie" in created["responses"]["200"]["headers"]
    assert "refresh_token" not in str(created["responses"]["200"]["content"])
    refreshed = paths[REFRESH]["post"]
    assert [p["name"] for p in refreshed["parameters"]] == ["X-Bourse-CSRF"]
    assert refreshed["responses"]["401"]["content"]["application/json"]["schema"]["allOf"][1]["properties"]["error"][
        "enum"
    ] == ["invalid_token"]
    for operation in (created, refreshed, paths[SESSION]["delete"]):
        codes = operation["responses"]["403"]["content"]["application/json"]["schema"]["allOf"][1]
        assert "csrf_refused" in codes["properties"]["error"]["enum"]
    assert "204" in paths[SESSION]["delete"]["responses"]
