"""The matcher on SQLite and PostgreSQL: orders accepted pending, sequenced, matched and
settled in batches by one leader per shard; cancels before and after sequencing; halts;
a command that cannot settle isolated; fencing of a stale leader; recovery by a new
leader; and determinism (the accepted command sequence replays to the recorded trades)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, select, text

from bourse.db import Database, unit_of_work
from bourse.ledger.holds import release_hold
from bourse.ledger.models import Hold, HoldState
from bourse.ledger.posting import Context, user_actor
from bourse.trading import instruments, orders
from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import Event, Fill
from bourse.trading.errors import OrderNotOpen
from bourse.trading.instruments import book_notional
from bourse.trading.matcher import LOCK_CLASS, Fenced, FileLeadership, ShardMatcher, rebuild_book
from bourse.trading.models import Order, OrderStatus, Trade
from bourse.trading.sequencing import _new_order
from tests.support.ledger import balance, fund, verify
from tests.support.waiting import wait_until
from tests.trading.orders_support import asset_total, fees, held, market, new_user


def accept(database: Database, user_id: uuid.UUID, symbol: str, **fields: Any) -> Order:
    terms: dict[str, Any] = {
        "side": "buy",
        "kind": "limit",
        "tif": None,
        "price_text": None,
        "quantity_text": None,
        **fields,
    }
    with unit_of_work(database) as session:
        context = Context(actor=user_actor(user_id), idempotency_key="unused")
        accepted = orders.accept_order(session, user_id=user_id, symbol=symbol, context=context, **terms)
        session.expunge_all()
    return accepted.order


def request_cancel(database: Database, user_id: uuid.UUID, order_id: int) -> None:
    with unit_of_work(database) as session:
        orders.request_cancel(session, user_id=user_id, order_id=order_id)


def reload(database: Database, order_id: int) -> Order:
    with unit_of_work(database) as session:
        order = session.get(Order, order_id)
        assert order is not None
        session.expunge_all()
    return order


@pytest.fixture
def matchers(database: Database) -> Iterator[list[ShardMatcher]]:
    """Matchers on the test's database, closed (their leadership given up) afterwards."""
    made: list[ShardMatcher] = []
    yield made
    for each in made:
        each.close()


@pytest.fixture
def matcher(database: Database, matchers: list[ShardMatcher]) -> ShardMatcher:
    made = ShardMatcher(database, poll_interval=0.05)
    matchers.append(made)
    return made


def book_matches_database(database: Database, matcher: ShardMatcher, symbol: str) -> None:
    """The leader's book is exactly the one the database's resting orders rebuild."""
    with unit_of_work(database) as session:
        instrument = instruments.get_instrument(session, symbol)
        rebuilt = rebuild_book(session, instrument)
    held_book = matcher._books.get(symbol)
    assert held_book is not None
    assert held_book.book.snapshot() == rebuilt.snapshot()
    assert held_book.book.sequence == instrument.sequence


def test_orders_wait_pending_then_settle_in_one_batch(database: Database, matcher: ShardMatcher) -> None:
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 100_000_000)
    fund(database, buyer, quote, 1_000_000)
    ask = accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.5")
    bid = accept(database, buyer, symbol, side="buy", price_text="101.00", quantity_text="0.3")
    # Accepted: funds held, nothing matched, no sequence yet.
    assert (ask.status, bid.status) == (OrderStatus.pending, OrderStatus.pending)
    assert (ask.sequence, bid.sequence) == (None, None)
    assert held(database, seller, base) == 50_000_000
    assert held(database, buyer, quote) == 3_037

    assert matcher.drain() == 2
    ask, bid = reload(database, ask.id), reload(database, bid.id)
    assert (ask.status, bid.status) == (OrderStatus.partially_filled, OrderStatus.filled)
    assert ask.sequence is not None
    assert bid.sequence is not None
    assert ask.sequence < bid.sequence
    with unit_of_work(database) as session:
        [trade] = session.scalars(select(Trade).where(Trade.instrument == symbol)).all()
        assert (trade.price, trade.quantity, trade.quote_amount) == (10_000, 30_000_000, 3_000)
        assert (trade.maker_order_id, trade.taker_order_id) == (ask.id, bid.id)
    # The same money as the worked example of the order service.
    assert balance(database, buyer, quote) == 1_000_000 - 3_006
    assert held(database, buyer, quote) == 0
    assert balance(database, seller, quote) == 2_997
    assert held(database, seller, base) == 20_000_000
    assert fees(database, quote) == 9
    assert asset_total(database, quote) == 0
    book_matches_database(database, matcher, symbol)
    assert verify(database).ok


