"""``bourse ledger verify`` on a clean and a tampered ledger, and ``bourse assets``."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from bourse.db import Database, unit_of_work
from bourse.ledger.accounts import user_account
from bourse.ledger.holds import place_hold
from bourse.ledger.models import Posting
from bourse.ledger.posting import Context
from bourse.ledger.transfers import transfer
from tests.support.auth import register_user
from tests.support.ledger import fund
from tests.support.processes import clean_env, run_bourse
from tests.support.services import make_settings

pytestmark = pytest.mark.process


def _books(url: str) -> tuple[uuid.UUID, uuid.UUID]:
    """A small ledger: two users, funding, a transfer and a hold; returns (alice's account, a posting's entry)."""
    assert run_bourse("migrate", env=clean_env(BOURSE_DATABASE_URL=url)).returncode == 0
    database = Database.from_settings(make_settings(url))
    try:
        alice, _ = register_user(database)
        bob, _ = register_user(database)
        fund(database, alice, "USD", 10_000)
        with unit_of_work(database) as session:
            context = Context(actor="test", idempotency_key=f"t:{uuid.uuid4()}")
            entry = transfer(session, from_user=alice, to_user=bob, asset="USD", amount=1_234, context=context)
            place_hold(
                session,
                user_id=alice,
                asset="USD",
                amount=500,
                reference=None,
                context=Context(actor="test", idempotency_key=f"h:{uuid.uuid4()}"),
            )
            account = user_account(session, alice, "USD")
            posting_id = session.scalar(
                select(Posting.id).where(Posting.entry_id == entry.entry_id, Posting.account_id == account)
            )
        assert posting_id is not None
        return account, entry.entry_id
    finally:
        database.dispose()


def _verify(url: str, *args: str) -> tuple[int, str]:
    result = run_bourse("ledger", "verify", *args, env=clean_env(BOURSE_DATABASE_URL=url))
    return result.returncode, result.stdout + result.stderr


def test_verify_passes_then_fails_after_tampering_on_postgres(empty_postgres_url: str) -> None:
    account, entry = _books(empty_postgres_url)
    code, output = _verify(empty_postgres_url)
    assert code == 0, output
    assert "ledger verified" in output

    dsn = make_url(empty_postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A plain UPDATE is refused by the append-only trigger ...
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(
                "UPDATE postings SET amount = amount + 1 WHERE entry_id = %s AND account_id = %s", (entry, account)
            )
        # ... so the tamperer, a superuser, turns triggers off for the session.
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "UPDATE postings SET amount = amount + 1 WHERE entry_id = %s AND account_id = %s", (entry, account)
        )

    code, output = _verify(empty_postgres_url)
    assert code == 1
    assert f"account={account}" in output
    assert "chain_broken" in output
    assert "unbalanced_entry" in output
    assert f"entry={entry}" in output
    as_json = run_bourse("ledger", "verify", "--json", env=clean_env(BOURSE_DATABASE_URL=empty_postgres_url))
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["ok"] is False
    assert {d["check"] for d in report["discrepancies"]} >= {"chain_broken", "unbalanced_entry", "balance_mismatch"}


def test_verify_detects_a_rewritten_balance_and_hash_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "bourse.db"
    url = f"sqlite:///{path}"
    account, _ = _books(url)
    assert _verify(url)[0] == 0
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE accounts SET balance = balance + 100 WHERE id = ?", (account.hex,))
    code, output = _verify(url)
    assert code == 1
    assert f"balance_mismatch: account={account}" in output
    assert "balance=8366 postings_sum=8266" in output  # 100.00 - 12.34 - 5.00 held, plus 1.00


def test_verify_limits_what_it_prints(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bourse.db'}"
    _books(url)
    with sqlite3.connect(tmp_path / "bourse.db") as conn:
        conn.execute("UPDATE accounts SET balance = balance + 1")
    code, output = _verify(url, "--limit", "1")
    assert code == 1
    assert output.count("balance_mismatch") == 1
    assert "(first 1 shown)" in output


def test_assets_commands(tmp_path: Path) -> None:
    env = clean_env(BOURSE_DATABASE_URL=f"sqlite:///{tmp_path / 'bourse.db'}")
    assert run_bourse("migrate", env=env).returncode == 0
    listed = run_bourse("assets", "list", env=env)
    assert listed.returncode == 0
    assert "BTC" in listed.stdout
    assert "scale=8" in listed.stdout
    created = run_bourse("assets", "create", "--code", "USDT", "--scale", "6", "--name", "Tether", env=env)
    assert created.returncode == 0, created.stderr
    again = run_bourse("assets", "create", "--code", "USDT", "--scale", "6", "--name", "Tether", env=env)
    assert again.returncode == 2
    assert "asset_exists" in again.stderr
    bad = run_bourse("assets", "create", "--code", "usdt", "--scale", "6", "--name", "x", env=env)
    assert (bad.returncode, "invalid_asset" in bad.stderr) == (2, True)
    assert run_bourse("assets", "create", "--code", "X1", "--scale", "9", "--name", "x", env=env).returncode == 2
    assert run_bourse("assets", "deactivate", "USDT", env=env).stdout.strip() == "USDT scale=6 inactive"
    assert run_bourse("assets", "deactivate", "NOPE", env=env).returncode == 2
