"""The database driver: jobs are rows of ``queue_jobs`` (SQLite or PostgreSQL).

A reservation is one statement per queue: an ``UPDATE`` of the oldest available
row that sets a random token, counts the attempt and pushes ``available_at`` to
the reservation expiry (now + ``retry_after``). A job whose worker vanished is
therefore simply available again once that time passes. On PostgreSQL the row is
picked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers never wait on, or
take, each other's rows. SQLite serialises writers (``BEGIN IMMEDIATE``).

The handler's own transaction deletes the row, guarded by the token
(:func:`complete_in`). The job's effects and its removal from the queue therefore
commit together, and a worker whose reservation expired (and was taken over)
cannot commit its effects at all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from bourse.db import SQLITE_BEGIN_OPTION, Database
from bourse.queue.driver import Clock, QueueDepth, ReservationLost, Reserved, insert_failed
from bourse.queue.wake import notify

_RESERVE = """
UPDATE queue_jobs
SET reserved_by = :token, reserved_at = :now, attempts = attempts + 1, available_at = :expiry
WHERE id = (
    SELECT id FROM queue_jobs
    WHERE queue = :queue AND available_at <= :now
    ORDER BY available_at, id
    LIMIT 1{lock}
)
RETURNING uuid, queue, job, payload, attempts, created_at, request_id, unique_key
"""


def commit_asynchronously(engine: Engine, *, pooled: bool) -> None:
    """Make every connection of ``engine`` commit without waiting for the WAL flush.

    For the worker's own bookkeeping connections (reservations, releases, failed
    jobs, heartbeats) on PostgreSQL. None of those writes needs to survive a
    database crash: if one is lost, the job is simply available again and runs
    again, which at-least-once delivery allows anyway. Handlers' transactions run on
    the runner's engine, whose commits stay durable.

    Not behind a transaction pooler (``pooled``, BOURSE_DATABASE_TRANSACTION_POOLING):
    there the session setting would stay on a shared server connection and make
    other clients' transactions, money movements included, commit without waiting
    for the WAL flush. Bookkeeping then commits durably, at one flush per commit.
    """
    if engine.dialect.name != "postgresql" or pooled:
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        with dbapi_connection.cursor() as cursor:
            cursor.execute("SET synchronous_commit = off")
        dbapi_connection.commit()


_DEPTHS = text(
    """
SELECT queue,
       SUM(CASE WHEN available_at <= :now THEN 1 ELSE 0 END) AS ready,
       SUM(CASE WHEN reserved_by IS NULL AND available_at > :now THEN 1 ELSE 0 END) AS delayed,
       SUM(CASE WHEN reserved_by IS NOT NULL AND available_at > :now THEN 1 ELSE 0 END) AS reserved,
       MIN(CASE WHEN available_at <= :now THEN created_at END) AS oldest
