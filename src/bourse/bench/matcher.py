"""``bourse bench matcher``: the matcher alone, every command already pending, settlement included.

Issue 15's target for one instrument is 2,000 orders/s through the matcher. This
measures exactly that part of the path: no HTTP, no client, no acceptance in the
timed window; only a fresh :class:`~bourse.trading.matcher.ShardMatcher` taking the
shard's leadership (as the code provides it: an advisory lock on PostgreSQL, a
``flock`` beside a SQLite file), rebuilding the instrument's book from the resting
orders, and draining every pending command in batches: sequencing, matching and
settling each fill as one ledger entry, with the holds, the order and trade rows,
the commissions job and the market-data note, one transaction per batch
(:mod:`bourse.trading.sequencing`).

**Set-up (not timed).** Against the configured database (PostgreSQL or SQLite):
the instrument must exist and be open (BTC-USD by default, as for ``bench
orders-http``); traders are created and funded directly in the database
(:func:`bourse.bench.orders_http.prepare_traders`). Then each pass, while a
*keeper* matcher holds the shard's leadership so that no other matcher (a
running ``bourse serve`` or ``bourse matcher``) can carry out our commands:

1. whatever benchmark traders (this run's and earlier runs') have live on the
   instrument is cancelled (``request_cancel_all``) and drained, so every pass
   starts from an empty book; anyone else's order there is refused, as the
   benchmark needs a database of its own;
2. a warm-up set is accepted and drained: ``WARMUP_PAIRS`` pairs of limit orders
   that trade with each other at the mid (so the settlement path has run once,
   its imports and statement caches warm, as in a matcher that has been up a
   while), then GTC limit orders priced behind the mid (buys below, sells above:
   none crosses, so every one rests);
3. the timed set of ``--orders`` commands is accepted, a mix like ``bench
   orders-http``'s, drawn from ``--seed``: 55% limit orders around the mid (buy
   and sell ranges overlapping, so about one in five crosses on arrival), 20%
   market orders (buys with a quote budget, sells with a quantity) and 25%
   cancels, each of a distinct warm-up order that rests. The warm-up set is as
   large as the cancels plus a tenth of the set (at least 50), so the book
   keeps depth for the market orders once the cancels are done.

Orders go through the real placement path (:func:`bourse.trading.orders.accept_order`:
the checks, the hold, the ``pending`` row) and cancels through
:func:`bourse.trading.orders.request_cancel`, ``ACCEPT_GROUP`` of them per
transaction to keep the set-up short (the matcher cannot tell: it reads pending
rows). The matcher takes pending commands oldest order id first, so the cancels,
which mark warm-up orders, run before the new orders: the timed window's first
batches are cancels.

**Timed.** The keeper steps down, and a fresh matcher leads and drains until nothing
is pending. Reported: commands (orders and cancels), fills, batches, seconds,
commands and fills per second, and the batches' times: ``batch_ms_*`` are the
intervals between consecutive batch commits as the matcher's ``on_batch`` hook sees
them (each includes its round's query for instruments with pending commands; the
first also includes leadership and the book's rebuild); ``settle_ms_mean`` is from
the matcher's own ``bourse_matcher_settle_seconds`` histogram (first statement to
commit). Afterwards the command checks, cheaply, that it drained exactly the
commands it accepted and that nothing is pending; the tests do the deep checks.

**Baseline.** Unless ``--no-baseline``, a second pass runs the same way on a fresh set
of the same size (the next seed) with batches of one command: a transaction per
command, as every order had before batching. ``batching_speedup`` is the ratio of the
two commands/s: what settling in batches buys on this machine and database.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from bourse.bench.harness import command_settings, emit, json_option, machine, percentile
from bourse.bench.orders_http import (
    DEFAULT_MID,
    DEFAULT_SYMBOL,
    LIMIT_SHARE,
    MARKET_SHARE,
    MAX_LOTS,
    OVERLAP_STEPS,
    SPREAD_STEPS,
    STEP_TICKS,
    Market,
)

if TYPE_CHECKING:
    from bourse.db import Database
    from bourse.settings import Settings
    from bourse.trading.sequencing import Batch

DEFAULT_ORDERS = 3000
DEFAULT_TRADERS = 50
# Commands accepted per set-up transaction.
ACCEPT_GROUP = 100
# The warm-up set rests this share of the timed set (at least MIN_DEPTH orders) beyond
# the orders the timed set cancels.
DEPTH_SHARE = 0.1
MIN_DEPTH = 50
# Benchmark traders' e-mail addresses end in @BENCH_DOMAIN (bourse.bench.users).
BENCH_DOMAIN = "bench.invalid"
# Pairs of warm-up orders that trade with each other at the mid and touch nothing else,
# so the untimed warm-up exercises the whole settlement path once (imports, statement
# caches) and the timed window measures a warm matcher.
WARMUP_PAIRS = 5
# Market buys spend 10 to 200 whole quote units, fees included (as in bench orders-http).
MIN_BUDGET_UNITS = 10
MAX_BUDGET_UNITS = 200


# -- The plan: what is accepted, drawn from the seed (no database) --------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """One command to accept: an order for trader ``trader``, or (``kind == "cancel"``) the
    cancel of warm-up order number ``target``."""

    kind: str  # "limit", "market" or "cancel"
    trader: int = 0
    side: str = "buy"
    price: int | None = None  # at the instrument's price scale
    quantity: int | None = None  # base minor units
    quote_budget: int | None = None  # quote minor units
    target: int = 0


@dataclass
class Plan:
    warmup: list[Command] = field(default_factory=list)
    timed: list[Command] = field(default_factory=list)

    @property
    def resting(self) -> int:
        """How many warm-up orders rest once the warm-up set is drained."""
        return len(self.warmup) - 2 * WARMUP_PAIRS

    def count(self, kind: str) -> int:
        return sum(1 for command in self.timed if command.kind == kind)


def plan(market: Market, traders: int, count: int, seed: int) -> Plan:
    """The warm-up set and ``count`` timed commands for ``traders`` traders, from ``seed``."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    kinds = []
    for _ in range(count):
        draw = rng.random()
        kinds.append("limit" if draw < LIMIT_SHARE else "market" if draw < LIMIT_SHARE + MARKET_SHARE else "cancel")
    cancels = kinds.count("cancel")
    result = Plan()
    # First the pairs that trade with each other at the mid, then the orders that rest.
    for pair in range(WARMUP_PAIRS):
        quantity = rng.randint(_min_lots(market), MAX_LOTS) * market.lot_size
        seller, buyer = pair % traders, (pair + 1) % traders
        result.warmup.append(Command("limit", seller, "sell", price=market.mid, quantity=quantity))
        result.warmup.append(Command("limit", buyer, "buy", price=market.mid, quantity=quantity))
    resting = cancels + max(MIN_DEPTH, int(count * DEPTH_SHARE))
    result.warmup += [_limit(rng, market, traders, resting=True) for _ in range(resting)]
    targets = list(range(2 * WARMUP_PAIRS, len(result.warmup)))
    rng.shuffle(targets)
    for kind in kinds:
        if kind == "cancel":
            result.timed.append(Command("cancel", target=targets.pop()))
        elif kind == "market":
            result.timed.append(_market(rng, market, traders))
        else:
            result.timed.append(_limit(rng, market, traders, resting=False))
    return result


