"""``bourse bench ledger``, ``bourse bench ledger-http`` and ``bourse bench pgbench``.

All three run against the configured PostgreSQL (or SQLite) database and print
one JSON object, so that ``make bench-ledger`` can put them side by side:

- ``ledger``: random transfers among N funded accounts through the service
  layer (``bourse.ledger.transfers.transfer`` in one ``unit_of_work`` each), from
  C worker processes, each with its own connection;
- ``ledger-http``: the same transfers through ``POST /api/v1/transfers`` of a
  running ``bourse serve``, with JWTs and Idempotency-Keys, from C client
  processes, each with one keep-alive connection;
- ``pgbench``: the peer baseline, pgbench's built-in TPC-B-like script with
  ``-M prepared`` and the same client count, on a scratch database on the same
  server.

Worker processes (not threads) keep Python's GIL out of the measurement: the
service layer is meant to scale with processes, as API replicas do.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from bourse.bench import machine, percentile
from bourse.cli_support import check_cli_database, load_cli_settings

if TYPE_CHECKING:
    from bourse.settings import Settings

BENCH_ASSET = "USD"
# Each account starts with 10,000.00 and sends at most 1.00 at a time, so a run
# never runs an account dry and every transfer does the full amount of work.
FUNDING = 1_000_000
MAX_TRANSFER = 100


@dataclass
class WorkerResult:
    latencies: list[float]
    refused: int
    errors: int
    # The first few errors, so a run that had any says what they were.
    samples: list[str]


def funded_bench_users(
    settings: Settings,
    count: int,
    funding: Mapping[str, int],
    *,
    prefix: str = "bench",
    analyze: Sequence[str] = ("users", "accounts", "journal_entries", "postings"),
) -> tuple[list[str], dict[str, str]]:
    """Create ``count`` client users, credit each ``funding`` (minor units per asset)
    against the house, and mint their access tokens: their ids and tokens.

    Shared by the HTTP benchmarks. The users are inserted in one statement and
    nobody knows their password: they act only through the minted tokens.
    """
    from argon2 import PasswordHasher
    from sqlalchemy import insert, text

    from bourse.db import Database, unit_of_work
    from bourse.identity.models import Role, User, UserStatus
    from bourse.identity.tokens import issue_access_token
    from bourse.ledger.adjustments import adjust
    from bourse.ledger.posting import Context
    from bourse.sqltypes import utcnow

    database = Database.from_settings(settings)
    run = uuid.uuid4().hex[:8]
    password_hash = PasswordHasher().hash(uuid.uuid4().hex + uuid.uuid4().hex)
    now = utcnow()
    users = [_Subject(uuid.uuid4(), Role.client.value, f"{prefix}-{run}-{i}@bench.invalid") for i in range(count)]
    rows = [
        {
            "id": user.id,
            "email": user.email,
            "password_hash": password_hash,
            "role": Role.client,
            "status": UserStatus.active,
            "created_at": now,
            "updated_at": now,
        }
        for user in users
    ]
    try:
        with unit_of_work(database) as session:
            session.execute(insert(User), rows)
        for start in range(0, count, 200):
            with unit_of_work(database) as session:
                for user in users[start : start + 200]:
                    for asset, amount in funding.items():
                        adjust(
                            session,
                            user_id=user.id,
                            asset=asset,
                            amount=amount,
                            credit=True,
                            reason="benchmark funding",
                            context=Context(actor="bench", idempotency_key=f"bench-fund:{user.id}:{asset}"),
                        )
        if database.engine.dialect.name == "postgresql":
            # Fresh planner statistics for the tables the run just filled, as
            # autovacuum would soon give them; without, PostgreSQL may scan.
            with database.engine.connect() as conn:
                conn.execute(text(f"ANALYZE {', '.join(analyze)}"))
                conn.commit()
        tokens = {str(user.id): issue_access_token(settings, user) for user in users}
    finally:
        database.dispose()
    return [str(user.id) for user in users], tokens


def _prepare(count: int) -> tuple[list[str], dict[str, str]]:
    """Create ``count`` bench users with funded USD accounts; their ids and access tokens."""
    from bourse.settings import load_settings

    return funded_bench_users(load_settings(), count, {BENCH_ASSET: FUNDING})


@dataclass(frozen=True)
class _Subject:
    id: uuid.UUID
    role: str
    email: str


def _service_worker(  # noqa: PLR0917 - multiprocessing passes arguments by position
    user_ids: Sequence[str], seconds: float, seed: int, ready: Any, go: Event, results: Any
) -> None:
    from sqlalchemy import text

    from bourse.db import Database, unit_of_work
    from bourse.errors import BourseError
    from bourse.ledger.posting import Context
    from bourse.ledger.transfers import transfer
    from bourse.settings import load_settings

    database = Database.from_settings(load_settings())
    rng = random.Random(seed)  # noqa: S311 - picking accounts, not secrets
    ids = [uuid.UUID(user_id) for user_id in user_ids]
    latencies: list[float] = []
    samples: list[str] = []
    refused = errors = 0
    with unit_of_work(database) as session:  # open the connection before the clock starts
        session.execute(text("SELECT 1"))
    ready.put(seed)
    go.wait()
    deadline = time.perf_counter() + seconds
    while (started := time.perf_counter()) < deadline:
        source, target = rng.sample(ids, 2)
        try:
            with unit_of_work(database) as session:
                transfer(
                    session,
                    from_user=source,
                    to_user=target,
                    asset=BENCH_ASSET,
                    amount=rng.randint(1, MAX_TRANSFER),
                    context=Context(actor="bench", idempotency_key=f"bench:{uuid.uuid4()}"),
                )
        except BourseError:
            refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            errors += 1
            samples.append(repr(exc)[:300])
            continue
        latencies.append(time.perf_counter() - started)
    database.dispose()
    results.put(WorkerResult(latencies, refused, errors, samples[:3]))


def _http_worker(  # noqa: PLR0917 - one process's share of the run, passed by position
    base_url: str,
    user_ids: Sequence[str],
    tokens: dict[str, str],
    seconds: float,
    seed: int,
    ready: Any,
    go: Event,
    results: Any,
) -> None:
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    rng = random.Random(seed)  # noqa: S311 - picking accounts, not secrets
    latencies: list[float] = []
    samples: list[str] = []
    refused = errors = 0
    connection.request("GET", "/livez")
    connection.getresponse().read()
    ready.put(seed)
    go.wait()
    deadline = time.perf_counter() + seconds
    while (started := time.perf_counter()) < deadline:
        source, target = rng.sample(user_ids, 2)
        amount = rng.randint(1, MAX_TRANSFER)
        body = json.dumps({"to_user_id": target, "asset": BENCH_ASSET, "amount": f"{amount // 100}.{amount % 100:02d}"})
        headers = {
            "Authorization": f"Bearer {tokens[source]}",
            "Idempotency-Key": str(uuid.uuid4()),
            "Content-Type": "application/json",
        }
        try:
            connection.request("POST", "/api/v1/transfers", body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException) as exc:
            errors += 1
            samples.append(repr(exc)[:300])
            connection.close()
            connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
            continue
        if response.status == 201:  # noqa: PLR2004 - Created
            latencies.append(time.perf_counter() - started)
        elif 400 <= response.status < 500:  # noqa: PLR2004 - client refusals
            refused += 1
        else:
            errors += 1
            samples.append(f"HTTP {response.status}")
    connection.close()
    results.put(WorkerResult(latencies, refused, errors, samples[:3]))


def _run(target: Any, args_for: Any, concurrency: int, seconds: float) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ready, results, go = context.Queue(), context.Queue(), context.Event()
    processes = [
        context.Process(target=target, args=(*args_for(i), seconds, i, ready, go, results), daemon=True)
        for i in range(concurrency)
    ]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=120)
    started = time.perf_counter()
    go.set()
    collected: list[WorkerResult] = [results.get(timeout=seconds + 120) for _ in processes]
    elapsed = time.perf_counter() - started
    for process in processes:
        process.join(timeout=30)
    latencies = [value for result in collected for value in result.latencies]
    return {
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "transfers": len(latencies),
        "transfers_per_second": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "refused": sum(result.refused for result in collected),
        "errors": sum(result.errors for result in collected),
        "error_samples": [sample for result in collected for sample in result.samples][:5],
    }


def _backend() -> str:
    from bourse.settings import load_settings

    return load_settings().database.get_backend_name()


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
    else:
        for key, value in result.items():
            click.echo(f"{key:>22}: {value}")


seconds_option = click.option(
    "--seconds", type=click.FloatRange(1, 3600), default=20, show_default=True, help="How long to measure."
)
concurrency_option = click.option(
    "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Worker processes."
)
accounts_option = click.option(
    "--accounts", type=click.IntRange(2, 100_000), default=1000, show_default=True, help="Funded accounts to use."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@click.command("ledger")
@seconds_option
@concurrency_option
@accounts_option
@json_option
def bench_ledger(seconds: float, concurrency: int, accounts: int, as_json: bool) -> None:
    """Random transfers through the service layer, on the configured database."""
    check_cli_database(load_cli_settings(service=True))
    user_ids, _ = _prepare(accounts)
    result = _run(_service_worker, lambda _: (user_ids,), concurrency, seconds)
    _emit(
        {"benchmark": "ledger", "database": _backend(), "accounts": accounts, **result, "machine": machine()}, as_json
    )


@click.command("ledger-http")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="A running `bourse serve`.")
@seconds_option
@concurrency_option
@accounts_option
@json_option
def bench_ledger_http(url: str, seconds: float, concurrency: int, accounts: int, as_json: bool) -> None:
    """Random transfers through POST /api/v1/transfers of a running server, with JWTs.

    The accounts are created and funded directly in the configured database,
    which must be the server's, and tokens are minted with its JWT key.
    """
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise click.BadParameter("an http:// URL of a running `bourse serve`", param_hint="--url")
    check_cli_database(load_cli_settings(service=True))
    user_ids, tokens = _prepare(accounts)
    result = _run(_http_worker, lambda _: (url, user_ids, tokens), concurrency, seconds)
    _emit(
        {"benchmark": "ledger-http", "database": _backend(), "accounts": accounts, **result, "machine": machine()},
        as_json,
    )


_TPS = re.compile(r"^tps = ([0-9.]+)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


@click.command("pgbench")
@click.option("--clients", type=click.IntRange(1, 256), default=8, show_default=True, help="pgbench -c and -j.")
@seconds_option
@click.option("--scale", type=click.IntRange(1, 1000), default=10, show_default=True, help="pgbench -i -s.")
@json_option
def bench_pgbench(clients: int, seconds: float, scale: int, as_json: bool) -> None:
    """The baseline: pgbench TPC-B (-M prepared) on a scratch database on the configured server."""
    from sqlalchemy import create_engine, text

    settings = load_cli_settings(service=True)
    url = settings.database
    if url.get_backend_name() != "postgresql":
        raise click.UsageError("pgbench needs BOURSE_DATABASE_URL to point at PostgreSQL")
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise click.UsageError("pgbench is not installed (Debian: postgresql-client)")
    scratch = f"bourse_pgbench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{scratch}"'))
    env = {"PGPASSWORD": url.password or ""} if url.password else {}
    base = [pgbench, "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
    try:
        subprocess.run([*base, "-i", "-q", "-s", str(scale), scratch], check=True, capture_output=True, env=_env(env))  # noqa: S603 - fixed argv
        run = subprocess.run(  # noqa: S603 - fixed argv
            [*base, "-M", "prepared", "-c", str(clients), "-j", str(clients), "-T", str(int(seconds)), scratch],
            check=True,
            capture_output=True,
            text=True,
            env=_env(env),
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        admin.dispose()
    tps, latency = _TPS.search(run.stdout), _LATENCY.search(run.stdout)
    if tps is None:
        click.echo(run.stdout + run.stderr, err=True)
        sys.exit(1)
    _emit(
        {
            "benchmark": "pgbench-tpcb",
            "clients": clients,
            "seconds": int(seconds),
            "scale": scale,
            "tps": float(tps.group(1)),
            "latency_avg_ms": float(latency.group(1)) if latency else None,
            "machine": machine(),
        },
        as_json,
    )


def _env(extra: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **extra}
