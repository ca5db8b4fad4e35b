"""``bourse bench orders-http --spike``: the rate schedule, the timeline, the arguments, and
short spikes against a real ``bourse serve`` on a fresh PostgreSQL database.

The schedule's arithmetic is checked against a rate written out again here from the
definition (lead-in at BASE, a linear ramp to PEAK, a hold at PEAK, a tail at BASE), never
against the schedule's own integral. The runs are small; the figures themselves go in
docs/benchmarks.md, never asserted here. What is asserted is that the benchmark measured
what it says: its timeline covers the run, the answered rate follows the schedule up,
nothing failed, every order it placed was carried out by the matcher, and, with no
matcher running, that the run says so and fails.
"""

from __future__ import annotations

import json
import math
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text

from bourse.bench.orders_http import bench_orders_http
from bourse.bench.spike import Arrivals, Event, SpikeSchedule, phase_figures, timeline
from bourse.db import Database, unit_of_work
from bourse.trading.models import PENDING_COMMANDS_SQL, Order
from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings

SCHEDULES = [
    SpikeSchedule(50, 500, 30, 60),  # issue 15's, with the default lead-in and tail of 10 s
    SpikeSchedule(5, 20, 2, 2, lead_in=2, tail=2),  # the process test's
    SpikeSchedule(10, 100, 0, 5, lead_in=3, tail=0),  # a step, no tail
    SpikeSchedule(7.5, 33.3, 4.5, 3, lead_in=1.5, tail=2.5),  # fractional rates and phase ends
    SpikeSchedule(40, 40, 3, 2, lead_in=0, tail=0),  # a flat "ramp"
]


def _reference_rate(schedule: SpikeSchedule, t: float) -> float:
    """The rate at ``t``, from the definition."""
    base, peak = schedule.base, schedule.peak
    ramp_from = schedule.lead_in
    hold_from = ramp_from + schedule.ramp
    tail_from = hold_from + schedule.hold
    if t < 0 or t >= tail_from + schedule.tail:
        return 0.0
    if t < ramp_from or t >= tail_from:
        return base
    if t < hold_from:
        return base + (peak - base) * (t - ramp_from) / schedule.ramp
    return peak


def _expected(schedule: SpikeSchedule, start: float, end: float, steps: int = 1000) -> float:
    """The integral of the reference rate over [start, end), at most a second, by the midpoint
    rule: exact for linear pieces, and the phase ends (whole or half seconds) fall on the grid."""
    width = (end - start) / steps
    return sum(_reference_rate(schedule, start + (i + 0.5) * width) for i in range(steps)) * width


@pytest.mark.parametrize("schedule", SCHEDULES, ids=lambda s: ":".join(f"{v:g}" for v in s.describe().values()))
@pytest.mark.parametrize("clients", [1, 7])
def test_the_requests_due_each_second_match_the_rate_within_one(schedule: SpikeSchedule, clients: int) -> None:
    due: list[float] = []
    for client in range(clients):
        arrivals = Arrivals(schedule, client, clients)
        mine = list(iter(arrivals.take, None))
        assert mine == sorted(mine), "each client's arrivals come in time order"
        due += mine
    # Between them the clients take every arrival of the schedule once.
    assert sorted(due) == [schedule.due(k) for k in range(schedule.count)]
    assert all(0 <= t < schedule.seconds for t in due)
    per_second = Counter(math.floor(t) for t in due)
    total = 0.0
    for second in range(math.ceil(schedule.seconds)):
        expected = _expected(schedule, second, min(second + 1, schedule.seconds))
        assert abs(per_second[second] - expected) <= 1, (second, per_second[second], expected)
        total += expected
    assert abs(len(due) - total) < 1


def test_issue_15s_spike_second_by_second() -> None:
    schedule = SpikeSchedule.parse("50:500:30:60")
    assert (schedule.lead_in, schedule.tail, schedule.seconds) == (10, 10, 110)
    assert schedule.count == 50 * 10 + (50 + 500) * 30 // 2 + 500 * 60 + 50 * 10
    per_second = Counter(math.floor(schedule.due(k)) for k in range(schedule.count))
    assert [per_second[s] for s in range(10)] == [50] * 10
    ramp = [per_second[s] for s in range(10, 40)]
    assert ramp == sorted(ramp)
    # The mean rate of ramp second s is 50 + 450 * (s + 0.5) / 30.
    assert ramp[0] in {57, 58}
    assert ramp[-1] in {492, 493}
    assert [per_second[s] for s in range(40, 100)] == [500] * 60
    assert [per_second[s] for s in range(100, 110)] == [50] * 10
    assert schedule.due(schedule.count) == math.inf