def test_time_priority_is_the_accepted_sequence_not_the_order_id(database: Database, matcher: ShardMatcher) -> None:
    symbol, base, quote = market(database)
    first, second, buyer = new_user(database), new_user(database), new_user(database)
    for seller in (first, second):
        fund(database, seller, base, 100_000_000)
    fund(database, buyer, quote, 1_000_000)
    older_id = accept(database, first, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    newer_id = accept(database, second, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    # The later id reaches the matcher first (its transaction committed first, say).
    assert matcher.lead()
    assert matcher._settle(symbol, ids=[newer_id.id]) == 1
    assert matcher.drain() == 1
    accept(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    matcher.drain()
    assert reload(database, newer_id.id).status is OrderStatus.filled
    assert reload(database, older_id.id).status is OrderStatus.open
    book_matches_database(database, matcher, symbol)


def test_a_cancel_before_sequencing_wins_and_releases_the_hold_once(database: Database, matcher: ShardMatcher) -> None:
    symbol, _base, quote = market(database)
    buyer = new_user(database)
    fund(database, buyer, quote, 1_000_000)
    bid = accept(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    request_cancel(database, buyer, bid.id)
    request_cancel(database, buyer, bid.id)  # asking twice is asking once
    assert matcher.drain() == 1
    done = reload(database, bid.id)
    assert (done.status, done.cancel_reason, done.sequence) == (OrderStatus.cancelled, "user", None)
    assert held(database, buyer, quote) == 0
    assert balance(database, buyer, quote) == 1_000_000
    assert matcher.drain() == 0  # nothing left to do: the cancel is not a command any more
    with pytest.raises(OrderNotOpen):
        request_cancel(database, buyer, bid.id)
    assert verify(database).ok


def test_a_cancel_after_sequencing_takes_the_order_off_the_book(database: Database, matcher: ShardMatcher) -> None:
    symbol, _base, quote = market(database)
    buyer = new_user(database)
    fund(database, buyer, quote, 1_000_000)
    bid = accept(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    matcher.drain()
    assert reload(database, bid.id).status is OrderStatus.open
    request_cancel(database, buyer, bid.id)
    assert matcher.drain() == 1
    done = reload(database, bid.id)
    assert (done.status, done.cancel_reason) == (OrderStatus.cancelled, "user")
    assert done.cancel_sequence is not None
    assert done.sequence is not None
    assert done.cancel_sequence > done.sequence
    assert held(database, buyer, quote) == 0
    book_matches_database(database, matcher, symbol)
    assert verify(database).ok


def test_pending_orders_on_a_market_halted_after_acceptance_are_cancelled(
    database: Database, matcher: ShardMatcher
) -> None:
    symbol, base, _quote = market(database)
    seller = new_user(database)
    fund(database, seller, base, 100_000_000)
    ask = accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.5")
    with unit_of_work(database) as session:
        instruments.halt(session, symbol, "test", "ops")
    assert matcher.drain() == 1
    done = reload(database, ask.id)
    assert (done.status, done.cancel_reason) == (OrderStatus.cancelled, "market_halted")
    assert held(database, seller, base) == 0
    assert verify(database).ok


def test_a_command_that_cannot_settle_is_rejected_alone(database: Database, matcher: ShardMatcher) -> None:
    symbol, base, quote = market(database)
    seller, good, broken = new_user(database), new_user(database), new_user(database)
    fund(database, seller, base, 100_000_000)
    for buyer in (good, broken):
        fund(database, buyer, quote, 1_000_000)
    ask = accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.5")
    matcher.drain()
    first = accept(database, good, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    bad = accept(database, broken, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    last = accept(database, good, symbol, side="buy", price_text="100.00", quantity_text="0.1")
    # Behind the matcher's back, the bad order's hold is released: its fill cannot be captured.
    with unit_of_work(database) as session:
        release_hold(session, hold_id=bad.hold_id, context=Context(actor="test", idempotency_key=f"t:{uuid.uuid4()}"))
    assert matcher.drain() == 3
    assert reload(database, first.id).status is OrderStatus.filled
    assert reload(database, last.id).status is OrderStatus.filled
    rejected = reload(database, bad.id)
    assert (rejected.status, rejected.reject_reason) == (OrderStatus.rejected, "settlement_failed")
    assert reload(database, ask.id).filled_quantity == 20_000_000
    assert balance(database, broken, quote) == 1_000_000
    book_matches_database(database, matcher, symbol)
    assert verify(database).ok


def test_a_standby_does_not_lead_while_the_leader_holds_the_shard(
    database: Database, matchers: list[ShardMatcher]
) -> None:
    leader, standby = ShardMatcher(database), ShardMatcher(database)
    matchers.extend([leader, standby])
    assert leader.lead()
    assert not standby.lead()
    assert standby.step() == 0
    leader.close()
    assert standby.lead()


def test_a_new_leader_restores_the_book_and_continues(database: Database, matchers: list[ShardMatcher]) -> None:
    symbol, base, quote = market(database)
    sellers = [new_user(database) for _ in range(3)]
    buyer = new_user(database)
    for seller in sellers:
        fund(database, seller, base, 100_000_000)
    fund(database, buyer, quote, 10_000_000)
    old = ShardMatcher(database)
    matchers.append(old)
    asks = [
        accept(database, seller, symbol, side="sell", price_text=price, quantity_text="0.1")
        for seller, price in zip(sellers, ["101.00", "100.00", "100.00"], strict=True)
    ]
    old.drain()
    # The leader dies without a word: its connection goes, and with it the advisory lock
    # (PostgreSQL) or the file lock (SQLite; the operating system drops it with the process).
    assert old._connection is not None
    assert old._leadership is not None
    old._connection.invalidate()
    if isinstance(old._leadership, FileLeadership):
        old._leadership.release(old._connection)
    old._connection = None
    old._leadership = None
    new = ShardMatcher(database)
    matchers.append(new)
    wait_until(new.lead, "the standby to take the shard over")
    bid = accept(database, buyer, symbol, side="buy", price_text="101.00", quantity_text="0.25")
    assert new.drain() == 1
    # Price first, then the accepted sequence: asks[1] then asks[2] at 100, half of asks[0] at 101.
    assert [reload(database, ask.id).filled_quantity for ask in asks] == [5_000_000, 10_000_000, 10_000_000]
    assert reload(database, bid.id).status is OrderStatus.filled
    book_matches_database(database, new, symbol)
    assert verify(database).ok


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_stale_leader_cannot_write_after_another_took_over(database: Database, matchers: list[ShardMatcher]) -> None:
    symbol, base, _quote = market(database)
    seller = new_user(database)
    fund(database, seller, base, 100_000_000)
    stale, fresh = ShardMatcher(database), ShardMatcher(database)
    matchers.extend([stale, fresh])
    accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    assert stale.drain() == 1
    # The stale leader loses its lock without noticing (a paused process whose session the
    # server gave up on, say), and another takes over and moves the instrument on.
    assert stale._connection is not None
    stale._connection.execute(text("SELECT pg_advisory_unlock(:c, 0)"), {"c": LOCK_CLASS})
    stale._connection.commit()
    accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    assert fresh.drain() == 1
    late = accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.1")
    # The stale one wakes up: it finds the instrument moved without it, and writes nothing.
    with pytest.raises(Fenced):
        stale.step()
    assert not stale.leading
    assert reload(database, late.id).status is OrderStatus.pending
    assert fresh.drain() == 1
    book_matches_database(database, fresh, symbol)
    assert verify(database).ok


def replay(database: Database, symbol: str) -> list[tuple[int, int | None, int | None, int, int]]:
    """The instrument's accepted commands replayed into a fresh book: its fills as
    (sequence, maker sequence, taker sequence, price ticks, lots)."""
    with unit_of_work(database) as session:
        instrument = instruments.get_instrument(session, symbol)
        rows = session.scalars(select(Order).where(Order.instrument == symbol)).all()
        commands: list[tuple[int, Any]] = []
        for order in rows:
            if order.sequence is not None:
                commands.append((order.sequence, _new_order(instrument, order, order.sequence)))
            if order.cancel_sequence is not None:
                commands.append((order.cancel_sequence, order.sequence))
        book = Book(notional=book_notional(instrument))
        events: list[Event] = []
        for at, command in sorted(commands, key=lambda pair: pair[0]):
            assert book.sequence == at - 1  # every number was taken by a command the book ran
            events.extend(book.cancel(command) if isinstance(command, int) else book.place(command))
        return [
            (e.sequence, e.maker_id, e.taker_id, e.price * instrument.tick_size, e.quantity * instrument.lot_size)
            for e in events
            if isinstance(e, Fill)
        ]


def recorded(database: Database, symbol: str) -> list[tuple[int, int | None, int | None, int, int]]:
    with unit_of_work(database) as session:
        rows = session.execute(select(Order.id, Order.sequence).where(Order.instrument == symbol))
        sequence_of = {row[0]: row[1] for row in rows}
        return [
            (t.sequence, sequence_of[t.maker_order_id], sequence_of[t.taker_order_id], t.price, t.quantity)
            for t in session.scalars(select(Trade).where(Trade.instrument == symbol).order_by(Trade.sequence))
        ]


def test_replaying_the_accepted_commands_reproduces_the_recorded_trades(
    database: Database, matcher: ShardMatcher
) -> None:
    symbol, base, quote = market(database)
    users = [new_user(database) for _ in range(4)]
    for user in users:
        fund(database, user, base, 1_000_000_000)
        fund(database, user, quote, 100_000_000)
    rng = random.Random(1507)  # noqa: S311 - a reproducible test sequence, not a secret
    placed: list[tuple[uuid.UUID, int]] = []
    for round_ in range(6):
        for _ in range(rng.randint(3, 12)):
            user = rng.choice(users)
            side = rng.choice(["buy", "sell"])
            tif = rng.choice(["gtc", "gtc", "ioc", "fok"])
            price = f"{rng.randint(95, 105)}.00"
            order = accept(
                database,
                user,
                symbol,
                side=side,
                tif=tif,
                price_text=price,
                quantity_text="0.01" if round_ % 2 else "0.03",
            )
            placed.append((user, order.id))
        for user, order_id in rng.sample(placed, k=min(3, len(placed))):
            if reload(database, order_id).status in {
                OrderStatus.pending,
                OrderStatus.open,
                OrderStatus.partially_filled,
            }:
                request_cancel(database, user, order_id)
        # Batches of every size: the whole round at once, or a few commands at a time.
        matcher.batch_size = rng.choice([1, 3, 200])
        matcher.drain()
    assert recorded(database, symbol), "the random orders never traded: the test proves nothing"
    assert replay(database, symbol) == recorded(database, symbol)
    book_matches_database(database, matcher, symbol)
    with unit_of_work(database) as session:
        for order in session.scalars(select(Order).where(Order.instrument == symbol)):
            hold = session.get(Hold, order.hold_id)
            assert hold is not None
            if order.status.value in {"filled", "cancelled", "rejected"}:
                assert hold.state is not HoldState.open or hold.remaining == 0
    assert verify(database).ok


def _driver_in_transaction(matcher: ShardMatcher) -> bool:
    connection = matcher._connection
    assert connection is not None
    driver: Any = connection.connection.dbapi_connection
    if connection.dialect.name == "postgresql":
        return bool(driver.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)
    return bool(driver.in_transaction)


def test_a_batch_whose_commit_fails_on_its_way_is_rolled_back_and_settled_once(
    database: Database, matcher: ShardMatcher
) -> None:
    """A commit listener that raises before the COMMIT is sent: SQLAlchemy forgets the
    transaction, the driver does not; the leader rolls it back rather than commit it later."""
    symbol, base, quote = market(database)
    seller, buyer = new_user(database), new_user(database)
    fund(database, seller, base, 100_000_000)
    fund(database, buyer, quote, 1_000_000)
    ask = accept(database, seller, symbol, side="sell", price_text="100.00", quantity_text="0.5")
    bid = accept(database, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.5")
    armed = {"settling": False, "left": 1}

    def note_settlement(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if connection is matcher._connection and "journal_entries" in statement:
            armed["settling"] = True  # the batch's transaction, not a read of the shard's instruments

    def fail_once(connection: Any) -> None:
        if armed["left"] and armed["settling"] and connection is matcher._connection:
            armed["left"] -= 1
            raise RuntimeError("the commit failed on its way")

    event.listen(database.engine, "before_cursor_execute", note_settlement)
    event.listen(database.engine, "commit", fail_once)
    try:
        with pytest.raises(RuntimeError, match="on its way"):
            matcher.step()
    finally:
        event.remove(database.engine, "commit", fail_once)
        event.remove(database.engine, "before_cursor_execute", note_settlement)
    assert armed["left"] == 0
    assert not _driver_in_transaction(matcher)
    assert (reload(database, ask.id).status, reload(database, bid.id).status) == (
        OrderStatus.pending,
        OrderStatus.pending,
    )
    assert matcher.drain() == 2
    assert (reload(database, ask.id).status, reload(database, bid.id).status) == (
        OrderStatus.filled,
        OrderStatus.filled,
    )
    with unit_of_work(database) as session:
        assert len(session.scalars(select(Trade).where(Trade.instrument == symbol)).all()) == 1
    book_matches_database(database, matcher, symbol)
    assert verify(database).ok
