"""Engines, SQLite pragmas and the job/command unit of work, on both backends."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Column, Integer, MetaData, Table, func, select, text
from sqlalchemy.exc import DBAPIError

from bourse.db import SQLITE_BEGIN_OPTION, Database, unit_of_work
from bourse.settings import Settings
from tests.support.services import POSTGRES_ADMIN_URL, make_settings


@pytest.fixture
def counter(database: Database) -> Iterator[Table]:
    metadata = MetaData()
    table = Table(f"uow_{uuid.uuid4().hex[:10]}", metadata, Column("id", Integer, primary_key=True))
    metadata.create_all(database.engine)
    yield table
    metadata.drop_all(database.engine)


def _count(database: Database, table: Table) -> int:
    with database.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_unit_of_work_commits_once_at_the_end(database: Database, counter: Table) -> None:
    with unit_of_work(database) as session:
        session.execute(counter.insert().values(id=1))
        session.execute(counter.insert().values(id=2))
        assert _count(database, counter) == 0  # not visible to anyone before the commit
    assert _count(database, counter) == 2


def test_unit_of_work_rolls_back_on_error(database: Database, counter: Table) -> None:
    class BoomError(Exception):
        pass

    def write_then_fail() -> None:
        with unit_of_work(database) as session:
            session.execute(counter.insert().values(id=1))
            raise BoomError

    with pytest.raises(BoomError):
        write_then_fail()
    assert _count(database, counter) == 0


def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(sqlite_url: str) -> None:
    db = Database.from_settings(Settings(env="test", database_url=sqlite_url, sqlite_busy_timeout_ms=1234))
    try:
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 1234
            assert conn.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        db.dispose()


def test_sqlite_transactions_take_the_write_lock_up_front(sqlite_url: str) -> None:
    """BEGIN IMMEDIATE: a second writer waits instead of deadlocking on lock upgrade."""
    db = Database.from_settings(Settings(env="test", database_url=sqlite_url))
    path = sqlite_url.removeprefix("sqlite:///")
    try:
        with db.sessions() as session:
            session.execute(text("SELECT 1"))  # a read only, yet the write lock is held
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
        # A read-only connection that asks for a deferred begin does not lock writers out.
        with db.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
            conn.execute(text("SELECT 1"))
            other = sqlite3.connect(path, timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
            finally:
                other.close()
    finally:
        db.dispose()


def test_postgres_connections_identify_themselves(postgres_url: str) -> None:
    db = Database.from_settings(Settings(env="test", database_url=postgres_url))
    try:
        with db.engine.connect() as conn:
            assert conn.execute(text("SHOW application_name")).scalar_one() == "bourse"
    finally:
        db.dispose()


def test_pool_gauges_follow_the_pool_and_survive_a_killed_connection(postgres_url: str) -> None:
    def gauge(name: str) -> float:
        value = REGISTRY.get_sample_value(name, {"pool": "gauge-test"})
        assert value is not None
        return value

    database = Database.from_settings(
        make_settings(postgres_url, database_pool_size=2, database_max_overflow=1), name="gauge-test"
    )
    try:
        assert gauge("bourse_db_pool_size") == 2
        first, second, third = (database.engine.connect() for _ in range(3))
        for conn in (first, second, third):
            conn.execute(text("SELECT 1"))
        assert gauge("bourse_db_pool_checked_out") == 3
        assert gauge("bourse_db_pool_connections") == 3  # one beyond the size: overflow
        backend = third.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        with pytest.raises(DBAPIError):
            third.execute(text("SELECT 1"))
        for conn in (first, second, third):
            conn.close()
        assert gauge("bourse_db_pool_checked_out") == 0
        # The killed connection is gone, one returned connection was closed as overflow:
        # one stays open in the pool (the pool's other slot holds no connection).
        live = [rec for rec in database.engine.pool._pool.queue if rec.dbapi_connection is not None]  # type: ignore[attr-defined]
        assert gauge("bourse_db_pool_connections") == len(live) == 1
    finally:
        database.dispose()
    assert gauge("bourse_db_pool_size") == 0
    assert gauge("bourse_db_pool_connections") == 0
