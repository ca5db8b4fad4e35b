"""The matcher: one leader per instrument shard sequences, matches and settles orders.

See docs/decisions/0027-matcher-per-instrument-shard.md. The API places an order
``pending`` with its funds held (:func:`bourse.trading.orders.place_order`) and asks for
cancels by marking the order (:func:`bourse.trading.orders.request_cancel`); it never
locks the instrument. Every instrument belongs to one shard (a stable hash of its
symbol, :func:`shard_of`), and each shard has exactly one leader at a time, which keeps
each of its instruments' books in memory and settles their commands in batches
(:mod:`bourse.trading.sequencing`), each batch one transaction.

**Leadership.** On PostgreSQL the leader holds a session advisory lock, ``(LOCK_CLASS,
shard)``, on the one connection that does all its writes: if the connection is lost,
the lock goes with it and a standby takes over. On SQLite (one machine) it holds an
exclusive ``flock`` on a file beside the database. Either way leadership alone is not
trusted:

**Fencing.** Every batch locks the instrument's row first and compares its ``sequence``
(and the tick and lot the book's notional reads) with the book the leader holds. The
row moves only with a batch that committed, so a mismatch means someone else wrote
since: the leader checks that it still holds its lock, and steps down (writing nothing)
if it does not; if it does (an operator changed the tick), it rebuilds the book from
the database and goes on. A paused leader that wakes after a standby took over can
therefore never write from its stale book.

**Waking.** The API announces each placed command on ``NOTIFY bourse_orders`` after its
commit; the leader ``LISTEN``\\s on a connection of its own and otherwise polls every
``poll_interval`` (always on SQLite and behind a transaction pooler).

**Batches.** A batch is at most ``batch_size`` commands. After a wake-up the leader
lingers ``linger`` seconds (at most) so that commands arriving together settle
together. A batch that fails is retried as two halves, recursively, so a command that
fails deterministically ends up alone, and is then rejected with its hold released in
a transaction of its own: it never blocks the shard. A transient failure (a lost
connection, a lock timeout) is not split: the leader rebuilds and tries again.

**Recovery.** A new leader restores each book from the resting orders in accepted-
sequence order, then continues with the pending commands. A batch is one transaction
and its notifications are sent on commit, so a crash at any point loses and
duplicates nothing.

**Results.** Each committed batch names its commands' order ids on ``NOTIFY
bourse_order_results`` (in the batch's transaction: it is sent if, and when, it
commits), and to this process's :class:`~bourse.trading.results.OrderResults`, so that
an API waiting for the order can answer with its outcome.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import Connection, select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from bourse.db import Database, load_models
from bourse.dberrors import transient_failure
from bourse.errors import BourseError
from bourse.ledger.posting import Context
from bourse.logging import get_logger
from bourse.queue.registry import load_jobs
from bourse.queue.wake import ListeningWaker
from bourse.settings import Settings
from bourse.trading import results
from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import RestingOrder, Side
from bourse.trading.instruments import book_notional, lock_instrument, price_to_ticks, quantity_to_lots
from bourse.trading.models import OPEN_STATUSES, PENDING_COMMANDS_SQL, Instrument, Order, OrderStatus
from bourse.trading.results import COMMANDS_CHANNEL, RESULTS_CHANNEL
from bourse.trading.sequencing import MATCHER_ACTOR, Batch, commands_by_id, pending_commands, run_batch
from bourse.trading.settlement import release_remainder
from bourse.trading.signals import LOCAL_WAKE

log = get_logger("bourse.trading.matcher")

# The advisory lock's first key: the matcher's, beside others this database may use.
LOCK_CLASS = 0x0B0_05E
DEFAULT_BATCH_SIZE = 200
DEFAULT_LINGER = 0.02
DEFAULT_POLL_INTERVAL = 0.25
# PostgreSQL's NOTIFY payload is at most 8000 bytes; order ids are sent in chunks below that.
_PAYLOAD_CHARS = 7000

BATCH_SIZE = Histogram(
    "bourse_matcher_batch_commands",
    "Commands settled per matcher batch.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500),
)
SETTLE_SECONDS = Histogram(
    "bourse_matcher_settle_seconds",
    "Time from a batch's first statement to its commit.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
PENDING = Gauge(
    "bourse_matcher_pending_commands",
    "Commands the leader found pending in its last batch per instrument (at most one batch's worth).",
    ["instrument"],
    multiprocess_mode="livemax",
)
OLDEST_PENDING = Gauge(
    "bourse_matcher_oldest_pending_seconds",
    "Age of the instrument's oldest pending command when the leader last looked.",
    ["instrument"],
    multiprocess_mode="livemax",
)
ISOLATED = Counter("bourse_matcher_commands_isolated_total", "Commands rejected because settling them failed.")
LEADER = Gauge("bourse_matcher_leader", "1 while this process leads the shard.", ["shard"], multiprocess_mode="livemax")


def shard_of(symbol: str, shards: int) -> int:
    """The shard of an instrument: a stable hash of its symbol (the same in every process)."""
    return zlib.crc32(symbol.encode()) % shards


class Fenced(Exception):
    """This process is no longer the shard's leader: it must write nothing more."""


