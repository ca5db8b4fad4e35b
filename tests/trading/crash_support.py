"""Crash injection for the matcher's tests (tests/trading/test_matcher_crashes.py).

The faults strike at seams that do not depend on how a batch is written inside:

- :class:`Probe` watches ONE matcher's engine (each matcher in these tests has a
  :class:`~bourse.db.Database` of its own, as each matcher process has). It numbers the
  engine's transactions and, in each, the statements that are not transaction control,
  classifying each statement by the tables it writes and whether it touches the ledger.
  A control run records that map; a faulty run of the same commands then strikes at one
  :class:`Point` of it: before a statement (the statement never runs, and the
  transaction rolls back as a crash's would), before the commit, after the commit
  (SQLAlchemy's ``after_commit``), at the outcome's announcement, or at ``on_batch``.
- :class:`Rounds` plays a deterministic command stream through the matcher's real loop,
  :meth:`~bourse.trading.matcher.ShardMatcher.run`, in ONE thread: the loop's waker
  (the matcher calls it when it found nothing to do) checks the book and feeds the next
  round, and its stop event (waited on after a failed round) checks what a crash left.
  So the batches of a run are the same every time, the loop's own failure handling is
  what recovers, and a shard that cannot recover is reported as stuck.
- :func:`outcome` is what a run did, in terms independent of ids and symbols, so a
  faulty run is compared with a clean one; :func:`check_invariants` is what must hold
  after any crash.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from bourse.db import Base, Database, load_models, unit_of_work
from bourse.ledger.models import Hold, HoldState, JournalEntry
from bourse.settings import Settings
from bourse.trading import instruments
from bourse.trading.errors import OrderNotOpen
from bourse.trading.matcher import ShardMatcher
from bourse.trading.models import DONE_STATUSES, PENDING_COMMANDS_SQL, Order, OrderStatus, Trade
from bourse.trading.results import order_results
from tests.support.ledger import balance, fund, verify
from tests.support.services import admin_connect
from tests.trading.orders_support import asset_total, check_consistent, held, user_total
from tests.trading.test_matcher import accept, book_matches_database, recorded, replay, request_cancel

LEDGER_TABLES = ("accounts", "holds", "postings", "journal_entries")
_LEDGER = re.compile(r"\b(?:" + "|".join(LEDGER_TABLES) + r")\b", re.IGNORECASE)
# INSERT INTO t, UPDATE t, DELETE FROM t: anywhere (a CTE may write several tables). "FOR UPDATE OF",
# "DO UPDATE SET" and the like name no table, and are dropped below by the table-name check.
_WRITE = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+\"?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA", "SET ")

FUNDS_BASE = 10 * 10**8  # 10 units of an 8-decimal base asset
FUNDS_QUOTE = 10**6  # 10,000.00 of a 2-decimal quote asset


class Crash(RuntimeError):
    """The injected crash: neither a transient database failure nor a domain refusal, so the
    matcher can blame no command for it (like a bug, or the process dying in the middle)."""


# -- Where: statements and transactions of one engine ---------------------------------------


def _tables() -> frozenset[str]:
    load_models()
    return frozenset(Base.metadata.tables)


@dataclass(frozen=True, slots=True)
class Statement:
    writes: frozenset[str]  # the tables it inserts into, updates or deletes from
    ledger: bool  # whether it names a ledger table at all (a read or a lock included)
    sql: str = field(compare=False)

    @classmethod
    def of(cls, sql: str, tables: frozenset[str]) -> Statement:
        writes = frozenset(name.lower() for name in _WRITE.findall(sql) if name.lower() in tables)
        return cls(writes, touches_ledger(sql), " ".join(sql.split())[:120])


def touches_ledger(sql: str) -> bool:
    """Whether a statement names a ledger table (reads and locks included)."""
    return bool(_LEDGER.search(sql))


@dataclass(slots=True)
class Transaction:
    statements: list[Statement] = field(default_factory=list)
    committed: bool = False
    # (instrument sequence, trades of the instrument) once it committed: recorded by a control run.
    state: tuple[int, int] | None = None

    def first(self, wanted: Callable[[Statement], bool]) -> int | None:
        return next((i for i, statement in enumerate(self.statements) if wanted(statement)), None)


After = Literal["commit", "after-commit", "announce", "on-batch"]


@dataclass(frozen=True, slots=True)
class Point:
    """Transaction ``tx`` of the engine, before its statement ``at`` (which must look like
    ``expect``, as it did in the control run), or at its commit, or after it."""

    tx: int
    at: int | After
    expect: Statement | None = None

    @property
    def committed(self) -> bool:
        """Whether the transaction has committed when the fault strikes."""
        return self.at in {"after-commit", "announce", "on-batch"}


class Probe:
    """Numbers one engine's transactions and statements; strikes once at ``point``, if given.

    ``strike`` runs in the matcher's thread at the point; it raises (a crash) or returns
    (the statement or commit then goes ahead, e.g. on a connection it killed).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        point: Point | None = None,
        strike: Callable[[Probe], None] | None = None,
        observe: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.engine = engine
        self.point = point
        self.strike = strike
        self.observe = observe  # called after each commit (a control run records the state)
        self.transactions: list[Transaction] = []
        self.announced: list[int] = []  # the transaction each announcement came after
        self.batches: list[int] = []  # the transaction each on_batch came after
        self.fired: Point | None = None
        self.backend_pid: int | None = None
        self._tables = _tables()
        self._last_commit = -1

    # -- the seams --------------------------------------------------------------------------

    def _begin(self, _connection: Any) -> None:
        self.transactions.append(Transaction())

    def _statement(self, _conn: Any, cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith(_CONTROL) or not self.transactions:
            return
        info = getattr(getattr(cursor, "connection", None), "info", None)
        pid = getattr(info, "backend_pid", None)
        if isinstance(pid, int):
            self.backend_pid = pid
        current = self.transactions[-1]
        seen = Statement.of(statement, self._tables)
        here = len(current.statements)
        current.statements.append(seen)
        if self._due(len(self.transactions) - 1, here):
            assert self.point is not None
            if self.point.expect is not None and seen != self.point.expect:
                raise AssertionError(
                    f"the run left the control's path at transaction {self.point.tx}, statement {here}:"
                    f" expected {self.point.expect}, got {seen}"
                )
            self._fire()

    def _commit(self, _connection: Any) -> None:
        index = len(self.transactions) - 1
        if index >= 0:
            self.transactions[index].committed = True
            self._last_commit = index

    def _mine(self, session: Session) -> bool:
        bind = session.bind
        return getattr(bind, "engine", bind) is self.engine

    def _before_commit(self, session: Session) -> None:
        # The session's commit, not the engine's "commit" event: an exception there would skip
        # the DBAPI commit while SQLAlchemy forgets the transaction, leaving it open on the
        # connection for whatever runs next to commit; a crash there is not what it models.
        index = len(self.transactions) - 1
        if self._mine(session) and index >= 0 and self._due(index, "commit"):
            self._fire()

    def _after_commit(self, session: Session) -> None:
        if not self._mine(session) or self._last_commit < 0:
            return
        if self.observe is not None:
            self.transactions[self._last_commit].state = self.observe()
        if self._due(self._last_commit, "after-commit"):
            self._fire()

    def on_announce(self) -> None:
        self.announced.append(self._last_commit)
        if self._due(self._last_commit, "announce"):
            self._fire()

    def on_batch(self, _batch: object) -> None:
        """For ``ShardMatcher(on_batch=...)``: called after each committed batch."""
        self.batches.append(self._last_commit)
        if self._due(self._last_commit, "on-batch"):
            self._fire()

    def _due(self, tx: int, at: int | After) -> bool:
        return self.fired is None and self.point is not None and (self.point.tx, self.point.at) == (tx, at)

    def _fire(self) -> None:
        self.fired = self.point
        if self.strike is not None:
            self.strike(self)

    @contextmanager
    def attached(self) -> Iterator[Probe]:
        listeners: list[tuple[Any, str, Callable[..., Any]]] = [
            (self.engine, "begin", self._begin),
            (self.engine, "before_cursor_execute", self._statement),
            (self.engine, "commit", self._commit),
            (Session, "before_commit", self._before_commit),
            (Session, "after_commit", self._after_commit),
        ]
        for target, name, listener in listeners:
            event.listen(target, name, listener)
        try:
            yield self
        finally:
            for target, name, listener in listeners:
                event.remove(target, name, listener)

    # -- choosing points from a control run ---------------------------------------------------

    def settling(self) -> list[int]:
        """The committed transactions that recorded trades: batches with fills."""
        return [
            i
            for i, tx in enumerate(self.transactions)
            if tx.committed and any("trades" in statement.writes for statement in tx.statements)
        ]

    def quiet(self) -> list[int]:
        """The committed batches without fills that still moved holds (cancels, rejections)."""
        return [
            i
            for i, tx in enumerate(self.transactions)
            if tx.committed
            and i not in self.settling()
            and any("holds" in statement.writes for statement in tx.statements)
        ]

    def point_at(self, where: str, batch: Literal["first", "middle", "quiet"]) -> Point:
        """A point of the control run: ``where`` in the first batch with fills, the middle one,
        or (``quiet``) the first batch after the first round that has no fill but releases holds.

        ``before-settlement`` is the first statement that touches the ledger (after the
        commands were read and matched, before any ledger row changes); ``write:<table>``
        the first statement writing that table; ``write@mid`` and ``write@last`` the middle
        and last writing statements; otherwise one of :data:`After`.
        """
        settling = self.settling()
        assert len(settling) >= 3, f"the control run settled only {len(settling)} batches with fills"
        if batch == "quiet":
            quiet = [tx for tx in self.quiet() if tx > settling[0]]
            assert quiet, "the control run has no batch without fills"
            tx = quiet[0]
        else:
            tx = settling[0] if batch == "first" else settling[len(settling) // 2]
        statements = self.transactions[tx].statements
        writing = [i for i, statement in enumerate(statements) if statement.writes]
        at: int | None
        if where == "before-settlement":
            at = self.transactions[tx].first(lambda statement: statement.ledger)
        elif where.startswith("write:"):
            table = where.removeprefix("write:")
            at = self.transactions[tx].first(lambda statement: table in statement.writes)
        elif where == "write@mid":
            at = writing[len(writing) // 2]
        elif where == "write@last":
            at = writing[-1]
        else:
            assert where in {"commit", "after-commit", "announce", "on-batch"}, where
            if where == "announce":
                assert tx in self.announced, "the control run announced nothing after that batch"
            if where == "on-batch":
                assert tx in self.batches, "the control run called on_batch for another transaction"
            return Point(tx, where)  # type: ignore[arg-type]
        assert at is not None, f"no statement of batch {tx} is {where}: {[s.sql for s in statements]}"
        return Point(tx, at, statements[at])

    def expected_state(self, point: Point) -> tuple[int, int]:
        """(sequence, trades) the database holds after a fault at ``point`` rolled back what it
        could: the state after the last commit before the point (or after its own commit)."""
        last = point.tx if point.committed else point.tx - 1
        for tx in reversed(self.transactions[: last + 1]):
            if tx.state is not None:
                return tx.state
        return (0, 0)


def terminate_backend(pid: int) -> None:
    """Kill a PostgreSQL backend as a dead process's connection dies: its transaction rolls
    back, its advisory lock goes. Waits until it is gone."""
    with admin_connect() as conn:
        row = conn.execute("SELECT pg_terminate_backend(%s, 10000)", (pid,)).fetchone()
    assert row is not None
    assert row[0], f"backend {pid} did not terminate"


# -- The command stream -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Place:
    user: int
    terms: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Cancel:
    user: int
    order: int  # index of the order in the stream


Step = Place | Cancel


def _price(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def stream_round(r: int, first: int) -> list[Step]:
    """Round ``r`` of the stream (its first order is the stream's order ``first``): crossing
    limit orders, a market buy on a budget and a market sell, IOC and FOK, a self-trade,
    a cancel that arrives before its order is sequenced, and a cancel of the previous
    round's resting order. Four users; prices drift up 0.10 a round."""
    s = 10 * r

    def limit(user: int, side: str, cents: int, quantity: str, tif: str | None = None) -> Place:
        return Place(user, {"side": side, "price_text": _price(cents + s), "quantity_text": quantity, "tif": tif})

    steps: list[Step] = [
        limit(0, "sell", 10_000, "0.30"),
        limit(1, "buy", 9_950, "0.20"),
        limit(2, "buy", 10_050, "0.40"),  # takes the sell, rests 0.10
        limit(1, "sell", 10_050, "0.20"),  # takes that, rests 0.10
        Place(3, {"side": "buy", "kind": "market", "quote_budget_text": "15.00"}),
        Place(0, {"side": "sell", "kind": "market", "quantity_text": "0.15"}),
        limit(2, "sell", 10_020, "0.30"),
        limit(3, "buy", 10_100, "0.30", "fok"),
        limit(3, "buy", 9_980, "0.10"),  # cancelled below, before the matcher sees it
        limit(3, "sell", 9_900, "0.20", "ioc"),
        limit(1, "sell", 10_040, "0.10"),
        limit(1, "buy", 10_040, "0.10"),  # meets its owner's sell: self-trade prevention
        limit(2, "sell", 9_990, "0.25"),
        limit(0, "buy", 10_000, "0.10"),
        Cancel(3, first + 8),
    ]
    if r:
        steps.append(Cancel(2, first - PER_ROUND + 12))
    return steps


PER_ROUND = 14  # orders a round places


def stream(rounds: int) -> list[list[Step]]:
    return [stream_round(r, PER_ROUND * r) for r in range(rounds)]


@dataclass
class Played:
    """What the stream placed (order ids in stream order) and which cancels were refused."""

    ids: list[int] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)


def feed(database: Database, symbol: str, users: Sequence[uuid.UUID], steps: Sequence[Step], played: Played) -> None:
    for step in steps:
        if isinstance(step, Place):
            played.ids.append(accept(database, users[step.user], symbol, **step.terms).id)
        else:
            try:
                request_cancel(database, users[step.user], played.ids[step.order])
            except OrderNotOpen:
                played.refused.append(step.order)


def pending(database: Database, symbol: str) -> int:
    with unit_of_work(database) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Order)
                .where(Order.instrument == symbol, text(f"({PENDING_COMMANDS_SQL})"))
            )
            or 0
        )


