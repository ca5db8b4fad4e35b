"""Waking idle workers: ``LISTEN``/``NOTIFY`` on PostgreSQL, polling elsewhere.

Every job enters the queue through a ``queue_jobs`` row committed in the caller's
transaction (:mod:`bourse.queue.producer`), whichever the driver. On PostgreSQL,
once that transaction has committed, the producer's process sends ``NOTIFY
bourse_queue`` on a connection of its own (:class:`Announcer`), not inside the
business transaction: PostgreSQL serialises the commits of every transaction that
issued a ``NOTIFY`` in a database (a database-wide lock held through the commit's
WAL flush), so a ``NOTIFY`` in each deposit's or trade's own transaction would make
them all commit one at a time. The announcement is its own tiny transaction,
committed without waiting for the WAL flush, so it holds that lock only briefly. A
process that dies between the commit and the announcement costs one wake-up, which
the workers' polling (``--sleep``) makes up for. An idle worker blocks on a dedicated
connection that ``LISTEN``\\s on the channel instead of polling, so it starts (or,
with the Redis driver, relays) the job as soon as the enqueueing transaction
commits. The Redis relay and both drivers' releases notify the same channel, so a
worker that was woken for a row another worker relayed is woken again once the job
is in Redis.

The connection listens from the worker's start to its end, so a notification that
arrives while the worker is busy, or between an empty reservation and the wait, is
kept by the connection and wakes the next wait at once: no wake-up is lost in
between. While the worker is busy the notifications are drained at most every
``DRAIN_INTERVAL`` seconds, so that a listener that never reads cannot hold up the
server's notification queue.

A wait is always bounded (the worker's ``--sleep``, the next delayed job, and short
slices for signals and heartbeats), so polling stays the fallback: on SQLite, behind
a transaction pooler (``BOURSE_DATABASE_TRANSACTION_POOLING``: ``LISTEN`` belongs to
a server session, which a pooler hands to other clients between transactions), and
whenever a notification is lost (the listening connection broke).
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.orm import Session

from bourse.db import Database
from bourse.logging import get_logger
from bourse.settings import Settings

log = get_logger("bourse.queue.wake")

CHANNEL = "bourse_queue"
DRAIN_INTERVAL = 0.5
_NOTIFY = text(f"NOTIFY {CHANNEL}")


def _announcement(channel: str) -> str:
    # Two statements in one simple query: one implicit transaction, one round trip.
    return f"SET LOCAL synchronous_commit = off; NOTIFY {channel}"


# Session.info key: the transaction that already notified (one NOTIFY per transaction).
_NOTIFIED = "bourse.queue.notified"


def notify(conn: Session | Connection) -> None:
    """Wake idle workers once the current transaction commits (PostgreSQL only).

    A session (the producer's, in the caller's transaction) gets one announcement after
    its transaction commits, on a connection of the process's :class:`Announcer`; none if
    it rolls back. A bare connection (a worker's own bookkeeping, which commits without
    waiting for the WAL flush) notifies in its transaction.
    """
    dialect = conn.get_bind().dialect if isinstance(conn, Session) else conn.dialect
    if dialect.name != "postgresql":
        return
    if isinstance(conn, Session):
        # Several enqueues in one transaction need one announcement.
        transaction = conn.get_transaction()
        if transaction is None or conn.info.get(_NOTIFIED) is transaction:
            return
        conn.info[_NOTIFIED] = transaction
        bind = conn.get_bind()
        engine = bind if isinstance(bind, Engine) else bind.engine
        event.listen(conn, "after_commit", lambda _session: _ANNOUNCER.announce(engine), once=True)
        return
    conn.execute(_NOTIFY)


class Announcer:
    """Sends ``NOTIFY bourse_queue`` on one connection per engine, kept for the process.

    Each announcement is one round trip: ``SET LOCAL synchronous_commit = off`` and the
    ``NOTIFY`` in one implicit transaction (``SET LOCAL``, so nothing stays on the
    connection, even behind a transaction pooler). Thread-safe. A failure is logged and
    the connection made again next time: an announcement is only a wake-up, and the
    workers poll as well.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: weakref.WeakKeyDictionary[Engine, Any] = weakref.WeakKeyDictionary()
        self._watched: weakref.WeakSet[Engine] = weakref.WeakSet()

    def announce(self, engine: Engine, channel: str = CHANNEL) -> None:
        """``NOTIFY channel`` (a fixed identifier of ours, never user input) on the engine's connection."""
        with self._lock:
            conn: Any = self._connections.get(engine)
            try:
                if conn is None or conn.closed:
                    proxied = engine.raw_connection()
                    conn = proxied.driver_connection
                    # Ours for good: never back to the pool, where its autocommit would leak.
                    proxied.detach()
                    conn.rollback()
                    conn.autocommit = True
                    if engine not in self._watched:
                        event.listen(engine, "engine_disposed", self.forget)
                        self._watched.add(engine)
                    self._connections[engine] = conn
                conn.execute(_announcement(channel))
            except Exception as exc:  # noqa: BLE001 - a wake-up lost is made up for by polling
                log.warning("queue_notify_failed", error=str(exc), fallback="workers find the job when they poll")
                self._connections.pop(engine, None)
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def forget(self, engine: Engine) -> None:
        """Close the engine's connection (its ``Engine.dispose()``, or a test's clean-up)."""
        with self._lock:
            conn = self._connections.pop(engine, None)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                with contextlib.suppress(Exception):
                    conn.close()
            self._connections.clear()


