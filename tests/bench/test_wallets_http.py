"""``bourse bench wallets-http``: wrk's report read right, and a real run against both servers.

The figures themselves are recorded in docs/benchmarks.md, never asserted here.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bourse.bench.wallets_http import WrkError, parse_wrk
from tests.support.processes import clean_env, run_bourse

# wrk 4.1.0's report, as printed (Debian bookworm).
WRK_REPORT = """Running 1s test @ http://127.0.0.1:8797/
  1 threads and 2 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.69ms    1.84ms  13.77ms   81.60%
    Req/Sec   773.00    128.93     1.08k    72.73%
  Latency Distribution
     50%  812.00us
     75%    3.57ms
     90%    5.41ms
     99%    1.02s
  845 requests in 1.10s, 3.51MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 7
Requests/sec:    768.90
Transfer/sec:      3.19MB
"""


def test_wrk_report_is_read_with_its_units() -> None:
    assert parse_wrk(WRK_REPORT) == {
        "requests": 845,
        "requests_per_second": 768.9,
        "p50_ms": 0.812,
        "p75_ms": 3.57,
        "p90_ms": 5.41,
        "p99_ms": 1020.0,
        "non_2xx": 7,
        "socket_errors": 3,
    }


def test_a_report_without_what_the_benchmark_needs_is_an_error() -> None:
    with pytest.raises(WrkError, match="no request rate"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")
    with pytest.raises(WrkError, match="latency distribution"):
        parse_wrk(WRK_REPORT.replace("     50%  812.00us\n", ""))


@pytest.mark.process
def test_bench_wallets_http_measures_both_servers(empty_postgres_url: str) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("BOURSE_REQUIRE_SERVICES"):
            pytest.fail("wrk is not installed (Debian: apt-get install wrk; .ci/run installs it)")
        pytest.skip("wrk is not installed (Debian: apt-get install wrk)")
    env = clean_env(BOURSE_DATABASE_URL=empty_postgres_url, BOURSE_LOG_LEVEL="warning")
    assert run_bourse("migrate", env=env).returncode == 0
    done = run_bourse(
        "bench", "wallets-http", "--seconds", "1", "--connections", "4", "--server-workers", "2", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["benchmark"] == "wallets-http"
    assert result["server_workers"] == 2
    for name in ("wallets", "hello_world"):
        figures = result[name]
        assert figures["requests"] > 0, name
        assert figures["non_2xx"] == 0, name
        assert figures["socket_errors"] == 0, name
        assert 0 < figures["p50_ms"] <= figures["p99_ms"], name
        assert figures["server_cpu_ms_per_request"] > 0, name
    assert result["ratio"] == round(
        result["wallets"]["requests_per_second"] / result["hello_world"]["requests_per_second"], 3
    )
