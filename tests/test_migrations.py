"""Migrations: upgrade, downgrade, drift check, and PostgreSQL's lock_timeout."""

from __future__ import annotations

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, pool, text
from sqlalchemy.exc import OperationalError

from bourse.db import Base, load_models
from bourse.migrations import (
    SchemaState,
    alembic_config,
    check,
    current_revisions,
    head_revisions,
    migrations_dir,
    schema_state,
    upgrade,
)
from tests.support.services import make_settings


def _is_at_head(url: str) -> bool:
    engine = create_engine(make_settings(url).database, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return schema_state(conn) is SchemaState.CURRENT
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path) -> str:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/fresh.db"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    settings = make_settings(empty_url)
    assert not _is_at_head(empty_url)
    upgrade(settings)
    assert _is_at_head(empty_url)
    command.downgrade(alembic_config(settings), "base")
    assert not _is_at_head(empty_url)
    upgrade(settings)
    assert _is_at_head(empty_url)


def test_models_and_migrations_do_not_drift(database_url: str) -> None:
    # The same comparison as `alembic check`, on each backend.
    check(make_settings(database_url))


def test_head_is_a_single_revision() -> None:
    assert len(head_revisions()) == 1
    assert (migrations_dir() / "env.py").is_file()


def test_every_models_module_is_loaded() -> None:
    assert load_models() is Base.metadata


def test_postgres_migrations_give_up_on_a_held_lock(empty_postgres_url: str) -> None:
    settings = make_settings(empty_postgres_url, database_lock_timeout_ms=200)
    upgrade(settings)
    dsn = settings.database.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as blocker:
        blocker.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(OperationalError, match="lock timeout"):
            upgrade(settings)
        blocker.rollback()
    engine = create_engine(settings.database, poolclass=pool.NullPool)
    with engine.connect() as conn:
        assert current_revisions(conn) == head_revisions()
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    engine.dispose()
