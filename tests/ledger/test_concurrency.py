"""Races: double spends, capture against release, concurrent partial captures.

These run on both backends. PostgreSQL is where they matter: SQLite runs one
writer at a time, PostgreSQL runs these transactions truly in parallel and the
row locks are what keeps the books right.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bourse.db import Database, unit_of_work
from bourse.errors import BourseError
from bourse.ledger.accounts import user_account
from bourse.ledger.holds import capture_hold, place_hold, release_hold
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context
from bourse.ledger.transfers import transfer as ledger_transfer
from tests.support.auth import register_user
from tests.support.ledger import balance, fund, verify


def ctx() -> Context:
    return Context(actor="test", idempotency_key=f"race:{uuid.uuid4()}")


def race(count: int, attempt: Callable[[int], object]) -> Counter[str]:
    """Run ``attempt`` in ``count`` threads released at the same instant; tally the outcomes."""
    barrier = threading.Barrier(count)

    def run(i: int) -> str:
        barrier.wait()
        try:
            attempt(i)
        except BourseError as exc:
            return exc.code
        return "ok"

    with ThreadPoolExecutor(max_workers=count) as pool:
        return Counter(pool.map(run, range(count)))


def test_funds_race_exactly_fifty_of_a_hundred_succeed(database: Database) -> None:
    alice, _ = register_user(database)
    bob, _ = register_user(database)
    fund(database, alice, "USD", 50)

    def transfer(_: int) -> None:
        with unit_of_work(database) as session:
            ledger_transfer(session, from_user=alice, to_user=bob, asset="USD", amount=1, context=ctx())

    outcomes = race(100, transfer)
    assert outcomes == Counter({"ok": 50, "insufficient_funds": 50})
    assert balance(database, alice, "USD") == 0
    assert balance(database, bob, "USD") == 50
    report = verify(database)
    assert report.ok, [d.describe() for d in report.discrepancies]


def test_capture_against_release_exactly_one_wins(database: Database) -> None:
    alice, _ = register_user(database)
    bob, _ = register_user(database)
    fund(database, alice, "BTC", 10 * 100)
    with unit_of_work(database) as session:
        destination = user_account(session, bob, "BTC")
    for _ in range(10):
        with unit_of_work(database) as session:
            hold_id = place_hold(session, user_id=alice, asset="BTC", amount=100, reference=None, context=ctx()).id

        def settle(i: int, hold_id: uuid.UUID = hold_id) -> None:
            with unit_of_work(database) as session:
                if i == 0:
                    capture_hold(session, hold_id=hold_id, amount=100, destination=destination, context=ctx())
                else:
                    release_hold(session, hold_id=hold_id, context=ctx())

        outcomes = race(2, settle)
        assert outcomes["ok"] == 1, outcomes
        assert set(outcomes) - {"ok"} <= {"hold_released", "hold_already_captured"}
    captured = balance(database, bob, "BTC")
    assert captured % 100 == 0
    assert balance(database, alice, "BTC") + captured == 1_000
    assert balance(database, alice, "BTC", AccountKind.held) == 0
    report = verify(database)
    assert report.ok, [d.describe() for d in report.discrepancies]


def test_concurrent_partial_captures_never_exceed_the_hold(database: Database) -> None:
    alice, _ = register_user(database)
    bob, _ = register_user(database)
    fund(database, alice, "ETH", 50)
    with unit_of_work(database) as session:
        hold_id = place_hold(session, user_id=alice, asset="ETH", amount=50, reference=None, context=ctx()).id
        destination = user_account(session, bob, "ETH")

    def capture(_: int) -> None:
        with unit_of_work(database) as session:
            capture_hold(session, hold_id=hold_id, amount=10, destination=destination, context=ctx())

    outcomes = race(12, capture)
    assert outcomes["ok"] == 5
    assert outcomes["ok"] + outcomes["hold_already_captured"] + outcomes["capture_exceeds_hold"] == 12
    assert balance(database, bob, "ETH") == 50
    assert balance(database, alice, "ETH", AccountKind.held) == 0
    report = verify(database)
    assert report.ok, [d.describe() for d in report.discrepancies]


def test_opposite_transfers_do_not_deadlock(database: Database) -> None:
    """A->B and B->A at once lock the same two rows; the fixed order prevents a deadlock."""
    alice, _ = register_user(database)
    bob, _ = register_user(database)
    fund(database, alice, "USD", 1_000)
    fund(database, bob, "USD", 1_000)

    def transfer(i: int) -> None:
        source, target = (alice, bob) if i % 2 else (bob, alice)
        with unit_of_work(database) as session:
            ledger_transfer(session, from_user=source, to_user=target, asset="USD", amount=7, context=ctx())

    outcomes = race(40, transfer)
    assert outcomes == Counter({"ok": 40})
    assert balance(database, alice, "USD") + balance(database, bob, "USD") == 2_000
    assert verify(database).ok