FROM queue_jobs
GROUP BY queue
"""
)


def complete_in(session: Session | Connection, job_id: str, token: str) -> None:
    """Delete the job inside the handler's transaction, or refuse if it is no longer ours."""
    result = session.execute(
        text("DELETE FROM queue_jobs WHERE uuid = :uuid AND reserved_by = :token"), {"uuid": job_id, "token": token}
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise ReservationLost(f"job {job_id}: the reservation expired and another worker took the job")


def read_depths(conn: Connection, now: float) -> dict[str, QueueDepth]:
    depths: dict[str, QueueDepth] = {}
    for row in conn.execute(_DEPTHS, {"now": now}):
        oldest = row.oldest
        depths[row.queue] = QueueDepth(
            row.queue,
            int(row.ready or 0),
            int(row.delayed or 0),
            int(row.reserved or 0),
            max(0.0, now - oldest) if oldest is not None else 0.0,
        )
    return depths


class DatabaseDriver:
    name = "database"

    def __init__(self, db: Database, *, retry_after: float, clock: Clock = time.time) -> None:
        self.db = db
        self.retry_after = retry_after
        self.clock = clock
        self._postgres = db.engine.dialect.name == "postgresql"
        self._conn: Connection | None = None
        lock = "\n    FOR UPDATE SKIP LOCKED" if self._postgres else ""
        self._reserve = text(_RESERVE.format(lock=lock))

    @contextmanager
    def _reserving(self) -> Iterator[Connection]:
        """PostgreSQL: autocommit, each queue's UPDATE is its own one-round-trip
        transaction, on a connection kept for reservations (a pool checkout would
        cost a pre-ping round trip per job). SQLite: one ``BEGIN IMMEDIATE``
        transaction over the queues."""
        if not self._postgres:
            with self.db.engine.begin() as conn:
                yield conn
            return
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = self.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            yield self._conn
        except DBAPIError:
            # A broken connection is replaced on the next reservation.
            self._conn.close()
            self._conn = None
            raise

    def reserve(
        self,
        queues: Sequence[str],
        *,
        acknowledge: Reserved | None = None,  # noqa: ARG002 - the protocol's; nothing to do here
    ) -> Reserved | None:
        """``acknowledge`` needs nothing here: the handler's transaction deleted its row."""
        token = uuid.uuid4().hex
        now = self.clock()
        params = {"token": token, "now": now, "expiry": now + self.retry_after}
        with self._reserving() as conn:
            for queue in queues:
                row = conn.execute(self._reserve, {**params, "queue": queue}).first()
                if row is not None:
                    return Reserved(
                        id=row.uuid,
                        queue=row.queue,
                        job=row.job,
                        payload=row.payload,
                        attempts=row.attempts,
                        created_at=row.created_at,
                        request_id=row.request_id,
                        unique_key=row.unique_key,
                        token=token,
                    )
        return None

    def next_available(self, queues: Sequence[str]) -> float | None:
        """The earliest ``available_at`` of the queues: a delayed job or a reservation's expiry.

        One ``MIN`` per queue, each read from the end of the ``(queue, available_at)``
        index, rather than one ``MIN`` over all of them, which would scan them."""
        if not queues:
            return None
        branches = " UNION ALL ".join(
            f"SELECT MIN(available_at) AS due FROM queue_jobs WHERE queue = :q{i}"  # noqa: S608 - bound names
            for i in range(len(queues))
        )
        params = {f"q{i}": queue for i, queue in enumerate(queues)}
        statement = text(f"SELECT MIN(due) FROM ({branches}) AS queues")  # noqa: S608 - bound names
        if self._postgres:
            with self._reserving() as conn:
                due = conn.execute(statement, params).scalar()
        else:
            with self.db.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
                due = conn.execute(statement, params).scalar()
        return None if due is None else float(due)

    def acknowledge(self, job: Reserved) -> None:
        """Nothing to do: the handler's transaction deleted the row (:func:`complete_in`)."""

    def release(self, job: Reserved, delay: float, *, uncount: bool = False) -> None:
        with self.db.engine.begin() as conn:
            released = conn.execute(
                text(
                    "UPDATE queue_jobs SET reserved_by = NULL, reserved_at = NULL, available_at = :at,"
                    " attempts = attempts - :uncount WHERE uuid = :uuid AND reserved_by = :token"
                ),
                {"at": self.clock() + delay, "uncount": 1 if uncount else 0, "uuid": job.id, "token": job.token},
            )
            if released.rowcount == 1:
                # Idle workers look again, and wait for the job's new time if it is the next due.
                notify(conn)

    def fail(self, job: Reserved, exception: str, traceback: str) -> None:
        with self.db.engine.begin() as conn:
            deleted = conn.execute(
                text("DELETE FROM queue_jobs WHERE uuid = :uuid AND reserved_by = :token"),
                {"uuid": job.id, "token": job.token},
            )
            if deleted.rowcount == 1:
                insert_failed(conn, job, exception, traceback, self.clock())

    def relay(self) -> int:
        return 0

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        now = self.clock()
        with self.db.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
            found = read_depths(conn, now)
        names = list(dict.fromkeys([*queues, *sorted(found)]))
        return [found.get(q, QueueDepth(q, 0, 0, 0, 0.0)) for q in names]

    def close(self) -> None:
        """Give back the reservation connection; the database belongs to the caller."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
