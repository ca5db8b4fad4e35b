"""``bourse bench fanout``: order entry while WebSocket subscribers follow the same instrument.

Against a running API (``--api-url``) and the process that serves the market-data
WebSocket (``--stream-url``: a ``bourse stream`` with ``BOURSE_STREAM=external``, or
the API itself with the in-process fan-out), on the configured database, which must
be theirs:

1. traders are created and funded as ``bench orders-http`` does, and orders are sent
   untimed for ``--warmup`` seconds;
2. the **baseline**: C client processes send the ``orders-http`` mix (limit and market
   orders, cancels) at a fixed total rate R for ``--seconds``, with no subscriber;
3. the **subscribed run**: S WebSocket subscribers, each subscribed to the
   instrument's ``book`` and ``trades`` (their snapshots received before the clock
   starts), then the same orders at the same rate for the same time.

An order's latency runs from when it was due (so a server that falls behind is
charged for the queue it causes) to its final state: the ``201``/``200`` answer, or,
after a ``202``, the first ``GET /api/v1/orders/{id}`` that shows it carried out.

Every subscriber checks its sequences as a client must (decision 0027; the rules are
in :mod:`bourse.trading.feed`): a ``delta`` or ``trade`` whose ``prev_sequence`` is
the last one applied is next, one at or below it is old, anything else is a **gap**; a
``resync`` is followed by a fresh snapshot. Once the matcher has carried out every
command, each subscriber must reach the instrument's last book and trade sequences:
it was gapless, or resynced, and complete. The report gives both runs, the ratio of
their p99s (the target: at most 1.2), the subscribers' tally, how far apart the
subscribers received each book delta (the fan-out's spread), and the CPU seconds the
machine's processes spent in each run by role.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import itertools
import json
import multiprocessing
import random
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
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
)
from bourse.bench.orders_http import DEFAULT_SYMBOL, Market, OrderFlow, Outcome, Traders, prepare_traders
from bourse.settings import Settings

TARGET_P99_RATIO = 1.2
# How often a client asks for an order answered 202 until the matcher has carried it out.
POLL_SECONDS = 0.01
# The longest a client waits for that, and the subscribers for the last sequences.
SETTLE_SECONDS = 60.0
# WebSocket handshakes (each followed by two snapshots read from the database) at once.
CONNECTING_AT_ONCE = 50
CHANNELS = ("book", "trades")


# -- Order entry ----------------------------------------------------------------------------


class _Flow(OrderFlow):
    """The ``orders-http`` client, which can also follow an order answered 202 to its end."""

    last_trader: str = ""

    def _send(self, trader: str, action: str, method: str, path: str, body: dict[str, Any] | None) -> Outcome:
        self.last_trader = trader
        return super()._send(trader, action, method, path, body)

    def settle(self, outcome: Outcome, timeout: float) -> bool:
        """Ask for the order until the matcher has carried it out (no longer pending, no
        cancel outstanding); whether that happened within ``timeout``."""
        trader = self.last_trader
        headers = {"Authorization": f"Bearer {self.tokens[trader]}"}
        ends = time.perf_counter() + timeout
        while time.perf_counter() < ends:
            try:
                connection = self._connect()
                connection.request("GET", f"/api/v1/orders/{outcome.order_id}", headers=headers)
                response = connection.getresponse()
                raw = response.read()
            except (OSError, http.client.HTTPException):
                self.close()
                time.sleep(POLL_SECONDS)
                continue
            answer = json.loads(raw) if response.status == 200 and raw else {}  # noqa: PLR2004 - found
            status = answer.get("status") if isinstance(answer, dict) else None
            if status not in {None, "pending"} and not answer.get("cancel_requested"):
                if outcome.action != "cancel" and status in {"open", "partially_filled"}:
                    self.open_orders[trader].append(outcome.order_id or 0)
                return True
            time.sleep(POLL_SECONDS)
        return False


@dataclass
class _Tally(Tally):
    requests: int = 0
    orders: int = 0
    waited: int = 0  # answered 202, then followed to the end
    refused: Counter[str] = field(default_factory=Counter)


def _orders_worker(  # noqa: PLR0917 - multiprocessing passes arguments by position
    url: str,
    market: Market,
    tokens: dict[str, str],
    interval: float,
    seconds: float,
    seed: int,
    start: Start,
) -> None:
    flow = _Flow(url, market, tokens, seed)
    tally = _Tally()
    flow.warm_up()
    deadline = start.wait(seed, seconds)
    # Clients start their schedules spread over one interval, not all at once.
    due = deadline - seconds + interval * random.Random(seed).random()  # noqa: S311 - jitter
    while True:
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        started, due = due, due + interval
        if started >= deadline or time.perf_counter() >= deadline:
            break  # a backlog is charged to the latencies, never worked off after the window
        outcome = flow.step()
        tally.requests += 1
        if outcome.status == 202 and outcome.order_id is not None:  # noqa: PLR2004 - accepted, not yet carried out
            tally.waited += 1
            if not flow.settle(outcome, SETTLE_SECONDS):
                tally.error(f"{outcome.action}: order {outcome.order_id} not carried out in {SETTLE_SECONDS:.0f} s")
                continue
        elif outcome.status not in {200, 201}:
            if 400 <= outcome.status < 500:  # noqa: PLR2004 - refused, with its code
                tally.refused[outcome.error or "unknown"] += 1
            else:
                tally.error(f"{outcome.action}: {outcome.status} {outcome.error}")
            continue
        tally.latencies.append(time.perf_counter() - started)
        if outcome.action != "cancel":
            tally.orders += 1
    flow.close()
    start.report(tally)


def run_orders(url: str, traders: Traders, concurrency: int, rate: float, seconds: float) -> dict[str, Any]:
    """C client processes sending ``rate`` requests a second in all for ``seconds``: the figures."""
    shares = [traders.user_ids[i::concurrency] for i in range(concurrency)]
    run: Run[_Tally] = run_processes(
        _orders_worker,
        [(url, traders.market, {t: traders.tokens[t] for t in share}, concurrency / rate) for share in shares],
        seconds,
    )
    latencies = run.latencies
    refused: Counter[str] = Counter()
    for tally in run.tallies:
        refused.update(tally.refused)
    return {
        "seconds": round(run.elapsed, 2),
        "requests": sum(t.requests for t in run.tallies),
        "orders": sum(t.orders for t in run.tallies),
        "requests_per_second": round(sum(t.requests for t in run.tallies) / run.elapsed, 1),
        "answered_202": sum(t.waited for t in run.tallies),
        "p50_ms": latency_ms(latencies, 0.50) if latencies else None,
        "p99_ms": latency_ms(latencies, 0.99) if latencies else None,
        "max_ms": latency_ms(latencies, 1.0) if latencies else None,
        "refused": dict(sorted(refused.items())),
        "errors": run.errors,
        "error_samples": run.error_samples,
    }


# -- The subscribers ------------------------------------------------------------------------


@dataclass
class _Subscriber:
    """One WebSocket's view of the feed: the last sequence applied per channel (None
    before its snapshot, and between a ``resync`` and the fresh snapshot)."""

    last: dict[str, int | None] = field(default_factory=lambda: dict.fromkeys(CHANNELS))
    messages: int = 0
    gaps: int = 0
    resyncs: int = 0
    errors: list[str] = field(default_factory=list)

    def snapshotted(self) -> bool:
        return all(value is not None for value in self.last.values())

    def apply(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), message.get("channel")
        self.messages += 1
        if kind == "snapshot" and channel in self.last:
            self.last[channel] = int(message["sequence"])
        elif kind == "resync" and channel in self.last:
            self.resyncs += 1
            self.last[channel] = None
        elif kind in {"delta", "trade"} and channel in self.last:
            last = self.last[channel]
            if last is None:
                return  # before the (fresh) snapshot: the snapshot covers it
            sequence, previous = int(message["sequence"]), message.get("prev_sequence")
            if previous == last or (previous is None and last == 0):
                self.last[channel] = sequence
            elif sequence > last:
                self.gaps += 1  # never silent: the server owes a resync instead
                self.last[channel] = sequence
        elif kind == "error":
            self.errors.append(str(message.get("error")))


@dataclass
class _Fanout:
    """Every subscriber of the process, and when each book delta reached the first and the last."""

    subscribers: list[_Subscriber] = field(default_factory=list)
    spread: dict[int, list[float]] = field(default_factory=dict)  # delta sequence -> [first, last] receipt
    trade_lags: list[float] = field(default_factory=list)

    def heard(self, subscriber: _Subscriber, raw: str | bytes) -> None:
        now = time.time()
        message = json.loads(raw)
        if not isinstance(message, dict):
            return
        subscriber.apply(message)
        kind = message.get("type")
        if kind == "delta":
            seen = self.spread.setdefault(int(message["sequence"]), [now, now])
            seen[1] = now
        elif kind == "trade" and isinstance(message.get("time"), str):
            self.trade_lags.append(now - datetime.fromisoformat(message["time"]).timestamp())


async def _follow(url: str, symbol: str, fanout: _Fanout, gate: asyncio.Semaphore, stop: asyncio.Event) -> None:
    import websockets

    subscriber = _Subscriber()
    fanout.subscribers.append(subscriber)
    await gate.acquire()  # at most CONNECTING_AT_ONCE handshakes and snapshots at a time
    held = True
    try:
        # Compression offered as browsers do (permessage-deflate; the server may decline it).
        async with websockets.connect(url, ping_interval=None, max_size=2**22, open_timeout=60) as ws:
            for channel in CHANNELS:
                await ws.send(json.dumps({"op": "subscribe", "channel": channel, "instrument": symbol}))
            while not subscriber.snapshotted():
                fanout.heard(subscriber, await ws.recv())
            gate.release()
            held = False
            receiving = asyncio.ensure_future(_receive(ws, subscriber, fanout))
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            for task in (receiving, stopping):
                task.cancel()
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        subscriber.errors.append(type(exc).__name__)
    finally:
        if held:
            gate.release()


async def _receive(ws: Any, subscriber: _Subscriber, fanout: _Fanout) -> None:
    import websockets

    try:
        async for raw in ws:
            fanout.heard(subscriber, raw)
    except websockets.ConnectionClosed as exc:
        subscriber.errors.append(f"closed {exc.rcvd.code if exc.rcvd else 'abnormally'}")


async def _subscribe_all(url: str, symbol: str, count: int, commands: Any, reports: Any) -> None:
    fanout = _Fanout()
    gate, stop = asyncio.Semaphore(CONNECTING_AT_ONCE), asyncio.Event()
    loop = asyncio.get_running_loop()
    tasks = [asyncio.ensure_future(_follow(url, symbol, fanout, gate, stop)) for _ in range(count)]
    while len(fanout.subscribers) < count or not all(
        s.snapshotted() or s.errors for s in fanout.subscribers
    ):  # every one subscribed with both snapshots, or failed
        await asyncio.sleep(0.05)
    fanout.spread.clear()  # measured over the run's own deltas, from here
    fanout.trade_lags.clear()
    failed = Counter(error for s in fanout.subscribers for error in s.errors)
    reports.put(("ready", (sum(s.snapshotted() for s in fanout.subscribers), dict(failed.most_common(3)))))
    _, book, trades = await loop.run_in_executor(None, commands.get)
    ends = time.monotonic() + SETTLE_SECONDS
    targets = {"book": book, "trades": trades}
    while time.monotonic() < ends and not all(_complete(s, targets) for s in fanout.subscribers if not s.errors):
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    reports.put(("done", _summary(fanout, targets)))


def _complete(subscriber: _Subscriber, targets: Mapping[str, int]) -> bool:
    return all(subscriber.last[channel] == targets[channel] for channel in CHANNELS)


def _summary(fanout: _Fanout, targets: Mapping[str, int]) -> dict[str, Any]:
    subscribers = fanout.subscribers
    messages = [s.messages for s in subscribers]
    spreads = [last - first for first, last in fanout.spread.values()]
    failed = Counter(error for s in subscribers for error in s.errors)
    complete = sum(_complete(s, targets) for s in subscribers)
    gapped = sum(s.gaps > 0 for s in subscribers)
    return {
        "subscribers": len(subscribers),
        "complete": complete,
        "with_gaps": gapped,
        "gaps": sum(s.gaps for s in subscribers),
        "resyncs": sum(s.resyncs for s in subscribers),
        "gapless_or_resynced": gapped == 0 and complete == len(subscribers),
        "messages": sum(messages),
        "messages_per_subscriber": [min(messages, default=0), max(messages, default=0)],
        "last_sequences": dict(targets),
        "delta_spread_p50_ms": latency_ms(spreads, 0.50),
        "delta_spread_p99_ms": latency_ms(spreads, 0.99),
        "trade_to_subscriber_p50_ms": latency_ms(fanout.trade_lags, 0.50),
        "trade_to_subscriber_p99_ms": latency_ms(fanout.trade_lags, 0.99),
        "failures": dict(failed.most_common(5)),
    }


def _subscribers_main(url: str, symbol: str, count: int, commands: Any, reports: Any) -> None:
    """A spawned process running every subscriber on one event loop."""
    asyncio.run(_subscribe_all(url, symbol, count, commands, reports))


class Subscribers:
    """S subscribers in a process of their own: connected and snapshotted on entry, then
    :meth:`finish` once the last sequences are known."""

    def __init__(self, url: str, symbol: str, count: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.commands, self.reports = context.Queue(), context.Queue()
        self.process = context.Process(
            target=_subscribers_main, args=(url, symbol, count, self.commands, self.reports), daemon=True
        )
        self.count = count

    def __enter__(self) -> Subscribers:
        self.process.start()
        _, (ready, failures) = self._next("ready", timeout=300)
        if ready < self.count:
            self.process.kill()
            raise click.ClickException(f"only {ready} of {self.count} subscribers got their snapshots: {failures}")
        return self

    def _next(self, stage: str, timeout: float) -> tuple[str, Any]:
        ends = time.monotonic() + timeout
        while time.monotonic() < ends:
            with contextlib.suppress(Exception):
                report: tuple[str, Any] = self.reports.get(timeout=0.5)
                return report
            if not self.process.is_alive():
                raise click.ClickException(f"the subscribers' process died before it was {stage}")
        raise click.ClickException(f"the subscribers were not {stage} within {timeout:.0f} s")

    def cpu_seconds(self) -> float:
        from bourse.bench.harness import tree_cpu

        return tree_cpu(self.process.pid or 0)

    def finish(self, book: int, trades: int) -> dict[str, Any]:
        """Tell the subscribers the last sequences; their tally once each has reached them (or the time is up)."""
        self.commands.put(("finish", book, trades))
        _, summary = self._next("done", timeout=SETTLE_SECONDS + 120)
        summary_dict: dict[str, Any] = summary
        return summary_dict

    def __exit__(self, *_: object) -> None:
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


# -- The machine ----------------------------------------------------------------------------

# The Bourse commands whose CPU a run reports, by the role they play.
ROLES = {"serve": "api", "stream": "stream", "matcher": "matcher"}


def _role(process: Any) -> str | None:
    """``api``, ``stream`` or ``matcher`` for a ``bourse`` process (``python -m bourse serve``,
    ``.venv/bin/bourse stream``, a process of ``--workers``), ``postgresql``, ``redis``, or None."""
    name = (process.info.get("name") or "").lower()
    if name.startswith("postgres"):
        return "postgresql"
    if name.startswith("redis-server"):
        return "redis"
    args: list[str] = process.info.get("cmdline") or []
    for arg, command in itertools.pairwise(args):
        if arg == "bourse" or arg.endswith("/bourse"):
            return ROLES.get(command)
    return None


Sample = dict[int, tuple[str, float]]  # pid -> (role, CPU seconds so far)
MACHINE = -1  # the key of the whole machine's busy CPU seconds in a sample


def role_cpu(listeners: Mapping[int, str]) -> Sample:
    """CPU seconds so far of the benchmark's servers (the processes listening on the ports
    of ``listeners``, port -> role, and their children), every ``bourse matcher``,
    PostgreSQL and Redis; and of the whole machine, busy (neither idle nor waiting on I/O)."""
    import psutil  # type: ignore[import-untyped]

    servers: dict[int, str] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.pid and conn.laddr and conn.laddr.port in listeners:
            servers[conn.pid] = listeners[conn.laddr.port]
    for pid, server in list(servers.items()):
        with contextlib.suppress(psutil.Error):
            servers.update({child.pid: server for child in psutil.Process(pid).children(recursive=True)})
    sample: Sample = {}
    for process in psutil.process_iter(["name", "cmdline"]):
        role = servers.get(process.pid) or _role(process)
        if role is None or (role in {"api", "stream"} and process.pid not in servers):
            continue  # not a process of this benchmark's servers (another test's, say)
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            sample[process.pid] = (role, times.user + times.system)
    # Busy: user (guest time is part of it), nice, system, interrupts; not idle, not waiting
    # on I/O, not stolen by the hypervisor.
    machine = psutil.cpu_times()
    busy = machine.user + machine.nice + machine.system
    sample[MACHINE] = ("machine busy", busy + getattr(machine, "irq", 0.0) + getattr(machine, "softirq", 0.0))
    return sample


def _spent(before: Sample, after: Sample) -> dict[str, float]:
    """CPU seconds by role between two samples (a process that exited meanwhile is not counted)."""
    totals: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        earlier = before.get(pid)
        totals[role] = totals.get(role, 0.0) + seconds - (earlier[1] if earlier and earlier[0] == role else 0.0)
    return {role: round(value, 1) for role, value in sorted(totals.items())}


def _settled(settings: Settings, symbol: str) -> tuple[int, int]:
    """Once the matcher has carried out every command: the instrument's book and trade sequences."""
    from sqlalchemy import func, select, text

    from bourse.db import Database, unit_of_work
    from bourse.trading.models import PENDING_COMMANDS_SQL, Instrument, Order, Trade

    database = Database.from_settings(settings, name="bench")
    try:
        ends = time.monotonic() + SETTLE_SECONDS
        while True:
            with unit_of_work(database) as session:
                pending = session.scalar(
                    select(func.count())
                    .select_from(Order)
                    .where(Order.instrument == symbol, text(f"({PENDING_COMMANDS_SQL})"))
                )
                if not pending or time.monotonic() > ends:
                    book = session.get_one(Instrument, symbol).sequence
                    trades = session.scalar(select(func.max(Trade.sequence)).where(Trade.instrument == symbol))
                    return book, int(trades or 0)
            time.sleep(0.1)
    finally:
        database.dispose()


