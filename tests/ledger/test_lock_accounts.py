"""``lock_accounts``: every account a transaction will post to, created if missing, locked in one statement."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bourse.db import Database, unit_of_work
from bourse.ledger import service
from bourse.ledger.models import Account, AccountKind
from tests.support.auth import register_user
from tests.support.services import make_settings


def test_missing_accounts_are_created(database: Database) -> None:
    user_id, _ = register_user(database)
    keys = [
        (AccountKind.available, "EUR", user_id),
        (AccountKind.held, "EUR", user_id),
        (AccountKind.fees, "EUR", None),
    ]
    with unit_of_work(database) as session:
        service.lock_accounts(session, keys)
        service.lock_accounts(session, keys)  # all exist now: the one-statement path
    with unit_of_work(database) as session:
        kinds = set(session.scalars(select(Account.kind).where(Account.user_id == user_id, Account.asset == "EUR")))
    assert kinds == {AccountKind.available, AccountKind.held}


def test_the_accounts_stay_locked_until_the_transaction_ends(postgres_url: str) -> None:
    database = Database.from_settings(make_settings(postgres_url))
    try:
        user_id, _ = register_user(database)
        with unit_of_work(database) as session:
            mine = service.user_account(session, user_id, "USD")
            other = service.user_account(session, user_id, "BTC")
        url = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with unit_of_work(database) as session, psycopg.connect(url, autocommit=True) as probe:
            service.lock_accounts(session, [(AccountKind.available, "USD", user_id)])
            with pytest.raises(psycopg.errors.LockNotAvailable):
                probe.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE NOWAIT", (mine,))
            probe.execute("SELECT 1 FROM accounts WHERE id = %s FOR UPDATE NOWAIT", (other,))
    finally:
        database.dispose()
