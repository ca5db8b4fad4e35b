"""Orders on two instruments at once, through two API processes and an external matcher per shard.

The production layout on one machine (decision 0027): ``bourse serve --workers 2``
with ``BOURSE_MATCHER=external`` accepts orders without matching them; two
``bourse matcher`` processes lead one shard each (``BOURSE_MATCHER_SHARDS=2``:
BTC-USD is shard 0, ETH-USD shard 1) on a fresh PostgreSQL database. Client
threads, half on each market, drive the HTTP API with limit and market orders and
cancels; the two threads of each pair share their traders, so the same users'
USD accounts are locked by both API processes' acceptances and both matchers'
batches at once.

Every request must be answered with a success (201/202/200) or a refusal with a
code: no 5xx, none unanswered. Once the matchers have carried out every command,
each market's book rebuilt from the database is not crossed and is what the API
serves, holds cover what open orders can still trade, every order's filled
quantity is its trades', each fill was settled once, no unit of any asset was
created or lost, and ``bourse ledger verify`` passes.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import pytest
from sqlalchemy import func, select, text

from bourse.bench.orders_http import prepare_traders
from bourse.db import Database, unit_of_work
from bourse.trading.matcher import LOCK_CLASS, shard_of
from bourse.trading.models import Order, Trade
from tests.support.processes import clean_env, free_port, run_bourse, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings
from tests.support.waiting import wait_until
from tests.trading.http_support import (
    Clients,
    book_from_database,
    check_database,
    check_fills_once,
    pending_commands,
    served_book,
    split,
)
from tests.trading.test_matcher_process import _holds

pytestmark = pytest.mark.process

SYMBOLS = ("BTC-USD", "ETH-USD")
SHARDS = 2
WORKERS = 2  # API processes (serve --workers)
THREADS = 8  # half on each market
TRADERS = 2 * THREADS  # each pair of threads (one per market) shares a quarter of them
ACCEPTED_PER_MARKET = 40  # orders accepted (201) on each market before the clients stop
SERVER_WAIT_MS = 5000  # BOURSE_ORDER_WAIT_MS: how long an order or cancel waits for the matcher
CLIENT_TIMEOUT = 30.0  # seconds; a request the server has not answered by then is a failure
# What a matcher logs only when a batch failed (a command rejected, a round failed).
MATCHER_FAILURES = {"matcher_command_rejected", "matcher_round_failed"}


@dataclass
class _Sharded:
    url: str
    env: dict[str, str]
    base_url: str
    server: subprocess.Popen[str]
    matchers: dict[int, subprocess.Popen[str]]  # by the shard each leads
    logs: dict[str, Path]

    def database(self) -> Database:
        return Database.from_settings(make_settings(self.url))

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {name} ({path.name}) ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            for name, path in self.logs.items()
        )


def _popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """``bourse ...`` with its output in a file (a pipe nobody reads would fill and block it)."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bourse", *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def _leaders(database: Database) -> dict[int, int]:
    """Shard -> the PostgreSQL backend holding its leadership lock."""
    with unit_of_work(database) as session:
        rows = session.execute(
            text(
                "SELECT objid, pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :c"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"c": LOCK_CLASS},
        ).all()
    return {int(shard): int(pid) for shard, pid in rows}


def _troubles(log: Path) -> list[str]:
    """The lines of a matcher's log that tell of a failed batch, a traceback, or a leader that
    stepped down for any reason but being stopped (a transient failure, being fenced)."""
    troubles = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            if "Traceback" in line:
                troubles.append(line)
            continue
        name = event.get("event")
        if name in MATCHER_FAILURES or (name == "matcher_stepped_down" and event.get("reason") != "stopped"):
            troubles.append(line)
    return troubles


