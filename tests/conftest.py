"""Shared fixtures and hooks: real PostgreSQL and Redis, SQLite files, and the API app.

PostgreSQL tests get a uniquely named database per test run (per xdist worker),
built by the real migrations and dropped afterwards. Tests that need a server that
cannot be reached skip with the reason, unless ``BOURSE_REQUIRE_SERVICES`` is set:
then they fail, and a run that skipped anything at all fails too. The helpers
behind these fixtures live in ``tests/support/``; no test imports this module.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bourse import lifecycle
from bourse.app import create_app
from bourse.db import Database
from bourse.migrations import upgrade
from bourse.settings import Settings
from tests.support.services import (
    REDIS_URL,
    REQUIRE_SERVICES,
    TEST_ENV_KEEP,
    create_postgres_database,
    drop_postgres_database,
    make_settings,
    service_unavailable,
    verify_books_after_suite,
)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail a run that skipped anything while BOURSE_REQUIRE_SERVICES is set.

    Under pytest-xdist only the controller counts: its terminal reporter has every
    worker's reports, and its exit status is the run's. A worker sees only its share.
    """
    if hasattr(session.config, "workerinput"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if REQUIRE_SERVICES and skipped and exitstatus == 0 and reporter is not None:
        reporter.write_line(f"BOURSE_REQUIRE_SERVICES is set but {skipped} test(s) skipped", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No BOURSE_ setting from the developer's shell leaks into a test."""
    for key in list(os.environ):
        if key.upper().startswith("BOURSE_") and key not in TEST_ENV_KEEP:
            monkeypatch.delenv(key)
    lifecycle.reset()
    yield
    lifecycle.reset()


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database for this test run, migrated to head."""
    url = create_postgres_database()
    try:
        upgrade(make_settings(url))
        yield url
        verify_books_after_suite(url)
    finally:
        drop_postgres_database(url)


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A fresh, unmigrated PostgreSQL database for one test."""
    url = create_postgres_database()
    try:
        yield url
    finally:
        drop_postgres_database(url)


# --- SQLite -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("sqlite") / "bourse.db"
    url = f"sqlite:///{path}"
    upgrade(make_settings(url))
    yield url
    verify_books_after_suite(url)


# --- Either backend -----------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database URL; tests using it run once per backend."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database.from_settings(settings)
    yield db
    db.dispose()


@pytest.fixture
def app(settings: Settings, database: Database) -> FastAPI:
    return create_app(settings, database=database)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


# --- Redis --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_unavailable("Redis", str(exc))
    finally:
        client.close()
    return REDIS_URL
