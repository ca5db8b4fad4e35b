"""Overload against a real ``bourse serve`` on PostgreSQL (docs/decisions/0012-overload.md).

Before connection leases, 256 concurrent clients on ``GET /api/v1/wallets`` wedged
the process for good: every pooled connection stayed idle in a transaction, held
by requests that waited for a worker thread, while every worker thread waited for
a connection. These tests put ten times the thread pool (400 connections) on the
same endpoint, with clients that honour ``Retry-After`` and with clients that
ignore it as ``wrk`` does, and check that the server keeps serving, sheds the rest
with a 503 from admission control (never after waiting for a connection), recovers as
soon as the load stops, and stops on SIGTERM within its budget.

Recovery and shutdown are waited for as states, with their budgets as the timeouts:
the server answering normally with every connection idle, the process having exited.
How long each took is printed and written to ``var/bench`` (docs/benchmarks.md quotes
the figures), never asserted beyond its budget.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx2 as httpx
import psycopg
import pytest
from sqlalchemy.engine import make_url

from tests.support.load import LoadResult, run_hammer
from tests.support.processes import ROOT, clean_env, free_port, run_bourse, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database
from tests.support.waiting import wait_until

# Alone: the overload is compared with an unloaded baseline, so no other test may load
# the two cores between the two measurements.
pytestmark = [pytest.mark.process, pytest.mark.alone]

THREADS = 40  # anyio's default worker threads, which the server keeps (20 leases + 20)
CONNECTIONS = 10 * THREADS
WALLETS = "/api/v1/wallets"
PASSWORD = "correct-horse-battery-staple"
DRAIN_SECONDS = 1
SHUTDOWN_TIMEOUT_SECONDS = 5
# Before connection leases the process never answered again; after, it does at once.
RECOVERY_BUDGET_SECONDS = 5
# SIGTERM to exit: the drain, the shutdown timeout, and some slack for a loaded machine.
SHUTDOWN_BUDGET_SECONDS = DRAIN_SECONDS + SHUTDOWN_TIMEOUT_SECONDS + 3


@dataclass
class Deployment:
    url: str
    env: dict[str, str]

    def psql_url(self) -> str:
        return make_url(self.url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def deployment() -> Iterator[Deployment]:
    url = create_postgres_database("bourse_overload")
    env = clean_env(
        BOURSE_DATABASE_URL=url,
        BOURSE_LOG_LEVEL="warning",
        BOURSE_SHUTDOWN_DRAIN_SECONDS=str(DRAIN_SECONDS),
        BOURSE_SHUTDOWN_TIMEOUT_SECONDS=str(SHUTDOWN_TIMEOUT_SECONDS),
    )
    try:
        migrated = run_bourse("migrate", env=env, timeout=120)
        assert migrated.returncode == 0, migrated.stderr
        created = subprocess.run(
            [sys.executable, "-m", "bourse", "users", "create", "--email", "load@example.com"],
            input=f"{PASSWORD}\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        yield Deployment(url=url, env=env)
    finally:
        drop_postgres_database(url)


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    token: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hammer(self, connections: int, seconds: float, *, honour_retry_after: bool) -> LoadResult:
        return run_hammer(
            "127.0.0.1",
            self.port,
            WALLETS,
            connections=connections,
            seconds=seconds,
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10.0,
            honour_retry_after=honour_retry_after,
        )


@pytest.fixture
def server(deployment: Deployment) -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "serve", "--port", str(port)],
        env=deployment.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=60)
        login = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/auth/login",
            json={"email": "load@example.com", "password": PASSWORD},
            timeout=30,
        )
        assert login.status_code == 200, login.text
        yield Server(process=process, port=port, token=login.json()["access_token"])
    finally:
        output = stop(process)
        assert "Traceback" not in output, output[-4000:]


def _connections(deployment: Deployment) -> list[tuple[str, str]]:
    """The server's own connections to its database: (state, query)."""
    with psycopg.connect(deployment.psql_url(), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT state, query FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'bourse' AND pid <> pg_backend_pid()"
        ).fetchall()
    return [(str(state), str(query)) for state, query in rows]


def _metric(base: str, name: str) -> float:
    body = httpx.get(f"{base}/metrics", timeout=10).text
    for line in body.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


FIGURES = ROOT / "var" / "bench"