def fund_all(database: Database, users: Sequence[uuid.UUID], base: str, quote: str, times: int = 1) -> None:
    for user in users:
        fund(database, user, base, FUNDS_BASE * times)
        fund(database, user, quote, FUNDS_QUOTE * times)


# -- Playing rounds through the matcher's own loop --------------------------------------------


class _Stop(threading.Event):
    """``run``'s stop event; ``run`` waits on it after a failed round: the moment to look."""

    def __init__(self, on_wait: Callable[[], None]) -> None:
        super().__init__()
        self._on_wait = on_wait

    def wait(self, timeout: float | None = None) -> bool:
        self._on_wait()
        return super().wait(timeout)


class Rounds:
    """Plays rounds through :meth:`ShardMatcher.run`, in this thread (see the module docstring).

    ``run`` calls :meth:`wait` (its waker) whenever a round of its found nothing to do:
    then the book is checked against the database and the next round of commands is
    accepted. :meth:`play` runs the leader, and after it has died (a fault calls
    :meth:`kill_leader`) the next matcher, until the stream is done.
    """

    MAX_IDLE_WITH_WORK = 200  # rounds of the loop that settle nothing while commands wait: stuck
    MAX_FAILED_ROUNDS = 20

    def __init__(
        self,
        database: Database,
        symbol: str,
        users: Sequence[uuid.UUID],
        rounds: Sequence[Sequence[Step]],
        *,
        after_fault: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        self.symbol = symbol
        self.users = users
        self.played = Played()
        self._rounds = list(rounds)
        self._after_fault = after_fault
        self.fault_seen = False  # set by whoever injects the fault
        self.fault_checked = False
        self.matcher: ShardMatcher | None = None
        self.stop = _Stop(self._failed_round)
        self.finished = False
        self.book_checks = 0
        self.leaders: list[ShardMatcher] = []  # the matchers whose live book was checked
        self._idle_with_work = 0
        self._failed_rounds = 0

    # -- the waker protocol run() uses --------------------------------------------------------

    def wait(self, timeout: float) -> bool:  # noqa: ARG002 - nothing is awaited: the test feeds the matcher
        matcher = self.matcher
        assert matcher is not None
        self._check_after_fault()
        if not matcher.leading or pending(self.database, self.symbol):
            self._idle_with_work += 1
            if self._idle_with_work > self.MAX_IDLE_WITH_WORK:
                raise AssertionError(f"the shard is stuck: {pending(self.database, self.symbol)} commands wait")
            return True
        self._idle_with_work = 0
        live = self.symbol in matcher._books
        if live:
            book_matches_database(self.database, matcher, self.symbol)
            self.book_checks += 1
            if matcher not in self.leaders:
                self.leaders.append(matcher)
        if not self._rounds:
            # The last round ran on this leader after every fault: it must hold the book.
            assert live, "the last leader settled the last round without a book"
            self.finished = True
            self.stop.set()
            return False
        feed(self.database, self.symbol, self.users, self._rounds.pop(0), self.played)
        return True

    def close(self) -> None:
        """Nothing to close (the waker protocol)."""

    def drain(self) -> None:
        """Nothing to drain (the waker protocol)."""

    # -- faults ---------------------------------------------------------------------------------

    def _failed_round(self) -> None:
        self._failed_rounds += 1
        if self._failed_rounds > self.MAX_FAILED_ROUNDS:
            raise AssertionError("the matcher fails round after round: the shard is stuck")
        self._check_after_fault()

    def _check_after_fault(self) -> None:
        """The first time the loop is back in control after the fault: what did it leave?"""
        if self.fault_seen and not self.fault_checked:
            self.fault_checked = True
            if self._after_fault is not None:
                self._after_fault()

    def kill_leader(self) -> None:
        """The leader's process is gone: its loop stops at its next turn (having done, against
        the database, what a dead process's connection does: rolled back, lock released)."""
        self.stop.set()

    def play(self, matchers: Sequence[ShardMatcher]) -> None:
        for matcher in matchers:
            self.matcher = matcher
            if self.stop.is_set():
                self.stop = _Stop(self._failed_round)
            matcher.run(self.stop, self)
            assert not matcher.leading
            if self.finished:
                return
            self._check_after_fault()  # the leader is gone; what it left, before the next one leads
        raise AssertionError("every matcher stopped before the stream was done")


@contextmanager
def announcements(database: Database, probe: Probe | None = None) -> Iterator[list[list[int]]]:
    """Record the process's outcome announcements, check that each names only committed
    commands (nobody hears of a batch that did not commit), and tell ``probe``."""
    outcomes = order_results()
    original = outcomes.announce
    heard: list[list[int]] = []

    def announce(order_ids: Any) -> None:
        ids = list(order_ids)
        heard.append(ids)
        with unit_of_work(database) as session:
            still = session.scalars(
                select(Order.id).where(Order.id.in_(ids), Order.status == OrderStatus.pending)
            ).all()
        assert not still, f"orders {still} were announced while still pending: their batch did not commit"
        if probe is not None:
            probe.on_announce()
        original(ids)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outcomes, "announce", announce)
        yield heard


