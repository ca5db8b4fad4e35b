"""Crash injection at every commit point of order entry and matching (issue 15).

What test_matcher.py, test_matcher_process.py and test_orders_contract.py already cover is
not repeated here: a leader that dies *between* batches (the new leader restores the book),
a stale leader fenced, a command that cannot settle isolated, a cancel marked before its
batch winning, a retry by Idempotency-Key while the order is pending, determinism without
crashes, and a leader process killed at a random moment of a stream. This module adds:

- a crash *inside* a batch at each point of it (before settlement, at each kind of write,
  at the middle and the last write, before the commit, after the commit, at the outcome's
  announcement, at ``on_batch``), with the same leader recovering through its own loop or
  a standby taking over; on PostgreSQL also the leader's connection killed at those
  points. The points are found in a clean run of the same commands, by the tables each
  statement writes (see tests/trading/crash_support.py), so they follow the batch's code
  as it changes;
- the API dying after its placement (and its cancel) committed, before it answered;
- a cancel that arrives while the batch that sequences its order holds it: it loses,
  deterministically, and the hold is released exactly once either way;
- ``bourse matcher`` killed with SIGKILL while it is inside a batch that has written, with
  many commands pending, and another taking over.

After each: every fill once (compared with a clean run of the same commands, and the
accepted commands replayed into a fresh book), each fill one journal entry, the book the
live leader holds equal to the one the database rebuilds, holds consistent and released
once, every asset conserved, and the ledger verified (in process after each test, and by
the real ``bourse ledger verify`` on each database at the end).

Two tests hold defects found here that lost nothing but were wrong, since fixed: a retry
of an order already carried out waited out the whole order wait, and a round failed on an
assertion after a lost connection instead of ending with the step-down.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event, func, select, text
from sqlalchemy.orm import Session

from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.ledger.models import Hold
from bourse.migrations import upgrade
from bourse.settings import Settings
from bourse.trading.errors import OrderNotOpen
from bourse.trading.matcher import LOCK_CLASS, ShardMatcher
from bourse.trading.models import Order, OrderStatus, Trade
from tests.support.auth import TestUser, bearer, make_user
from tests.support.ledger import fund
from tests.support.services import (
    POSTGRES_ADMIN_URL,
    create_postgres_database,
    drop_postgres_database,
    make_settings,
    verify_books_after_suite,
)
from tests.support.waiting import wait_until
from tests.trading.crash_support import (
    FUNDS_BASE,
    FUNDS_QUOTE,
    Crash,
    Outcome,
    Played,
    Probe,
    Rounds,
    Statement,
    announcements,
    check_invariants,
    feed,
    fund_all,
    matcher_database,
    outcome,
    pending,
    state,
    stream,
    terminate_backend,
    touches_ledger,
)
from tests.trading.orders_support import market, new_user
from tests.trading.test_matcher import accept, reload, request_cancel
from tests.trading.test_matcher_process import _matcher, _pending

USERS = 4
ROUNDS = 3  # the fault points lie in the first rounds; the last always runs after the fault
BATCH = 3  # commands per batch: a round is several batches, most of them with fills


def _matcher_of(database: Database, probe: Probe | None = None) -> ShardMatcher:
    return ShardMatcher(
        database,
        batch_size=BATCH,
        poll_interval=0.01,
        linger=0,
        on_batch=None if probe is None else probe.on_batch,
    )


# -- A database per backend, with the control run of the stream -----------------------------


@dataclass
class World:
    """A fresh database, four users, and what the stream does there without any fault."""

    url: str
    settings: Settings
    database: Database
    users: list[uuid.UUID]
    control: Probe  # the clean run's transactions and statements: where the faults strike
    expected: Outcome
    funded: tuple[int, int]


def _world(url: str) -> Iterator[World]:
    settings = make_settings(url)
    database = Database.from_settings(settings)
    try:
        users = [new_user(database) for _ in range(USERS)]
        symbol, base, quote = market(database)
        fund_all(database, users, base, quote)
        funded = (FUNDS_BASE * USERS, FUNDS_QUOTE * USERS)
        own = matcher_database(settings)
        control = Probe(own.engine, observe=lambda: state(database, symbol))
        matcher = _matcher_of(own, control)
        rounds = Rounds(database, symbol, users, stream(ROUNDS))
        try:
            with control.attached(), announcements(database, control):
                rounds.play([matcher])
        finally:
            matcher.close()
            own.dispose()
        expected = outcome(database, symbol, users, rounds.played)
        check_invariants(database, symbol, funded)
        _the_stream_proves_something(expected, control)
        yield World(url, settings, database, users, control, expected, funded)
    finally:
        database.dispose()


def _the_stream_proves_something(expected: Outcome, control: Probe) -> None:
    reasons = {order[5] for order in expected.orders}
    assert len(expected.trades) >= 20, "the stream hardly trades"
    assert {"user", "self_trade"} <= reasons, reasons
    # A cancel that won (the order never sequenced) and one carried out on the book.
    assert any(order[0] == "cancelled" and order[3] is None for order in expected.orders)
    assert any(order[4] is not None for order in expected.orders)
    # Most batches have fills (a batch of cancels alone has none).
    batches = [tx for tx in control.transactions if tx.committed and any(s.writes for s in tx.statements)]
    assert len(control.settling()) * 3 >= len(batches) * 2, (len(control.settling()), len(batches))


@pytest.fixture(scope="module")
def sqlite_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    url = f"sqlite:///{tmp_path_factory.mktemp('crashes') / 'bourse.db'}"
    upgrade(make_settings(url))
    yield from _world(url)
    verify_books_after_suite(url)  # the real `bourse ledger verify`, after every test here


@pytest.fixture(scope="module")
def postgres_world() -> Iterator[World]:
    url = create_postgres_database("bourse_crashes")
    try:
        upgrade(make_settings(url))
        yield from _world(url)
        verify_books_after_suite(url)
    finally:
        drop_postgres_database(url)


@pytest.fixture(params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest) -> World:
    found: World = request.getfixturevalue(f"{request.param}_world")
    return found


# -- Crashes inside a batch -----------------------------------------------------------------------


def _crash_run(
    world: World,
    where: str,
    batch: Literal["first", "middle", "quiet"],
    action: Literal["raise", "kill"],
    recovery: Literal["retry", "standby"],
) -> None:
    """Play the stream on a new instrument with one fault at ``where``; the leader recovers
    through its own loop (``retry``) or dies and a standby takes over (``standby``)."""
    point = world.control.point_at(where, batch)
    database = world.database
    symbol, base, quote = market(database)
    fund_all(database, world.users, base, quote)
    own, spare = matcher_database(world.settings), matcher_database(world.settings)
    standby = _matcher_of(spare)

    def after_fault() -> None:
        # The first moment the loop is back in control: the batch left all or nothing.
        assert state(database, symbol) == world.control.expected_state(point), f"{where}: a batch half-committed"
        check_invariants(database, symbol, world.funded)

    rounds = Rounds(database, symbol, world.users, stream(ROUNDS), after_fault=after_fault)

    def strike(probe: Probe) -> None:
        rounds.fault_seen = True
        if recovery == "standby":
            assert not standby.lead(), "a standby led while the leader held the shard"
            rounds.kill_leader()
        if action == "kill":
            assert probe.backend_pid is not None
            terminate_backend(probe.backend_pid)
            return  # the statement (or the commit) now meets a dead connection
        raise Crash(f"crash at {where} of transaction {point.tx}")

    probe = Probe(own.engine, point=point, strike=strike)
    leader = _matcher_of(own, probe)
    try:
        with probe.attached(), announcements(database, probe):
            assert leader.lead()
            assert not standby.lead()
            rounds.play([leader, standby] if recovery == "standby" else [leader])
    finally:
        leader.close()
        standby.close()
        own.dispose()
        spare.dispose()
    assert probe.fired == point, f"the fault at {where} never struck"
    assert rounds.fault_checked
    if recovery == "standby":
        assert rounds.leaders[-1] is standby, "the standby never took over"
    assert outcome(database, symbol, world.users, rounds.played) == world.expected
    check_invariants(database, symbol, world.funded)


IN_BATCH = [
    ("before-settlement", "first"),
    ("before-settlement", "middle"),
    ("write:orders", "middle"),
    ("write:postings", "first"),
    ("write:postings", "middle"),
    ("write:holds", "middle"),
    ("write:trades", "middle"),
    ("write@mid", "middle"),
    ("write@last", "middle"),
    ("write:holds", "quiet"),
    ("commit", "first"),
    ("commit", "middle"),
    ("commit", "quiet"),
    ("after-commit", "middle"),
    ("announce", "middle"),
    ("on-batch", "middle"),
]


@pytest.mark.parametrize("recovery", ["retry", "standby"])
@pytest.mark.parametrize(("where", "batch"), IN_BATCH)
def test_a_crash_at_any_point_of_a_batch_loses_and_duplicates_nothing(
    world: World, where: str, batch: Literal["first", "middle", "quiet"], recovery: Literal["retry", "standby"]
) -> None:
    _crash_run(world, where, batch, "raise", recovery)


CONNECTION_LOST = [
    ("before-settlement", "middle"),
    ("write:postings", "middle"),
    ("write@last", "middle"),
    ("commit", "middle"),
    ("after-commit", "middle"),
]


@pytest.mark.parametrize("recovery", ["retry", "standby"])
@pytest.mark.parametrize(("where", "batch"), CONNECTION_LOST)
def test_a_leader_whose_connection_dies_in_a_batch_loses_and_duplicates_nothing(
    postgres_world: World, where: str, batch: Literal["first", "middle", "quiet"], recovery: Literal["retry", "standby"]
) -> None:
    _crash_run(postgres_world, where, batch, "kill", recovery)


def test_a_connection_lost_with_two_instruments_pending_ends_the_round_with_the_step_down(
    postgres_world: World,
) -> None:
    database = postgres_world.database
    seller = postgres_world.users[0]
    symbols = []
    for _ in range(2):
        symbol, base, quote = market(database)
        fund_all(database, postgres_world.users, base, quote)
        accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.10")
        symbols.append(symbol)
    own = matcher_database(postgres_world.settings)
    matcher = ShardMatcher(own)
    killed: list[int] = []

    def kill(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not killed and touches_ledger(statement):
            killed.append(cursor.connection.info.backend_pid)
            terminate_backend(killed[0])

    event.listen(own.engine, "before_cursor_execute", kill)
    try:
        try:
            settled = matcher.step()
        finally:
            event.remove(own.engine, "before_cursor_execute", kill)
        assert killed, "the connection was never killed"
        assert (settled, matcher.leading) == (0, False)
        assert matcher.drain() == 2
    finally:
        matcher.close()
        own.dispose()
    for symbol in symbols:
        check_invariants(database, symbol, postgres_world.funded)


# -- The API dying after its transaction committed ------------------------------------------------


class CrashAfterCommit:
    """Once armed: the next transaction on ``engine`` that writes ``table`` commits, then the
    request dies before it can answer (an exception from SQLAlchemy's ``after_commit``)."""

    def __init__(self, engine: Engine, table: str) -> None:
        self.engine = engine
        self.table = table
        self.fired = 0
        self._local = threading.local()
        self._tables = frozenset({table})

    def _begin(self, _connection: Any) -> None:
        self._local.wrote = False

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if self.table in Statement.of(statement, self._tables).writes:
            self._local.wrote = True

    def _after_commit(self, session: Session) -> None:
        bind = session.bind
        if getattr(bind, "engine", bind) is self.engine and getattr(self._local, "wrote", False) and not self.fired:
            self.fired += 1
            raise Crash(f"the API died after committing a write to {self.table}")

    def __enter__(self) -> CrashAfterCommit:
        event.listen(self.engine, "begin", self._begin)
        event.listen(self.engine, "before_cursor_execute", self._statement)
        event.listen(Session, "after_commit", self._after_commit)
        return self

    def __exit__(self, *_: object) -> None:
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(Session, "after_commit", self._after_commit)


def _post(client: TestClient, settings: Settings, user: TestUser, key: str, **body: Any) -> Any:
    return client.post("/api/v1/orders", json=body, headers={**bearer(settings, user), "Idempotency-Key": key})


def _count(database: Database, model: type[Order] | type[Hold] | type[Trade], *where: Any) -> int:
    with unit_of_work(database) as session:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_an_api_that_dies_after_placing_or_cancelling_loses_and_duplicates_nothing(world: World) -> None:
    database = world.database
    # A short wait: a retry of an order already carried out waits it out (see the next test).
    settings = make_settings(world.url, order_wait_ms=3_000)
    symbol, base, quote = market(database)
    seller, buyer = make_user(database), make_user(database)
    fund(database, seller.id, base, FUNDS_BASE)
    fund(database, buyer.id, quote, FUNDS_QUOTE)
    with TestClient(create_app(settings, database=database), raise_server_exceptions=False) as client:
        ask = _post(client, settings, seller, uuid.uuid4().hex, instrument=symbol, side="sell", type="limit",
                    price="100.00", quantity="0.05")  # fmt: skip
        assert (ask.status_code, ask.json()["status"]) == (201, "open"), ask.text
        key = uuid.uuid4().hex
        bid = {"instrument": symbol, "side": "buy", "type": "limit", "price": "101.00", "quantity": "0.02"}
        with CrashAfterCommit(database.engine, "orders") as crash:
            lost = _post(client, settings, buyer, key, **bid)
        assert crash.fired == 1
        assert lost.status_code == 500, lost.text
        # The order and its hold committed, though the client heard nothing.
        assert _count(database, Order, Order.user_id == buyer.id) == 1
        assert _count(database, Hold, Hold.user_id == buyer.id) == 1
        # The client retries with the same key: the same order, matched once; nothing more held.
        again = _post(client, settings, buyer, key, **bid)
        assert again.status_code in {201, 202}, again.text
        assert again.headers["Idempotent-Replayed"] == "true"
        order_id = again.json()["id"]
        wait_until(lambda: reload(database, order_id).status is OrderStatus.filled, "the order to be matched")
        assert len(client.get(f"/api/v1/orders/{order_id}", headers=bearer(settings, buyer)).json()["fills"]) == 1
        assert _count(database, Order, Order.user_id == buyer.id) == 1
        assert _count(database, Hold, Hold.user_id == buyer.id) == 1
        assert _count(database, Trade, Trade.instrument == symbol) == 1
        assert reload(database, ask.json()["id"]).filled_quantity == 2_000_000

        # The same for a cancel: it committed, the API died; the retry finds it done or doing.
        rest = _post(client, settings, buyer, uuid.uuid4().hex, instrument=symbol, side="buy", type="limit",
                     price="90.00", quantity="0.01")  # fmt: skip
        assert (rest.status_code, rest.json()["status"]) == (201, "open"), rest.text
        headers = bearer(settings, buyer)
        with CrashAfterCommit(database.engine, "orders") as crash:
            lost_cancel = client.delete(f"/api/v1/orders/{rest.json()['id']}", headers=headers)
        assert crash.fired == 1
        assert lost_cancel.status_code == 500, lost_cancel.text
        retried = client.delete(f"/api/v1/orders/{rest.json()['id']}", headers=headers)
        if retried.status_code == 409:  # the matcher had carried the cancel out already
            assert retried.json()["error"] == "order_not_open"
        else:  # the same cancel, asked again: carried out once
            assert retried.status_code in {200, 202}, retried.text
            assert retried.json()["id"] == rest.json()["id"]
        wait_until(lambda: reload(database, rest.json()["id"]).status is OrderStatus.cancelled, "the cancel")
    check_invariants(database, symbol, (FUNDS_BASE, FUNDS_QUOTE))


def test_a_retry_of_an_order_already_carried_out_is_answered_without_waiting(postgres_world: World) -> None:
    database = postgres_world.database
    settings = make_settings(postgres_world.url, order_wait_ms=5_000)
    symbol, _base, quote = market(database)
    buyer = make_user(database)
    fund(database, buyer.id, quote, FUNDS_QUOTE)
    body = {"instrument": symbol, "side": "buy", "type": "limit", "price": "90.00", "quantity": "0.01"}
    key = uuid.uuid4().hex
    with TestClient(create_app(settings, database=database), raise_server_exceptions=False) as client:
        first = _post(client, settings, buyer, key, **body)
        assert (first.status_code, first.json()["status"]) == (201, "open"), first.text
        started = time.monotonic()
        again = _post(client, settings, buyer, key, **body)
        took = time.monotonic() - started
    assert (again.status_code, again.json()["id"]) == (201, first.json()["id"]), again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert took < 2.5, f"the retry waited {took:.1f}s for an outcome that had come before it was sent"


# -- A cancel racing the batch that sequences its order -------------------------------------------


def _cancel_during_a_batch(
    matcher: ShardMatcher, engine: Engine, database: Database, user: uuid.UUID, order_ids: list[int]
) -> tuple[int, dict[int, str]]:
    """Run one round of ``matcher`` and, while its batch holds its commands (read, locked and
    matched, not yet settled), ask for the cancel of each of ``order_ids``. Returns what the
    round settled and how each cancel was answered."""
    paused, resume = threading.Event(), threading.Event()
    settled: list[int] = []
    answers: dict[int, str] = {}

    def pause(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if not paused.is_set() and touches_ledger(statement):
            paused.set()
            assert resume.wait(30)

    def cancel(order_id: int) -> None:
        try:
            request_cancel(database, user, order_id)
            answers[order_id] = "marked"
        except OrderNotOpen:
            answers[order_id] = "not_open"

    event.listen(engine, "before_cursor_execute", pause)
    try:
        batch = threading.Thread(target=lambda: settled.append(matcher.step()))
        batch.start()
        assert paused.wait(30), "the batch never reached settlement"
        cancels = [threading.Thread(target=cancel, args=(order_id,)) for order_id in order_ids]
        for thread in cancels:
            thread.start()
        for thread in cancels:
            thread.join(0.5)
        # No cancel gets past the batch that holds its order (a row lock on PostgreSQL, the
        # write lock on SQLite): it waits for the batch, and meets the order as it settled.
        assert all(thread.is_alive() for thread in cancels), "a cancel got past the batch holding its order"
        resume.set()
        for thread in (batch, *cancels):
            thread.join(60)
            assert not thread.is_alive()
    finally:
        resume.set()
        event.remove(engine, "before_cursor_execute", pause)
    [count] = settled
    return count, answers


def test_a_cancel_arriving_while_its_batch_holds_the_order_loses_and_releases_the_hold_once(world: World) -> None:
    database = world.database
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, FUNDS_BASE)
    fund(database, buyer, quote, FUNDS_QUOTE)
    own = matcher_database(world.settings)
    matcher = ShardMatcher(own, poll_interval=0.01)
    try:
        ask = accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.03")
        assert matcher.drain() == 1
        taken = accept(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.03")  # fills
        rests = accept(database, buyer, symbol, side="buy", price_text="99.00", quantity_text="0.01")  # rests
        early = accept(database, buyer, symbol, side="buy", price_text="98.00", quantity_text="0.01")
        request_cancel(database, buyer, early.id)  # marked before the batch reads it: the cancel wins
        settled, answers = _cancel_during_a_batch(matcher, own.engine, database, buyer, [taken.id, rests.id])
        assert settled == 3  # one batch: the three orders (the cancels that waited come after it)
        # Both cancels lost the race to the batch. The order it filled is done: order_not_open.
        assert answers == {taken.id: "not_open", rests.id: "marked"}
        # The order it rested is cancelled by the next batch, off the book.
        assert matcher.drain() == 1
        assert pending(database, symbol) == 0
    finally:
        matcher.close()
        own.dispose()
    done = {order.id: reload(database, order.id) for order in (ask, taken, rests, early)}
    assert (done[taken.id].status, done[ask.id].status) == (OrderStatus.filled, OrderStatus.filled)
    lost, won = done[rests.id], done[early.id]
    assert (lost.status, lost.cancel_reason) == (OrderStatus.cancelled, "user")
    assert lost.sequence is not None
    assert lost.cancel_sequence is not None
    assert lost.cancel_sequence > lost.sequence
    assert (won.status, won.cancel_reason, won.sequence, won.cancel_sequence) == (
        OrderStatus.cancelled,
        "user",
        None,
        None,
    )
    with unit_of_work(database) as session:
        for order in (lost, won):
            hold = session.get(Hold, order.hold_id)
            assert hold is not None
            assert (hold.captured, hold.released) == (0, hold.amount)  # given back whole
    # ... and once: check_invariants counts each hold's releases.
    check_invariants(database, symbol, (FUNDS_BASE, FUNDS_QUOTE))


# -- bourse matcher killed (SIGKILL) inside a batch ---------------------------------------------


def _leader_backend(database: Database) -> int | None:
    """The backend holding shard 0's leadership in THIS database (advisory locks are per
    database, and other databases of the cluster may have matchers of their own)."""
    with unit_of_work(database) as session:
        pid = session.scalar(
            text(
                "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
                " WHERE d.datname = current_database() AND l.locktype = 'advisory' AND l.granted"
                " AND l.classid = :class AND l.objid = 0"
            ),
            {"class": LOCK_CLASS},
        )
    return None if pid is None else int(pid)


def _in_batch(pid: int) -> str | None:
    """The xid of the transaction backend ``pid`` is inside if it has written (and is not
    committing); else None."""
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT backend_xid::text, state, query FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    if row is None or row[0] is None or row[1] not in {"active", "idle in transaction"}:
        return None
    if str(row[2]).lstrip().upper().startswith("COMMIT"):
        return None
    return str(row[0])


def _xact_status(xid: str) -> str:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pg_xact_status((((pg_current_xact_id()::text::bigint >> 32) << 32) | %s::bigint)::text::xid8)",
            (xid,),
        ).fetchone()
    assert row is not None
    return str(row[0])


PENDING_ROUNDS = 150  # rounds of the stream pending at once when the matcher process starts
PENDING_FUNDS = 30  # times the funds of a user of the in-process tests


@pytest.mark.process
def test_bourse_matcher_killed_inside_a_batch_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    url = create_postgres_database("bourse_crash_kill")
    try:
        upgrade(make_settings(url))
        database = Database.from_settings(make_settings(url))
        try:
            _kill_inside_a_batch(url, database, tmp_path)
        finally:
            database.dispose()
        verify_books_after_suite(url)
    finally:
        drop_postgres_database(url)


def _kill_inside_a_batch(url: str, database: Database, tmp_path: Path) -> None:
    users = [new_user(database) for _ in range(USERS)]
    funded = (FUNDS_BASE * USERS * PENDING_FUNDS, FUNDS_QUOTE * USERS * PENDING_FUNDS)
    # Many commands at once (over 2,000): the whole stream, one pending set, settled 200 a batch.
    commands = [step for steps in stream(PENDING_ROUNDS) for step in steps]

    def placed() -> tuple[str, Played]:
        symbol, base, quote = market(database)
        fund_all(database, users, base, quote, times=PENDING_FUNDS)
        played = Played()
        feed(database, symbol, users, commands, played)
        return symbol, played

    control, clean = placed()
    own = matcher_database(make_settings(url))
    matcher = ShardMatcher(own)
    try:
        assert matcher.drain() > 0
    finally:
        matcher.close()
        own.dispose()
    expected = outcome(database, control, users, clean)

    symbol, played = placed()
    waiting = _pending(database)
    first = _matcher(url, tmp_path, "first")
    second: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: _leader_backend(database) is not None, "the matcher to lead", timeout=60)
        # Let it commit a batch first, so that the next leader continues from a partial state.
        wait_until(lambda: state(database, symbol)[0] > 0, "a first batch to commit", timeout=60)
        xid, left = _kill_in_a_batch(first, database)
        assert 0 < left < waiting, "the leader was not killed in the middle of the pending commands"
        # What it had written in that batch was rolled back with its connection.
        wait_until(lambda: _xact_status(xid) == "aborted", "the killed batch to be rolled back", timeout=30)
        second = _matcher(url, tmp_path, "second")
        wait_until(lambda: _pending(database) == 0, "the next leader to settle everything", timeout=180)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=30) == 0
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    assert outcome(database, symbol, users, played) == expected
    check_invariants(database, symbol, funded)


def _kill_in_a_batch(process: subprocess.Popen[str], database: Database) -> tuple[str, int]:
    """SIGKILL the leading ``process`` while it is inside a batch that has written: stopped
    (SIGSTOP) first, so it cannot commit between the look and the kill. Returns the xid of
    that batch's transaction and how many commands were pending."""

    def inside() -> str | None:
        assert _pending(database), "the matcher settled everything before it was caught in a batch"
        pid = _leader_backend(database)
        if pid is None or _in_batch(pid) is None:
            return None
        process.send_signal(signal.SIGSTOP)
        xid = _in_batch(pid)
        if xid is None:
            process.send_signal(signal.SIGCONT)
        return xid

    xid = wait_until(inside, "the matcher to be inside a batch that has written", timeout=120, interval=0.005)
    assert xid is not None
    left = _pending(database)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    wait_until(lambda: _leader_backend(database) is None, "the dead leader's lock to go", timeout=60)
    return xid, left
