"""The real services the tests run against, and the settings that point at them.

PostgreSQL and Redis are reached at the addresses below (overridable from the
environment). A test that needs one that cannot be reached skips with the reason,
unless ``BOURSE_REQUIRE_SERVICES`` is set: then it fails.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bourse.settings import Settings
from tests.support.processes import clean_env, run_bourse

REQUIRE_SERVICES = bool(os.environ.get("BOURSE_REQUIRE_SERVICES"))
POSTGRES_ADMIN_URL = os.environ.get("BOURSE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BOURSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TEST_ENV_KEEP = {"BOURSE_REQUIRE_SERVICES", "BOURSE_TEST_POSTGRES_URL", "BOURSE_TEST_REDIS_URL"}


def service_unavailable(service: str, reason: str) -> None:
    message = f"{service} is unreachable: {reason}"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} (BOURSE_REQUIRE_SERVICES is set, so this is a failure)")
    pytest.skip(message)


def make_settings(database_url: str, **overrides: object) -> Settings:
    # Orders wait for the matcher as long as a test may take: the wait ends the moment the
    # outcome is announced, so a loaded machine makes a test slower, never a 202 instead of
    # a 201. The tests of the 202 answer set their own wait.
    overrides.setdefault("order_wait_ms", 30_000)
    return Settings(env="test", database_url=database_url, **overrides)  # type: ignore[arg-type]


def admin_connect() -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)


def create_postgres_database(prefix: str = "bourse_test") -> str:
    """Create an empty, uniquely named database; return its SQLAlchemy URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        service_unavailable("PostgreSQL", str(exc).strip().splitlines()[0])
    return (
        make_url(POSTGRES_ADMIN_URL)
        .set(drivername="postgresql+psycopg", database=name)
        .render_as_string(hide_password=False)
    )


def drop_postgres_database(url: str) -> None:
    name = make_url(url).database
    with admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def verify_books_after_suite(url: str) -> None:
    """Every test that shared this database has run: the books must still be right.

    Runs the real ``bourse ledger verify`` command, so the suite ends by proving
    that nothing it did (races and refusals included) left the ledger inconsistent.
    """
    result = run_bourse("ledger", "verify", env=clean_env(BOURSE_DATABASE_URL=url), timeout=120)
    if result.returncode != 0:
        pytest.fail(f"bourse ledger verify failed on the shared test database:\n{result.stdout}{result.stderr}")
