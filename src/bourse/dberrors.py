"""Transient database failures: which errors are safe to retry, and what the boundary answers.

A transaction the database aborted because of other transactions, or because the
connection went away, wrote nothing, and the same request or job may simply run
again. The transaction boundaries (:class:`bourse.api.routing.TransactionalRoute`,
the API's error handlers and the job runner) ask :func:`transient_failure` about
every :class:`sqlalchemy.exc.DBAPIError`:

- ``transient_conflict`` (503, ``Retry-After: 1``): this transaction lost a race.
  PostgreSQL ``40P01`` deadlock_detected, ``40001`` serialization_failure, ``55P03``
  lock_not_available (``lock_timeout``); SQLite ``SQLITE_BUSY`` / ``SQLITE_LOCKED``
  ("database is locked": the busy timeout ran out waiting for the write lock).
- ``database_unavailable`` (503, ``Retry-After: 2``): the database could not serve
  it. A lost or closed connection (SQLAlchemy saw a disconnect, or psycopg failed
  below SQL with no SQLSTATE), class ``08`` connection exceptions, ``57P01``-``57P03``
  (the server is shutting down, crashed or starting), ``53300`` too_many_connections,
  and ``57014`` query_canceled (``statement_timeout``: it did not answer in time).

Anything else (a constraint violation, a syntax error, a full disk) is a bug or an
outage that a retry does not fix, and stays a 500. Both codes are
:class:`bourse.errors.TemporarilyUnavailable`: nothing was written, and the client
may send the same request again after ``Retry-After`` with the same
``Idempotency-Key``. The contract and why the boundary does not retry requests
itself are in docs/decisions/0013-transient-database-errors.md.

Each translated failure is logged as a warning with its SQLSTATE and counted in
``bourse_db_transient_errors_total{source, code, sqlstate}``.
"""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy.exc import DBAPIError

from bourse.errors import TemporarilyUnavailable
from bourse.logging import get_logger
from bourse.metrics import DB_TRANSIENT_ERRORS

log = get_logger(__name__)


class TransientConflict(TemporarilyUnavailable):
    """The transaction lost a race with another (deadlock, serialization, lock timeout)."""

    code = "transient_conflict"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            detail
            or "The request collided with another one and was rolled back; nothing was written. "
            "Send it again, with the same Idempotency-Key",
            retry_after=1,
        )


class DatabaseUnavailable(TemporarilyUnavailable):
    """The database could not serve the request (connection lost, shutting down, timed out)."""

    code = "database_unavailable"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            detail
            or "The database could not serve the request; it was rolled back. "
            "Send it again, with the same Idempotency-Key",
            retry_after=2,
        )


# PostgreSQL SQLSTATEs (Appendix A of its manual) by what they mean for a retry.
CONFLICT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
UNAVAILABLE_SQLSTATES = frozenset({"57014", "57P01", "57P02", "57P03", "53300"})
UNAVAILABLE_CLASSES = frozenset({"08"})
# SQLite primary result codes: the busy timeout ran out, or a table lock was held.
SQLITE_CONFLICTS = {5: "SQLITE_BUSY", 6: "SQLITE_LOCKED"}
NO_SQLSTATE = "none"


def sqlstate_of(exc: DBAPIError) -> str | None:
    """The SQLSTATE of the driver's error (PostgreSQL), or SQLite's error name, or None."""
    original = exc.orig
    state = getattr(original, "sqlstate", None)
    if isinstance(state, str) and state:
        return state
    if isinstance(original, sqlite3.Error):
        code = getattr(original, "sqlite_errorcode", None)
        if isinstance(code, int):
            return SQLITE_CONFLICTS.get(code & 0xFF, getattr(original, "sqlite_errorname", None))
    return None


def classify(exc: BaseException) -> TemporarilyUnavailable | None:
    """The retryable 503 that ``exc`` stands for, or None if it is not a transient database failure."""
    if not isinstance(exc, DBAPIError):
        return None
    state = sqlstate_of(exc)
    if state in CONFLICT_SQLSTATES or state in SQLITE_CONFLICTS.values():
        return TransientConflict()
    if isinstance(exc.orig, sqlite3.OperationalError) and "database is locked" in str(exc.orig):
        return TransientConflict()  # an older sqlite3 without error codes
    if exc.connection_invalidated or state in UNAVAILABLE_SQLSTATES or (state or "")[:2] in UNAVAILABLE_CLASSES:
        return DatabaseUnavailable()
    if state is None and isinstance(exc.orig, psycopg.OperationalError):
        # No SQLSTATE: the connection itself failed (closed, refused, reset), below SQL.
        return DatabaseUnavailable()
    return None


def describe(exc: BaseException) -> dict[str, str] | None:
    """``{"code": ..., "sqlstate": ...}`` for a transient failure (a job's answer carries it), else None."""
    translated = classify(exc)
    if translated is None or not isinstance(exc, DBAPIError):
        return None
    return {"code": translated.code, "sqlstate": sqlstate_of(exc) or NO_SQLSTATE}


def count(source: str, code: str, sqlstate: str) -> None:
    DB_TRANSIENT_ERRORS.labels(source, code, sqlstate).inc()


def transient_failure(exc: BaseException, *, source: str) -> TemporarilyUnavailable | None:
    """Classify ``exc``; if it is transient, log it as a warning with its SQLSTATE, count it, and return the 503.

    ``source`` names the boundary (``request``, ``job``) for the log and the metric.
    """
    translated = classify(exc)
    if translated is None or not isinstance(exc, DBAPIError):
        return None
    state = sqlstate_of(exc) or NO_SQLSTATE
    count(source, translated.code, state)
    first_line = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    log.warning(
        "database_transient_failure",
        source=source,
        code=translated.code,
        sqlstate=state,
        error=f"{type(exc.orig).__name__}: {first_line}",
    )
    return translated
