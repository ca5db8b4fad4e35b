"""``bourse bench matching`` runs the real engine and reports consistent counts.

The figures themselves go in docs/benchmarks.md; nothing here asserts a speed.
"""

from __future__ import annotations

import json

import pytest

from tests.support.processes import run_bourse

pytestmark = pytest.mark.process


def test_bench_matching_reports_a_consistent_run() -> None:
    result = run_bourse("bench", "matching", "--orders", "3000", "--seed", "7", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "matching"
    assert report["orders"] == 3000
    assert report["seed"] == 7
    commands = report["commands"]
    assert set(commands) == {"limit", "market", "cancel"}
    assert sum(commands.values()) == 3000
    assert all(count > 0 for count in commands.values())
    # Roughly the advertised mix: 70% limit, 10% market, 20% cancel.
    assert 0.6 < commands["limit"] / 3000 < 0.8
    assert 0.05 < commands["market"] / 3000 < 0.15
    assert report["fills"] > 0
    # Every command emits at least one event; every fill is one event.
    assert report["events"] >= 3000 + report["fills"]
    assert 0 <= report["resting_after"] <= commands["limit"]
    assert report["seconds"] > 0
    assert report["orders_per_second"] > 0
    assert report["latency_samples"] == -(-3000 // report["latency_sample_every"])
    assert 0 < report["p50_us"] <= report["p99_us"]
    assert report["machine"]["nproc"] >= 1


def test_bench_matching_is_reproducible_from_its_seed() -> None:
    def counts(*args: str) -> dict[str, object]:
        report = json.loads(run_bourse("bench", "matching", "--orders", "1000", "--json", *args).stdout)
        return {key: report[key] for key in ("commands", "fills", "events", "resting_after")}

    assert counts() == counts("--seed", "1")
    assert counts("--seed", "2") != counts()


def test_bench_matching_prints_one_line_without_json() -> None:
    result = run_bourse("bench", "matching", "--orders", "500")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("matching ")
    assert "500 commands" in result.stdout
    assert "fills" in result.stdout


def test_bench_matching_refuses_bad_arguments() -> None:
    for args in (("--orders", "0"), ("--orders", "many"), ("--seed", "x")):
        refused = run_bourse("bench", "matching", *args)
        assert refused.returncode == 2
        assert "Invalid value" in refused.stderr