def _run(  # noqa: PLR0917 - the run's parameters
    settings: Settings,
    api: str,
    stream: str,
    traders: Traders,
    subscribers: int,
    concurrency: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    symbol = traders.market.symbol
    listeners = {urlsplit(stream).port or 80: "stream", urlsplit(api).port or 80: "api"}  # the API's role wins
    # The CPU window is the run and the start of its client processes: cpu_window_seconds.
    if subscribers == 0:
        before, began = role_cpu(listeners), time.monotonic()
        orders = run_orders(api, traders, concurrency, rate, seconds)
        spent = _spent(before, role_cpu(listeners))
        return {"subscribers": 0, **orders, "cpu_seconds": spent, "cpu_window_seconds": _since(began)}
    with Subscribers(stream, symbol, subscribers) as fanout:
        before, began = role_cpu(listeners), time.monotonic()
        client_before = fanout.cpu_seconds()
        orders = run_orders(api, traders, concurrency, rate, seconds)
        spent = _spent(before, role_cpu(listeners))
        spent["subscribers (bench)"] = round(fanout.cpu_seconds() - client_before, 1)
        window = _since(began)
        book, trades = _settled(settings, symbol)
        tally = fanout.finish(book, trades)
    return {"subscribers": subscribers, **orders, "cpu_seconds": spent, "cpu_window_seconds": window, "fanout": tally}


def _since(began: float) -> float:
    return round(time.monotonic() - began, 1)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return round(numerator / denominator, 2)


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}/api/v1/ws"