_ANNOUNCER = Announcer()


def announcer() -> Announcer:
    """This process's announcer (the producer's wake-ups after commit)."""
    return _ANNOUNCER


class Waker(Protocol):
    """How an idle worker waits for work."""

    listening: bool

    def wait(self, seconds: float) -> bool:
        """Block up to ``seconds``; True if woken by a notification."""

    def drain(self) -> None:
        """Read notifications that arrived while busy (cheap; rate-limited)."""

    def close(self) -> None: ...


class PollingWaker:
    """No notifications: the wait is a plain sleep, and the worker polls."""

    listening = False

    def wait(self, seconds: float) -> bool:
        time.sleep(max(seconds, 0.0))
        return False

    def drain(self) -> None:
        """Nothing to read."""

    def close(self) -> None:
        """Nothing to close."""


class ListeningWaker:
    """``LISTEN bourse_queue`` on a connection of its own, kept for the worker's life.

    The connection is made by the first wait, which then returns at once: the worker
    looks for work again with the listener in place, so nothing committed before it
    listened is waited for.
    """

    listening = True

    def __init__(self, db: Database, channel: str = CHANNEL) -> None:
        self.db = db
        self.channel = channel
        self._conn: Any = None
        self._drained = 0.0

    def _connect(self) -> None:
        proxied = self.db.engine.raw_connection()
        conn: Any = proxied.driver_connection
        # Ours for good: a connection that listens must never go back to the pool.
        proxied.detach()
        conn.rollback()
        conn.autocommit = True
        conn.execute(f"LISTEN {self.channel}")
        self._conn = conn

    def wait(self, seconds: float) -> bool:
        try:
            if self._conn is None:
                self._connect()
                # Notifications sent while not listening are lost: look for work now.
                return True
            woken = any(True for _ in self._conn.notifies(timeout=max(seconds, 0.0), stop_after=1))
            if woken:
                self._read_all()
        except Exception as exc:  # noqa: BLE001 - any failure of the listening connection means: poll
            log.warning("queue_listen_failed", error=str(exc), fallback="polling until it reconnects")
            self._discard()
            time.sleep(max(seconds, 0.0))
            return False
        return woken

    def _read_all(self) -> None:
        for _ in self._conn.notifies(timeout=0):
            pass
        self._drained = time.monotonic()

    def drain(self) -> None:
        if self._conn is None or time.monotonic() - self._drained < DRAIN_INTERVAL:
            return
        try:
            self._read_all()
        except Exception as exc:  # noqa: BLE001 - the next wait reconnects
            log.warning("queue_listen_failed", error=str(exc), fallback="polling until it reconnects")
            self._discard()

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception as exc:  # noqa: BLE001 - already broken
                log.debug("queue_listen_close_failed", error=str(exc))

    def close(self) -> None:
        self._discard()


def make_waker(settings: Settings, db: Database) -> Waker:
    """Listen on PostgreSQL reached directly; poll on SQLite and behind a transaction pooler."""
    if db.engine.dialect.name != "postgresql" or settings.database_transaction_pooling:
        return PollingWaker()
    return ListeningWaker(db)
