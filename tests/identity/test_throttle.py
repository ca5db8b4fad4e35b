"""Login throttling per account and per client IP, on both stores, on real servers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bourse.db import Database, unit_of_work
from bourse.identity.errors import TooManyAttempts
from bourse.identity.models import LoginAttemptWindow
from bourse.identity.throttle import (
    DatabaseLoginThrottle,
    LoginThrottle,
    RedisLoginThrottle,
    ThrottleKey,
    prune_login_attempts,
)
from bourse.settings import Settings
from tests.identity.helpers import FAST_HASH, PASSWORD, register, unique_email, unique_ip
from tests.support.clients import ClientFactory
from tests.support.processes import free_port
from tests.support.services import make_settings

LOGIN = "/api/v1/auth/login"
WINDOW = 600


@pytest.fixture(params=["database", "redis"])
def store(request: pytest.FixtureRequest, database_url: str) -> str:
    if request.param == "redis":
        request.getfixturevalue("redis_url")
    param: str = request.param
    return param


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def throttled_client(
    store: str, database_url: str, make_client: ClientFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[TestClient, str]]:
    """A client of an app with low limits, on the parametrised store; cleans its Redis keys."""
    settings = make_settings(
        database_url,
        login_max_failures_per_account=3,
        login_max_failures_per_ip=6,
        login_throttle_window_seconds=WINDOW,
        **FAST_HASH,
    )
    if store == "redis":
        redis_client: redis.Redis = request.getfixturevalue("redis_client")
        client = make_client(settings, redis=redis_client)
        prefix = f"bourse-test:{uuid.uuid4().hex}:"
        client.app.state.login_throttle = RedisLoginThrottle(redis_client, WINDOW, prefix=prefix)  # type: ignore[attr-defined]
        yield client, store
        keys = list(redis_client.scan_iter(match=f"{prefix}*"))
        assert keys, "the Redis store was not used"
        redis_client.delete(*keys)
    else:
        client = make_client(settings)
        assert isinstance(client.app.state.login_throttle, DatabaseLoginThrottle)  # type: ignore[attr-defined]
        yield client, store


WRONG = "wrong password, again"


def _attempt(client: TestClient, email: str, password: str = WRONG) -> tuple[int, str, str | None]:
    response = client.post(LOGIN, json={"email": email, "password": password})
    return (
        response.status_code,
        response.json()["error"] if response.status_code != 200 else "",
        response.headers.get("retry-after"),
    )


def test_the_account_limit(throttled_client: tuple[TestClient, str]) -> None:
    client, _ = throttled_client
    email = unique_email()
    register(client, email=email)
    for _ in range(3):
        assert _attempt(client, email)[:2] == (401, "invalid_credentials")
    status, code, retry_after = _attempt(client, email)
    assert (status, code) == (429, "too_many_attempts")
    assert retry_after is not None
    assert 1 <= int(retry_after) <= WINDOW
    # Even the right password is refused while throttled: guessing gains nothing.
    assert _attempt(client, email, PASSWORD)[:2] == (429, "too_many_attempts")
    # Another account from the same IP is unaffected (the IP limit is 6).
    other = unique_email()
    register(client, email=other)
    assert _attempt(client, other, PASSWORD)[0] == 200


def test_throttling_does_not_reveal_whether_an_account_exists(throttled_client: tuple[TestClient, str]) -> None:
    client, _ = throttled_client
    known = unique_email()
    register(client, email=known)
    unknown = unique_email()
    known_results = [_attempt(client, known)[:2] for _ in range(4)]
    # A fresh IP for the unknown account, so the IP limit plays no part.
    fresh = TestClient(client.app, raise_server_exceptions=False, client=(unique_ip(), 1))
    unknown_results = [_attempt(fresh, unknown)[:2] for _ in range(4)]
    assert known_results == unknown_results == [(401, "invalid_credentials")] * 3 + [(429, "too_many_attempts")]


def test_the_ip_limit_across_accounts(throttled_client: tuple[TestClient, str]) -> None:
    client, _ = throttled_client
    # Six failures spread over three accounts: no account reaches its limit of 3 ...
    for email in [unique_email() for _ in range(3)]:
        for _ in range(2):
            assert _attempt(client, email)[:2] == (401, "invalid_credentials")
    # ... but the IP has reached 6: a seventh account is refused from this IP.
    email = unique_email()
    register(client, email=email)
    status, code, retry_after = _attempt(client, email, PASSWORD)
    assert (status, code) == (429, "too_many_attempts")
    assert retry_after is not None
    # The same account from another IP signs in.
    elsewhere = TestClient(client.app, raise_server_exceptions=False, client=(unique_ip(), 1))
    assert _attempt(elsewhere, email, PASSWORD)[0] == 200


def test_a_success_clears_the_account_counter(throttled_client: tuple[TestClient, str]) -> None:
    client, _ = throttled_client
    email = unique_email()
    register(client, email=email)
    for _ in range(2):
        assert _attempt(client, email)[0] == 401
    assert _attempt(client, email, PASSWORD)[0] == 200
    # Counting starts again: two more failures are allowed before the third trips it.
    fresh = TestClient(client.app, raise_server_exceptions=False, client=(unique_ip(), 1))
    for _ in range(3):
        assert _attempt(fresh, email)[0] == 401
    assert _attempt(fresh, email)[0] == 429


def _stores(request: pytest.FixtureRequest, store: str, database: Database) -> LoginThrottle:
    if store == "redis":
        client: redis.Redis = request.getfixturevalue("redis_client")
        prefix = f"bourse-test:{uuid.uuid4().hex}:"
        request.addfinalizer(lambda: [client.delete(key) for key in client.scan_iter(match=f"{prefix}*")])
        return RedisLoginThrottle(client, WINDOW, prefix=prefix)
    return DatabaseLoginThrottle(database, WINDOW)


def test_the_window_ends(store: str, database: Database, request: pytest.FixtureRequest) -> None:
    throttle = _stores(request, store, database)
    key = [ThrottleKey(f"account:{uuid.uuid4().hex}", 2)]
    start = datetime.fromtimestamp((int(datetime.now(UTC).timestamp()) // WINDOW) * WINDOW, UTC)
    now = start + timedelta(seconds=100)
    throttle.check(key, now)
    throttle.record_failure(key, now)
    throttle.record_failure(key, now)
    with pytest.raises(TooManyAttempts) as refused:
        throttle.check(key, now)
    assert refused.value.retry_after == WINDOW - 100
    assert refused.value.headers == {"Retry-After": str(WINDOW - 100)}
    throttle.check(key, start + timedelta(seconds=WINDOW))  # the next window: allowed again


def test_pruning_the_database_store(database: Database) -> None:
    throttle = DatabaseLoginThrottle(database, 60)
    key = [ThrottleKey(f"ip:{unique_ip()}", 5)]
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    throttle.record_failure(key, long_ago)
    throttle.record_failure(key, datetime.now(UTC))

    def rows() -> int:
        with unit_of_work(database) as session:
            return (
                session.scalar(
                    select(func.count()).select_from(LoginAttemptWindow).where(LoginAttemptWindow.key == key[0].key)
                )
                or 0
            )

    assert rows() == 2
    with unit_of_work(database) as session:
        assert prune_login_attempts(session, datetime.now(UTC)) >= 1
    assert rows() == 1


def test_the_app_picks_redis_when_configured(database_url: str, redis_url: str, make_client: ClientFactory) -> None:
    settings: Settings = make_settings(database_url, redis_url=redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        app_client = make_client(settings, redis=client)
        assert isinstance(app_client.app.state.login_throttle, RedisLoginThrottle)  # type: ignore[attr-defined]
    finally:
        client.close()


def test_a_redis_outage_fails_closed(database_url: str, make_client: ClientFactory) -> None:
    settings = make_settings(database_url, **FAST_HASH)
    nowhere = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    client = make_client(settings)
    client.app.state.login_throttle = RedisLoginThrottle(nowhere, WINDOW)  # type: ignore[attr-defined]
    email = unique_email()
    register(client, email=email)
    response = client.post(LOGIN, json={"email": email, "password": PASSWORD})
    assert (response.status_code, response.json()["error"]) == (503, "throttle_unavailable")
    assert response.headers["retry-after"] == "5"
    nowhere.close()
