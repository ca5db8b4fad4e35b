"""capture_holds: several holds captured in one balanced entry, with capture_hold's refusals."""

from __future__ import annotations

import uuid

import pytest

from bourse.db import Database, unit_of_work
from bourse.errors import BourseError
from bourse.ledger.accounts import system_account, user_account
from bourse.ledger.holds import capture_holds, place_hold
from bourse.ledger.models import AccountKind, Hold, HoldState, JournalEntry
from bourse.ledger.posting import Context
from tests.support.auth import make_user
from tests.support.ledger import balance, fund, verify


def _context() -> Context:
    return Context(actor="system", idempotency_key=f"test:{uuid.uuid4()}")


def _hold(database: Database, user_id: uuid.UUID, asset: str, amount: int) -> uuid.UUID:
    with unit_of_work(database) as session:
        return place_hold(session, user_id=user_id, asset=asset, amount=amount, reference=None, context=_context()).id


def test_two_holds_settle_in_one_entry_and_replay(database: Database) -> None:
    alice, bob = make_user(database).id, make_user(database).id
    fund(database, alice, "USD", 10_000)
    fund(database, bob, "BTC", 1_000)
    usd_hold, btc_hold = _hold(database, alice, "USD", 5_000), _hold(database, bob, "BTC", 1_000)
    context = _context()
    with unit_of_work(database) as session:
        bob_usd = user_account(session, bob, "USD")
        alice_btc = user_account(session, alice, "BTC")
        fees = system_account(session, AccountKind.fees, "USD")
        captures = [(btc_hold, 400, alice_btc), (usd_hold, 2_000, bob_usd), (usd_hold, 10, fees)]
        posted = capture_holds(session, captures=captures, legs=[], kind="trade", context=context)
        assert not posted.replayed
        again = capture_holds(session, captures=captures, legs=[], kind="trade", context=context)
        assert again.replayed
        assert again.entry_id == posted.entry_id
        entries = session.query(JournalEntry).filter(JournalEntry.idempotency_key == context.idempotency_key).count()
        assert entries == 1
        usd, btc = session.get(Hold, usd_hold), session.get(Hold, btc_hold)
        assert usd is not None
        assert btc is not None
        assert (usd.captured, usd.state) == (2_010, HoldState.open)
        assert (btc.captured, btc.state) == (400, HoldState.open)
    assert balance(database, bob, "USD") == 2_000
    assert balance(database, alice, "BTC") == 400
    assert balance(database, alice, "USD", AccountKind.held) == 2_990
    with unit_of_work(database) as session:
        full = [(btc_hold, 600, alice_btc)]
        capture_holds(session, captures=full, legs=[], kind="trade", context=_context())
        btc = session.get(Hold, btc_hold)
        assert btc is not None
        assert btc.state is HoldState.captured
    assert verify(database).ok


def test_over_capture_is_refused_and_writes_nothing(database: Database) -> None:
    alice, bob = make_user(database).id, make_user(database).id
    fund(database, alice, "USD", 1_000)
    hold = _hold(database, alice, "USD", 500)
    with pytest.raises(BourseError) as caught, unit_of_work(database) as session:  # noqa: PT012
        bob_usd = user_account(session, bob, "USD")
        fees = system_account(session, AccountKind.fees, "USD")
        captures = [(hold, 400, bob_usd), (hold, 101, fees)]
        capture_holds(session, captures=captures, legs=[], kind="trade", context=_context())
    assert caught.value.code == "capture_exceeds_hold"
    assert balance(database, alice, "USD", AccountKind.held) == 500
    assert balance(database, bob, "USD") == 0
    with pytest.raises(BourseError) as mismatch, unit_of_work(database) as session:  # noqa: PT012
        btc = user_account(session, bob, "BTC")
        capture_holds(session, captures=[(hold, 1, btc)], legs=[], kind="trade", context=_context())
    assert mismatch.value.code == "asset_mismatch"
