"""``bourse bench ledger`` and ``bench ledger-http`` run on PostgreSQL and leave sound books.

These check that the benchmarks work and measure something real; the figures
themselves are recorded in docs/benchmarks.md, never asserted here.
"""

from __future__ import annotations

import json

import pytest

from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_status

pytestmark = pytest.mark.process


def _check(result: dict[str, object], name: str) -> None:
    assert result["benchmark"] == name
    assert result["database"] == "postgresql"
    assert isinstance(result["transfers"], int)
    assert result["transfers"] > 0
    assert result["errors"] == 0, result["error_samples"]
    assert result["refused"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"]  # type: ignore[operator]
    assert result["transfers_per_second"] > 0  # type: ignore[operator]


def test_bench_ledger_and_ledger_http_on_postgres(empty_postgres_url: str) -> None:
    env = clean_env(BOURSE_DATABASE_URL=empty_postgres_url, BOURSE_LOG_LEVEL="warning")
    assert run_bourse("migrate", env=env).returncode == 0

    service = run_bourse(
        "bench", "ledger", "--seconds", "1", "--concurrency", "2", "--accounts", "20", "--json", env=env
    )
    assert service.returncode == 0, service.stderr
    _check(json.loads(service.stdout), "ledger")

    port = free_port()
    server = start(["-m", "bourse", "serve", "--port", str(port)], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=60)
        http = run_bourse(
            "bench",
            "ledger-http",
            "--url",
            f"http://127.0.0.1:{port}",
            "--seconds",
            "1",
            "--concurrency",
            "2",
            "--accounts",
            "20",
            "--json",
            env=env,
        )
    finally:
        stop(server)
    assert http.returncode == 0, http.stderr
    _check(json.loads(http.stdout), "ledger-http")

    verified = run_bourse("ledger", "verify", env=env)
    assert verified.returncode == 0, verified.stdout


def test_bench_refuses_bad_arguments() -> None:
    assert run_bourse("bench", "ledger", "--concurrency", "0").returncode == 2
    assert run_bourse("bench", "ledger-http", "--url", "ftp://x").returncode == 2
    refused = run_bourse("bench", "pgbench", env=clean_env(BOURSE_DATABASE_URL="sqlite:///x.db"))
    assert refused.returncode == 2
    assert "PostgreSQL" in refused.stderr
