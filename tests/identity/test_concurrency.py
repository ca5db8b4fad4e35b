"""Races on real PostgreSQL: one rotation per refresh token, one account per email,
no lost throttle counts."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.identity.models import LoginAttemptWindow, RefreshToken
from bourse.identity.throttle import DatabaseLoginThrottle, login_keys
from bourse.identity.tokens import hash_refresh_token
from bourse.settings import Settings
from tests.identity.helpers import PASSWORD, login, register, unique_email, unique_ip

pytestmark = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)

RACERS = 12
T = TypeVar("T")


def _race(action: Callable[[], T], racers: int = RACERS) -> list[T]:
    barrier = threading.Barrier(racers)

    def run() -> T:
        barrier.wait()
        return action()

    with ThreadPoolExecutor(racers) as pool:
        return list(pool.map(lambda _: run(), range(racers)))


def test_a_refresh_token_is_rotated_once_under_concurrency(client: TestClient, database: Database) -> None:
    email = unique_email()
    register(client, email=email)
    token = login(client, email)["refresh_token"]
    statuses = _race(lambda: client.post("/api/v1/auth/refresh", json={"refresh_token": token}).status_code)
    # One caller wins the rotation; every other one is a reuse of a used token.
    assert Counter(statuses) == {200: 1, 401: RACERS - 1}
    with unit_of_work(database) as session:
        family_id = session.scalars(
            select(RefreshToken.family_id).where(RefreshToken.token_hash == hash_refresh_token(token))
        ).one()
        members = session.scalars(select(RefreshToken).where(RefreshToken.family_id == family_id)).all()
    assert len(members) == 2  # the original and the winner's successor
    assert all(member.revoked_reason == "reuse_detected" for member in members)


def test_one_account_per_email_under_concurrency(client: TestClient) -> None:
    email = unique_email()
    statuses = _race(
        lambda: client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD}).status_code
    )
    assert Counter(statuses) == {201: 1, 409: RACERS - 1}


def test_concurrent_failures_are_all_counted(database: Database, settings: Settings) -> None:
    throttle = DatabaseLoginThrottle(database, 900)
    keys = login_keys(settings, unique_email(), unique_ip())
    now = datetime.now(UTC)
    _race(lambda: throttle.record_failure(keys, now))
    with unit_of_work(database) as session:
        counts = session.scalars(
            select(LoginAttemptWindow.failures).where(LoginAttemptWindow.key.in_([key.key for key in keys]))
        ).all()
    assert counts == [RACERS, RACERS]