def _figures(name: str, **values: object) -> None:
    """Keep the run's figures where CI prints them (var/bench/overload-<name>.json)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / f"overload-{name}.json").write_text(json.dumps(values, indent=1) + "\n")


def _summary(result: LoadResult, start: float = 0.0, end: float | None = None) -> dict[str, object]:
    return {
        "completed_per_second": round(result.rate(200, start, end), 1),
        "statuses": {str(code): count for code, count in sorted(result.statuses.items())},
        "timeouts": result.timeouts,
        "p99_200_seconds": round(result.quantile(200, 0.99), 3),
        "p99_503_seconds": round(result.quantile(503, 0.99), 3),
        "completed_each_second": result.per_second(200),
    }


def _report(label: str, result: LoadResult) -> str:
    return (
        f"{label}: {dict(result.statuses)} timeouts={result.timeouts} errors={dict(result.errors)} "
        f"200/s={result.rate(200):.1f} per second={result.per_second(200)} "
        f"p99 200={result.quantile(200, 0.99):.3f}s p99 503={result.quantile(503, 0.99):.3f}s"
    )


def _wait_for_recovery(server: Server, deployment: Deployment) -> None:
    """Until a request is answered 200 and every pooled connection is idle, within the budget."""
    seen: list[object] = [None]

    def recovered() -> bool:
        try:
            status: object = httpx.get(
                f"{server.base}{WALLETS}", headers={"Authorization": f"Bearer {server.token}"}, timeout=5
            ).status_code
        except httpx.HTTPError as exc:
            status = exc
        connections = _connections(deployment)
        seen[0] = (status, connections)
        return status == 200 and {state for state, _ in connections} <= {"idle"}

    wait_until(
        recovered,
        lambda: f"a 200 with every pooled connection idle after the load stopped (last: {seen[0]!r})",
        timeout=RECOVERY_BUDGET_SECONDS,
        interval=0.2,
    )


def test_overload_sheds_the_excess_keeps_serving_and_recovers_at_once(server: Server, deployment: Deployment) -> None:
    unloaded = server.hammer(8, 4, honour_retry_after=True)
    overload = server.hammer(CONNECTIONS, 10, honour_retry_after=True)
    stopped = time.monotonic()

    # As soon as the load stops it answers normally, and every pooled connection is idle.
    _wait_for_recovery(server, deployment)
    recovered = time.monotonic() - stopped
    print(_report("unloaded", unloaded))  # noqa: T201 - the figures the issue asks for, in the test log
    print(_report("overload", overload))  # noqa: T201
    print(f"recovered {recovered:.2f}s after the load stopped")  # noqa: T201
    _figures(
        "honouring-retry-after",
        connections=CONNECTIONS,
        unloaded=_summary(unloaded),
        overload=_summary(overload),
        recovered_seconds=round(recovered, 2),
    )

    assert unloaded.statuses.keys() == {200}, _report("unloaded", unloaded)
    # It kept completing requests in every second of the overload once the first were
    # answered, at no less than half the unloaded rate; the first came within the first
    # two seconds, in which 400 connections are opened at once on two cores. Before
    # connection leases, no second after the first had any.
    per_second = overload.per_second(200)
    first = next((second for second, count in enumerate(per_second) if count > 0), len(per_second))
    assert first <= 2, _report("overload", overload)
    assert all(count > 0 for count in per_second[first:]), _report("overload", overload)
    assert overload.rate(200) >= 0.5 * unloaded.rate(200), _report("overload", overload)
    # The excess got a 503 with Retry-After; nothing timed out, nothing failed.
    assert overload.statuses.keys() <= {200, 503}, _report("overload", overload)
    assert overload.statuses[503] > 0
    assert overload.retry_after == {"1": overload.statuses[503]}
    assert overload.timeouts == 0
    assert not overload.errors
    # Every 503 was admission control's, which refuses before any of the request's work
    # (the server's shed count is the clients' 503 count: this server shed nothing else),
    # and none came from a request that had queued for a connection until it gave up.
    # Those two are what made the 503s fast; their p99 is in the figures.
    assert _metric(server.base, "bourse_http_requests_shed_total") == overload.statuses[503]
    assert _metric(server.base, "bourse_db_lease_timeouts_total") == 0

    # Recovered: nothing holds or waits for a lease, and the probes pass.
    assert _metric(server.base, "bourse_db_leases_in_use") == 0
    assert _metric(server.base, "bourse_db_lease_waiting") == 0
    assert httpx.get(f"{server.base}/livez", timeout=5).status_code == 200
    assert httpx.get(f"{server.base}/readyz", timeout=5).status_code == 200


def test_clients_that_ignore_retry_after_do_not_starve_the_server_and_sigterm_still_stops_it(
    server: Server,
) -> None:
    unloaded = server.hammer(8, 4, honour_retry_after=True)

    sigterm_at = 6.0
    budget = SHUTDOWN_BUDGET_SECONDS
    with ThreadPoolExecutor(max_workers=1) as load:
        # The load runs on until after the budget, so the server is shut down under it.
        running = load.submit(server.hammer, CONNECTIONS, sigterm_at + budget, honour_retry_after=False)
        # The scenario's schedule, not a wait for a state: SIGTERM 6 s into the overload.
        # What the load saw before then is checked below.
        time.sleep(sigterm_at)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            exit_code = server.process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {budget}s after SIGTERM under overload (its budget)") from None
        exited_after = time.monotonic() - signalled
        overload = running.result()
    print(_report("unloaded", unloaded))  # noqa: T201
    print(_report("overload without backoff", overload))  # noqa: T201

    # Before the signal: requests kept completing, at no less than half the unloaded rate.
    assert overload.rate(200, 1, sigterm_at) >= 0.5 * unloaded.rate(200), _report("overload", overload)
    assert all(count > 0 for count in overload.per_second(200)[1 : int(sigterm_at)]), _report("overload", overload)
    assert overload.timeouts == 0, _report("overload", overload)

    # SIGTERM under overload: drained, stopped and exited within its budget (the wait
    # above), and exited 0.
    print(f"exited {exited_after:.2f}s after SIGTERM with code {exit_code}")  # noqa: T201
    _figures(
        "ignoring-retry-after",
        connections=CONNECTIONS,
        unloaded=_summary(unloaded),
        overload_before_sigterm=_summary(overload, 1, sigterm_at),
        sigterm_exit_code=exit_code,
        exited_seconds_after_sigterm=round(exited_after, 2),
        budget_seconds=budget,
    )
    assert exit_code == 0
