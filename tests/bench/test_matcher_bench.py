"""``bourse bench matcher``: the matcher alone drains commands already pending, on both backends,
and leaves sound books.

The runs are small; the figures themselves go in docs/benchmarks.md, never asserted here.
What is asserted is that the benchmark measured what it says: every command it accepted
was carried out by the timed matcher (nothing pending, none isolated), orders traded and
cancels cancelled resting orders, the baseline ran one command per batch, and the
database afterwards tells one consistent story (the ledger verifies, the book rebuilds,
holds cover the open orders, no unit of any asset created or lost).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from bourse.bench.matcher import WARMUP_PAIRS, bench_matcher, plan
from bourse.bench.orders_http import Market
from bourse.db import Database, unit_of_work
from bourse.trading.matcher import ShardMatcher
from bourse.trading.models import PENDING_COMMANDS_SQL, Order, OrderStatus, Trade
from tests.support.ledger import verify
from tests.support.processes import clean_env, run_bourse
from tests.support.services import make_settings
from tests.trading.orders_support import asset_total, check_consistent

SYMBOL = "BTC-USD"
# BTC-USD as the migrations seed it: tick 0.01 USD, lot and minimum 0.0001 BTC.
MARKET = Market(
    symbol=SYMBOL,
    price_scale=2,
    tick_size=1,
    lot_size=10_000,
    min_quantity=10_000,
    base_scale=8,
    quote_scale=2,
    mid=3_000_000,
)


def _migrated(url: str) -> dict[str, str]:
    env = clean_env(BOURSE_DATABASE_URL=url, BOURSE_LOG_LEVEL="warning")
    migrated = run_bourse("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    return env


def _bench(env: dict[str, str], *args: str) -> dict[str, Any]:
    result = run_bourse("bench", "matcher", "--json", *args, env=env, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def _check_pass(report: dict[str, Any], commands: int, batch_size: int) -> None:
    assert report["batch_size"] == batch_size
    assert report["commands"] == commands
    assert report["orders"] == report["limit"] + report["market"]
    assert report["orders"] + report["cancels"] == commands
    assert min(report["limit"], report["market"], report["cancels"]) > 0
    assert report["warmup_resting"] > report["cancels"]
    assert report["isolated"] == 0
    assert report["fills"] > 0
    # At least one batch per batch_size commands; one command per batch when batch_size is 1.
    assert report["batches"] >= -(-commands // batch_size)
    if batch_size == 1:
        assert report["batches"] == commands
    assert report["seconds"] > 0
    assert report["commands_per_second"] > 0
    assert report["fills_per_second"] > 0
    assert 0 < report["batch_ms_p50"] <= report["batch_ms_p99"] <= report["batch_ms_max"]
    assert report["batch_ms_mean"] > 0
    assert report["settle_ms_mean"] > 0


def _check_database(url: str, reports: list[dict[str, Any]]) -> None:
    """Nothing pending, every fill recorded once, the cancels carried out, sound books."""
    database = Database.from_settings(make_settings(url))
    try:
        with unit_of_work(database) as session:
            pending = session.scalar(select(func.count()).select_from(Order).where(text(f"({PENDING_COMMANDS_SQL})")))
            trades = session.scalar(select(func.count()).select_from(Trade).where(Trade.instrument == SYMBOL))
            cancelled = session.scalar(
                select(func.count())
                .select_from(Order)
                .where(Order.status == OrderStatus.cancelled, Order.cancel_sequence.is_not(None))
            )
        assert pending == 0
        # The timed fills, and each pass's warm-up pairs (one trade each).
        assert trades == sum(report["fills"] for report in reports) + WARMUP_PAIRS * len(reports)
        # Every cancel of a resting order the passes timed was carried out in the book.
        assert cancelled is not None
        assert cancelled >= sum(report["cancels"] for report in reports)
        for asset in ("BTC", "USD"):
            assert asset_total(database, asset) == 0
        report = verify(database)
        assert report.ok, report.discrepancies
        check_consistent(database, SYMBOL)
    finally:
        database.dispose()


@pytest.mark.process
def test_bench_matcher_on_postgres_with_its_baseline(empty_postgres_url: str) -> None:
    env = _migrated(empty_postgres_url)
    report = _bench(env, "--orders", "300", "--seed", "3", "--traders", "10")
    assert report["benchmark"] == "matcher"
    assert report["database"] == "postgresql"
    assert (report["instrument"], report["traders"], report["seed"]) == (SYMBOL, 10, 3)
    _check_pass(report, 300, 200)
    baseline = report["baseline"]
    _check_pass(baseline, 300, 1)
    assert baseline["seed"] == 4
    assert report["batching_speedup"] == pytest.approx(
        report["commands_per_second"] / baseline["commands_per_second"], abs=0.01
    )
    assert report["machine"]["nproc"] >= 1
    _check_database(empty_postgres_url, [report, baseline])


@pytest.mark.process
def test_bench_matcher_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    env = _migrated(url)
    report = _bench(env, "--orders", "200", "--batch-size", "50", "--no-baseline", "--traders", "5")
    assert report["database"] == "sqlite"
    _check_pass(report, 200, 50)
    assert report["baseline"] is None
    assert report["batching_speedup"] is None
    # A second run on the same database: new traders, the instrument's book carried over.
    again = _bench(env, "--orders", "200", "--no-baseline", "--traders", "5", "--seed", "9")
    _check_pass(again, 200, 200)
    _check_database(url, [report, again])


@pytest.mark.process
def test_bench_matcher_refuses_to_run_beside_a_leading_matcher(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    env = _migrated(url)
    database = Database.from_settings(make_settings(url))
    leader = ShardMatcher(database)
    try:
        assert leader.lead()
        refused = run_bourse("bench", "matcher", "--orders", "10", "--json", env=env, timeout=120)
    finally:
        leader.close()
        database.dispose()
    assert refused.returncode == 1
    assert "another matcher leads shard 0" in refused.stderr
    assert refused.stdout == ""


@pytest.mark.process
def test_bench_matcher_refuses_an_unknown_instrument(tmp_path: Path) -> None:
    env = _migrated(f"sqlite:///{tmp_path / 'bench.db'}")
    refused = run_bourse("bench", "matcher", "--symbol", "NOPE-USD", env=env)
    assert refused.returncode == 2
    assert "--symbol" in refused.stderr
    assert "NOPE-USD" in refused.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--orders", "0"], "--orders"),
        (["--orders", "many"], "--orders"),
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "5001"], "--batch-size"),
        (["--traders", "1"], "--traders"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_bench_matcher_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = CliRunner().invoke(bench_matcher, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.output
    assert message in result.output


def test_the_plan_is_drawn_from_the_seed_and_cancels_only_resting_orders() -> None:
    first = plan(MARKET, 20, 2000, seed=5)
    assert first == plan(MARKET, 20, 2000, seed=5)
    assert first != plan(MARKET, 20, 2000, seed=6)
    assert len(first.timed) == 2000
    kinds = {kind: first.count(kind) for kind in ("limit", "market", "cancel")}
    # The mix of bench orders-http: 55% limit, 20% market, 25% cancels.
    assert 0.5 < kinds["limit"] / 2000 < 0.6
    assert 0.15 < kinds["market"] / 2000 < 0.25
    assert 0.2 < kinds["cancel"] / 2000 < 0.3
    pairs, resting = first.warmup[: 2 * WARMUP_PAIRS], first.warmup[2 * WARMUP_PAIRS :]
    assert len(resting) == first.resting >= kinds["cancel"] + 200
    # The warm-up pairs trade with each other at the mid, two traders each.
    for sell, buy in zip(pairs[::2], pairs[1::2], strict=True):
        assert (sell.side, buy.side) == ("sell", "buy")
        assert sell.price == buy.price == MARKET.mid
        assert sell.quantity == buy.quantity
        assert sell.trader != buy.trader
    # The orders that rest never cross: buys below the mid, sells above.
    for order in resting:
        assert order.kind == "limit"
        assert order.price is not None
        assert order.price < MARKET.mid if order.side == "buy" else order.price > MARKET.mid
    # Each cancel is of a distinct resting warm-up order.
    targets = [command.target for command in first.timed if command.kind == "cancel"]
    assert len(set(targets)) == len(targets)
    assert all(2 * WARMUP_PAIRS <= target < len(first.warmup) for target in targets)
    # The new limit orders overlap: some buys above the mid and sells below it cross.
    crossing = [
        command
        for command in first.timed
        if command.kind == "limit"
        and command.price is not None
        and (command.price > MARKET.mid if command.side == "buy" else command.price < MARKET.mid)
    ]
    assert 0.1 < len(crossing) / kinds["limit"] < 0.3
    # Every quantity is whole lots of at least the minimum; every market buy has a budget.
    for command in [*first.warmup, *first.timed]:
        if command.quantity is not None:
            assert command.quantity % MARKET.lot_size == 0
            assert command.quantity >= MARKET.min_quantity
        if command.kind == "market" and command.side == "buy":
            assert command.quantity is None
            assert command.quote_budget is not None
            assert command.quote_budget > 0
