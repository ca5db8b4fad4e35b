"""Queue test fixtures: each driver on each database it supports, cleaned per test.

``queue`` is parametrised over the database driver on SQLite, the database driver
on PostgreSQL (``FOR UPDATE SKIP LOCKED``) and the Redis driver (outbox on
PostgreSQL), so a test using it runs once on each. The Redis driver gets a unique
key prefix per test, deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.queue_env import QueueEnv, build_env, teardown_env


@pytest.fixture(params=["database-sqlite", "database-postgresql", "redis-postgresql"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    driver, backend = request.param.split("-")
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    redis_url: str | None = request.getfixturevalue("redis_url") if driver == "redis" else None
    env = build_env(url, driver, tmp_path, redis_url)
    yield env
    teardown_env(env)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    """The database driver only, on each backend (scheduler tests need no Redis)."""
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")
    env = build_env(url, "database", tmp_path, None)
    yield env
    teardown_env(env)


@pytest.fixture
def sqlite_queue(sqlite_url: str, tmp_path: Path) -> Iterator[QueueEnv]:
    """The database driver on SQLite, for tests whose subject does not depend on the driver."""
    env = build_env(sqlite_url, "database", tmp_path, None)
    yield env
    teardown_env(env)