# -- Leadership ---------------------------------------------------------------------------


class Leadership(Protocol):
    """Held by at most one process per shard; see the module docstring."""

    def acquire(self, connection: Connection) -> bool:
        """Take the shard's leadership if it is free; True if this process holds it now."""

    def held(self, connection: Connection) -> bool:
        """Whether this process still holds it (asked when the instrument moved without us)."""

    def release(self, connection: Connection) -> None:
        """Give it up."""


class AdvisoryLeadership:
    """A PostgreSQL session advisory lock on the leader's own connection."""

    def __init__(self, shard: int) -> None:
        self.shard = shard

    def acquire(self, connection: Connection) -> bool:
        got = bool(
            connection.execute(
                text("SELECT pg_try_advisory_lock(:class, :shard)"), {"class": LOCK_CLASS, "shard": self.shard}
            ).scalar()
        )
        connection.commit()
        return got

    def held(self, connection: Connection) -> bool:
        return bool(
            connection.execute(
                text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
                    " AND classid = :class AND objid = :shard AND objsubid = 2 AND granted)"
                ),
                {"class": LOCK_CLASS, "shard": self.shard},
            ).scalar()
        )

    def release(self, connection: Connection) -> None:
        with contextlib.suppress(Exception):
            connection.execute(
                text("SELECT pg_advisory_unlock(:class, :shard)"), {"class": LOCK_CLASS, "shard": self.shard}
            )
            connection.commit()


class FileLeadership:
    """An exclusive ``flock`` on a file beside the SQLite database (one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, connection: Connection) -> bool:  # noqa: ARG002 - the lock is a file's, not the connection's
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def held(self, connection: Connection) -> bool:  # noqa: ARG002 - the lock is a file's
        return self._fd is not None

    def release(self, connection: Connection) -> None:  # noqa: ARG002 - the lock is a file's
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


class ProcessLeadership:
    """For an in-memory SQLite database, which only this process can see: a lock of the process."""

    _locks: ClassVar[dict[tuple[str, int], threading.Lock]] = {}
    _guard: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, key: tuple[str, int]) -> None:
        with self._guard:
            self._lock = self._locks.setdefault(key, threading.Lock())
        self._held = False

    def acquire(self, connection: Connection) -> bool:  # noqa: ARG002 - the lock is the process's
        if not self._held:
            self._held = self._lock.acquire(blocking=False)
        return self._held

    def held(self, connection: Connection) -> bool:  # noqa: ARG002 - the lock is the process's
        return self._held

    def release(self, connection: Connection) -> None:  # noqa: ARG002 - the lock is the process's
        if self._held:
            self._held = False
            self._lock.release()


def leadership_for(database: Database, shard: int) -> Leadership:
    url = database.engine.url
    if url.get_backend_name() == "postgresql":
        return AdvisoryLeadership(shard)
    name = url.database or ""
    if not name or name == ":memory:":
        return ProcessLeadership((str(id(database.engine)), shard))
    return FileLeadership(Path(f"{name}.matcher-{shard}.lock"))


# -- One shard's leader ---------------------------------------------------------------------


@dataclass(slots=True)
class _Held:
    """One instrument's book as the leader holds it, and the row it is current with."""

    book: Book
    key: tuple[int, int, int]  # (sequence, tick_size, lot_size)


def _key(instrument: Instrument) -> tuple[int, int, int]:
    return (instrument.sequence, instrument.tick_size, instrument.lot_size)


def resting_orders(session: Session, instrument: Instrument) -> list[RestingOrder]:
    """The instrument's resting orders as the book holds them: their accepted sequence is their id."""
    rows = session.scalars(
        select(Order)
        .where(Order.instrument == instrument.symbol, Order.status.in_(OPEN_STATUSES))
        .order_by(Order.sequence)
    )
    return [
        RestingOrder(
            order.sequence or 0,
            str(order.user_id),
            Side(order.side),
            price_to_ticks(instrument, order.price or 0),
            quantity_to_lots(instrument, order.quantity),
            quantity_to_lots(instrument, order.remaining),
        )
        for order in rows
    ]


