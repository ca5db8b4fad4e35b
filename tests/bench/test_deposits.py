"""``bourse bench deposits`` runs its own stack on PostgreSQL, credits every deposit, and
leaves sound books. The figures are recorded in docs/benchmarks.md, never asserted here."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import create_engine, text

from tests.support.processes import clean_env, free_port, run_bourse

pytestmark = pytest.mark.process


def test_bench_deposits_on_postgres(empty_postgres_url: str) -> None:
    env = clean_env(
        BOURSE_DATABASE_URL=empty_postgres_url,
        BOURSE_LOG_LEVEL="warning",
        # Any port but the default: the benchmark starts the simulator on a free one itself.
        BOURSE_PSP_SIM_URL=f"http://127.0.0.1:{free_port()}",
    )
    assert run_bourse("migrate", env=env).returncode == 0
    result = run_bourse(
        "bench",
        "deposits",
        "--count",
        "30",
        "--warmup",
        "3",
        "--workers",
        "1",
        # Two server processes share the API's port: both the webhooks and the deposits reach one.
        "--server-workers",
        "2",
        "--json",
        env=env,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["benchmark"] == "deposits"
    assert report["database"] == "postgresql"
    assert (report["workers"], report["server_workers"]) == (1, 2)
    assert (report["count"], report["credited"]) == (30, 30)
    assert report["deposits_per_second"] > 0
    latency = report["webhook_to_credit_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"]
    # Everything it credited is in the books: warm-up included, 33 deposits of 10.00.
    engine = create_engine(empty_postgres_url)
    try:
        with engine.connect() as conn:
            credited = conn.execute(text("SELECT count(*), sum(amount) FROM deposits WHERE state = 'succeeded'")).one()
    finally:
        engine.dispose()
    assert tuple(credited) == (33, 33 * 1000)
    verified = run_bourse("ledger", "verify", env=env)
    assert verified.returncode == 0, verified.stdout

    bad = run_bourse("bench", "deposits", "--count", "0", env=env)
    assert bad.returncode == 2
