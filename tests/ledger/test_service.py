"""The posting engine, holds and reversals, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from bourse.db import Database, unit_of_work
from bourse.ledger.accounts import system_account, user_account
from bourse.ledger.errors import (
    AssetMismatch,
    CaptureExceedsHold,
    EntryAlreadyReversed,
    EntryKeyConflict,
    EntryNotReversible,
    HoldAlreadyCaptured,
    HoldNotFound,
    HoldReleased,
    InsufficientFunds,
)
from bourse.ledger.holds import capture_hold, place_hold, release_hold
from bourse.ledger.models import AccountKind, HoldState, JournalEntry, Posting
from bourse.ledger.posting import Context, Leg, post_entry
from bourse.ledger.reversals import reverse_entry
from bourse.ledger.transfers import transfer
from tests.support.auth import register_user
from tests.support.ledger import balance, fund, verify


def ctx(key: str | None = None) -> Context:
    return Context(actor="test", idempotency_key=key or f"test:{uuid.uuid4()}", request_id="req-test")


@pytest.fixture
def alice(database: Database) -> uuid.UUID:
    user_id, _ = register_user(database)
    return user_id


@pytest.fixture
def bob(database: Database) -> uuid.UUID:
    user_id, _ = register_user(database)
    return user_id


def _counts(database: Database) -> tuple[int, int]:
    with unit_of_work(database) as session:
        entries = session.scalar(select(func.count()).select_from(JournalEntry)) or 0
        postings = session.scalar(select(func.count()).select_from(Posting)) or 0
    return entries, postings


def test_transfer_moves_money_and_records_a_balanced_entry(
    database: Database, alice: uuid.UUID, bob: uuid.UUID
) -> None:
    fund(database, alice, "USD", 10_000)
    with unit_of_work(database) as session:
        posted = transfer(session, from_user=alice, to_user=bob, asset="USD", amount=2_550, context=ctx())
    assert not posted.replayed
    assert balance(database, alice, "USD") == 7_450
    assert balance(database, bob, "USD") == 2_550
    with unit_of_work(database) as session:
        entry = session.get(JournalEntry, posted.entry_id)
        assert entry is not None
        assert (entry.kind, entry.actor, entry.request_id) == ("transfer", "test", "req-test")
        amounts = sorted(session.scalars(select(Posting.amount).where(Posting.entry_id == posted.entry_id)))
    assert amounts == [-2_550, 2_550]
    assert verify(database).ok


def test_insufficient_funds_writes_nothing(database: Database, alice: uuid.UUID, bob: uuid.UUID) -> None:
    fund(database, alice, "USD", 100)
    before = _counts(database)
    with pytest.raises(InsufficientFunds), unit_of_work(database) as session:
        transfer(session, from_user=alice, to_user=bob, asset="USD", amount=101, context=ctx())
    assert _counts(database) == before
    assert balance(database, alice, "USD") == 100
    # Without any account in that asset at all, it is the same refusal.
    with pytest.raises(InsufficientFunds), unit_of_work(database) as session:
        transfer(session, from_user=alice, to_user=bob, asset="BTC", amount=1, context=ctx())


def test_the_same_key_posts_once(database: Database, alice: uuid.UUID, bob: uuid.UUID) -> None:
    fund(database, alice, "USD", 1_000)
    key = f"k:{uuid.uuid4()}"
    results = []
    for _ in range(3):
        with unit_of_work(database) as session:
            results.append(transfer(session, from_user=alice, to_user=bob, asset="USD", amount=300, context=ctx(key)))
    assert [r.replayed for r in results] == [False, True, True]
    assert len({r.entry_id for r in results}) == 1
    assert balance(database, alice, "USD") == 700
    # The same key for a different movement is refused, not silently replayed.
    with pytest.raises(EntryKeyConflict), unit_of_work(database) as session:
        transfer(session, from_user=alice, to_user=bob, asset="USD", amount=301, context=ctx(key))


def test_unbalanced_and_malformed_entries_are_programming_errors(database: Database, alice: uuid.UUID) -> None:
    fund(database, alice, "USD", 1_000)
    with unit_of_work(database) as session:
        usd = user_account(session, alice, "USD")
        house = system_account(session, AccountKind.house, "USD")
        btc_house = system_account(session, AccountKind.house, "BTC")
    bad = [
        [Leg(usd, -10), Leg(house, 9)],  # does not sum to zero
        [Leg(usd, -10), Leg(btc_house, 10)],  # sums to zero, but across two assets
        [Leg(usd, -10)],  # one side only
        [Leg(usd, 0), Leg(house, 0)],  # zero postings
        [Leg(usd, -10), Leg(usd, 10)],  # the same account twice
    ]
    for legs in bad:
        with pytest.raises(ValueError), unit_of_work(database) as session:  # noqa: PT011 - each case has its own message
            post_entry(session, kind="test", legs=legs, idempotency_key=f"bad:{uuid.uuid4()}", actor="test")
    assert verify(database).ok


def test_system_accounts_may_go_negative_user_accounts_never(database: Database, alice: uuid.UUID) -> None:
    fund(database, alice, "EUR", 500)  # the house goes to -500
    with unit_of_work(database) as session:
        house = system_account(session, AccountKind.house, "EUR")
        usd = user_account(session, alice, "EUR")
        with pytest.raises(InsufficientFunds):
            post_entry(
                session,
                kind="test",
                legs=[Leg(usd, -501), Leg(house, 501)],
                idempotency_key=f"x:{uuid.uuid4()}",
                actor="t",
            )
    assert balance(database, alice, "EUR") == 500


def test_hold_capture_release_lifecycle(database: Database, alice: uuid.UUID, bob: uuid.UUID) -> None:
    fund(database, alice, "BTC", 1_000)
    with unit_of_work(database) as session:
        hold = place_hold(session, user_id=alice, asset="BTC", amount=600, reference="order:1", context=ctx())
        hold_id = hold.id
        destination = user_account(session, bob, "BTC")
    assert balance(database, alice, "BTC") == 400
    assert balance(database, alice, "BTC", AccountKind.held) == 600
    # Holds count against the available balance: 401 is more than is free.
    with pytest.raises(InsufficientFunds), unit_of_work(database) as session:
        place_hold(session, user_id=alice, asset="BTC", amount=401, reference=None, context=ctx())

    with unit_of_work(database) as session:
        hold = capture_hold(session, hold_id=hold_id, amount=250, destination=destination, context=ctx())
        assert (hold.state, hold.captured, hold.remaining) == (HoldState.open, 250, 350)
    with pytest.raises(CaptureExceedsHold), unit_of_work(database) as session:
        capture_hold(session, hold_id=hold_id, amount=351, destination=destination, context=ctx())
    with unit_of_work(database) as session:
        hold = release_hold(session, hold_id=hold_id, context=ctx())
        assert (hold.state, hold.released, hold.remaining) == (HoldState.released, 350, 0)
    with pytest.raises(HoldReleased), unit_of_work(database) as session:
        capture_hold(session, hold_id=hold_id, amount=1, destination=destination, context=ctx())
    with pytest.raises(HoldReleased), unit_of_work(database) as session:
        release_hold(session, hold_id=hold_id, context=ctx())
    assert balance(database, alice, "BTC") == 750
    assert balance(database, alice, "BTC", AccountKind.held) == 0
    assert balance(database, bob, "BTC") == 250
    assert verify(database).ok


def test_capturing_twice_is_refused(database: Database, alice: uuid.UUID, bob: uuid.UUID) -> None:
    fund(database, alice, "USD", 100)
    with unit_of_work(database) as session:
        hold_id = place_hold(session, user_id=alice, asset="USD", amount=100, reference=None, context=ctx()).id
        destination = user_account(session, bob, "USD")
        eur = user_account(session, bob, "EUR")
    with pytest.raises(AssetMismatch), unit_of_work(database) as session:
        capture_hold(session, hold_id=hold_id, amount=100, destination=eur, context=ctx())
    key = f"capture:{uuid.uuid4()}"
    with unit_of_work(database) as session:
        assert (
            capture_hold(session, hold_id=hold_id, amount=100, destination=destination, context=ctx(key)).state
            is HoldState.captured
        )
    # A retry with the same key is a replay, not a second capture ...
    with unit_of_work(database) as session:
        capture_hold(session, hold_id=hold_id, amount=100, destination=destination, context=ctx(key))
    # ... unless the key is reused for a different capture.
    with pytest.raises(EntryKeyConflict), unit_of_work(database) as session:
        capture_hold(session, hold_id=hold_id, amount=99, destination=destination, context=ctx(key))
    # A second capture under a new key is refused with its own code.
    with pytest.raises(HoldAlreadyCaptured), unit_of_work(database) as session:
        capture_hold(session, hold_id=hold_id, amount=1, destination=destination, context=ctx())
    with pytest.raises(HoldAlreadyCaptured), unit_of_work(database) as session:
        release_hold(session, hold_id=hold_id, context=ctx())
    assert balance(database, bob, "USD") == 100
    # Another user's hold does not exist for them.
    with pytest.raises(HoldNotFound), unit_of_work(database) as session:
        release_hold(session, hold_id=hold_id, context=ctx(), user_id=bob)
    assert verify(database).ok


def test_reversal_mirrors_the_entry_once(database: Database, alice: uuid.UUID, bob: uuid.UUID) -> None:
    fund(database, alice, "USD", 1_000)
    with unit_of_work(database) as session:
        original = transfer(session, from_user=alice, to_user=bob, asset="USD", amount=400, context=ctx()).entry_id
    with unit_of_work(database) as session:
        reversal = reverse_entry(session, entry_id=original, reason="sent in error", context=ctx())
    assert balance(database, alice, "USD") == 1_000
    assert balance(database, bob, "USD") == 0
    with unit_of_work(database) as session:
        entry = session.get(JournalEntry, reversal.entry_id)
        assert entry is not None
        assert entry.reverses_id == original
        assert entry.meta["reason"] == "sent in error"
    with pytest.raises(EntryAlreadyReversed), unit_of_work(database) as session:
        reverse_entry(session, entry_id=original, reason="again", context=ctx())
    with pytest.raises(EntryNotReversible), unit_of_work(database) as session:
        reverse_entry(session, entry_id=reversal.entry_id, reason="undo the undo", context=ctx())
    assert verify(database).ok


def test_a_reversal_that_would_overdraw_is_refused(database: Database, alice: uuid.UUID, bob: uuid.UUID) -> None:
    fund(database, alice, "USD", 1_000)
    with unit_of_work(database) as session:
        original = transfer(session, from_user=alice, to_user=bob, asset="USD", amount=400, context=ctx()).entry_id
        carol = register_user(session)[0]
        transfer(session, from_user=bob, to_user=carol, asset="USD", amount=400, context=ctx())
    with pytest.raises(InsufficientFunds), unit_of_work(database) as session:
        reverse_entry(session, entry_id=original, reason="too late", context=ctx())


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE postings SET amount = amount + 1",
        "DELETE FROM postings",
        "UPDATE journal_entries SET kind = 'x'",
        "DELETE FROM journal_entries",
    ],
)
def test_the_journal_is_append_only(database: Database, alice: uuid.UUID, statement: str) -> None:
    fund(database, alice, "USD", 1)
    with pytest.raises(DatabaseError, match="append-only"), database.engine.begin() as conn:
        conn.execute(text(statement))
    assert verify(database).ok


def test_concurrent_first_use_creates_one_account(database: Database, alice: uuid.UUID) -> None:
    with unit_of_work(database) as session:
        first = user_account(session, alice, "ETH")
    with unit_of_work(database) as session:
        assert user_account(session, alice, "ETH") == first
