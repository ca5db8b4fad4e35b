"""``bourse bench matching``: the order book engine alone, on one core, on a realistic flow.

The command stream is generated first and is not timed: 70% limit orders near
the touch (a few IOC and FOK, some crossing the spread), 10% market orders (some
buys capped by a quote budget, a few FOK), 20% cancels of orders that are
resting at that point, from 50 owners around a slowly drifting mid price. To
know which orders are resting, generation drives a book of its own; the timed
run replays the same commands into a fresh book, and must end in the same state
(the engine is deterministic), which the command checks.

Only ``Book.place`` and ``Book.cancel`` are timed. Every ``LATENCY_EVERY``-th
command is also timed on its own for the p50/p99 latency, so that measuring
does not slow the run being measured.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from bourse.bench.harness import emit, machine, percentile

if TYPE_CHECKING:
    from bourse.trading.engine.book import Book
    from bourse.trading.engine.vocabulary import NewOrder

LATENCY_EVERY = 16
OWNERS = 50
START_PRICE = 100_000  # ticks
LIMIT_SHARE = 0.70
MARKET_SHARE = 0.10  # the rest are cancels
CROSSING_SHARE = 0.2  # limit orders priced through the touch, by up to CROSS_TICKS
CROSS_TICKS = 3
BEHIND_TICKS = 10  # the others rest up to this far behind the mid
LIMIT_IOC_SHARE = 0.04
LIMIT_FOK_SHARE = 0.02
MARKET_FOK_SHARE = 0.1
BUDGET_SHARE = 0.3  # market buys capped by a quote budget
MAX_LIMIT_LOTS = 20
MAX_MARKET_LOTS = 30
DRIFT_SHARE = 0.05  # after this share of orders the mid moves by one tick


@dataclass
class Stream:
    """Commands as (order to place, or None and the order id to cancel), and what they produced."""

    commands: list[tuple[NewOrder | None, int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {"limit": 0, "market": 0, "cancel": 0})
    fills: int = 0
    events: int = 0


def generate(count: int, seed: int) -> tuple[Stream, Book]:
    """``count`` commands from ``seed``; also the book they leave, to check the timed replay."""
    from bourse.trading.engine.book import Book
    from bourse.trading.engine.vocabulary import Fill, OrderKind, Rested

    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    book = Book()
    stream = Stream()
    owners = [f"account-{i}" for i in range(OWNERS)]
    live: list[int] = []  # ids that rested; some may have filled since (checked when drawn)
    mid = START_PRICE
    next_id = 1
    while len(stream.commands) < count:
        roll = rng.random()
        order: NewOrder | None = None
        cancel_id = 0
        if roll >= LIMIT_SHARE + MARKET_SHARE:
            target = _draw_live(rng, live, book)
            if target is None:
                continue  # nothing resting yet: draw again
            cancel_id, kind = target, "cancel"
            events = book.cancel(target)
        else:
            order = _new_order(rng, next_id, owners[rng.randrange(OWNERS)], mid, market=roll >= LIMIT_SHARE)
            kind = "market" if order.kind is OrderKind.MARKET else "limit"
            next_id += 1
            events = book.place(order)
            if isinstance(events[-1], Rested):
                live.append(order.order_id)
            if rng.random() < DRIFT_SHARE:
                mid += rng.choice((-1, 1))
        stream.commands.append((order, cancel_id))
        stream.counts[kind] += 1
        stream.events += len(events)
        stream.fills += sum(1 for event in events if isinstance(event, Fill))
    return stream, book


def _new_order(rng: random.Random, order_id: int, owner: str, mid: int, *, market: bool) -> NewOrder:
    from bourse.trading.engine.vocabulary import Side, TimeInForce, limit_order, market_order

    side = rng.choice((Side.BUY, Side.SELL))
    if market:
        budget = None
        if side is Side.BUY and rng.random() < BUDGET_SHARE:
            budget = rng.randint(1, MAX_MARKET_LOTS) * mid
        tif = TimeInForce.FOK if rng.random() < MARKET_FOK_SHARE else TimeInForce.IOC
        return market_order(order_id, owner, side, rng.randint(1, MAX_MARKET_LOTS), tif=tif, quote_budget=budget)
    crossing = rng.random() < CROSSING_SHARE
    offset = -rng.randint(0, CROSS_TICKS) if crossing else rng.randint(1, BEHIND_TICKS)
    price = mid - offset if side is Side.BUY else mid + offset
    tif_roll = rng.random()
    tif = TimeInForce.GTC
    if tif_roll < LIMIT_IOC_SHARE:
        tif = TimeInForce.IOC
    elif tif_roll < LIMIT_IOC_SHARE + LIMIT_FOK_SHARE:
        tif = TimeInForce.FOK
    return limit_order(order_id, owner, side, price, rng.randint(1, MAX_LIMIT_LOTS), tif=tif)


def _draw_live(rng: random.Random, live: list[int], book: Book) -> int | None:
    """A random resting order id (swap-remove, so each draw is O(1) amortized)."""
    while live:
        position = rng.randrange(len(live))
        order_id = live[position]
        live[position] = live[-1]
        live.pop()
        if order_id in book:
            return order_id
    return None


def run(stream: Stream) -> tuple[float, list[float], Book]:
    """Replay the stream into a fresh book: total seconds, sampled latencies, the book."""
    from bourse.trading.engine.book import Book

    book = Book()
    place, cancel = book.place, book.cancel
    clock = time.perf_counter
    samples: list[float] = []
    sample = samples.append
    started = clock()
    for position, (order, cancel_id) in enumerate(stream.commands):
        if position % LATENCY_EVERY:
            if order is None:
                cancel(cancel_id)
            else:
                place(order)
        else:
            begin = clock()
            if order is None:
                cancel(cancel_id)
            else:
                place(order)
            sample(clock() - begin)
    return clock() - started, samples, book


@click.command("matching")
@click.option("--orders", "count", type=click.IntRange(min=1), default=200_000, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_matching(count: int, seed: int, as_json: bool) -> None:
    """The matching engine alone: commands/s (place and cancel), fills, p50/p99 per command."""
    stream, expected = generate(count, seed)
    seconds, latencies, book = run(stream)
    if book.sequence != expected.sequence or book.snapshot() != expected.snapshot():
        raise click.ClickException("the timed replay diverged from generation: the engine is not deterministic")
    result: dict[str, Any] = {
        "benchmark": "matching",
        "orders": count,
        "seed": seed,
        "commands": stream.counts,
        "fills": stream.fills,
        "events": stream.events,
        "resting_after": len(book),
        "seconds": round(seconds, 4),
        "orders_per_second": round(count / seconds, 1),
        "latency_sample_every": LATENCY_EVERY,
        "latency_samples": len(latencies),
        "p50_us": round(percentile(latencies, 0.5) * 1e6, 2),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 2),
        "machine": machine(),
    }
    summary = (
        f"matching  {result['orders_per_second']:>10}/s  {count} commands  {stream.fills} fills"
        f"  p50 {result['p50_us']} us  p99 {result['p99_us']} us"
    )
    emit(result, as_json, indent=2, summary=summary)
