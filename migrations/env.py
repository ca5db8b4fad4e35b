"""Alembic environment: Bourse's settings choose the database.

On PostgreSQL every migration runs with a ``lock_timeout``, so a migration that
waits behind a long transaction gives up instead of queueing every other query
behind its lock. See docs/decisions/0003-expand-contract-migrations.md.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from bourse.db import load_models
from bourse.settings import Settings, load_settings

config = context.config
settings: Settings = config.attributes.get("bourse_settings") or load_settings()
target_metadata = load_models()


def run_migrations_offline() -> None:
    context.configure(
        url=settings.database.render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=settings.is_sqlite,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connect_args = (
        {"connect_timeout": max(1, round(settings.database_connect_timeout_seconds))}
        if settings.database.get_backend_name() == "postgresql"
        else {}
    )
    engine = create_engine(settings.database, poolclass=pool.NullPool, connect_args=connect_args)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SET lock_timeout = {int(settings.database_lock_timeout_ms)}")
        elif connection.dialect.name == "sqlite":
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
        # End the implicit transaction the statements above opened, so Alembic owns
        # (and commits) the migration transaction. Session settings persist.
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=settings.is_sqlite,
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