def rebuild_book(session: Session, instrument: Instrument) -> Book:
    """A book rebuilt from the database, without matching (``Book.restore``)."""
    book = Book(notional=book_notional(instrument))
    book.restore(resting_orders(session, instrument), sequence=instrument.sequence)
    return book


@dataclass
class ShardMatcher:
    """The leader (or a standby) of one shard. :meth:`step` runs one round; :meth:`run` loops."""

    database: Database
    shard: int = 0
    shards: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE
    linger: float = DEFAULT_LINGER
    poll_interval: float = DEFAULT_POLL_INTERVAL
    listen: bool = True
    on_batch: Callable[[Batch], None] | None = None
    _connection: Connection | None = None
    _leadership: Leadership | None = None
    _books: dict[str, _Held] = field(default_factory=dict)
    _listener: Any = None
    # When the loop last came round (monotonic): a stuck matcher stops its heartbeat.
    last_round: float = field(default_factory=time.monotonic)

    # -- leadership -------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        return self._connection is not None

    def lead(self) -> bool:
        """Become the shard's leader if nobody is; True if this matcher leads now."""
        if self._connection is not None:
            return True
        leadership = self._leadership or leadership_for(self.database, self.shard)
        # A batch queues the commissions job by name: import the job registry now, not
        # inside the first batch of a new leader (it imports every domain's jobs).
        load_jobs()
        connection = self.database.engine.connect()
        try:
            if not leadership.acquire(connection):
                connection.close()
                return False
        except Exception:
            connection.close()
            raise
        self._leadership, self._connection = leadership, connection
        self._books.clear()
        LEADER.labels(str(self.shard)).set(1)
        # Requests in this process now hear this shard's outcomes as they happen.
        results.order_results().add_source()
        log.info("matcher_leading", shard=self.shard, shards=self.shards)
        return True

    def step_down(self, reason: str) -> None:
        """Stop leading: drop the books and the connection (and with it an advisory lock)."""
        connection, self._connection = self._connection, None
        self._books.clear()
        LEADER.labels(str(self.shard)).set(0)
        if connection is not None:
            results.order_results().remove_source()
            if self._leadership is not None:
                self._leadership.release(connection)
            with contextlib.suppress(Exception):
                connection.close()
            log.warning("matcher_stepped_down", shard=self.shard, reason=reason)

    def close(self) -> None:
        self.step_down("stopped")
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- the work ---------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """The shard's instruments that have pending commands (one statement, on the partial index)."""
        assert self._connection is not None  # noqa: S101 - called while leading
        rows = (
            self._connection.execute(select(Order.instrument).where(text(f"({PENDING_COMMANDS_SQL})")).distinct())
            .scalars()
            .all()
        )
        self._connection.commit()
        return sorted(symbol for symbol in rows if shard_of(symbol, self.shards) == self.shard)

    def step(self) -> int:
        """One round while leading: a batch for each instrument of the shard that has commands.

        Returns how many commands were settled. Raises :class:`Fenced` (after stepping
        down) if another leader wrote since.
        """
        if not self.lead():
            return 0
        settled = 0
        for symbol in self.symbols():
            if not self.leading:
                break  # stepped down during this round (a lost connection): lead again next round
            settled += self._instrument_round(symbol)
        return settled

    def drain(self, *, max_rounds: int = 1000) -> int:
        """Settle every pending command of the shard now (for tools and tests). Returns how many."""
        total = 0
        for _ in range(max_rounds):
            settled = self.step()
            total += settled
            if not settled:
                return total
        raise RuntimeError("the matcher did not run out of commands")

    def _session(self) -> Session:
        assert self._connection is not None  # noqa: S101 - called while leading
        info = dict(self.database.sessions.kw.get("info", {}))
        return Session(bind=self._connection, expire_on_commit=False, info=info)

    def _instrument_round(self, symbol: str) -> int:
        try:
            return self._settle(symbol, ids=None)
        except Fenced:
            raise
        except Exception as exc:
            if transient_failure(exc, source="matcher") is None:
                raise
            # The connection (or a lock) failed: nothing of the batch committed. Lead again
            # from scratch: a lost connection took the advisory lock with it.
            self.step_down(f"transient failure: {type(exc).__name__}")
            return 0

    def _settle(self, symbol: str, ids: Sequence[int] | None) -> int:
        """Settle one batch of ``symbol`` (the next pending one, or the orders ``ids``)."""
        started = time.perf_counter()
        session = self._session()
        batch: Batch | None = None
        commands: list[Order] = []
        command_ids: list[int] = []
        failure: Exception | None = None
        try:
            with session.begin():
                instrument = lock_instrument(session, symbol)
                held = self._current_book(session, instrument)
                if ids is None:
                    commands = pending_commands(session, symbol, limit=self.batch_size)
                    self._observe(session, symbol, len(commands))
                else:
                    commands = commands_by_id(session, symbol, ids)
                if not commands:
                    return 0
                command_ids = [order.id for order in commands]
                batch = run_batch(session, instrument, held.book, commands)
                held.key = _key(instrument)
                self._notify(session, batch.order_ids)
        except Fenced:
            session.close()
            self.step_down("fenced: another leader wrote")
            raise
        except Exception as exc:
            # The book ran ahead of a transaction that did not commit: rebuild it next time.
            self._books.pop(symbol, None)
            if transient_failure(exc, source="matcher") is not None or not command_ids or not _deterministic(exc):
                raise
            failure = exc
        finally:
            session.close()
            self._end_transaction()
        if failure is not None or batch is None:
            return self._isolate(symbol, command_ids, failure or RuntimeError("no batch"))
        BATCH_SIZE.observe(len(batch.commands))
        SETTLE_SECONDS.observe(time.perf_counter() - started)
        results.announce(batch.order_ids)
        if self.on_batch is not None:
            self.on_batch(batch)
        return len(batch.commands)

    def _end_transaction(self) -> None:
        """Leave the leader's connection outside any transaction (a failed one is rolled back)."""
        connection = self._connection
        if connection is None:
            return
        if connection.in_transaction():
            connection.rollback()
        # A commit that failed on its way to the database (a listener that raised before
        # the COMMIT was sent) leaves the driver's connection in a transaction SQLAlchemy
        # no longer knows of: the next batch, or the step-down's unlock, would commit it.
        # Rolling back a connection with no transaction costs no round trip.
        driver = connection.connection.dbapi_connection
        if driver is not None:
            driver.rollback()

    def _isolate(self, symbol: str, ids: list[int], error: Exception) -> int:
        """A batch failed for a reason that is not transient: settle halves, down to the one at fault."""
        if len(ids) > 1:
            middle = len(ids) // 2
            return self._settle(symbol, ids[:middle]) + self._settle(symbol, ids[middle:])
        self._reject(symbol, ids[0], error)
        return 1

    def _reject(self, symbol: str, order_id: int, error: Exception) -> None:
        """Reject one command whose settlement fails every time, releasing its hold."""
        ISOLATED.inc()
        log.error("matcher_command_rejected", instrument=symbol, order_id=order_id, error=repr(error))
        session = self._session()
        try:
            with session.begin():
                lock_instrument(session, symbol)
                order = session.get(Order, order_id, with_for_update=True, populate_existing=True)
                if order is None:
                    return
                if order.status is OrderStatus.pending:
                    order.status = OrderStatus.rejected
                    order.reject_reason = "settlement_failed"
                    release_remainder(session, order, _context())
                elif order.cancel_requested_at is not None:
                    # A cancel of a resting order that cannot be carried out: drop the request
                    # (the order rests on, as the book has it) rather than retry it for ever.
                    order.cancel_requested_at = None
                self._notify(session, [order_id])
        finally:
            session.close()
            self._end_transaction()
        # The book may hold the order (it ran through it before the failure): rebuild.
        self._books.pop(symbol, None)
        results.announce([order_id])

    def _current_book(self, session: Session, instrument: Instrument) -> _Held:
        """The instrument's book, current with its locked row; fenced if another leader wrote."""
        symbol = instrument.symbol
        held = self._books.get(symbol)
        if held is not None and held.key == _key(instrument):
            return held
        if held is not None:
            # The row moved without us. Only a leader moves it: are we still one?
            assert self._connection is not None  # noqa: S101 - called while leading
            assert self._leadership is not None  # noqa: S101 - set with the connection
            if not self._leadership.held(self._connection):
                raise Fenced(f"{symbol} moved to sequence {instrument.sequence} under another leader")
        book = rebuild_book(session, instrument)
        log.info("matcher_book_restored", instrument=symbol, sequence=instrument.sequence, resting=len(book.orders()))
        held = _Held(book, _key(instrument))
        self._books[symbol] = held
        return held

    def _observe(self, session: Session, symbol: str, fetched: int) -> None:
        PENDING.labels(symbol).set(fetched)
        oldest = session.scalar(
            select(Order.created_at)
            .where(Order.instrument == symbol, text(f"({PENDING_COMMANDS_SQL})"))
            .order_by(Order.id)
            .limit(1)
        )
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())
        OLDEST_PENDING.labels(symbol).set(age)

    def _notify(self, session: Session, order_ids: Sequence[int]) -> None:
        if session.get_bind().dialect.name != "postgresql" or not order_ids:
            return
        payload = ",".join(str(order_id) for order_id in order_ids)
        while payload:
            cut = payload.rfind(",", 0, _PAYLOAD_CHARS) if len(payload) > _PAYLOAD_CHARS else len(payload)
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"), {"channel": RESULTS_CHANNEL, "payload": payload[:cut]}
            )
            payload = payload[cut + 1 :]

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, waker: Any = None) -> None:
        """Lead when possible and settle commands until ``stop`` is set."""
        try:
            while not stop.is_set():
                self.last_round = time.monotonic()
                try:
                    if not self.lead():
                        stop.wait(self.poll_interval * 4)
                        continue
                    settled = self.step()
                except Fenced:
                    continue
                except Exception as exc:
                    log.exception("matcher_round_failed", shard=self.shard, error=repr(exc))
                    self.step_down(f"round failed: {type(exc).__name__}")
                    stop.wait(self.poll_interval)
                    continue
                if settled:
                    continue  # more may be waiting
                woken = waker.wait(self.poll_interval) if waker is not None else stop.wait(self.poll_interval)
                if woken and self.linger > 0:
                    time.sleep(self.linger)
        finally:
            self.close()


