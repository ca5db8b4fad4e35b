"""Orders through a real ``bourse serve`` on PostgreSQL: the benchmark, concurrency, and a crash.

Each test gets a fresh database, funds its own traders directly in it, and
drives the real HTTP API from several clients at once (``OrderFlow``: limit
orders on both sides of a mid price that often cross, market orders, cancels).
Afterwards the database must tell one consistent story: the book rebuilt from
it is not crossed, holds cover what open orders can still trade, every fill is
in the ledger, and no unit of any asset was created or lost.

The tests share one database and one server (starting a server is the slow
part); they run in file order, each checking the state all of them left, and the
last one kills that server.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx2 as httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from bourse.bench.orders_http import (
    BASE_FUNDING_UNITS,
    QUOTE_FUNDING_UNITS,
    Traders,
    bench_orders_http,
    prepare_traders,
)
from bourse.db import Database, unit_of_work
from bourse.trading.models import Order, Trade
from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings
from tests.support.waiting import wait_until
from tests.trading.http_support import Clients, book_from_database, check_database, split

pytestmark = pytest.mark.process

SYMBOL = "BTC-USD"
THREADS = 8
CONCURRENT_ORDERS = 50  # accepted before the concurrency test stops its clients
CRASH_AFTER_ORDERS = 25  # accepted before the server is killed, with requests in flight
SERVER_WAIT_MS = 5000  # BOURSE_ORDER_WAIT_MS: how long an order or cancel waits for the matcher
CLIENT_TIMEOUT = 30.0  # seconds; a request the server has not answered by then is a failure


@dataclass
class _Stack:
    """A migrated database, a server on it, and what was funded in it so far."""

    url: str
    env: dict[str, str]
    server: subprocess.Popen[str]
    base_url: str
    funded: Counter[str] = field(default_factory=Counter)

    def database(self) -> Database:
        return Database.from_settings(make_settings(self.url))

    def add_traders(self, count: int) -> Traders:
        traders = prepare_traders(make_settings(self.url), count)
        for asset, amount in traders.funding.items():
            self.funded[asset] += amount * count
        return traders


@pytest.fixture(scope="module")
def stack() -> Iterator[_Stack]:
    url = create_postgres_database()
    try:
        # Orders wait for the matcher long enough for a loaded machine, and well below the
        # clients' timeout (CLIENT_TIMEOUT), so the server always answers first (201 or 202).
        env = clean_env(BOURSE_DATABASE_URL=url, BOURSE_LOG_LEVEL="warning", BOURSE_ORDER_WAIT_MS=str(SERVER_WAIT_MS))
        migrated = run_bourse("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        with _server(env) as (process, base_url):
            yield _Stack(url, env, process, base_url)
    finally:
        drop_postgres_database(url)


@contextmanager
def _server(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    process = start(["-m", "bourse", "serve", "--port", str(port)], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=90)
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def _check_database(stack: _Stack) -> None:
    """The book rebuilt from the database, the holds, every fill's settlement, and the assets' totals."""
    assert set(stack.funded) == {"USD", "BTC"}
    database = stack.database()
    try:
        check_database(database, [SYMBOL], stack.funded)
    finally:
        database.dispose()


def _clients(traders: Traders, url: str) -> Clients:
    """``THREADS`` threads, each with its own traders, stepping an OrderFlow until stopped."""
    return Clients(split(traders, THREADS), url, timeout=CLIENT_TIMEOUT)


def test_bench_orders_http_runs_and_leaves_sound_books(stack: _Stack) -> None:
    bench = run_bourse(
        "bench",
        "orders-http",
        "--url",
        stack.base_url,
        # Long enough for some of the crossing orders to meet even on a loaded machine:
        # each order now waits for the matcher's batch before the client sends the next.
        "--seconds",
        "5",
        "--concurrency",
        "2",
        "--traders",
        "8",
        "--json",
        env=stack.env,
        timeout=120,
    )
    assert bench.returncode == 0, bench.stderr
    stack.funded["USD"] += 8 * QUOTE_FUNDING_UNITS * 10**2
    stack.funded["BTC"] += 8 * BASE_FUNDING_UNITS * 10**8
    result = json.loads(bench.stdout)
    assert result["benchmark"] == "orders-http"
    assert result["database"] == "postgresql"
    assert result["errors"] == 0, result["error_samples"]
    assert result["orders"] > 0
    assert result["fills"] > 0
    assert result["orders_per_second"] > 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]
    # The only refusal the mix can meet: cancelling an order that filled meanwhile.
    assert set(result["refused"]) <= {"order_not_open"}, result["refused"]
    _check_database(stack)


@pytest.mark.parametrize(
    "args",
    [["--url", "ftp://x"], ["--rate", "0"], ["--concurrency", "0"], ["--concurrency", "4", "--traders", "2"]],
)
def test_bench_orders_http_refuses_bad_arguments(args: list[str]) -> None:
    result = CliRunner().invoke(bench_orders_http, args)
    assert result.exit_code == 2, result.output


def test_concurrent_orders_and_cancels_keep_book_and_ledger_consistent(stack: _Stack) -> None:
    traders = stack.add_traders(2 * THREADS)
    with _clients(traders, stack.base_url) as clients:
        clients.wait_for_traffic(accepted=CONCURRENT_ORDERS)
    assert clients.failures() == {}
    assert clients.count("limit", 201) > 0
    assert clients.count("market", 201) > 0
    assert clients.count("cancel", 200) > 0
    assert clients.fills > 0
    _check_database(stack)
    verified = run_bourse("ledger", "verify", env=stack.env, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _book_from_database(stack: _Stack) -> dict[str, list[list[str | int]]]:
    """The book rebuilt from the resting orders, as the book endpoint writes it."""
    database = stack.database()
    try:
        return book_from_database(database, SYMBOL)
    finally:
        database.dispose()


def _max_order_id(stack: _Stack) -> int:
    database = stack.database()
    try:
        with unit_of_work(database) as session:
            return int(session.scalar(select(func.max(Order.id))) or 0)
    finally:
        database.dispose()


def _trades_across_the_crash(database: Database, before_crash: int) -> int:
    """Trades in which an order placed after the crash took one that rested from before it."""
    with unit_of_work(database) as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Trade)
                .where(Trade.maker_order_id <= before_crash, Trade.taker_order_id > before_crash)
            )
            or 0
        )


def test_sigkilled_server_loses_and_duplicates_nothing(stack: _Stack) -> None:
    traders = stack.add_traders(2 * THREADS)
    database = stack.database()
    try:
        with _clients(traders, stack.base_url) as clients:
            clients.wait_for_traffic(accepted=CRASH_AFTER_ORDERS)
            stop(stack.server)  # SIGKILL, with requests in flight
            before_crash = _max_order_id(stack)
            accepted_before = clients.count(status=201)
            with _server(stack.env) as (_, url):
                clients.url = url

                def recovered() -> bool:
                    # The new server accepted orders and matched them against orders resting from before the crash.
                    accepted_since = clients.count(status=201) - accepted_before
                    return accepted_since > 0 and _trades_across_the_crash(database, before_crash) > 0

                wait_until(recovered, "the new server to trade against orders from before the crash", timeout=120)
                clients.stop()
                served = httpx.get(f"{url}/api/v1/instruments/{SYMBOL}/book", params={"depth": 200}).json()
    finally:
        database.dispose()
    assert before_crash > 0
    # No request had an error answer. Each thread sent nothing after its first unanswered request
    # (cut off by the kill, or sent to the dead server) until the new server was up, and the
    # kill cut some off.
    failures = clients.failures()
    assert all(status == 0 for (_, status, _) in failures), failures
    assert sum(failures.values()) <= THREADS, failures
    cut_off = sum(n for (_, _, error), n in failures.items() if error != "ConnectionRefusedError")
    assert cut_off > 0, failures
    _check_database(stack)
    assert {"bids": served["bids"], "asks": served["asks"]} == _book_from_database(stack)
