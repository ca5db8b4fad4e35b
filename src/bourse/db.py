"""Database engines, sessions and the declarative base.

One transaction per request or job: application code adds and flushes, and only
the boundary (:class:`bourse.api.routing.TransactionalRoute`, or
:func:`unit_of_work` for jobs and commands) commits, once.

SQLite (the embedded default) runs in WAL mode with a busy timeout and foreign
keys on. Every SQLite transaction begins with ``BEGIN IMMEDIATE``: it takes the
write lock up front, so two transactions can never both read and then deadlock
on upgrading to a write (which ``busy_timeout`` cannot resolve). Writers are
serialised, which is what SQLite does anyway.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker
from sqlalchemy.pool import QueuePool

import bourse
from bourse.metrics import track_pool, untrack_pool
from bourse.settings import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base for every model. Constraint names are deterministic."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Execution option for a read-only SQLite connection that should not take the
# write lock (health checks): ``conn.execution_options(sqlite_begin="DEFERRED")``.
SQLITE_BEGIN_OPTION = "sqlite_begin"

# Session.info key: how long code holding the session may wait for an in-process lock.
LOCK_WAIT_SECONDS = "bourse.lock_wait_seconds"


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below issue BEGIN, not the sqlite3 module.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {'DEFERRED' if mode == 'DEFERRED' else 'IMMEDIATE'}")


def _set_lock_timeout_per_transaction(engine: Engine, lock_timeout_ms: int) -> None:
    """Bound lock waits with ``SET LOCAL`` at the start of every transaction.

    Behind a transaction pooler a session setting would land on whichever server
    connection ran that statement, and stay there for other clients; ``SET LOCAL``
    lasts exactly as long as the transaction it is part of.
    """
    statement = f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(statement)


def create_db_engine(
    settings: Settings,
    *,
    url: URL | None = None,
    name: str = "main",
    pool_size: int | None = None,
    max_overflow: int | None = None,
    lock_timeout_ms: int | None = None,
) -> Engine:
    """Create an engine for ``settings.database`` (or ``url``) with Bourse's options.

    A checkout waits at most ``BOURSE_DATABASE_POOL_TIMEOUT_SECONDS`` for a free
    connection. ``lock_timeout_ms`` bounds every PostgreSQL lock wait on the engine's
    connections (the API sets it; a SQLite writer is bounded by its busy timeout).
    """
    target = url or settings.database
    size = settings.database_pool_size if pool_size is None else pool_size
    overflow = settings.database_max_overflow if max_overflow is None else max_overflow
    if target.get_backend_name() == "sqlite":
        engine = create_engine(
            target,
            pool_size=size,
            max_overflow=overflow,
            pool_timeout=settings.database_pool_timeout_seconds,
            connect_args={"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_ms / 1000},
        )
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
    else:
        connect_args: dict[str, Any] = {
            "connect_timeout": max(1, round(settings.database_connect_timeout_seconds)),
            "application_name": "bourse",
        }
        pooled = settings.database_transaction_pooling
        if pooled:
            # psycopg prepares a statement on the server after its fifth execution on a
            # connection; behind a transaction pooler the next transaction may run on a
            # server connection that never saw it ("prepared statement _pg3_0 does not
            # exist") or one that already has it ("... already exists").
            connect_args["prepare_threshold"] = None
        elif lock_timeout_ms is not None:
            # A startup parameter: PgBouncer refuses "options", hence SET LOCAL when pooled.
            connect_args["options"] = f"-c lock_timeout={int(lock_timeout_ms)}"
        engine = create_engine(
            target,
            pool_size=size,
            max_overflow=overflow,
            pool_timeout=settings.database_pool_timeout_seconds,
            pool_pre_ping=True,
            connect_args=connect_args,
        )
        if pooled and lock_timeout_ms is not None:
            _set_lock_timeout_per_transaction(engine, lock_timeout_ms)
    track_pool(name, engine)
    return engine


def pool_capacity(engine: Engine) -> int:
    """How many connections the engine's pool lends at most (size plus overflow)."""
    pool = engine.pool
    if isinstance(pool, QueuePool):
        return pool.size() + max(0, pool._max_overflow)  # noqa: SLF001 - no public accessor
    raise TypeError(f"{type(pool).__name__} has no fixed capacity")


@dataclass
class Database:
    """An engine and its session factory; one per process and database."""

    engine: Engine
    sessions: sessionmaker[Session]
    name: str = "main"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        name: str = "main",
        pool_size: int | None = None,
        max_overflow: int | None = None,
        lock_timeout_ms: int | None = None,
    ) -> Database:
        engine = create_db_engine(
            settings, name=name, pool_size=pool_size, max_overflow=max_overflow, lock_timeout_ms=lock_timeout_ms
        )
        # Locks taken in this process (not in the database) wait as long as a row lock may.
        info = {LOCK_WAIT_SECONDS: settings.database_lock_timeout_ms / 1000}
        return cls(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False, info=info), name=name)

    @classmethod
    def direct(cls, settings: Settings, *, name: str, pool_size: int) -> Database | None:
        """A database on ``settings.direct_database`` (PostgreSQL reached without a
        transaction pooler, for session features), or None if there is none."""
        url = settings.direct_database
        if url is None:
            return None
        unpooled = settings.model_copy(update={"database_transaction_pooling": False})
        engine = create_db_engine(
            unpooled,
            url=url,
            name=name,
            pool_size=pool_size,
            max_overflow=0,
            lock_timeout_ms=settings.database_lock_timeout_ms,
        )
        info = {LOCK_WAIT_SECONDS: settings.database_lock_timeout_ms / 1000}
        return cls(engine=engine, sessions=sessionmaker(engine, expire_on_commit=False, info=info), name=name)

    def dispose(self) -> None:
        self.engine.dispose()
        untrack_pool(self.name, self.engine)


def listening_connection(db: Database) -> Any:
    """A psycopg connection of the engine's, in autocommit, taken out of the pool for good
    (a connection that listens, or holds a session lock, must never be lent to anyone else)."""
    proxied = db.engine.raw_connection()
    conn: Any = proxied.driver_connection
    proxied.detach()
    conn.rollback()
    conn.autocommit = True
    return conn


def upsert(session: Session, target: type[Base] | Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for the session's backend that supports ``.on_conflict_do_nothing()``
    and ``.on_conflict_do_update()`` (PostgreSQL and SQLite spell these the same)."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(target)
    return sqlite.insert(target)


@contextmanager
def unit_of_work(db: Database) -> Iterator[Session]:
    """The transaction boundary for jobs and commands: commit once, or roll back."""
    session = db.sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def load_models() -> MetaData:
    """Import every domain's ``models`` module so ``Base.metadata`` is complete.

    Alembic autogenerate and ``alembic check`` compare against this metadata, so a
    domain's tables can never be missed by forgetting to register them.
    """
    for module in pkgutil.walk_packages(bourse.__path__, prefix="bourse."):
        if module.name.rsplit(".", 1)[-1] == "models":
            importlib.import_module(module.name)
    return Base.metadata
