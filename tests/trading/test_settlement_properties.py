"""Random flows of orders and cancels through the service on PostgreSQL, and the same
from 8 threads at once: the ledger verifies, money is conserved, no hold goes
negative or falls short of what its order can still trade, and the cached book
equals a book rebuilt from the database."""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bourse.db import Database
from bourse.errors import BourseError
from tests.support.ledger import fund, verify
from tests.support.services import make_settings
from tests.trading.orders_support import cancel, check_consistent, market, new_user, place, user_total

FUNDED_BASE = 5 * 10**8
FUNDED_QUOTE = 500_000

command = st.one_of(
    st.tuples(
        st.just("limit"),
        st.integers(0, 3),
        st.sampled_from(["buy", "sell"]),
        st.integers(95, 105),
        st.integers(1, 400),
        st.sampled_from(["gtc", "gtc", "ioc", "fok"]),
        st.sampled_from(["cancel_newest", "cancel_oldest", "cancel_both", "none"]),
    ),
    st.tuples(st.just("market"), st.integers(0, 3), st.sampled_from(["buy", "sell"]), st.integers(1, 9_999)),
    st.tuples(st.just("cancel"), st.integers(0, 3), st.integers(0, 50)),
)


@pytest.fixture(scope="module")
def pg_database(postgres_url: str) -> Any:
    db = Database.from_settings(make_settings(postgres_url))
    yield db
    db.dispose()


def _run(database: Database, symbol: str, users: list[uuid.UUID], step: tuple[Any, ...], placed: list[Any]) -> None:
    try:
        if step[0] == "limit":
            _, who, side, price, lots, tif, stp = step
            order, _ = place(
                database,
                users[who],
                symbol,
                side=side,
                price_text=f"{price}.00",
                quantity_text=f"{lots / 1000:.3f}",
                tif=tif,
                stp=stp,
            )
            placed.append((users[who], order.id))
        elif step[0] == "market":
            _, who, side, amount = step
            if side == "buy":
                place(database, users[who], symbol, side="buy", kind="market", quote_budget_text=f"{amount / 100:.2f}")
            else:
                place(database, users[who], symbol, side="sell", kind="market", quantity_text=f"{amount / 10000:.3f}")
        elif placed:
            user, order_id = placed[step[2] % len(placed)]
            cancel(database, user, order_id)
    except BourseError as refused:
        assert refused.code in {  # noqa: PT017 - a refusal is an allowed outcome of a random step
            "insufficient_funds",
            "order_not_open",
            "amount_not_positive",
            "invalid_order",
        }


def _check(database: Database, symbol: str, base: str, quote: str, users: int) -> None:
    check_consistent(database, symbol)
    assert user_total(database, base) == users * FUNDED_BASE
    assert user_total(database, quote) == users * FUNDED_QUOTE
    report = verify(database)
    assert report.ok, report.discrepancies


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(command, min_size=1, max_size=25))
def test_random_flows_conserve_money_and_keep_the_book(pg_database: Database, steps: list[tuple[Any, ...]]) -> None:
    symbol, base, quote = market(pg_database)
    users = [new_user(pg_database) for _ in range(4)]
    for user in users:
        fund(pg_database, user, base, FUNDED_BASE)
        fund(pg_database, user, quote, FUNDED_QUOTE)
    placed: list[Any] = []
    for step in steps:
        _run(pg_database, symbol, users, step, placed)
    _check(pg_database, symbol, base, quote, len(users))


def test_eight_threads_trading_at_once_leave_everything_consistent(pg_database: Database) -> None:
    symbol, base, quote = market(pg_database)
    users = [new_user(pg_database) for _ in range(4)]
    for user in users:
        fund(pg_database, user, base, FUNDED_BASE)
        fund(pg_database, user, quote, FUNDED_QUOTE)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)  # noqa: S311 - reproducible test data
        placed: list[Any] = []
        try:
            for _ in range(25):
                kind = rng.choice(["limit", "limit", "limit", "market", "cancel"])
                who = rng.randrange(4)
                if kind == "limit":
                    step: tuple[Any, ...] = (
                        "limit",
                        who,
                        rng.choice(["buy", "sell"]),
                        rng.randint(97, 103),
                        rng.randint(1, 300),
                        rng.choice(["gtc", "gtc", "ioc"]),
                        "cancel_oldest",
                    )
                elif kind == "market":
                    step = ("market", who, rng.choice(["buy", "sell"]), rng.randint(100, 5_000))
                else:
                    step = ("cancel", who, rng.randrange(50))
                _run(pg_database, symbol, users, step, placed)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    _check(pg_database, symbol, base, quote, len(users))
