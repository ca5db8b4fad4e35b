"""``bourse bench deposits``: deposits credited per second, and the time from webhook to credit.

The benchmark starts its own stack on the configured database: the PSP
simulator, one ``bourse serve`` and ``--workers`` workers on the ``deposits``
queue. It opens ``--count`` deposits through the API (not timed), then the
payer approves every checkout at the simulator, as fast as possible or at
``--rate`` per second. Each approval makes the simulator sign and deliver a
webhook; the API stores it and queues its job; a worker credits the deposit.

Timing comes from the database, so it measures exactly the path under test:
``psp_events.received_at`` (the webhook arrived) to ``deposits.credited_at``
(the credit committed). Throughput is deposits credited over the span from the
first webhook to the last credit.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import httpx2 as httpx
from sqlalchemy import select

from bourse.bench.harness import (
    Children,
    bourse_command,
    command_settings,
    emit,
    free_port,
    json_option,
    latency_ms,
    machine,
)

BENCH_ASSET = "USD"


class _Stack(Children):
    """The simulator, an API server and workers, as child processes of the benchmark."""

    logs: Path

    def __init__(self, env: dict[str, str], workers: int, logs: Path, server_workers: int = 1) -> None:
        self.api_port, self.sim_port = free_port(), free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        super().__init__({**env, "BOURSE_PSP_SIM_URL": self.sim_url, "BOURSE_LOG_LEVEL": "warning"}, logs)
        webhook_url = f"{self.api_url}/api/v1/psp/simulator/webhook"
        self.start("psp-sim", bourse_command("psp-sim", "--port", str(self.sim_port), "--webhook-url", webhook_url))
        self.start("api", bourse_command("serve", "--port", str(self.api_port), "--workers", str(server_workers)))
        for index in range(workers):
            heartbeat = logs / f"worker-{index}.heartbeat"
            self.start(
                f"worker-{index}",
                bourse_command("worker", "--queue", "deposits", "--sleep", "0.05"),
                env={"BOURSE_WORKER_HEARTBEAT_PATH": str(heartbeat)},
                role="worker",
            )

    def wait_ready(self, client: httpx.Client, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for url in (f"{self.sim_url}/healthz", f"{self.api_url}/readyz"):
            while True:
                try:
                    if client.get(url, timeout=1.0).status_code == 200:  # noqa: PLR2004
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise click.ClickException(f"{url} did not become ready; logs in {self.logs}")
                time.sleep(0.1)


def _bench_user(settings: Any) -> tuple[uuid.UUID, str]:
    """A fresh client to deposit as, and an access token for it."""
    from bourse.db import Database, unit_of_work
    from bourse.identity.service import create_user
    from bourse.identity.tokens import issue_access_token

    database = Database.from_settings(settings)
    try:
        with unit_of_work(database) as session:
            user = create_user(
                session, email=f"bench-deposits-{uuid.uuid4().hex[:12]}@example.com", password=uuid.uuid4().hex
            )
            token = issue_access_token(settings, user)
            return user.id, token
    finally:
        database.dispose()


def _timings(settings: Any, deposit_ids: list[str]) -> tuple[list[float], float, int]:
    """Per-deposit seconds from webhook to credit, the whole span, and how many were credited."""
    from bourse.db import Database
    from bourse.payments.models import Deposit, PspEvent
    from bourse.psp.connectors.base import EventKind

    wanted = [uuid.UUID(d) for d in deposit_ids]
    database = Database.from_settings(settings)
    try:
        with database.sessions() as session:
            rows = session.execute(
                select(Deposit.id, Deposit.credited_at, PspEvent.received_at)
                .join(PspEvent, PspEvent.psp_reference == Deposit.psp_reference)
                .where(
                    Deposit.id.in_(wanted),
                    Deposit.credited_at.is_not(None),
                    PspEvent.kind == EventKind.deposit_succeeded.value,
                )
            ).all()
    finally:
        database.dispose()
    latencies = [(row.credited_at - row.received_at).total_seconds() for row in rows]
    if not rows:
        return [], 0.0, 0
    span = (max(r.credited_at for r in rows) - min(r.received_at for r in rows)).total_seconds()
    return latencies, span, len({row.id for row in rows})


def _credited(settings: Any, deposit_ids: list[str]) -> int:
    from sqlalchemy import func

    from bourse.db import Database
    from bourse.payments.models import Deposit, DepositState

    database = Database.from_settings(settings)
    try:
        with database.sessions() as session:
            return int(
                session.scalar(
                    select(func.count()).where(
                        Deposit.id.in_([uuid.UUID(d) for d in deposit_ids]), Deposit.state == DepositState.succeeded
                    )
                )
                or 0
            )
    finally:
        database.dispose()


def _wait_credited(settings: Any, deposit_ids: list[str], timeout: float, logs: Path) -> None:
    deadline = time.monotonic() + timeout
    while _credited(settings, deposit_ids) < len(deposit_ids):
        if time.monotonic() > deadline:
            raise click.ClickException(f"not every deposit was credited within {timeout}s; logs in {logs}")
        time.sleep(0.25)


def _drive(  # noqa: PLR0917 - the benchmark's parameters
    stack: _Stack,
    settings: Any,
    token: str,
    count: int,
    warmup: int,
    rate: float | None,
    concurrency: int,
    timeout: float,
) -> tuple[list[str], float, dict[str, float]]:
    """Open the deposits, approve their checkouts, wait for every credit.

    Returns the deposit ids, the approval phase's length, and the CPU seconds each
    role spent from the first approval to the last credit.
    """
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(timeout=30.0, limits=limits) as client:
        stack.wait_ready(client)
        headers = {"Authorization": f"Bearer {token}"}

        def open_deposit(_: int) -> dict[str, Any]:
            response = client.post(
                f"{stack.api_url}/api/v1/deposits",
                json={"asset": BENCH_ASSET, "amount": "10.00"},
                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            if response.status_code != 201:  # noqa: PLR2004
                raise click.ClickException(f"creating a deposit failed: {response.status_code} {response.text}")
            body: dict[str, Any] = response.json()
            return body

        started = 0.0
        lock = threading.Lock()
        next_slot = [0.0]

        def approve(deposit: dict[str, Any]) -> None:
            if rate is not None:
                with lock:
                    slot = next_slot[0]
                    next_slot[0] += 1.0 / rate
                delay = slot - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            response = client.post(f"{deposit['checkout_url']}/approve", follow_redirects=False)
            if response.status_code not in (200, 303):
                raise click.ClickException(f"approving a checkout failed: {response.status_code}")

        with ThreadPoolExecutor(concurrency) as pool:
            # Warm-up deposits (not measured) open every process's connections and imports.
            warm = list(pool.map(open_deposit, range(warmup)))
            for deposit in warm:
                client.post(f"{deposit['checkout_url']}/approve", follow_redirects=False)
            opened = list(pool.map(open_deposit, range(count)))
            _wait_credited(settings, [d["id"] for d in warm], timeout, stack.logs)
            cpu_before = stack.cpu_seconds()
            started = time.monotonic()
            next_slot[0] = started
            list(pool.map(approve, opened))
        approve_seconds = time.monotonic() - started
        deposit_ids = [d["id"] for d in opened]
        _wait_credited(settings, deposit_ids, timeout, stack.logs)
        cpu_after = stack.cpu_seconds()
    cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    return deposit_ids, approve_seconds, cpu


@click.command("deposits")
@click.option("--count", type=click.IntRange(1, 100_000), default=2000, show_default=True, help="Deposits to credit.")
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Approve checkouts at this many per second (default: as fast as possible).",
)
@click.option(
    "--warmup", type=click.IntRange(0, 10_000), default=50, show_default=True, help="Unmeasured deposits first."
)
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True, help="Queue workers to start.")
@click.option(
    "--server-workers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Processes of the one `bourse serve` (its --workers).",
)
@click.option(
    "--concurrency", type=click.IntRange(1, 256), default=16, show_default=True, help="Concurrent HTTP clients."
)
@click.option("--timeout", type=click.FloatRange(min=1), default=300.0, show_default=True, help="Seconds to wait.")
@json_option
def bench_deposits(  # noqa: PLR0917 - one parameter per click option
    count: int,
    rate: float | None,
    warmup: int,
    workers: int,
    server_workers: int,
    concurrency: int,
    timeout: float,
    as_json: bool,
) -> None:
    """Webhook-to-credit throughput and latency, end to end through the PSP simulator."""
    from bourse.settings import Settings

    settings = command_settings()
    env = dict(os.environ)
    env["BOURSE_PSP_CONNECTORS"] = "simulator"
    user_id, token = _bench_user(settings)
    logs = Path(tempfile.mkdtemp(prefix="bourse-bench-deposits-"))
    with _Stack(env, workers, logs, server_workers) as stack:
        # The benchmark's own view of the settings: the simulator it started.
        settings = Settings(**{**settings.model_dump(), "psp_sim_url": stack.sim_url})
        deposit_ids, approve_seconds, cpu = _drive(stack, settings, token, count, warmup, rate, concurrency, timeout)
    latencies, span, credited = _timings(settings, deposit_ids)
    result = {
        "benchmark": "deposits",
        "database": settings.database.get_backend_name(),
        "queue_driver": settings.queue_driver,
        "workers": workers,
        "server_workers": server_workers,
        "count": count,
        "warmup": warmup,
        "credited": credited,
        "rate_target": rate,
        "approve_seconds": round(approve_seconds, 3),
        "span_seconds": round(span, 3),
        "deposits_per_second": round(credited / span, 1) if span > 0 else None,
        "webhook_to_credit_ms": {
            "p50": latency_ms(latencies, 0.50, 1),
            "p95": latency_ms(latencies, 0.95, 1),
            "p99": latency_ms(latencies, 0.99, 1),
            "max": round(max(latencies, default=0.0) * 1000, 1),
        },
        # Where the machine's CPU went, per credited deposit (the profile of a missed target).
        "cpu_ms_per_deposit": {name: round(seconds * 1000 / max(credited, 1), 2) for name, seconds in cpu.items()},
        "user_id": str(user_id),
        "machine": machine(),
    }
    ms = result["webhook_to_credit_ms"]
    summary = (
        f"deposits: {credited}/{count} credited, {result['deposits_per_second']}/s over {span:.2f}s;"
        f" webhook to credit p50 {ms['p50']} ms, p99 {ms['p99']} ms"  # type: ignore[index]
    )
    emit(result, as_json, summary=summary)
