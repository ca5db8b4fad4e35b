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
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx2 as httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import func, or_, select

from bourse.bench.orders_http import (
    BASE_FUNDING_UNITS,
    QUOTE_FUNDING_UNITS,
    OrderFlow,
    Traders,
    bench_orders_http,
    prepare_traders,
)
from bourse.db import Database, unit_of_work
from bourse.ledger.models import JournalEntry
from bourse.trading.book_cache import rebuild_book
from bourse.trading.instruments import format_price, format_quantity, get_instrument
from bourse.trading.models import OPEN_STATUSES, Order, OrderStatus, Trade
from tests.support.ledger import verify
from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings
from tests.support.waiting import wait_until
from tests.trading.orders_support import asset_total, check_consistent, user_total

pytestmark = pytest.mark.process

SYMBOL = "BTC-USD"
THREADS = 8
CONCURRENT_ORDERS = 50  # accepted before the concurrency test stops its clients
CRASH_AFTER_ORDERS = 25  # accepted before the server is killed, with requests in flight


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
        env = clean_env(BOURSE_DATABASE_URL=url, BOURSE_LOG_LEVEL="warning")
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


class _Clients:
    """``THREADS`` threads, each with its own traders, stepping an OrderFlow until stopped.

    A thread whose request got no answer (the server is down) sends nothing more until
    the test gives it another server's address, or stops it.
    """

    def __init__(self, traders: Traders, url: str) -> None:
        self._url = url
        self._halted = False
        self._changed = threading.Condition()  # guards the address and the halt
        self.outcomes: Counter[tuple[str, int, str | None]] = Counter()
        self.fills = 0
        self._guard = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(traders, i), daemon=True) for i in range(THREADS)]

    @property
    def url(self) -> str:
        with self._changed:
            return self._url

    @url.setter
    def url(self, url: str) -> None:
        """Send to the server at ``url`` from now on (a restarted server answers at a new address)."""
        with self._changed:
            self._url = url
            self._changed.notify_all()

    def _next_address(self, unanswered: str | None) -> str | None:
        """The address to send to, once it is not ``unanswered``; None once stopped."""
        with self._changed:
            self._changed.wait_for(lambda: self._halted or self._url != unanswered)
            return None if self._halted else self._url

    def _run(self, traders: Traders, index: int) -> None:
        share = {trader: traders.tokens[trader] for trader in traders.user_ids[index::THREADS]}
        flow = OrderFlow(self.url, traders.market, share, seed=index, timeout=10)
        unanswered: str | None = None
        while (url := self._next_address(unanswered)) is not None:
            flow.url = url
            outcome = flow.step()
            with self._guard:
                self.outcomes[outcome.action, outcome.status, outcome.error] += 1
                self.fills += outcome.fills
            unanswered = url if outcome.status == 0 else None
        flow.close()

    def __enter__(self) -> _Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the clients and wait until every request they sent is answered."""
        with self._changed:
            self._halted = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
            assert not thread.is_alive()

    def count(self, action: str | None = None, status: int | None = None) -> int:
        with self._guard:
            return sum(
                n
                for (act, code, _), n in self.outcomes.items()
                if (action is None or act == action) and (status is None or code == status)
            )

    def tally(self) -> dict[str, int]:
        """Accepted limit and market orders, cancels, all accepted orders, and fills, so far."""
        with self._guard:
            fills = self.fills
        return {
            "limit": self.count("limit", 201),
            "market": self.count("market", 201),
            "cancel": self.count("cancel", 200),
            "accepted": self.count(status=201),
            "fills": fills,
        }

    def wait_for_traffic(self, accepted: int) -> None:
        """Until ``accepted`` orders in all were accepted, and limits, markets, cancels and fills have happened."""
        last: dict[str, int] = {}

        def enough() -> bool:
            last.update(self.tally())
            return all(last.values()) and last["accepted"] >= accepted

        wait_until(enough, lambda: f"{accepted} accepted orders of every kind, and fills (so far {last})", timeout=120)

    def failures(self) -> dict[tuple[str, int, str | None], int]:
        """Outcomes that are neither a success nor a refusal with a code."""
        return {key: n for key, n in self.outcomes.items() if key[1] == 0 or key[1] >= 500}


def _check_database(stack: _Stack) -> None:
    """The book rebuilt from the database, the holds, every fill's settlement, and the assets' totals."""
    database = stack.database()
    try:
        with unit_of_work(database) as session:
            instrument = get_instrument(session, SYMBOL)
            book = rebuild_book(session, instrument)  # raises on a crossed or corrupt book
            bid, ask = book.best_bid(), book.best_ask()
            assert bid is None or ask is None or bid < ask, (bid, ask)
            orphans = session.scalar(
                select(func.count())
                .select_from(Trade)
                .outerjoin(JournalEntry, JournalEntry.id == Trade.entry_id)
                .where(JournalEntry.id.is_(None))
            )
            assert orphans == 0
            traded = {
                order_id: int(total)
                for order_id, total in session.execute(
                    select(Order.id, func.coalesce(func.sum(Trade.quantity), 0))
                    .outerjoin(Trade, or_(Trade.maker_order_id == Order.id, Trade.taker_order_id == Order.id))
                    .where(Order.instrument == SYMBOL)
                    .group_by(Order.id)
                )
            }
            for order in session.scalars(select(Order).where(Order.instrument == SYMBOL)):
                assert order.filled_quantity == traded[order.id], order.id
                assert 0 <= order.filled_quantity <= order.quantity, order.id
                if order.status in OPEN_STATUSES:
                    assert order.filled_quantity < order.quantity, order.id
                if order.status is OrderStatus.filled:
                    assert order.filled_quantity == order.quantity, order.id
        check_consistent(database, SYMBOL)  # holds cover remainders, none negative, finished ones empty
        assert set(stack.funded) == {"USD", "BTC"}
        for asset, amount in stack.funded.items():
            assert asset_total(database, asset) == 0
            assert user_total(database, asset) == amount, asset
        report = verify(database)
        assert report.ok, report.discrepancies
    finally:
        database.dispose()


def test_bench_orders_http_runs_and_leaves_sound_books(stack: _Stack) -> None:
    bench = run_bourse(
        "bench",
        "orders-http",
        "--url",
        stack.base_url,
        "--seconds",
        "1.5",
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
    with _Clients(traders, stack.base_url) as clients:
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
        with unit_of_work(database) as session:
            instrument = get_instrument(session, SYMBOL)
            bids, asks = rebuild_book(session, instrument).depth(200)
            return {
                side: [
                    [
                        format_price(instrument, price * instrument.tick_size),
                        format_quantity(instrument, quantity * instrument.lot_size),
                        count,
                    ]
                    for price, quantity, count in levels
                ]
                for side, levels in (("bids", bids), ("asks", asks))
            }
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
        with _Clients(traders, stack.base_url) as clients:
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