def _check_http(url: str, option: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in {"", "/"}:
        raise click.BadParameter("an http:// URL with no path", param_hint=option)


def _summary_line(result: Mapping[str, Any]) -> str:
    base, with_subs = result["baseline"], result["subscribed"]
    fan = with_subs.get("fanout", {})
    lines: Iterable[str] = (
        f"baseline:   {base['requests_per_second']}/s  p50 {base['p50_ms']} ms  p99 {base['p99_ms']} ms",
        (
            f"{with_subs['subscribers']} subs: {with_subs['requests_per_second']}/s"
            f"  p50 {with_subs['p50_ms']} ms  p99 {with_subs['p99_ms']} ms"
        ),
        f"p99 ratio:  {result['p99_ratio']} (target <= {TARGET_P99_RATIO}: {'met' if result['met'] else 'missed'})",
        (
            f"subscribers complete {fan.get('complete')}/{fan.get('subscribers')}, gaps {fan.get('gaps')},"
            f" resyncs {fan.get('resyncs')}, delta spread p99 {fan.get('delta_spread_p99_ms')} ms"
        ),
    )
    return "\n".join(lines)


@click.command("fanout")
@click.option("--api-url", default="http://127.0.0.1:8000", show_default=True, help="A running `bourse serve`.")
@click.option(
    "--stream-url",
    default=None,
    help="What serves /api/v1/ws: a running `bourse stream` (default: the API, for the in-process fan-out).",
)
@click.option(
    "--subscribers", type=click.IntRange(1, 10_000), default=1000, show_default=True, help="WebSocket subscribers."
)
@click.option(
    "--rate", type=click.FloatRange(1, 10_000), default=20, show_default=True, help="Requests per second in all."
)
@click.option(
    "--seconds", type=click.FloatRange(1, 3600), default=30, show_default=True, help="How long each run measures."
)
@click.option(
    "--warmup", type=click.FloatRange(0, 600), default=5, show_default=True, help="Untimed orders before the runs."
)
@click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Client processes.")
@click.option(
    "--traders",
    type=click.IntRange(1, 100_000),
    default=64,
    show_default=True,
    help="Funded traders (at least one per client).",
)
@click.option("--symbol", default=DEFAULT_SYMBOL, show_default=True, help="The instrument to trade and follow.")
@json_option
def bench_fanout(  # noqa: PLR0917 - one parameter per option
    api_url: str,
    stream_url: str | None,
    subscribers: int,
    rate: float,
    seconds: float,
    warmup: float,
    concurrency: int,
    traders: int,
    symbol: str,
    as_json: bool,
) -> None:
    """Orders at a fixed rate through the API, with no subscriber and then with S WebSocket
    subscribers to the instrument's book and trades: order p50/p99 to the final state, their
    ratio, and whether every subscriber's sequences were gapless or resynced.

    The traders are created and funded directly in the configured database, which must be
    the servers'; tokens are minted with its JWT key.
    """
    from bourse.errors import BourseError

    _check_http(api_url, "--api-url")
    _check_http(stream_url or api_url, "--stream-url")
    if traders < concurrency:
        raise click.BadParameter("at least one trader per client", param_hint="--traders")
    settings = command_settings()
    try:
        prepared = prepare_traders(settings, traders, symbol)
    except BourseError as exc:
        raise click.BadParameter(exc.detail, param_hint="--symbol") from exc
    if warmup:
        run_orders(api_url, prepared, concurrency, rate, warmup)
    stream = _ws_url(stream_url or api_url)
    baseline = _run(settings, api_url, stream, prepared, 0, concurrency, rate, seconds)
    subscribed = _run(settings, api_url, stream, prepared, subscribers, concurrency, rate, seconds)
    p99_ratio = _ratio(subscribed["p99_ms"], baseline["p99_ms"])
    fanout = subscribed["fanout"]
    result = {
        "benchmark": "fanout",
        "database": settings.database.get_backend_name(),
        "instrument": symbol,
        "api_url": api_url,
        "stream_url": stream,
        "rate": rate,
        "concurrency": concurrency,
        "traders": traders,
        "baseline": baseline,
        "subscribed": subscribed,
        "p50_ratio": _ratio(subscribed["p50_ms"], baseline["p50_ms"]),
        "p99_ratio": p99_ratio,
        "met": p99_ratio is not None and p99_ratio <= TARGET_P99_RATIO and fanout["gapless_or_resynced"],
        "machine": machine(),
    }
    emit(result, as_json, summary=_summary_line(result))