def _event(due: float, answered: float, status: int) -> Event:
    return (due, due, answered, status)


def test_the_timeline_groups_answers_by_window_with_latencies_from_due() -> None:
    schedule = SpikeSchedule(5, 20, 2, 2, lead_in=2, tail=2)  # 8 s
    events = [
        _event(0.0, 0.1, 201),
        (0.5, 0.6, 0.7, 202),  # sent late: its latency still counts from when it was due
        _event(1.2, 1.5, 409),
        _event(2.0, 2.2, 500),
        _event(3.0, 3.4, 0),
        _event(7.9, 9.3, 201),  # answered after the end
    ]
    rows = timeline(events, schedule, 1.0)
    assert [row["t"] for row in rows] == list(range(10))
    assert [row["answered"] for row in rows] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]
    assert [row["errors"] for row in rows] == [0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert [row["errors_5xx"] for row in rows] == [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    assert [row["refused"] for row in rows] == [0, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    assert [row["pending"] for row in rows] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    assert (rows[0]["rate"], rows[0]["p50_ms"], rows[0]["p99_ms"]) == (2.0, 100.0, 200.0)
    assert (rows[1]["p50_ms"], rows[9]["p99_ms"]) == (300.0, 1400.0)
    # From when it was sent, the late one took 100 ms of the server's time.
    assert (rows[0]["service_p50_ms"], rows[0]["service_p99_ms"]) == (100.0, 100.0)
    assert rows[2]["p50_ms"] is None
    assert [row["target"] for row in rows] == pytest.approx([5, 5, 8.75, 16.25, 20, 20, 5, 5, 0, 0], abs=0.051)
    halves = timeline(events, schedule, 2.0)
    assert [row["answered"] for row in halves] == [3, 0, 0, 0, 1]
    phases = {row["phase"]: row for row in phase_figures(events, schedule)}
    assert list(phases) == ["lead-in", "ramp", "peak", "tail", "drain"]
    assert (phases["lead-in"]["answered"], phases["lead-in"]["rate"]) == (3, 1.5)
    assert (phases["ramp"]["errors"], phases["ramp"]["answered"]) == (2, 0)
    assert (phases["drain"]["answered"], phases["drain"]["rate"]) == (1, None)


def test_a_timeline_with_no_answers_still_covers_the_schedule() -> None:
    rows = timeline([], SpikeSchedule(5, 5, 0, 1.5, lead_in=0, tail=0), 1.0)
    assert [(row["t"], row["answered"], row["p99_ms"]) for row in rows] == [(0, 0, None), (1, 0, None)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--spike", "50:500:30"], "BASE:PEAK:RAMP:HOLD"),
        (["--spike", "50:500:x:60"], "four numbers"),
        (["--spike", "50:nan:30:60"], "finite"),
        (["--spike", "0:500:30:60"], "BASE must be"),
        (["--spike", "500:50:30:60"], "PEAK must be"),
        (["--spike", "50:200000:30:60"], "PEAK must be"),
        (["--spike", "50:500:-1:60"], "RAMP must be"),
        (["--spike", "50:500:30:0"], "HOLD must be"),
        (["--spike", "50:500:1800:1800"], "more than 3600 s"),
        (["--spike", "50:500:30:60", "--rate", "100"], "cannot be combined with --rate"),
        (["--spike", "50:500:30:60", "--seconds", "10"], "cannot be combined with --seconds"),
        (["--spike", "50:500:30:60", "--lead-in", "-1"], "--lead-in"),
        (["--spike", "50:500:30:60", "--window", "0"], "--window"),
        (["--spike", "50:500:30:60", "--concurrency", "4", "--threads", "32", "--traders", "64"], "per connection"),
        (["--threads", "4"], "--threads only apply with --spike"),
        (["--rate", "10", "--settle-timeout", "5", "--tail", "0"], "--tail, --settle-timeout only apply with --spike"),
    ],
)
def test_bad_spike_arguments_exit_2_with_the_reason(args: list[str], message: str) -> None:
    result = CliRunner().invoke(bench_orders_http, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output


# -- Against a real server -----------------------------------------------------------------


@contextmanager
def _server(**settings: str) -> Iterator[tuple[str, dict[str, str]]]:
    """A fresh migrated database and one ``bourse serve`` on it: its URL and the environment."""
    url = create_postgres_database()
    try:
        env = clean_env(BOURSE_DATABASE_URL=url, BOURSE_LOG_LEVEL="warning", **settings)
        migrated = run_bourse("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        port = free_port()
        process: subprocess.Popen[str] = start(["-m", "bourse", "serve", "--port", str(port)], env)
        try:
            wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=90)
            yield f"http://127.0.0.1:{port}", env
        finally:
            stop(process)
    finally:
        drop_postgres_database(url)


def _spike(base_url: str, env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    bench = run_bourse("bench", "orders-http", "--url", base_url, "--json", *args, env=env, timeout=240)
    assert bench.returncode in {0, 1}, bench.stdout + bench.stderr
    report: dict[str, Any] = json.loads(bench.stdout)
    return bench.returncode, report


def _outstanding_in_database(env: dict[str, str]) -> tuple[int, int]:
    """(orders, orders the matcher has still to carry out), read here, not by the benchmark."""
    database = Database.from_settings(make_settings(env["BOURSE_DATABASE_URL"]))
    try:
        with unit_of_work(database) as session:
            orders = session.scalar(select(func.count()).select_from(Order)) or 0
            outstanding = session.scalar(select(func.count()).select_from(Order).where(text(PENDING_COMMANDS_SQL)))
            return int(orders), int(outstanding or 0)
    finally:
        database.dispose()


@pytest.mark.process
def test_a_short_spike_against_a_real_server_settles_every_order() -> None:
    # No wait for the matcher: every order is answered 202 while still pending, so the
    # benchmark's settle check has every order to follow up after the load.
    with _server(BOURSE_ORDER_WAIT_MS="0") as (base_url, env):
        code, report = _spike(
            base_url,
            env,
            *("--spike", "5:20:2:2", "--lead-in", "2", "--tail", "2"),
            *("--concurrency", "2", "--threads", "4", "--traders", "8"),
        )
        orders, outstanding = _outstanding_in_database(env)
    assert code == 0, report
    assert report["mode"] == "spike"
    assert report["spike"]["seconds"] == 8
    assert report["errors"] == 0, report["error_samples"]
    assert report["errors_5xx"] == report["errors_no_answer"] == 0
    assert report["unsettled"] == 0, report["settle"]
    assert report["passed"] is True
    assert outstanding == 0
    assert orders == report["orders"] > 0
    settle = report["settle"]
    assert 0 < settle["awaited"] <= report["orders"]
    assert settle["unsettled"] == settle["unsettled_in_database"] == 0
    assert settle["seconds"] is not None
    assert settle["seconds"] <= settle["timeout_s"] == 30
    # Nearly everything due was sent (a client woken late at the very end may miss the deadline).
    assert report["due"] == 85
    assert report["sent"] >= 0.9 * report["due"]
    assert report["sent"] == report["answered"] + report["errors"]
    rows = report["timeline"]
    assert [row["t"] for row in rows[:8]] == list(range(8))
    assert sum(row["answered"] + row["errors"] for row in rows) == report["sent"]
    assert [row["target"] for row in rows[:8]] == pytest.approx([5, 5, 8.75, 16.25, 20, 20, 5, 5], abs=0.051)
    lead_in = sum(row["answered"] for row in rows[0:2])
    peak = sum(row["answered"] for row in rows[4:6])
    assert peak > 2 * lead_in > 0, rows
    assert 0 < report["p50_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert 0 < report["service_p50_ms"] <= report["service_p99_ms"] <= report["max_ms"]
    assert report["sent_share"] == round(report["sent"] / report["due"], 3)


@pytest.mark.process
def test_a_spike_with_no_matcher_reports_every_order_unsettled_and_fails() -> None:
    # The matcher is external and none runs: every order stays pending.
    with _server(BOURSE_ORDER_WAIT_MS="0", BOURSE_MATCHER="external") as (base_url, env):
        code, report = _spike(
            base_url,
            env,
            *("--spike", "5:5:0:2", "--lead-in", "0", "--tail", "0", "--settle-timeout", "1"),
            *("--concurrency", "1", "--threads", "2", "--traders", "2"),
        )
        orders, outstanding = _outstanding_in_database(env)
    assert code == 1, report
    assert report["errors"] == 0, report["error_samples"]
    assert report["passed"] is False
    assert report["orders"] == orders == outstanding > 0
    assert report["unsettled"] == orders
    settle = report["settle"]
    assert settle["awaited"] == settle["unsettled"] == settle["unsettled_in_database"] == orders
    assert settle["seconds"] is None
    assert settle["passes"] >= 2
