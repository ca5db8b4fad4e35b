"""Fixtures for the identity tests: cheap argon2, an app per test, a unique client IP.

Every test's client gets its own client IP, so that failed sign-ins counted per IP
by one test (in the session-wide databases) never throttle another.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bourse.app import create_app
from bourse.db import Database
from bourse.settings import Settings
from tests.identity.helpers import FAST_HASH, unique_ip
from tests.support.clients import ClientFactory
from tests.support.services import make_settings


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, **FAST_HASH)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False, client=(unique_ip(), 50000)) as test_client:
        yield test_client


@pytest.fixture
def make_client(database: Database) -> Iterator[ClientFactory]:
    """Build a client for an app with extra settings, on the test's database."""
    clients: list[TestClient] = []

    def factory(settings: Settings, *, ip: str | None = None, redis: object = None) -> TestClient:
        app = create_app(settings, database=database, redis=redis)  # type: ignore[arg-type]
        test_client = TestClient(app, raise_server_exceptions=False, client=(ip or unique_ip(), 50000))
        test_client.__enter__()
        clients.append(test_client)
        return test_client

    yield factory
    for test_client in clients:
        test_client.__exit__(None, None, None)
