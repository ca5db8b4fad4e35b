"""What every ``bourse`` subcommand shares: reading the settings (exit 2 when they are
invalid), configuring logging for a command, and opening the database checked first
(exit 3 when it cannot be used).

Infrastructure below the domains' command modules and the ``bourse`` command
(:mod:`bourse.cli`) alike, so each imports it at the top without a cycle. Heavy
modules are imported inside the functions, so ``bourse healthcheck`` starts quickly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import click

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from bourse.db import Database
    from bourse.settings import Settings

EXIT_CONFIG = 2
# The database cannot be used: unreachable, missing (no such database or file), or
# not migrated to this version. One line on stderr names it, password masked.
EXIT_DATABASE = 3


def fail_config(message: str) -> NoReturn:
    """Name the configuration problem on stderr and exit :data:`EXIT_CONFIG`."""
    click.echo(f"bourse: {message}", err=True)
    sys.exit(EXIT_CONFIG)


def read_settings() -> Settings:
    """The settings, or exit :data:`EXIT_CONFIG` naming each problem."""
    from bourse.settings import SettingsError, load_settings

    try:
        return load_settings()
    except SettingsError as exc:
        fail_config(str(exc))


def configure_cli_logging(settings: Settings, *, service: bool = True) -> None:
    """JSON logs on stderr: at ``BOURSE_LOG_LEVEL`` for a service, warnings and up for a command meant for people."""
    from bourse.logging import configure_logging

    level = settings.log_level
    if not service and level == "info":
        # A command meant for people prints its outcome on stdout; informational log
        # lines would only interleave JSON with it. Warnings and errors still go to
        # stderr, and BOURSE_LOG_LEVEL=debug shows everything.
        level = "warning"
    configure_logging(level, settings.log_format)


def load_cli_settings(*, service: bool = False) -> Settings:
    """Settings for a command, with logging configured; exits 2 on invalid configuration.

    Commands meant for people (the default) log warnings and errors only, on stderr;
    long-running processes and jobs (``service=True``) log at ``BOURSE_LOG_LEVEL``.
    """
    settings = read_settings()
    configure_cli_logging(settings, service=service)
    return settings


def _fail_database(message: str) -> NoReturn:
    click.echo(f"bourse: {message}", err=True)
    sys.exit(EXIT_DATABASE)


def _database_label(settings: Settings) -> str:
    from bourse.settings import mask_database_url

    return mask_database_url(settings.database_url)


def _reason(exc: BaseException, settings: Settings) -> str:
    """The driver's own first line (``exc.orig`` for SQLAlchemy's wrappers), no password in it."""
    original = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(original).splitlines() if line.strip()]
    reason = lines[0] if lines else type(original).__name__
    reason = reason.removeprefix("connection failed: ")
    password = settings.database.password
    if password:
        reason = reason.replace(str(password), "***")
    return reason


def _missing_sqlite_file(settings: Settings) -> str | None:
    """The path of a configured SQLite file that does not exist (connecting would create it)."""
    url = settings.database
    if url.get_backend_name() != "sqlite" or url.query.get("uri") or url.database in {None, "", ":memory:"}:
        return None
    return None if Path(url.database or "").exists() else url.database


def _probe(engine: Engine, settings: Settings, *, require_migrated: bool) -> None:
    from sqlalchemy.exc import DBAPIError

    from bourse.db import SQLITE_BEGIN_OPTION
    from bourse.migrations import SchemaState, schema_state

    label = _database_label(settings)
    try:
        # DEFERRED: looking must not take SQLite's write lock.
        with engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as connection:
            behind = require_migrated and schema_state(connection) is SchemaState.BEHIND
    except DBAPIError as exc:
        _fail_database(f"cannot reach the database {label}: {_reason(exc, settings)}")
    if behind:
        _fail_database(f"the database {label} is not migrated to this version of Bourse; run `bourse migrate`")


def open_cli_database(settings: Settings, *, name: str = "cli", require_migrated: bool = True) -> Database:
    """The database for a command, checked before any work: it exists, answers and is migrated.

    Otherwise exits :data:`EXIT_DATABASE` with one line naming the database (password
    masked) and the reason, never a traceback. A SQLite file that does not exist is
    reported, not created.
    """
    from bourse.db import Database

    missing = _missing_sqlite_file(settings)
    if missing is not None and require_migrated:
        _fail_database(
            f"cannot open the database {_database_label(settings)}: the file {missing} does not exist"
            " (run `bourse migrate` to create it, or set BOURSE_DATABASE_URL)"
        )
    database = Database.from_settings(settings, name=name)
    try:
        _probe(database.engine, settings, require_migrated=require_migrated)
    except BaseException:
        database.dispose()
        raise
    return database


def check_cli_database(settings: Settings, *, require_migrated: bool = True) -> None:
    """:func:`open_cli_database` for a command that builds its own engines later."""
    open_cli_database(settings, name="cli-check", require_migrated=require_migrated).dispose()
