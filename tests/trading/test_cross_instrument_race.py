"""Orders on two instruments at once, through a real ``bourse serve`` on PostgreSQL: no deadlock, no 5xx.

Half the traders buy BTC-USD and sell ETH-USD, the other half do the opposite, and
eight client threads (one per trader) send 1,000 crossing limit orders on both
markets at once. A fill on one market therefore settles with a user whose
own order on the other market is being placed at that very moment, and every fill
on either market pays its fees into the one USD ``fees`` account: exactly the
traffic that made PostgreSQL abort orders with ``DeadlockDetected`` (a 500) when an
order's transaction took its counterparties' account locks one entry at a time.

Every order must be answered with a success or a refusal with a code; afterwards
``bourse ledger verify`` must pass and both books must agree with the database.
"""

from __future__ import annotations

import json
import random
import re
import socket
import subprocess
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2 as httpx
import pytest
from click.testing import CliRunner

from bourse.bench.users import funded_bench_users
from bourse.cli import main
from bourse.db import Database
from bourse.migrations import upgrade
from tests.support.processes import clean_env, start, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings
from tests.trading.orders_support import asset_total, check_consistent, user_total

pytestmark = pytest.mark.process

THREADS = 8
# One trader per thread, half of each kind: few enough that a fill often meets a
# counterparty whose own order is in flight on the other market (a deadlock came
# within seconds before the fix; with 16 traders it took hundreds of orders).
TRADERS = THREADS
ORDERS_PER_THREAD = 125  # 1,000 orders in all
# Whole units each trader starts with: far more than the race can spend.
FUNDING = {"USD": 50_000_000 * 10**2, "BTC": 1_000 * 10**8, "ETH": 10_000 * 10**8}
# Per market: the mid price (cents) and the lot (base minor units) of the seeded instrument.
MARKETS = {"BTC-USD": (30_000_00, 10_000), "ETH-USD": (2_000_00, 100_000)}
# Trader kinds: what each does on each market.
BUYS_BTC = {"BTC-USD": "buy", "ETH-USD": "sell"}
SELLS_BTC = {"BTC-USD": "sell", "ETH-USD": "buy"}


def _port() -> int:
    """A free port from the range this suite's servers use."""
    for port in range(18200, 18300):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 18200-18299")


@dataclass
class _Stack:
    url: str
    env: dict[str, str]
    server: subprocess.Popen[str]
    base_url: str
    ids: list[str]
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def stack() -> Iterator[_Stack]:
    """A migrated database, funded traders, and a ``bourse serve`` on it (funded while it starts)."""
    url = create_postgres_database("bourse_xrace")
    try:
        upgrade(make_settings(url))
        env = clean_env(BOURSE_DATABASE_URL=url, BOURSE_LOG_LEVEL="warning")
        port = _port()
        server = start(["-m", "bourse", "serve", "--port", str(port)], env)
        try:
            ids, tokens = funded_bench_users(make_settings(url), TRADERS, FUNDING, prefix="xrace")
            wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=90)
            yield _Stack(url, env, server, f"http://127.0.0.1:{port}", ids, tokens)
        finally:
            stop(server)
    finally:
        drop_postgres_database(url)


def _decimal(value: int, scale: int) -> str:
    whole, fraction = divmod(value, 10**scale)
    return f"{whole}.{fraction:0{scale}d}"


class _Client(threading.Thread):
    """One client thread: one trader's orders, crossing on both markets.

    Every client stops at the first failure (a 5xx or no answer), so a run that
    fails says so at once rather than after the whole race.
    """

    def __init__(self, base_url: str, trader: tuple[str, dict[str, str]], seed: int, failed: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.token, self.kind = trader
        self.failed = failed
        self.rng = random.Random(seed)  # noqa: S311 - a workload, not secrets
        self.outcomes: Counter[tuple[int, str | None]] = Counter()
        self.fills = 0

    def _order(self) -> dict[str, str]:
        symbol = self.rng.choice(sorted(MARKETS))
        mid, lot = MARKETS[symbol]
        side = self.kind[symbol]
        # Buys from 5 ticks under the mid to 5 over it, sells the mirror: most cross something.
        offset = self.rng.randint(-5, 5) * 100
        price = mid + offset if side == "buy" else mid - offset
        return {
            "instrument": symbol,
            "side": side,
            "type": "limit",
            "tif": "gtc" if self.rng.random() < 0.6 else "ioc",
            "price": _decimal(price, 2),
            "quantity": _decimal(self.rng.randint(1, 8) * lot, 8),
        }

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            for _ in range(ORDERS_PER_THREAD):
                if self.failed.is_set():
                    return
                headers = {"Authorization": f"Bearer {self.token}", "Idempotency-Key": str(uuid.uuid4())}
                try:
                    response = client.post("/api/v1/orders", json=self._order(), headers=headers)
                except httpx.HTTPError as exc:
                    self.outcomes[0, type(exc).__name__] += 1
                    self.failed.set()
                    continue
                answer = response.json()
                if response.status_code >= 500:
                    self.failed.set()
                if response.status_code >= 400:
                    self.outcomes[response.status_code, answer.get("error")] += 1
                else:
                    self.outcomes[response.status_code, None] += 1
                    self.fills += len(answer["fills"])


def _errors(log: str) -> list[str]:
    """The last line of each exception in the server's JSON log (e.g. the DeadlockDetected)."""
    found = []
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("exception"):
            raised = [text for text in str(record["exception"]).splitlines() if re.match(r"\w+(\.\w+)+: ", text)]
            found.append(f"{record.get('event')}: {raised[-1] if raised else record['exception']}")
    return found


def test_orders_crossing_on_two_instruments_never_deadlock(stack: _Stack) -> None:
    settings = make_settings(stack.url)
    ids, tokens = stack.ids, stack.tokens
    failed = threading.Event()
    clients = [
        _Client(stack.base_url, (tokens[user_id], BUYS_BTC if i % 2 else SELLS_BTC), seed=i, failed=failed)
        for i, user_id in enumerate(ids)
    ]
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=240)
        assert not client.is_alive()

    outcomes: Counter[tuple[int, str | None]] = Counter()
    for client in clients:
        outcomes.update(client.outcomes)
    failures = {key: n for key, n in outcomes.items() if key[0] == 0 or key[0] >= 500}
    if failures:
        pytest.fail(f"{failures}; the server logged:\n" + "\n".join(_errors(stop(stack.server))))
    assert sum(outcomes.values()) == THREADS * ORDERS_PER_THREAD
    assert outcomes[201, None] > THREADS * ORDERS_PER_THREAD // 2, outcomes
    assert sum(client.fills for client in clients) > THREADS * ORDERS_PER_THREAD // 4

    database = Database.from_settings(settings)
    try:
        for symbol in MARKETS:
            check_consistent(database, symbol)
        for asset, amount in FUNDING.items():
            assert asset_total(database, asset) == 0
            assert user_total(database, asset) == amount * TRADERS, asset
    finally:
        database.dispose()
    # The real command, in this process (a subprocess would spend seconds importing).
    verified = CliRunner().invoke(main, ["ledger", "verify"], env={"BOURSE_DATABASE_URL": stack.url})
    assert verified.exit_code == 0, verified.output