def _terminate(process: subprocess.Popen[str], timeout: float = 60) -> int | None:
    """SIGTERM, then wait for the exit code; killed (None) if it does not exit in time."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop(process)
            return None
    return process.returncode


@pytest.fixture
def sharded(tmp_path: Path) -> Iterator[_Sharded]:
    url = create_postgres_database()
    try:
        env = clean_env(
            BOURSE_DATABASE_URL=url,
            BOURSE_DATABASE_DIRECT_URL=url,  # the matchers' locks and LISTEN, and the API's LISTEN
            BOURSE_MATCHER="external",
            BOURSE_MATCHER_SHARDS=str(SHARDS),
            BOURSE_LOG_LEVEL="warning",
            # Well below the clients' timeout: a slow batch on a loaded machine is a 202, never a timeout.
            BOURSE_ORDER_WAIT_MS=str(SERVER_WAIT_MS),
            BOURSE_SHUTDOWN_DRAIN_SECONDS="0",
        )
        migrated = run_bourse("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        assert {shard_of(symbol, SHARDS) for symbol in SYMBOLS} == set(range(SHARDS)), "one market per shard"
        logs = {"serve": tmp_path / "serve.log"}
        port = free_port()
        server = _popen(["serve", "--workers", str(WORKERS), "--port", str(port)], env, logs["serve"])
        matchers: dict[int, subprocess.Popen[str]] = {}
        try:
            for shard in range(SHARDS):
                logs[f"matcher {shard}"] = tmp_path / f"matcher-{shard}.log"
                matcher_env = env | {
                    "BOURSE_LOG_LEVEL": "info",
                    "BOURSE_MATCHER_HEARTBEAT_PATH": str(tmp_path / f"matcher-{shard}.heartbeat"),
                }
                matchers[shard] = _popen(["matcher", "--shards", str(shard)], matcher_env, logs[f"matcher {shard}"])
            wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=90)
            wait_until(
                lambda: len(psutil.Process(server.pid).children()) == WORKERS,
                "the server to run its processes",
                timeout=60,
            )
            yield _Sharded(url, env, f"http://127.0.0.1:{port}", server, matchers, logs)
        finally:
            children = psutil.Process(server.pid).children() if server.poll() is None else []
            _terminate(server)
            for child in children:  # each gets SIGTERM when its parent dies; none may outlive it
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            for process in matchers.values():
                _terminate(process)
    finally:
        drop_postgres_database(url)


@contextmanager
def _showing_logs(stack: _Sharded) -> Iterator[None]:
    """A failed check carries the end of the server's and the matchers' logs."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{stack.log_tails()}") from exc


def test_two_markets_two_api_processes_and_a_matcher_per_shard_lose_and_duplicate_nothing(
    sharded: _Sharded,
) -> None:
    database = sharded.database()
    try:
        with _showing_logs(sharded):
            # Each matcher process leads the shard it was given, and only that one.
            def led() -> bool:
                leaders = _leaders(database)
                return set(leaders) == set(range(SHARDS)) and all(
                    _holds(sharded.matchers[shard], pid) for shard, pid in leaders.items()
                )

            wait_until(led, lambda: f"each matcher to lead its shard (leaders: {_leaders(database)})", timeout=60)
            traders = prepare_traders(make_settings(sharded.url), TRADERS, SYMBOLS[0], also=SYMBOLS[1:])
            funded = {asset: amount * TRADERS for asset, amount in traders.funding.items()}
            assert set(funded) == {"USD", "BTC", "ETH"}
            with Clients(split(traders, THREADS, SYMBOLS), sharded.base_url, timeout=CLIENT_TIMEOUT) as clients:
                clients.wait_for_traffic(accepted=ACCEPTED_PER_MARKET)
            # Every request was answered, with a success or a refusal with a code.
            assert clients.failures() == {}, dict(clients.outcomes)
            for symbol in SYMBOLS:
                assert all(clients.tally(symbol).values()), (symbol, clients.tally(symbol))
            # Orders answered 202 are carried out after their answer: wait for the last.
            wait_until(lambda: pending_commands(database) == 0, "the matchers to carry out every command", timeout=60)
            for process in sharded.matchers.values():
                assert process.poll() is None, "a matcher died"
            for symbol in SYMBOLS:
                check_fills_once(database, symbol)
                with unit_of_work(database) as session:
                    trades = session.scalar(select(func.count()).select_from(Trade).where(Trade.instrument == symbol))
                    failed = session.scalar(
                        select(func.count())
                        .select_from(Order)
                        .where(Order.instrument == symbol, Order.reject_reason == "settlement_failed")
                    )
                assert trades, symbol
                assert failed == 0, symbol  # no command the matcher could not settle
                # Whichever API process answers serves the book the database holds.
                rebuilt = book_from_database(database, symbol)
                for _ in range(4):
                    assert served_book(sharded.base_url, symbol) == rebuilt, symbol
            check_database(database, SYMBOLS, funded)
            verified = run_bourse("ledger", "verify", env=sharded.env, timeout=120)
            assert verified.returncode == 0, verified.stdout + verified.stderr
            for shard, process in sharded.matchers.items():
                # A matcher stops cleanly on SIGTERM, having logged no failed batch or lost leadership.
                assert _terminate(process) == 0, f"matcher {shard}"
                assert _troubles(sharded.logs[f"matcher {shard}"]) == [], f"matcher {shard}"
            assert "Traceback" not in sharded.logs["serve"].read_text(errors="replace")
    finally:
        database.dispose()
