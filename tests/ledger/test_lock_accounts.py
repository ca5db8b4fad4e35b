"""``lock_accounts``: every account a transaction will post to, created if missing, locked in one statement."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bourse.db import Database, unit_of_work
from bourse.ledger.accounts import account_balances, lock_accounts, owes_money, user_account
from bourse.ledger.models import Account, AccountKind
from tests.support.auth import register_user
from tests.support.ledger import fund
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
    clearing = (AccountKind.psp_clearing, "USD", "simulator")
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
        (AccountKind.psp_clearing, "simulator", None),
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