def _deterministic(exc: Exception) -> bool:
    """Whether a failed batch may be blamed on a command in it: a refusal of the domain (a
    hold that cannot be captured, say) or a constraint the data broke. Anything else (a
    bug, a broken deployment) would fail every command alike, so the leader steps down and
    tries again later rather than reject orders one by one."""
    return isinstance(exc, BourseError | IntegrityError | DataError)


def _context() -> Context:
    return Context(actor=MATCHER_ACTOR, idempotency_key="")


# -- The matcher's shards in a process ------------------------------------------------------


class MatcherUnavailable(RuntimeError):
    """The matcher cannot run with these settings (a refusal at start-up, with its reason)."""


class MatcherService:
    """The leaders (or standbys) of some shards, one thread each, in this process.

    Started by the API's lifespan (``BOURSE_MATCHER=in-process``) or by ``bourse
    matcher``. Its database is its own, on the direct connection (the leadership lock
    and ``LISTEN`` are session features), so it never takes a connection that the API's
    leases count on.
    """

    def __init__(self, settings: Settings, *, shards: Sequence[int] | None = None) -> None:
        self.settings = settings
        load_models()  # a batch touches the ledger, the queue and the users' rows
        self.shards = list(range(settings.matcher_shards)) if shards is None else list(shards)
        for shard in self.shards:
            if not 0 <= shard < settings.matcher_shards:
                raise MatcherUnavailable(f"shard {shard} is not one of 0..{settings.matcher_shards - 1}")
        if settings.database.get_backend_name() == "postgresql":
            database = Database.direct(settings, name="matcher", pool_size=2 * len(self.shards) + 1)
            if database is None:
                raise MatcherUnavailable(
                    "the matcher needs PostgreSQL without a transaction pooler: set BOURSE_DATABASE_DIRECT_URL"
                )
        else:
            database = Database.from_settings(settings, name="matcher", pool_size=len(self.shards) + 1)
        self.database = database
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._matchers: list[ShardMatcher] = []

    def healthy(self, max_age: float) -> bool:
        """Every shard's thread is alive and came round its loop within ``max_age`` seconds."""
        now = time.monotonic()
        return (
            len(self._matchers) == len(self.shards)
            and all(thread.is_alive() for thread in self._threads)
            and all(now - matcher.last_round <= max_age for matcher in self._matchers)
        )

    def start(self) -> None:
        for shard in self.shards:
            thread = threading.Thread(target=self._run_shard, args=(shard,), name=f"matcher-{shard}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("matcher_started", shards=self.shards, of=self.settings.matcher_shards)

    def _run_shard(self, shard: int) -> None:
        matcher = ShardMatcher(
            self.database, shard=shard, shards=self.settings.matcher_shards, batch_size=self.settings.matcher_batch_size
        )
        self._matchers.append(matcher)
        # A standby says so (0) from the start, so "no leader" can be told from "no matcher".
        LEADER.labels(str(shard)).set(0)
        waker: Any
        if self.database.engine.dialect.name == "postgresql":
            waker = ListeningWaker(self.database, channel=COMMANDS_CHANNEL)
        else:
            waker = LOCAL_WAKE.waiter()
        try:
            matcher.run(self._stop, waker)
        finally:
            waker.close()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self.database.dispose()