def _min_lots(market: Market) -> int:
    return max(1, -(-market.min_quantity // market.lot_size))


def _limit(rng: random.Random, market: Market, traders: int, *, resting: bool) -> Command:
    """A GTC limit order around the mid; a ``resting`` one is priced behind it, so it never crosses."""
    side = rng.choice(("buy", "sell"))
    steps = rng.randint(-SPREAD_STEPS, -1 if resting else OVERLAP_STEPS)
    offset = steps * STEP_TICKS * market.tick_size
    price = market.mid + offset if side == "buy" else market.mid - offset
    lots = rng.randint(_min_lots(market), MAX_LOTS)
    return Command("limit", rng.randrange(traders), side, price=price, quantity=lots * market.lot_size)


def _market(rng: random.Random, market: Market, traders: int) -> Command:
    trader = rng.randrange(traders)
    if rng.random() < 0.5:  # noqa: PLR2004 - as many buys as sells
        budget = rng.randint(MIN_BUDGET_UNITS, MAX_BUDGET_UNITS) * 10**market.quote_scale
        return Command("market", trader, "buy", quote_budget=budget)
    lots = rng.randint(_min_lots(market), MAX_LOTS)
    return Command("market", trader, "sell", quantity=lots * market.lot_size)


# -- Set-up: accepting the commands ---------------------------------------------------------


def _current_market(database: Database, market: Market) -> Market:
    """``market`` with the mid at the instrument's last price now; refuses a halted instrument."""
    from dataclasses import replace

    from bourse.db import unit_of_work
    from bourse.trading.instruments import get_instrument
    from bourse.trading.models import InstrumentStatus

    with unit_of_work(database) as session:
        instrument = get_instrument(session, market.symbol)
        if instrument.status is not InstrumentStatus.open:
            raise click.BadParameter(f"{market.symbol} is {instrument.status.value}, not open", param_hint="--symbol")
        mid = instrument.last_price or DEFAULT_MID * 10**instrument.price_scale
    return replace(market, mid=mid - mid % market.tick_size)


def _accept_orders(
    database: Database, market: Market, traders: list[uuid.UUID], commands: list[Command]
) -> list[tuple[int, uuid.UUID]]:
    """Accept the orders among ``commands`` (in order); each one's (order id, owner)."""
    from bourse.assets.amounts import format_amount
    from bourse.db import unit_of_work
    from bourse.ledger.posting import Context, user_actor
    from bourse.trading.orders import accept_order

    placed: list[tuple[int, uuid.UUID]] = []
    for start in range(0, len(commands), ACCEPT_GROUP):
        with unit_of_work(database) as session:
            for command in commands[start : start + ACCEPT_GROUP]:
                owner = traders[command.trader]
                accepted = accept_order(
                    session,
                    user_id=owner,
                    symbol=market.symbol,
                    side=command.side,
                    kind=command.kind,
                    tif=None,
                    price_text=None if command.price is None else format_amount(command.price, market.price_scale),
                    quantity_text=None
                    if command.quantity is None
                    else format_amount(command.quantity, market.base_scale),
                    quote_budget_text=None
                    if command.quote_budget is None
                    else format_amount(command.quote_budget, market.quote_scale),
                    context=Context(actor=user_actor(owner), idempotency_key=""),
                )
                placed.append((accepted.order.id, owner))
    return placed


def _accept_timed(
    database: Database,
    market: Market,
    traders: list[uuid.UUID],
    commands: list[Command],
    warmup: list[tuple[int, uuid.UUID]],
) -> None:
    """Accept the timed set in its order: orders placed, cancels requested of warm-up orders."""
    from bourse.db import unit_of_work
    from bourse.trading.orders import request_cancel

    for start in range(0, len(commands), ACCEPT_GROUP):
        group = commands[start : start + ACCEPT_GROUP]
        orders = [command for command in group if command.kind != "cancel"]
        _accept_orders(database, market, traders, orders)
        with unit_of_work(database) as session:
            for command in group:
                if command.kind == "cancel":
                    order_id, owner = warmup[command.target]
                    request_cancel(session, user_id=owner, order_id=order_id)


def _clear_book(database: Database, keeper: Any, symbol: str) -> None:
    """Cancel what every benchmark trader (of any run) has live on ``symbol``, through the
    keeper; refuse to go on if anyone else's orders rest there."""
    from sqlalchemy import func, select

    from bourse.db import unit_of_work
    from bourse.identity.models import User
    from bourse.trading.models import LIVE_STATUSES, Order
    from bourse.trading.orders import request_cancel_all

    live = (Order.instrument == symbol, Order.status.in_(LIVE_STATUSES))
    with unit_of_work(database) as session:
        owners = list(
            session.scalars(
                select(Order.user_id)
                .join(User, User.id == Order.user_id)
                .where(*live, User.email.like(f"%@{BENCH_DOMAIN}"))
                .distinct()
            )
        )
    for start in range(0, len(owners), ACCEPT_GROUP):
        with unit_of_work(database) as session:
            for owner in owners[start : start + ACCEPT_GROUP]:
                request_cancel_all(session, user_id=owner, symbol=symbol)
    keeper.drain(max_rounds=_pending(database, symbol) + 2)
    with unit_of_work(database) as session:
        others = session.scalar(select(func.count()).select_from(Order).where(*live))
    if others:
        raise click.ClickException(
            f"{others} orders of people other than benchmark traders are live on {symbol}: run the"
            " benchmark on a database of its own (`make bench-matcher` recreates one)"
        )


def _pending(database: Database, symbol: str) -> int:
    """How many commands of ``symbol`` are pending (orders to sequence, cancels to carry out)."""
    from sqlalchemy import func, select, text

    from bourse.db import unit_of_work
    from bourse.trading.models import PENDING_COMMANDS_SQL, Order

    with unit_of_work(database) as session:
        found = session.scalar(
            select(func.count()).select_from(Order).where(Order.instrument == symbol, text(f"({PENDING_COMMANDS_SQL})"))
        )
    return int(found or 0)


# -- The timed drain ------------------------------------------------------------------------


@dataclass
class _Batches:
    """What the matcher's ``on_batch`` hook saw: each batch's commit time, commands and fills."""

    clock: Callable[[], float] = time.perf_counter
    started: float = 0.0
    ends: list[float] = field(default_factory=list)
    commands: int = 0
    fills: int = 0

    def __call__(self, batch: Batch) -> None:
        self.ends.append(self.clock())
        self.commands += len(batch.commands)
        self.fills += len(batch.trades)

    def intervals_ms(self) -> list[float]:
        marks = [self.started, *self.ends]
        return [(later - earlier) * 1000 for earlier, later in itertools.pairwise(marks)]


def _settle_totals() -> tuple[float, float]:
    """The matcher's settle-time histogram in this process: (seconds summed, batches)."""
    from bourse.trading.matcher import SETTLE_SECONDS

    total = count = 0.0
    for metric in SETTLE_SECONDS.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum"):
                total = sample.value
            elif sample.name.endswith("_count"):
                count = sample.value
    return total, count


@dataclass(frozen=True)
class _Shard:
    """Where the instrument's matcher runs: the database its leader writes on, and the shard."""

    database: Database
    shard: int
    shards: int

    def matcher(self, batch_size: int, on_batch: Callable[[Batch], None] | None = None) -> Any:
        from bourse.trading.matcher import ShardMatcher

        return ShardMatcher(
            self.database, shard=self.shard, shards=self.shards, batch_size=batch_size, on_batch=on_batch
        )

    def keeper(self) -> Any:
        """A matcher that holds the shard through the set-up and drains it untimed, in full batches."""
        from bourse.trading.matcher import ShardMatcher

        return ShardMatcher(self.database, shard=self.shard, shards=self.shards)


def _lead(matcher: Any, shard: int) -> None:
    if not matcher.lead():
        raise click.ClickException(
            f"another matcher leads shard {shard} of this database (a `bourse serve` with the"
            " in-process matcher, or `bourse matcher`): stop it, the benchmark must be the only one"
        )


def run_pass(  # noqa: PLR0917 - a pass is all of these
    api: Database,
    shard: _Shard,
    market: Market,
    traders: list[uuid.UUID],
    count: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Accept a warm-up set and ``count`` commands (untimed), then time a fresh matcher's drain."""
    setup_started = time.perf_counter()
    keeper = shard.keeper()
    _lead(keeper, shard.shard)
    try:
        _clear_book(api, keeper, market.symbol)
        current = _current_market(api, market)
        commands = plan(current, len(traders), count, seed)
        warmup = _accept_orders(api, current, traders, commands.warmup)
        keeper.drain(max_rounds=len(warmup) + 2)
        _accept_timed(api, current, traders, commands.timed, warmup)
        pending = _pending(api, market.symbol)
    finally:
        keeper.close()
    if pending != count:
        raise click.ClickException(f"{pending} commands are pending, not the {count} accepted: is a matcher running?")
    setup_seconds = time.perf_counter() - setup_started

    batches = _Batches()
    matcher = shard.matcher(batch_size, on_batch=batches)
    settle_before = _settle_totals()
    batches.started = time.perf_counter()
    try:
        _lead(matcher, shard.shard)
        drained = matcher.drain(max_rounds=count + 2)
        seconds = time.perf_counter() - batches.started
    finally:
        matcher.close()
    settle_after = _settle_totals()

    left = _pending(api, market.symbol)
    if drained != count or left:
        raise click.ClickException(f"the matcher drained {drained} of {count} commands; {left} are still pending")
    intervals = batches.intervals_ms()
    settled_batches = settle_after[1] - settle_before[1]
    return {
        "batch_size": batch_size,
        "seed": seed,
        "commands": count,
        "orders": commands.count("limit") + commands.count("market"),
        "limit": commands.count("limit"),
        "market": commands.count("market"),
        "cancels": commands.count("cancel"),
        "warmup_resting": commands.resting,
        "fills": batches.fills,
        "batches": len(batches.ends),
        # Commands rejected alone because settling them failed (the matcher's isolation).
        "isolated": drained - batches.commands,
        "seconds": round(seconds, 4),
        "commands_per_second": round(count / seconds, 1),
        "fills_per_second": round(batches.fills / seconds, 1),
        "batch_ms_mean": round(sum(intervals) / len(intervals), 3) if intervals else None,
        "batch_ms_p50": round(percentile(intervals, 0.50), 3) if intervals else None,
        "batch_ms_p99": round(percentile(intervals, 0.99), 3) if intervals else None,
        "batch_ms_max": round(max(intervals), 3) if intervals else None,
        "settle_ms_mean": round((settle_after[0] - settle_before[0]) / settled_batches * 1000, 3)
        if settled_batches
        else None,
        "setup_seconds": round(setup_seconds, 2),
    }


def _shard(settings: Settings, symbol: str) -> _Shard:
    """The matcher's database as ``MatcherService`` opens it, and ``symbol``'s shard."""
    from bourse.db import Database, load_models
    from bourse.trading.matcher import shard_of

    load_models()  # a batch touches the ledger, the queue and the users' rows
    if settings.database.get_backend_name() == "postgresql":
        database = Database.direct(settings, name="bench-matcher", pool_size=3)
        if database is None:
            raise click.UsageError(
                "the matcher needs PostgreSQL without a transaction pooler: set BOURSE_DATABASE_DIRECT_URL"
            )
    else:
        database = Database.from_settings(settings, name="bench-matcher", pool_size=3)
    return _Shard(database, shard_of(symbol, settings.matcher_shards), settings.matcher_shards)


@click.command("matcher")
@click.option(
    "--orders",
    "count",
    type=click.IntRange(min=1),
    default=DEFAULT_ORDERS,
    show_default=True,
    help="Commands in the timed set (orders and cancels).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 5000),
    default=None,
    help="Commands per matcher batch (default: BOURSE_MATCHER_BATCH_SIZE, 200).",
)
@click.option("--seed", type=int, default=1, show_default=True, help="Draws the commands.")
@click.option(
    "--traders", type=click.IntRange(2, 10_000), default=DEFAULT_TRADERS, show_default=True, help="Funded traders."
)
@click.option("--symbol", default=DEFAULT_SYMBOL, show_default=True, help="The instrument to trade.")
@click.option(
    "--baseline/--no-baseline",
    default=True,
    show_default=True,
    help="Also drain a fresh set of the same size with batches of one command, and report the ratio.",
)
@json_option
def bench_matcher(  # noqa: PLR0917 - one parameter per option
    count: int, batch_size: int | None, seed: int, traders: int, symbol: str, baseline: bool, as_json: bool
) -> None:
    """The matcher alone: a fresh leader drains commands already pending, settlement included.

    Set-up, not timed: traders created and funded in the configured database, a
    warm-up set of resting orders, then --orders commands (limit, market, cancels
    of resting orders) accepted through the real placement path with no matcher
    running. Timed: the matcher leading, rebuilding the book and settling them all.
    """
    from bourse.bench.orders_http import prepare_traders
    from bourse.db import Database
    from bourse.errors import BourseError

    settings = command_settings()
    size = batch_size or settings.matcher_batch_size
    try:
        prepared = prepare_traders(settings, traders, symbol)
    except BourseError as exc:
        raise click.BadParameter(exc.detail, param_hint="--symbol") from exc
    shard = _shard(settings, symbol)
    api = Database.from_settings(settings)
    owners = [uuid.UUID(user_id) for user_id in prepared.user_ids]
    try:
        result = run_pass(api, shard, prepared.market, owners, count, size, seed)
        base = run_pass(api, shard, prepared.market, owners, count, 1, seed + 1) if baseline else None
    finally:
        api.dispose()
        shard.database.dispose()
    output: dict[str, Any] = {
        "benchmark": "matcher",
        "database": settings.database.get_backend_name(),
        "instrument": symbol,
        "traders": traders,
        **result,
        "baseline": base,
        "batching_speedup": round(result["commands_per_second"] / base["commands_per_second"], 2) if base else None,
        "machine": machine(),
    }
    summary = (
        f"matcher  {result['commands_per_second']:>9}/s  {count} commands  {result['fills']} fills"
        f"  {result['batches']} batches of up to {size}: p50 {result['batch_ms_p50']} ms"
        f"  p99 {result['batch_ms_p99']} ms"
    )
    if base is not None:
        summary += (
            f"\nbaseline {base['commands_per_second']:>9}/s  batches of 1  (batching: x{output['batching_speedup']})"
        )
    emit(output, as_json, summary=summary)