def matcher_database(settings: Settings) -> Database:
    """A database of the matcher's own, as ``MatcherService`` builds it (so its engine is its alone)."""
    if settings.database.get_backend_name() == "postgresql":
        database = Database.direct(settings, name="matcher", pool_size=3)
        assert database is not None
        return database
    return Database.from_settings(settings, name="matcher", pool_size=2)


# -- What a run did, and what must hold --------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """A run's result without its ids, symbols or assets: comparable between two instruments."""

    orders: tuple[tuple[Any, ...], ...]
    trades: tuple[tuple[Any, ...], ...]
    refused: tuple[int, ...]
    balances: tuple[tuple[int, int, int, int], ...]
    instrument: tuple[int, int | None]


def outcome(database: Database, symbol: str, users: Sequence[uuid.UUID], played: Played) -> Outcome:
    base, quote = symbol.split("-")
    index = {order_id: i for i, order_id in enumerate(played.ids)}
    with unit_of_work(database) as session:
        rows = {order.id: order for order in session.scalars(select(Order).where(Order.instrument == symbol))}
        assert set(rows) == set(index), "the instrument holds orders the stream did not place"
        orders = tuple(
            (
                rows[order_id].status.value,
                rows[order_id].filled_quantity,
                rows[order_id].quote_spent,
                rows[order_id].sequence,
                rows[order_id].cancel_sequence,
                rows[order_id].cancel_reason,
                rows[order_id].reject_reason,
            )
            for order_id in played.ids
        )
        trades = tuple(
            (
                t.sequence,
                index[t.maker_order_id],
                index[t.taker_order_id],
                t.price,
                t.quantity,
                t.quote_amount,
                t.maker_fee,
                t.taker_fee,
                t.taker_side,
            )
            for t in session.scalars(select(Trade).where(Trade.instrument == symbol).order_by(Trade.sequence))
        )
        instrument = instruments.get_instrument(session, symbol)
        state = (instrument.sequence, instrument.last_price)
    balances = tuple(
        (
            balance(database, user, base),
            held(database, user, base),
            balance(database, user, quote),
            held(database, user, quote),
        )
        for user in users
    )
    return Outcome(orders, trades, tuple(played.refused), balances, state)


