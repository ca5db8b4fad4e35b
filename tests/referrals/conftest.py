"""Fixtures for the referral tests: the real app on both backends, cheap argon2, and users.

Users are created with unique emails, so tests sharing the session-wide databases
never see each other's IBs or referrals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from bourse.app import create_app
from bourse.db import Database
from bourse.identity.models import Role
from bourse.settings import Settings
from tests.identity.helpers import FAST_HASH
from tests.support.auth import TestUser, bearer, make_user
from tests.support.clients import AppFactory
from tests.support.services import make_settings


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, **FAST_HASH)


@pytest.fixture
def headers(settings: Settings) -> Callable[[TestUser], dict[str, str]]:
    def build(user: TestUser) -> dict[str, str]:
        return bearer(settings, user)

    return build


@pytest.fixture
def make_client(database_url: str, database: Database) -> Iterator[AppFactory]:
    """A client for an app with extra settings (``ib_max_depth``), on the test's database."""
    clients: list[TestClient] = []

    def factory(**overrides: object) -> TestClient:
        app = create_app(make_settings(database_url, **FAST_HASH, **overrides), database=database)
        test_client = TestClient(app, raise_server_exceptions=False)
        test_client.__enter__()
        clients.append(test_client)
        return test_client

    yield factory
    for test_client in clients:
        test_client.__exit__(None, None, None)


@pytest.fixture
def ib(database: Database) -> TestUser:
    return make_user(database, role=Role.ib)
