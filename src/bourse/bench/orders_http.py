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

With ``--spike BASE:PEAK:RAMP:HOLD`` (issue 15: ``50:500:30:60``) the shared rate
follows a schedule instead (:mod:`bourse.bench.spike`: a lead-in at BASE, a linear
ramp to PEAK, a hold at PEAK, a tail at BASE), sent by C processes of T threads,
each thread with its own connection and traders, latencies again counted from when
each request was due. The report is a timeline (per window: the target and answered
rates, p50/p99, 202s, refusals, errors) with totals and phases. After the load, every
order a 202 answered is read back through the API until none is pending or has a
cancel outstanding (and the database is asked the same of every order of the run's
traders), for at most ``--settle-timeout``. The run passes, and exits 0, only with no
5xx, no unanswered request and no unsettled order.

:class:`OrderFlow` is the client, usable from threads too: the concurrency and
crash-recovery tests drive the real server with it.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import click

from bourse.bench.harness import (
    WORKER_SAMPLES,
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
from bourse.bench.spike import Arrivals, Event, SpikeSchedule, figures, is_error, phase_figures, timeline
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
    # Every market the traders were funded for, by symbol: ``market`` and those of ``also``.
    markets: dict[str, Market] = field(default_factory=dict)


def prepare_traders(
    settings: Settings, count: int, symbol: str = DEFAULT_SYMBOL, *, also: Sequence[str] = ()
) -> Traders:
    """Create ``count`` funded traders for ``symbol`` in the database; their ids, tokens and the market.

    ``also`` names more instruments the same traders are funded for (each asset once).
    """
    from bourse.assets.service import get_asset
    from bourse.bench.users import funded_bench_users
    from bourse.db import Database
    from bourse.trading.instruments import get_instrument

    database = Database.from_settings(settings)
    markets: dict[str, Market] = {}
    funding: dict[str, int] = {}
    try:
        with database.sessions() as session:
            for name in (symbol, *also):
                instrument = get_instrument(session, name)
                base = get_asset(session, instrument.base_asset)
                quote = get_asset(session, instrument.quote_asset)
                mid = instrument.last_price or DEFAULT_MID * 10**instrument.price_scale
                mid -= mid % instrument.tick_size
                markets[instrument.symbol] = Market(
                    symbol=instrument.symbol,
                    price_scale=instrument.price_scale,
                    tick_size=instrument.tick_size,
                    lot_size=instrument.lot_size,
                    min_quantity=instrument.min_quantity,
                    base_scale=base.scale,
                    quote_scale=quote.scale,
                    mid=mid,
                )
                funding[quote.code] = QUOTE_FUNDING_UNITS * 10**quote.scale
                funding[base.code] = BASE_FUNDING_UNITS * 10**base.scale
    finally:
        database.dispose()
    analyze = ("users", "accounts", "journal_entries", "postings", "holds", "orders")
    ids, tokens = funded_bench_users(settings, count, funding, prefix="orders", analyze=analyze)
    return Traders(ids, tokens, next(iter(markets.values())), funding, markets)


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
    trader: str | None = None  # whose token the request carried


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
            return Outcome(action, 0, error=type(exc).__name__, trader=trader)
        try:
            answer = json.loads(raw) if raw else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.status >= 400:  # noqa: PLR2004 - a refusal or a failure, with its code
            return Outcome(
                action, response.status, error=str(answer.get("error", f"http_{response.status}")), trader=trader
            )
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
            trader=trader,
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
        # 202: accepted, the matcher had not finished within the wait (its latency is the
        # wait's; the order's outcome follows on the WebSocket). Counted as answered.
        if outcome.status in {200, 201, 202}:
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


# -- The spike (--spike) -------------------------------------------------------------------
#
# C client processes of T threads, each thread with its own keep-alive connection and its
# own traders. The processes share one time-varying arrival rate (bourse.bench.spike):
# process i takes arrivals i, i + C, ... and whichever of its threads is free sends the
# next one when it is due, so at most C x T requests are in flight. Every request's latency
# counts from when it was due. The clocks are time.perf_counter, CLOCK_MONOTONIC on Linux,
# one clock for every process of the machine: the first client to see the harness's go
# sets the start for all of them.

SPIKE_THREADS = 8
SPIKE_WINDOW_SECONDS = 1.0
SETTLE_TIMEOUT_SECONDS = 30.0
SETTLE_POLL_SECONDS = 0.25
READ_TIMEOUT_SECONDS = 10.0
# The text report says the clients fell behind when more than this share of the schedule went unsent.
UNSENT_NOTE_SHARE = 0.01


class SpikeParam(click.ParamType[SpikeSchedule, Any]):
    """``--spike BASE:PEAK:RAMP:HOLD``, as a :class:`SpikeSchedule`."""

    name = "BASE:PEAK:RAMP:HOLD"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> SpikeSchedule:
        if isinstance(value, SpikeSchedule):
            return value
        try:
            return SpikeSchedule.parse(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@dataclass
class _SpikeTally(Tally):
    """One connection's (then one process's) requests; ``latencies`` are the answered ones'."""

    events: list[Event] = field(default_factory=list)
    placed: int = 0
    cancelled: int = 0
    fills: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    # The orders a 202 answered (accepted, not yet carried out by the matcher): (id, owner's token).
    awaited: list[tuple[int, str]] = field(default_factory=list)

    def record(self, flow: OrderFlow, outcome: Outcome, event: Event) -> None:
        self.events.append(event)
        if is_error(outcome.status):
            self.error(f"{outcome.action}: {outcome.status} {outcome.error}")
            return
        due, _, answered, _ = event
        self.latencies.append(answered - due)
        if outcome.status >= 400:  # noqa: PLR2004 - refused, by code
            self.refused[outcome.error or "unknown"] += 1
            return
        if outcome.action == "cancel":
            self.cancelled += 1
        else:
            self.placed += 1
            self.fills += outcome.fills
        if outcome.status == 202 and outcome.order_id is not None and outcome.trader is not None:  # noqa: PLR2004
            self.awaited.append((outcome.order_id, flow.tokens[outcome.trader]))

    def merge(self, other: _SpikeTally) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.samples = (self.samples + other.samples)[:WORKER_SAMPLES]
        self.events += other.events
        self.placed += other.placed
        self.cancelled += other.cancelled
        self.fills += other.fills
        self.refused.update(other.refused)
        self.awaited += other.awaited


def _spike_connection(flow: OrderFlow, arrivals: Arrivals, began: float, deadline: float, tally: _SpikeTally) -> None:
    """One thread: send each arrival it takes when it is due, until the schedule ends."""
    try:
        while (due := arrivals.take()) is not None:
            pause = began + due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            sent = time.perf_counter()
            if sent >= deadline:
                break  # behind schedule at the end: never sent, reported as unsent
            outcome = flow.step()
            answered = time.perf_counter()
            tally.record(flow, outcome, (due, sent - began, answered - began, outcome.status))
    except Exception as exc:  # noqa: BLE001 - a client bug is reported as an error, never lost with its thread
        tally.error(f"client thread: {exc!r}")
    finally:
        flow.close()


def _spike_worker(  # noqa: PLR0917 - multiprocessing passes arguments by position
    url: str,
    market: Market,
    shares: list[dict[str, str]],
    schedule: SpikeSchedule,
    clients: int,
    origin: Any,
    seconds: float,
    index: int,
    start: Start,
) -> None:
    flows = [OrderFlow(url, market, tokens, index * len(shares) + j) for j, tokens in enumerate(shares)]
    for flow in flows:
        flow.warm_up()
    arrivals = Arrivals(schedule, index, clients)
    start.wait(index, seconds)
    with origin.get_lock():
        if origin.value == 0.0:
            origin.value = time.perf_counter()
        began = float(origin.value)
    tallies = [_SpikeTally() for _ in flows]
    threads = [
        threading.Thread(target=_spike_connection, args=(flow, arrivals, began, began + seconds, tally), daemon=True)
        for flow, tally in zip(flows, tallies, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = _SpikeTally()
    for tally in tallies:
        total.merge(tally)
    start.report(total)


def _outstanding(order: Mapping[str, Any]) -> bool:
    """Whether the matcher still has something to carry out on this order (as the API shows it)."""
    return order.get("status") == "pending" or order.get("cancel_requested") is True


class _OrderReader:
    """Reads orders back through the API, each as its owner (another user's order is a 404)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._connection: http.client.HTTPConnection | None = None
        self.reads = 0
        self.errors = 0
        self.samples: list[str] = []

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _get(self, token: str, path: str) -> dict[str, Any] | None:
        self.reads += 1
        try:
            if self._connection is None:
                self._connection = http.client.HTTPConnection(self._host, self._port, timeout=READ_TIMEOUT_SECONDS)
            self._connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
            response = self._connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            self._error(f"GET {path}: {type(exc).__name__}")
            return None
        if response.status != 200:  # noqa: PLR2004 - the only answer with the order
            self._error(f"GET {path}: {response.status}")
            return None
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self._error(f"GET {path}: not a JSON object")
            return None
        return answer

    def _error(self, sample: str) -> None:
        self.errors += 1
        if len(self.samples) < WORKER_SAMPLES:
            self.samples.append(sample)

    def outstanding(self, orders: Mapping[int, str]) -> dict[int, str]:
        """The orders of ``orders`` (id -> owner's token) still outstanding, or unreadable.

        Each owner's newest 200 orders come in one list; an order not among them is read by id.
        """
        by_owner: dict[str, list[int]] = {}
        for order_id, token in orders.items():
            by_owner.setdefault(token, []).append(order_id)
        left: dict[int, str] = {}
        for token, ids in by_owner.items():
            listed = self._get(token, "/api/v1/orders?status=all&limit=200") or {}
            data = listed.get("data")
            seen = (
                {order.get("id"): order for order in data if isinstance(order, dict)} if isinstance(data, list) else {}
            )
            for order_id in ids:
                order = seen.get(order_id) or self._get(token, f"/api/v1/orders/{order_id}")
                if order is None or _outstanding(order):
                    left[order_id] = token
        return left


def _unsettled_in_database(database: Any, user_ids: Sequence[str]) -> int:
    """The orders of ``user_ids`` the matcher has still to carry out (pending, or a cancel to do)."""
    from sqlalchemy import func, select, text

    from bourse.db import unit_of_work
    from bourse.trading.models import PENDING_COMMANDS_SQL, Order

    with unit_of_work(database) as session:
        query = (
            select(func.count())
            .select_from(Order)
            .where(Order.user_id.in_([uuid.UUID(user_id) for user_id in user_ids]), text(f"({PENDING_COMMANDS_SQL})"))
        )
        return int(session.scalar(query) or 0)


def settle_orders(
    url: str, awaited: Mapping[int, str], settings: Settings, user_ids: Sequence[str], timeout: float
) -> dict[str, Any]:
    """Wait (at most ``timeout`` s, a pass once begun finishing) until every order is carried out.

    ``awaited`` (id -> owner's token) are the orders a 202 answered; they are read back
    through the API until none is pending or has a cancel outstanding. The database is
    asked the same of every order of ``user_ids`` (the run's own traders), which also
    covers an order whose answer was lost.
    """
    from bourse.db import Database

    reader = _OrderReader(url)
    database = Database.from_settings(settings)
    began = time.perf_counter()
    remaining = dict(awaited)
    passes = 0
    settled: float | None = None
    try:
        while True:
            passes += 1
            remaining = reader.outstanding(remaining)
            in_database = _unsettled_in_database(database, user_ids)
            if not remaining and not in_database:
                settled = time.perf_counter() - began
                break
            if time.perf_counter() - began >= timeout:
                break
            time.sleep(SETTLE_POLL_SECONDS)
    finally:
        reader.close()
        database.dispose()
    return {
        "awaited": len(awaited),
        "unsettled": len(remaining),
        "unsettled_in_database": in_database,
        "seconds": None if settled is None else round(settled, 2),
        "timeout_s": timeout,
        "passes": passes,
        "reads": reader.reads,
        "read_errors": reader.errors,
        "read_error_samples": reader.samples,
    }


def run_spike(  # noqa: PLR0917 - the run's parts
    url: str,
    traders: Traders,
    concurrency: int,
    threads: int,
    schedule: SpikeSchedule,
    window: float,
    settle_timeout: float,
    settings: Settings,
) -> dict[str, Any]:
    """The spike from ``concurrency`` processes of ``threads`` connections, then the settle check."""
    connections = concurrency * threads
    shares = [{t: traders.tokens[t] for t in traders.user_ids[i::connections]} for i in range(connections)]
    origin = multiprocessing.get_context("spawn").Value("d", 0.0)
    load_before = os.getloadavg()
    run: Run[_SpikeTally] = run_processes(
        _spike_worker,
        [
            (url, traders.market, shares[c * threads : (c + 1) * threads], schedule, concurrency, origin)
            for c in range(concurrency)
        ],
        schedule.seconds,
    )
    awaited = {order_id: token for tally in run.tallies for order_id, token in tally.awaited}
    settle = settle_orders(url, awaited, settings, traders.user_ids, settle_timeout)
    load_after = os.getloadavg()
    events = sorted((event for tally in run.tallies for event in tally.events), key=lambda event: event[2])
    latencies = run.latencies
    refused: Counter[str] = Counter()
    for tally in run.tallies:
        refused.update(tally.refused)
    totals = figures(events, schedule.seconds)
    unsettled = max(settle["unsettled"], settle["unsettled_in_database"])
    return {
        "mode": "spike",
        "spike": schedule.describe(),
        "concurrency": concurrency,
        "threads": threads,
        "connections": connections,
        "due": schedule.count,
        "sent": len(events),
        # Due before the end but never sent: every connection was still busy. The server then
        # never saw the whole schedule (more --threads would send it).
        "unsent": schedule.count - len(events),
        "sent_share": round(len(events) / schedule.count, 3) if schedule.count else None,
        "answered": len(latencies),
        "orders": sum(tally.placed for tally in run.tallies),
        "cancels": sum(tally.cancelled for tally in run.tallies),
        "fills": sum(tally.fills for tally in run.tallies),
        "pending_answers": totals["pending"],
        "refused": dict(sorted(refused.items())),
        "p50_ms": totals["p50_ms"],
        "p99_ms": totals["p99_ms"],
        "max_ms": round(max(latencies) * 1000, 1) if latencies else None,
        "service_p50_ms": totals["service_p50_ms"],
        "service_p99_ms": totals["service_p99_ms"],
        # How late the clients sent, behind the schedule: near 0 unless every connection was busy.
        "send_lag_p99_ms": latency_ms([sent - due for due, sent, _, _ in events], 0.99, 1) if events else None,
        "errors": run.errors,
        "errors_5xx": totals["errors_5xx"],
        "errors_no_answer": sum(1 for *_, status in events if status == 0),
        "error_samples": run.error_samples,
        "unsettled": unsettled,
        "settle": settle,
        "passed": run.errors == 0 and unsettled == 0,
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in load_after],
        "window_s": window,
        "phases": phase_figures(events, schedule),
        "timeline": timeline(events, schedule, window),
    }


def _spike_summary(result: Mapping[str, Any]) -> str:
    """The spike's report as text: the totals, the phases and the timeline."""
    spike = result["spike"]
    settle = result["settle"]
    settled = "not within the timeout" if settle["seconds"] is None else f"in {settle['seconds']} s"
    lines = [
        (
            f"orders-http spike on {result['instrument']}: {spike['base']:g}/s to {spike['peak']:g}/s over "
            f"{spike['ramp_s']:g} s, held {spike['hold_s']:g} s (lead-in {spike['lead_in_s']:g} s, "
            f"tail {spike['tail_s']:g} s); {result['concurrency']} clients x {result['threads']} connections"
        ),
        (
            f"due {result['due']}, sent {result['sent']}, answered {result['answered']} "
            f"({result['pending_answers']} of them 202), refused {result['refused']}"
        ),
        (
            f"from due: p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms; "
            f"from sent: p50 {result['service_p50_ms']} ms, p99 {result['service_p99_ms']} ms; "
            f"send lag p99 {result['send_lag_p99_ms']} ms"
        ),
        (
            f"errors {result['errors']} (5xx {result['errors_5xx']}, no answer {result['errors_no_answer']})"
            f" {result['error_samples'] or ''}"
        ),
        f"unsettled {result['unsettled']} ({settle['awaited']} answered 202, settled {settled})",
        "PASSED" if result["passed"] else "FAILED",
        "",
        (
            f"{'phase':>8} {'target/s':>9} {'rate/s':>8} {'p50 ms':>9} {'p99 ms':>9} {'sent p99':>9}"
            f" {'202':>6} {'4xx':>5} {'errors':>6}"
        ),
    ]
    if result["unsent"] > UNSENT_NOTE_SHARE * result["due"]:
        note = (
            f"NOTE: {result['unsent']} of {result['due']} requests due were never sent (every connection was busy):"
            " the server did not see the whole schedule; more --threads would send it"
        )
        lines[-1:-1] = [note, ""]
    rows = [(row["phase"], row) for row in result["phases"]]
    rows += [("", {})] + [(f"{row['t']:g}", row) for row in result["timeline"]]
    for label, row in rows:
        if not row:
            lines.append(f"{'t (s)':>8}")
            continue
        lines.append(
            f"{label:>8} {row['target']:>9} {row['rate']!s:>8} {row['p50_ms']!s:>9} {row['p99_ms']!s:>9}"
            f" {row['service_p99_ms']!s:>9} {row['pending']:>6} {row['refused']:>5} {row['errors']:>6}"
        )
    return "\n".join(lines)


def _checked_spike(
    ctx: click.Context, spike: SpikeSchedule, rate: float | None, lead_in: float | None, tail: float | None
) -> SpikeSchedule:
    """``--spike`` with its lead-in and tail, refused with --rate or --seconds, or if too long."""
    if rate is not None:
        raise click.UsageError("--spike is a rate schedule: it cannot be combined with --rate")
    if ctx.get_parameter_source("seconds") is not click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--spike sets the run's length: it cannot be combined with --seconds")
    spike = replace(
        spike,
        lead_in=SpikeSchedule.lead_in if lead_in is None else lead_in,
        tail=SpikeSchedule.tail if tail is None else tail,
    )
    try:
        spike.check()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--spike") from exc
    return spike


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
    "--spike",
    type=SpikeParam(),
    default=None,
    help="A rate schedule instead of --rate and --seconds: BASE requests/s for --lead-in seconds, a linear"
    " ramp to PEAK over RAMP seconds, PEAK for HOLD seconds, BASE for --tail seconds; then a wait of up to"
    " --settle-timeout for every order to be carried out. Exits 1 on any 5xx, unanswered request or"
    " unsettled order. E.g. 50:500:30:60.",
)
@click.option(
    "--lead-in",
    type=click.FloatRange(0, 600),
    default=None,
    help=f"With --spike: seconds at BASE before the ramp [default: {SpikeSchedule.lead_in:g}].",
)
@click.option(
    "--tail",
    type=click.FloatRange(0, 600),
    default=None,
    help=f"With --spike: seconds at BASE after the hold [default: {SpikeSchedule.tail:g}].",
)
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help=f"With --spike: connections (threads) per client process, each with its own traders"
    f" [default: {SPIKE_THREADS}].",
)
@click.option(
    "--window",
    type=click.FloatRange(0.5, 60),
    default=None,
    help=f"With --spike: the timeline's window in seconds [default: {SPIKE_WINDOW_SECONDS:g}].",
)
@click.option(
    "--settle-timeout",
    type=click.FloatRange(0, 600),
    default=None,
    help=f"With --spike: the longest wait, after the load, for every order to be carried out"
    f" [default: {SETTLE_TIMEOUT_SECONDS:g}].",
)
@click.option(
    "--traders",
    type=click.IntRange(1, 100_000),
    default=64,
    show_default=True,
    help="Funded traders (at least one per client, or per connection with --spike).",
)
@click.option("--symbol", default=DEFAULT_SYMBOL, show_default=True, help="The instrument to trade.")
@json_option
@click.pass_context
def bench_orders_http(  # noqa: PLR0917 - one parameter per option
    ctx: click.Context,
    url: str,
    seconds: float,
    concurrency: int,
    rate: float | None,
    spike: SpikeSchedule | None,
    lead_in: float | None,
    tail: float | None,
    threads: int | None,
    window: float | None,
    settle_timeout: float | None,
    traders: int,
    symbol: str,
    as_json: bool,
) -> None:
    """Limit, market and cancel requests through /api/v1/orders of a running server, with JWTs.

    The traders are created and funded directly in the configured database,
    which must be the server's, and tokens are minted with its JWT key.
    """
    from bourse.errors import BourseError

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise click.BadParameter("an http:// URL of a running `bourse serve`", param_hint="--url")
    spike_only = {
        "--lead-in": lead_in,
        "--tail": tail,
        "--threads": threads,
        "--window": window,
        "--settle-timeout": settle_timeout,
    }
    if spike is not None:
        spike = _checked_spike(ctx, spike, rate, lead_in, tail)
    elif given := [name for name, value in spike_only.items() if value is not None]:
        raise click.UsageError(f"{', '.join(given)} only apply with --spike")
    threads = threads or SPIKE_THREADS
    connections = concurrency * threads if spike is not None else concurrency
    if traders < connections:
        what = f"connection ({concurrency} clients x {threads} threads)" if spike is not None else "client"
        raise click.BadParameter(f"at least one trader per {what}", param_hint="--traders")
    settings = command_settings()
    try:
        prepared = prepare_traders(settings, traders, symbol)
    except BourseError as exc:
        raise click.BadParameter(exc.detail, param_hint="--symbol") from exc
    if spike is None:
        result = run_clients(url, prepared, concurrency, seconds, rate)
    else:
        result = run_spike(
            url,
            prepared,
            concurrency,
            threads,
            spike,
            window or SPIKE_WINDOW_SECONDS,
            SETTLE_TIMEOUT_SECONDS if settle_timeout is None else settle_timeout,
            settings,
        )
    output = {
        "benchmark": "orders-http",
        "database": settings.database.get_backend_name(),
        "instrument": symbol,
        "traders": traders,
        **result,
        "machine": machine(),
    }
    if spike is None:
        emit(output, as_json, width=20)
        return
    emit(output, as_json, summary=_spike_summary(output))
    if not output["passed"]:
        ctx.exit(1)