def state(database: Database, symbol: str) -> tuple[int, int]:
    """(the instrument's sequence, its trades): what a batch moves, all or nothing."""
    with unit_of_work(database) as session:
        sequence = instruments.get_instrument(session, symbol).sequence
        trades = session.scalar(select(func.count()).select_from(Trade).where(Trade.instrument == symbol))
    return sequence, int(trades or 0)


def check_invariants(database: Database, symbol: str, funded: tuple[int, int]) -> None:
    """After any crash: no fill lost or duplicated, holds consistent, money conserved, the ledger verifies."""
    base, quote = symbol.split("-")
    check_consistent(database, symbol)
    report = verify(database)
    assert report.ok, report
    # The accepted commands replayed into a fresh book give exactly the recorded trades, and
    # every sequence number up to the last command's was taken by a command in order.
    assert replay(database, symbol) == recorded(database, symbol)
    with unit_of_work(database) as session:
        instrument = instruments.get_instrument(session, symbol)
        trades = session.scalars(select(Trade).where(Trade.instrument == symbol).order_by(Trade.sequence)).all()
        sequences = [trade.sequence for trade in trades]
        assert len(set(sequences)) == len(sequences), "a fill was recorded twice"
        assert all(0 < sequence <= instrument.sequence for sequence in sequences)
        # Each fill has exactly one journal entry, and no entry of the instrument has no trade.
        entries = [
            entry.id
            for entry in session.scalars(select(JournalEntry).where(JournalEntry.kind == "trade"))
            if entry.meta.get("instrument") == symbol
        ]
        assert sorted(entries) == sorted(trade.entry_id for trade in trades)
        releases = Counter(
            entry.meta.get("hold_id")
            for entry in session.scalars(select(JournalEntry).where(JournalEntry.kind == "hold_release"))
        )
        for order in session.scalars(select(Order).where(Order.instrument == symbol)):
            mine = [trade for trade in trades if order.id in {trade.maker_order_id, trade.taker_order_id}]
            assert order.filled_quantity == sum(trade.quantity for trade in mine), order.id
            assert order.quote_spent == sum(trade.quote_amount for trade in mine), order.id
            hold = session.get(Hold, order.hold_id)
            assert hold is not None
            released = releases[str(hold.id)]
            if order.status in DONE_STATUSES:
                # Released exactly once if anything was left to release; nothing reserved any more.
                assert hold.captured + hold.released == hold.amount, order.id
                assert released == (1 if hold.released else 0), (order.id, released)
                assert hold.state is not HoldState.open, order.id
            else:
                assert hold.state is HoldState.open, order.id
                assert released == 0, order.id
    assert asset_total(database, base) == 0
    assert asset_total(database, quote) == 0
    assert (user_total(database, base), user_total(database, quote)) == funded
