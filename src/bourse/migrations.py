"""Alembic, driven from Bourse's own settings.

The migration scripts live in ``migrations/`` at the top of the source tree and
are shipped inside the wheel as ``bourse/_migrations``.
"""

from __future__ import annotations

import enum
from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, column, inspect, select, table

from bourse.settings import Settings

VERSION_TABLE = "alembic_version"
_PACKAGED = Path(__file__).resolve().parent / "_migrations"
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    for candidate in (_PACKAGED, _SOURCE_TREE):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("Bourse's migration scripts are missing from this installation")


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    # Passed as an object, so a password never goes through ini interpolation.
    config.attributes["bourse_settings"] = settings
    return config


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory(str(migrations_dir()))


@cache
def head_revisions() -> frozenset[str]:
    return frozenset(_script().get_heads())


@cache
def known_revisions() -> frozenset[str]:
    return frozenset(rev.revision for rev in _script().walk_revisions())


class SchemaState(enum.Enum):
    CURRENT = "current"  # exactly this code's head
    AHEAD = "ahead"  # migrated by newer code: still compatible, by the expand/contract rule
    BEHIND = "behind"  # this code needs migrations that have not run


def current_revisions(connection: Connection) -> frozenset[str]:
    if not inspect(connection).has_table(VERSION_TABLE):
        return frozenset()
    version = table(VERSION_TABLE, column("version_num"))
    return frozenset(connection.execute(select(version.c.version_num)).scalars())


def schema_state(connection: Connection) -> SchemaState:
    """Where the database's schema stands relative to this code's migrations.

    During a rolling deploy the new release migrates first, while old pods still
    serve: their database is *ahead* of their code. Every migration keeps the
    previous release working (docs/decisions/0003-expand-contract-migrations.md),
    so "ahead" is ready; only "behind" is not.
    """
    current = current_revisions(connection)
    if current == head_revisions():
        return SchemaState.CURRENT
    if current and not current <= known_revisions():
        return SchemaState.AHEAD
    return SchemaState.BEHIND


def upgrade(settings: Settings, revision: str = "heads") -> None:
    command.upgrade(alembic_config(settings), revision)


def check(settings: Settings) -> None:
    """Fail if the models and the migrations differ (``alembic check``)."""
    command.check(alembic_config(settings))
