"""``bourse bench orders-http``: orders placed and cancelled through the API of a running server.

The traders are created and funded (quote and base asset) directly in the
configured database, which must be the server's, and their tokens are minted
with its JWT key, as ``bench ledger-http`` does. C client processes, each with
one keep-alive connection and its own share of the traders, then send a
realistic mix on one instrument (BTC-USD by default):

- limit orders (GTC) priced around a mid price on both sides, with the buy and
  sell ranges overlapping so that a good share of them match on arrival;
- market orders: buys with a quote budget, sells with a quantity;
- cancels of the trader's own orders that were resting when last seen (some
  have filled since: those are refused with ``order_not_open``, as in life).

Every request carries an Idempotency-Key. Flat out, each client sends its next
request when the previous one is answered; with ``--rate R`` the clients share a
fixed arrival rate of R requests per second, and a request's latency counts from
when it was due, so a server that falls behind is charged for the queue it
causes rather than hiding it (no coordinated omission).

:class:`OrderFlow` is the client, usable from threads too: the concurrency and
crash-recovery tests drive the real server with it.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import click

from bourse.bench.harness import (
    Run,
    Start,
    Tally,
    command_settings,
    emit,
    json_option,
    latency_ms,
    machine,
    run_processes,
    seconds_option,
)
from bourse.settings import Settings

DEFAULT_SYMBOL = "BTC-USD"
# The mid price when the instrument has never traded, in whole quote units.
DEFAULT_MID = 30_000
# Whole units of each asset a trader starts with: far more than a run can spend,
# so every request does the full amount of work and none is refused for funds.
QUOTE_FUNDING_UNITS = 10_000_000
BASE_FUNDING_UNITS = 1_000
# Limit prices are mid +- up to SPREAD_STEPS steps of STEP_TICKS ticks; buys reach
# OVERLAP_STEPS above mid and sells as far below it, so those cross on arrival.
STEP_TICKS = 5
SPREAD_STEPS = 40
OVERLAP_STEPS = 10
MAX_LOTS = 50
# The mix: the share of limit orders, then market orders; the rest are cancels.
LIMIT_SHARE = 0.55
MARKET_SHARE = 0.20


@dataclass(frozen=True)
class Market:
    """What a client needs to know about the instrument to write valid orders (picklable)."""

    symbol: str
    price_scale: int
    tick_size: int
    lot_size: int
    min_quantity: int
    base_scale: int
    quote_scale: int
    mid: int  # at price_scale


@dataclass(frozen=True)
class Traders:
    user_ids: list[str]
    tokens: dict[str, str]
    market: Market
    # What each trader was credited, per asset, in minor units.
    funding: dict[str, int]


def prepare_traders(settings: Settings, count: int, symbol: str = DEFAULT_SYMBOL) -> Traders:
    """Create ``count`` funded traders for ``symbol`` in the database; their ids, tokens and the market."""
    from bourse.assets.service import get_asset
    from bourse.bench.users import funded_bench_users
    from bourse.db import Database
    from bourse.trading.instruments import get_instrument

    database = Database.from_settings(settings)
    try:
        with database.sessions() as session:
            instrument = get_instrument(session, symbol)
            base = get_asset(session, instrument.base_asset)
            quote = get_asset(session, instrument.quote_asset)
            mid = instrument.last_price or DEFAULT_MID * 10**instrument.price_scale
            mid -= mid % instrument.tick_size
            market = Market(
                symbol=instrument.symbol,
                price_scale=instrument.price_scale,
                tick_size=instrument.tick_size,
                lot_size=instrument.lot_size,
                min_quantity=instrument.min_quantity,
                base_scale=base.scale,
                quote_scale=quote.scale,
                mid=mid,
            )
            funding = {
                quote.code: QUOTE_FUNDING_UNITS * 10**quote.scale,
                base.code: BASE_FUNDING_UNITS * 10**base.scale,
            }
    finally:
        database.dispose()
    analyze = ("users", "accounts", "journal_entries", "postings", "holds", "orders")
    ids, tokens = funded_bench_users(settings, count, funding, prefix="orders", analyze=analyze)
    return Traders(ids, tokens, market, funding)


def _decimal(value: int, scale: int) -> str:
    """Minor units as the decimal string the API takes (never a float)."""
    if scale == 0:
        return str(value)
    whole, fraction = divmod(value, 10**scale)
    return f"{whole}.{fraction:0{scale}d}"


@dataclass
class Outcome:
    """One request: what it was, its HTTP status (0: no answer), its error code and fills."""

    action: str  # "limit", "market" or "cancel"
    status: int
    error: str | None = None
    fills: int = 0
    order_id: int | None = None
    resting: bool = False


@dataclass
class OrderFlow:
    """One client: its traders, their open orders as last seen, and one keep-alive connection.

    Not thread-safe: give each thread its own. ``url`` may change between steps
    (a restarted server); the connection is reopened on the next step.
    """

    url: str
    market: Market
    tokens: dict[str, str]
    seed: int
    timeout: float = 30.0
    open_orders: dict[str, list[int]] = field(default_factory=dict)
    _connection: http.client.HTTPConnection | None = None
    _connected_to: str = ""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)  # noqa: S311 - a workload, not secrets
        self.traders = sorted(self.tokens)
        self.open_orders = {trader: [] for trader in self.traders}

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None or self._connected_to != self.url:
            self.close()
            parts = urlsplit(self.url)
            self._connection = http.client.HTTPConnection(
                parts.hostname or "127.0.0.1", parts.port or 80, timeout=self.timeout
            )
            self._connected_to = self.url
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def warm_up(self) -> None:
        """Open the connection before the clock starts."""
        connection = self._connect()
        connection.request("GET", "/livez")
        connection.getresponse().read()

    def _limit(self) -> dict[str, Any]:
        market, rng = self.market, self.rng
        side = rng.choice(("buy", "sell"))
        steps = rng.randint(-SPREAD_STEPS, OVERLAP_STEPS)
        offset = steps * STEP_TICKS * market.tick_size
        price = market.mid + offset if side == "buy" else market.mid - offset
        lots = rng.randint(max(1, -(-market.min_quantity // market.lot_size)), MAX_LOTS)
        return {
            "instrument": market.symbol,
            "side": side,
            "type": "limit",
            "tif": "gtc",
            "price": _decimal(price, market.price_scale),
            "quantity": _decimal(lots * market.lot_size, market.base_scale),
        }

    def _market(self) -> dict[str, Any]:
        market, rng = self.market, self.rng
        order: dict[str, Any] = {"instrument": market.symbol, "type": "market"}
        if rng.random() < 0.5:  # noqa: PLR2004 - as many buys as sells
            # A budget of 10 to 200 whole quote units, fees included.
            order |= {
                "side": "buy",
                "quote_budget": _decimal(rng.randint(10, 200) * 10**market.quote_scale, market.quote_scale),
            }
        else:
            lots = rng.randint(max(1, -(-market.min_quantity // market.lot_size)), MAX_LOTS)
            order |= {"side": "sell", "quantity": _decimal(lots * market.lot_size, market.base_scale)}
        return order

    def step(self) -> Outcome:
        """Send the next request of the mix for a random trader and record what came back."""
        trader = self.rng.choice(self.traders)
        draw = self.rng.random()
        mine = self.open_orders[trader]
        if draw >= LIMIT_SHARE + MARKET_SHARE and mine:
            order_id = mine.pop(self.rng.randrange(len(mine)))
            return self._send(trader, "cancel", "DELETE", f"/api/v1/orders/{order_id}", None)
        body = self._market() if LIMIT_SHARE <= draw < LIMIT_SHARE + MARKET_SHARE else self._limit()
        return self._send(trader, body["type"], "POST", "/api/v1/orders", body)

    def _send(self, trader: str, action: str, method: str, path: str, body: dict[str, Any] | None) -> Outcome:
        headers = {"Authorization": f"Bearer {self.tokens[trader]}", "Idempotency-Key": str(uuid.uuid4())}
        payload = None
        if body is not None:
            payload = json.dumps(body)
            headers["Content-Type"] = "application/json"
        try:
            connection = self._connect()
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return Outcome(action, 0, error=type(exc).__name__)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status >= 400:  # noqa: PLR2004 - a refusal or a failure, with its code
            return Outcome(action, response.status, error=str(answer.get("error", f"http_{response.status}")))
        order_id = answer.get("id")
        resting = answer.get("status") in {"open", "partially_filled"}
        if action != "cancel" and resting and isinstance(order_id, int):
            self.open_orders[trader].append(order_id)
        fills = answer.get("fills")
        return Outcome(
            action,
            response.status,
            fills=len(fills) if isinstance(fills, list) else 0,
            order_id=order_id if isinstance(order_id, int) else None,
            resting=resting,
        )


@dataclass
class _Tally(Tally):
    placed: int = 0
    cancelled: int = 0
    fills: int = 0
    refused: Counter[str] = field(default_factory=Counter)


def _worker(  # noqa: PLR0917 - multiprocessing passes arguments by position
    url: str,
    market: Market,
    tokens: dict[str, str],
    interval: float | None,
    seconds: float,
    seed: int,
    start: Start,
) -> None:
    flow = OrderFlow(url, market, tokens, seed)
    tally = _Tally()
    flow.warm_up()
    deadline = start.wait(seed, seconds)
    began = deadline - seconds
    # Clients start their schedules spread over one interval, not all at once.
    due = began + (interval * random.Random(seed).random() if interval else 0.0)  # noqa: S311 - jitter
    while True:
        if interval is not None:
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            started, due = due, due + interval
        else:
            started = time.perf_counter()
        # Stop at the deadline even when behind schedule: a backlog is reported in the
        # latencies, never worked off after the measured window.
        if started >= deadline or time.perf_counter() >= deadline:
            break
        outcome = flow.step()
        if outcome.status in {200, 201}:
            tally.latencies.append(time.perf_counter() - started)
            if outcome.action == "cancel":
                tally.cancelled += 1
            else:
                tally.placed += 1
                tally.fills += outcome.fills
        elif 400 <= outcome.status < 500:  # noqa: PLR2004 - refused, by code
            tally.refused[outcome.error or "unknown"] += 1
        else:
            tally.error(f"{outcome.action}: {outcome.status} {outcome.error}")
    flow.close()
    start.report(tally)


def run_clients(url: str, traders: Traders, concurrency: int, seconds: float, rate: float | None) -> dict[str, Any]:
    """Run ``concurrency`` client processes for ``seconds``; the combined figures."""
    interval = None if rate is None else concurrency / rate
    shares = [traders.user_ids[i::concurrency] for i in range(concurrency)]
    run: Run[_Tally] = run_processes(
        _worker,
        [(url, traders.market, {t: traders.tokens[t] for t in share}, interval) for share in shares],
        seconds,
    )
    latencies = run.latencies
    placed = sum(tally.placed for tally in run.tallies)
    refused: Counter[str] = Counter()
    for tally in run.tallies:
        refused.update(tally.refused)
    return {
        "concurrency": concurrency,
        "rate": rate,
        "seconds": round(run.elapsed, 2),
        "orders": placed,
        "orders_per_second": round(placed / run.elapsed, 1),
        "cancels": sum(tally.cancelled for tally in run.tallies),
        "requests_per_second": round(len(latencies) / run.elapsed, 1),
        "fills": sum(tally.fills for tally in run.tallies),
        "p50_ms": latency_ms(latencies, 0.50) if latencies else None,
        "p99_ms": latency_ms(latencies, 0.99) if latencies else None,
        "refused": dict(sorted(refused.items())),
        "errors": run.errors,
        "error_samples": run.error_samples,
    }


@click.command("orders-http")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="A running `bourse serve`.")
@seconds_option
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Client processes.")
@click.option(
    "--rate",
    type=click.FloatRange(1, 100_000),
    default=None,
    help="A fixed arrival rate in requests per second, shared by the clients (default: flat out).",
)
@click.option(
    "--traders",
    type=click.IntRange(1, 100_000),
    default=64,
    show_default=True,
    help="Funded traders (at least one per client).",
)
@click.option("--symbol", default=DEFAULT_SYMBOL, show_default=True, help="The instrument to trade.")
@json_option
def bench_orders_http(  # noqa: PLR0917 - one parameter per option
    url: str, seconds: float, concurrency: int, rate: float | None, traders: int, symbol: str, as_json: bool
) -> None:
    """Limit, market and cancel requests through /api/v1/orders of a running server, with JWTs.

    The traders are created and funded directly in the configured database,
    which must be the server's, and tokens are minted with its JWT key.
    """
    from bourse.errors import BourseError

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise click.BadParameter("an http:// URL of a running `bourse serve`", param_hint="--url")
    if traders < concurrency:
        raise click.BadParameter("at least one trader per client", param_hint="--traders")
    settings = command_settings()
    try:
        prepared = prepare_traders(settings, traders, symbol)
    except BourseError as exc:
        raise click.BadParameter(exc.detail, param_hint="--symbol") from exc
    result = run_clients(url, prepared, concurrency, seconds, rate)
    output = {
        "benchmark": "orders-http",
        "database": settings.database.get_backend_name(),
        "instrument": symbol,
        "traders": traders,
        **result,
        "machine": machine(),
    }
    emit(output, as_json, width=20)
