"""``lock_accounts``: every account a transaction will post to, created if missing, locked in one statement."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bourse.db import Database, unit_of_work
from bourse.ledger.accounts import account_balances, lock_accounts, lock_to_post, owes_money, user_account
from bourse.ledger.models import GENESIS_HASH, Account, AccountKind
from bourse.ledger.posting import Context, Leg, post_locked
from tests.support.auth import register_user
from tests.support.ledger import fund, verify
from tests.support.services import make_settings


def test_missing_accounts_are_created(database: Database) -> None:
    user_id, _ = register_user(database)
    keys = [
        (AccountKind.available, "EUR", user_id),
        (AccountKind.held, "EUR", user_id),
        (AccountKind.fees, "EUR", None),
    ]
    with unit_of_work(database) as session:
        lock_accounts(session, keys)
        lock_accounts(session, keys)  # all exist now: the one-statement path
    with unit_of_work(database) as session:
        kinds = set(session.scalars(select(Account.kind).where(Account.user_id == user_id, Account.asset == "EUR")))
    assert kinds == {AccountKind.available, AccountKind.held}


def test_balances_are_read_and_system_accounts_named_by_their_owner(database: Database) -> None:
    user_id, _ = register_user(database)
    fund(database, user_id, "USD", 1_234)
    wallet = (AccountKind.available, "USD", user_id)
    # A connector of its own: the shared database may hold the simulator's clearing already.
    connector = f"lock-test-{user_id.hex[:8]}"
    clearing = (AccountKind.psp_clearing, "USD", connector)
    debt = (AccountKind.chargeback_receivable, "USD", user_id)
    with unit_of_work(database) as session:
        available = user_account(session, user_id, "USD")
        assert set(account_balances(session, [wallet, clearing, debt])) == {wallet}
        locked = lock_accounts(session, [wallet, clearing, debt])
        assert set(locked) == {wallet, clearing, debt}
        assert (locked[wallet].id, locked[wallet].balance) == (available, 1_234)
        assert locked[clearing].balance == locked[debt].balance == 0
        assert not owes_money(session, user_id)
    with unit_of_work(database) as session:
        rows = session.execute(
            select(Account.kind, Account.ref, Account.user_id).where(
                Account.id.in_([locked[clearing].id, locked[debt].id])
            )
        ).all()
        assert account_balances(session, [wallet, clearing, debt]) == locked
    assert {tuple(row) for row in rows} == {
        (AccountKind.psp_clearing, connector, None),
        (AccountKind.chargeback_receivable, str(user_id), None),
    }


def test_a_user_account_needs_a_user_id(database: Database) -> None:
    with unit_of_work(database) as session, pytest.raises(ValueError, match="owned by a user id"):
        lock_accounts(session, [(AccountKind.available, "USD", "simulator")])


def test_the_accounts_stay_locked_until_the_transaction_ends(postgres_url: str) -> None:
    database = Database.from_settings(make_settings(postgres_url))
    try:
        user_id, _ = register_user(database)
        with unit_of_work(database) as session:
            mine = user_account(session, user_id, "USD")
            other = user_account(session, user_id, "BTC")
        url = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with unit_of_work(database) as session, psycopg.connect(url, autocommit=True) as probe:
            lock_accounts(session, [(AccountKind.available, "USD", user_id)])
            with pytest.raises(psycopg.errors.LockNotAvailable):
                probe.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE NOWAIT", (mine,))
            probe.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE NOWAIT", (other,))
    finally:
        database.dispose()


def test_lock_to_post_opens_the_required_accounts_and_locks_only_existing_others(database: Database) -> None:
    user_id, _ = register_user(database)
    connector = f"lock-to-post-{user_id.hex[:8]}"
    clearing = (AccountKind.psp_clearing, "ETH", connector)
    wallet = (AccountKind.available, "ETH", user_id)
    debt = (AccountKind.chargeback_receivable, "ETH", user_id)
    with unit_of_work(database) as session:
        locked = lock_to_post(session, [clearing, wallet, debt], required=2)
        # Opened, empty, at the start of their chains; the optional debt account is not opened.
        assert set(locked) == {clearing, wallet}
        assert [(row.balance, row.seq, row.last_hash) for row in locked.values()] == [(0, 0, GENESIS_HASH)] * 2
        assert [row.id for row in locked.values()] == sorted(row.id for row in locked.values())
        context = Context(actor="test", idempotency_key=f"lock-to-post:{uuid.uuid4()}")
        rows = sorted(locked.values(), key=lambda row: row.id)
        legs = [Leg(locked[clearing].id, -7_00), Leg(locked[wallet].id, 7_00)]
        post_locked(session, rows, legs, kind="deposit", context=context)
    with unit_of_work(database) as session:
        # All required exist now: one statement, read under the lock, and the chain moved on.
        again = lock_to_post(session, [clearing, wallet, debt], required=2)
        assert set(again) == {clearing, wallet}
        assert (again[wallet].balance, again[wallet].seq) == (7_00, 1)
        assert (again[clearing].balance, again[clearing].seq) == (-7_00, 1)
        assert again[wallet].last_hash != GENESIS_HASH
        # An optional account that exists is locked and read too.
        lock_accounts(session, [debt])
        assert set(lock_to_post(session, [clearing, wallet, debt], required=2)) == {clearing, wallet, debt}
    report = verify(database)
    assert report.ok, [d.describe() for d in report.discrepancies]


@pytest.mark.parametrize("required", [0, 3])
def test_lock_to_post_refuses_a_required_count_outside_its_keys(database: Database, required: int) -> None:
    user_id, _ = register_user(database)
    keys = [(AccountKind.available, "USD", user_id), (AccountKind.held, "USD", user_id)]
    with unit_of_work(database) as session, pytest.raises(ValueError, match="required"):
        lock_to_post(session, keys, required=required)
