"""EntryBatch: many hold captures and releases planned in memory, written in a few statements.

What it writes must be exactly what capture_holds and release_hold would have
written one by one (``ledger verify`` cannot tell them apart), and every refusal
must come before anything is written.
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import func, select, update

from bourse.db import Database, unit_of_work
from bourse.errors import BourseError
from bourse.ledger.accounts import AccountKey
from bourse.ledger.batch import EntryBatch
from bourse.ledger.holds import place_hold
from bourse.ledger.models import Account, AccountKind, Hold, HoldState, JournalEntry, Posting
from bourse.ledger.posting import Context
from tests.support.auth import make_user
from tests.support.ledger import balance, fund, verify

AVAILABLE, HELD = AccountKind.available, AccountKind.held


def _hold(database: Database, user_id: uuid.UUID, asset: str, amount: int) -> uuid.UUID:
    context = Context(actor="system", idempotency_key=f"test:{uuid.uuid4()}")
    with unit_of_work(database) as session:
        return place_hold(session, user_id=user_id, asset=asset, amount=amount, reference=None, context=context).id


def _keys(*users: uuid.UUID) -> list[AccountKey]:
    return [(kind, asset, user) for user in users for kind in (AVAILABLE, HELD) for asset in ("USD", "BTC")]


def _fees(symbol: str) -> AccountKey:
    return (AccountKind.fees, "USD", symbol)


def _entries_under(database: Database, prefix: str) -> int:
    with unit_of_work(database) as session:
        found = session.scalar(
            select(func.count()).select_from(JournalEntry).where(JournalEntry.idempotency_key.like(f"{prefix}%"))
        )
    return int(found or 0)


def test_many_captures_and_releases_on_the_same_accounts_chain_like_single_entries(database: Database) -> None:
    buyer, seller = make_user(database).id, make_user(database).id
    fund(database, buyer, "USD", 100_000)
    fund(database, seller, "BTC", 10_000)
    usd_holds = [_hold(database, buyer, "USD", 10_000) for _ in range(3)]
    btc_holds = [_hold(database, seller, "BTC", 2_000) for _ in range(3)]
    symbol, tag = f"T{uuid.uuid4().hex[:6].upper()}-USD", uuid.uuid4().hex
    with unit_of_work(database) as session:
        ledger = EntryBatch(session, actor="system:test")
        ids = ledger.lock_accounts([*_keys(buyer, seller), _fees(symbol)])
        ledger.lock_holds([*usd_holds, *btc_holds])
        # Six fills: every one posts to the same four user accounts and the fee account,
        # so each account's chain grows by several links inside one batch.
        for n in range(6):
            usd, btc = usd_holds[n % 3], btc_holds[n % 3]
            ledger.capture(
                captures=[
                    (btc, 500, ids[(AVAILABLE, "BTC", buyer)]),
                    (usd, 3_000, ids[(AVAILABLE, "USD", seller)]),
                    (usd, 7, ids[_fees(symbol)]),
                ],
                kind="trade",
                idempotency_key=f"{tag}:fill:{n}",
            )
        assert [ledger.remaining(hold) for hold in usd_holds] == [10_000 - 2 * 3_007] * 3
        assert [ledger.remaining(hold) for hold in btc_holds] == [1_000] * 3
        for n, hold in enumerate([*usd_holds, *btc_holds]):
            assert ledger.release(hold, idempotency_key=f"{tag}:release:{n}") is not None
            assert ledger.remaining(hold) == 0
            assert ledger.release(hold, idempotency_key=f"{tag}:again:{n}") is None  # nothing left
        assert ledger.entries == 12
        ledger.write()
        assert ledger.entries == 0
    assert _entries_under(database, tag) == 12
    assert balance(database, buyer, "BTC") == 6 * 500
    assert balance(database, buyer, "USD") == 100_000 - 6 * 3_007
    assert balance(database, buyer, "USD", HELD) == 0
    assert balance(database, seller, "USD") == 6 * 3_000
    assert balance(database, seller, "BTC") == 10_000 - 6 * 500
    assert balance(database, seller, "BTC", HELD) == 0
    with unit_of_work(database) as session:
        states = {hold.id: (hold.state, hold.captured, hold.released) for hold in session.scalars(select(Hold))}
        fee_balance, fee_seq = session.execute(
            select(Account.balance, Account.seq).where(Account.kind == AccountKind.fees, Account.ref == symbol)
        ).one()
        seqs = list(
            session.scalars(select(Posting.seq).where(Posting.account_id == ids[_fees(symbol)]).order_by(Posting.seq))
        )
    assert all(states[hold] == (HoldState.released, 6_014, 3_986) for hold in usd_holds)
    assert all(states[hold] == (HoldState.released, 1_000, 1_000) for hold in btc_holds)
    assert (fee_balance, fee_seq, seqs) == (42, 6, [1, 2, 3, 4, 5, 6])
    assert verify(database).ok


def test_a_capture_of_the_whole_hold_marks_it_captured(database: Database) -> None:
    buyer, seller = make_user(database).id, make_user(database).id
    fund(database, seller, "BTC", 1_000)
    hold = _hold(database, seller, "BTC", 1_000)
    with unit_of_work(database) as session:
        ledger = EntryBatch(session, actor="system:test")
        ids = ledger.lock_accounts(_keys(buyer, seller))
        ledger.lock_holds([hold])
        ledger.capture(
            captures=[(hold, 400, ids[(AVAILABLE, "BTC", buyer)]), (hold, 600, ids[(AVAILABLE, "BTC", buyer)])],
            kind="trade",
            idempotency_key=f"test:{uuid.uuid4()}",
        )
        assert ledger.remaining(hold) == 0
        assert ledger.release(hold, idempotency_key=f"test:{uuid.uuid4()}") is None
        ledger.write()
    with unit_of_work(database) as session:
        row = session.get_one(Hold, hold)
        assert (row.state, row.captured, row.released) == (HoldState.captured, 1_000, 0)
    assert balance(database, buyer, "BTC") == 1_000
    assert verify(database).ok


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("over_capture", "capture_exceeds_hold"),
        ("after_release", "hold_released"),
        ("after_full_capture", "hold_already_captured"),
        ("wrong_asset", "asset_mismatch"),
    ],
)
def test_a_refusal_comes_before_anything_is_written(database: Database, case: str, code: str) -> None:
    buyer, seller = make_user(database).id, make_user(database).id
    fund(database, seller, "BTC", 1_000)
    hold = _hold(database, seller, "BTC", 1_000)
    tag = f"test:{uuid.uuid4()}"
    with pytest.raises(BourseError) as refused, unit_of_work(database) as session:  # noqa: PT012
        ledger = EntryBatch(session, actor="system:test")
        ids = ledger.lock_accounts(_keys(buyer, seller))
        ledger.lock_holds([hold])
        to_buyer = ids[(AVAILABLE, "BTC", buyer)]
        if case == "after_release":
            ledger.release(hold, idempotency_key=f"{tag}:release")
        if case == "after_full_capture":
            ledger.capture(captures=[(hold, 1_000, to_buyer)], kind="trade", idempotency_key=f"{tag}:first")
        destination = ids[(AVAILABLE, "USD", buyer)] if case == "wrong_asset" else to_buyer
        amount = 1_001 if case == "over_capture" else 1
        ledger.capture(captures=[(hold, amount, destination)], kind="trade", idempotency_key=f"{tag}:refused")
    assert refused.value.code == code
    assert _entries_under(database, tag) == 0
    with unit_of_work(database) as session:
        row = session.get_one(Hold, hold)
        assert (row.state, row.captured, row.released) == (HoldState.open, 0, 0)
    assert balance(database, seller, "BTC", HELD) == 1_000
    assert verify(database).ok


def test_an_account_moved_under_the_batch_fails_the_write(database: Database) -> None:
    """The seq guard: a lost lock shows up as an error, never as a forked chain."""
    buyer, seller = make_user(database).id, make_user(database).id
    fund(database, seller, "BTC", 1_000)
    hold = _hold(database, seller, "BTC", 1_000)
    with pytest.raises(RuntimeError, match="planned"), unit_of_work(database) as session:  # noqa: PT012
        ledger = EntryBatch(session, actor="system:test")
        ids = ledger.lock_accounts(_keys(buyer, seller))
        ledger.lock_holds([hold])
        ledger.capture(
            captures=[(hold, 10, ids[(AVAILABLE, "BTC", buyer)])], kind="trade", idempotency_key=f"test:{uuid.uuid4()}"
        )
        # As if another writer had posted to the account without its lock.
        moved = ids[(HELD, "BTC", seller)]
        session.execute(update(Account).where(Account.id == moved).values(seq=Account.seq + 1))
        ledger.write()
    assert balance(database, seller, "BTC", HELD) == 1_000
    assert verify(database).ok


def test_accounts_and_holds_must_be_locked_by_the_batch(database: Database) -> None:
    buyer, seller = make_user(database).id, make_user(database).id
    fund(database, seller, "BTC", 1_000)
    hold = _hold(database, seller, "BTC", 1_000)
    with unit_of_work(database) as session:
        ledger = EntryBatch(session, actor="system:test")
        ledger.lock_accounts([(AVAILABLE, "BTC", buyer)])
        with pytest.raises(RuntimeError, match="locks its accounts once"):
            ledger.lock_accounts([(AVAILABLE, "BTC", seller)])
        with pytest.raises(RuntimeError, match="not locked"):
            ledger.account((AVAILABLE, "USD", buyer))
        with pytest.raises(RuntimeError, match="not locked"):
            ledger.remaining(hold)
        ledger.lock_holds([hold])
        with pytest.raises(BourseError) as refused:  # the hold's held account was not locked
            ledger.release(hold, idempotency_key=f"test:{uuid.uuid4()}")
        assert refused.value.code == "account_not_found"
        with pytest.raises(BourseError) as missing:
            ledger.lock_holds([uuid.uuid4()])
        assert missing.value.code == "hold_not_found"
        ledger.write()  # nothing planned: nothing written
    assert balance(database, seller, "BTC", HELD) == 1_000
