"""``bourse bench ledger`` and ``bourse bench ledger-http``: the same random transfers, two ways in.

Both run against the configured PostgreSQL (or SQLite) database and print one
JSON object, so that ``make bench-ledger`` can put them beside ``bench pgbench``:

- ``ledger``: random transfers among N funded accounts through the service
  layer (``bourse.ledger.transfers.transfer`` in one ``unit_of_work`` each), from
  C worker processes, each with its own connection;
- ``ledger-http``: the same transfers through ``POST /api/v1/transfers`` of a
  running ``bourse serve``, with JWTs and Idempotency-Keys, from C client
  processes, each with one keep-alive connection.

Worker processes (not threads) keep Python's GIL out of the measurement: the
service layer is meant to scale with processes, as API replicas do. The
processes, the shared start and the figures are :mod:`bourse.bench.harness`'s.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import click

from bourse.bench.harness import (
    Run,
    Start,
    Tally,
    command_settings,
    emit,
    json_option,
    latency_ms,
    machine,
    run_processes,
    seconds_option,
)

BENCH_ASSET = "USD"
# Each account starts with 10,000.00 and sends at most 1.00 at a time, so a run
# never runs an account dry and every transfer does the full amount of work.
FUNDING = 1_000_000
MAX_TRANSFER = 100


@dataclass
class _Tally(Tally):
    refused: int = 0


def _prepare(count: int) -> tuple[list[str], dict[str, str]]:
    """Create ``count`` bench users with funded USD accounts; their ids and access tokens."""
    from bourse.bench.users import funded_bench_users
    from bourse.settings import load_settings

    return funded_bench_users(load_settings(), count, {BENCH_ASSET: FUNDING})


def _service_worker(user_ids: Sequence[str], seconds: float, seed: int, start: Start) -> None:
    from sqlalchemy import text

    from bourse.db import Database, unit_of_work
    from bourse.errors import BourseError
    from bourse.ledger.posting import Context
    from bourse.ledger.transfers import transfer
    from bourse.settings import load_settings

    database = Database.from_settings(load_settings())
    rng = random.Random(seed)  # noqa: S311 - picking accounts, not secrets
    ids = [uuid.UUID(user_id) for user_id in user_ids]
    tally = _Tally()
    with unit_of_work(database) as session:  # open the connection before the clock starts
        session.execute(text("SELECT 1"))
    deadline = start.wait(seed, seconds)
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
            tally.refused += 1
            continue
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            tally.error(repr(exc)[:300])
            continue
        tally.latencies.append(time.perf_counter() - started)
    database.dispose()
    start.report(tally)


def _http_worker(  # noqa: PLR0917 - multiprocessing passes arguments by position
    base_url: str, user_ids: Sequence[str], tokens: dict[str, str], seconds: float, seed: int, start: Start
) -> None:
    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
    rng = random.Random(seed)  # noqa: S311 - picking accounts, not secrets
    tally = _Tally()
    connection.request("GET", "/livez")
    connection.getresponse().read()
    deadline = start.wait(seed, seconds)
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
            tally.error(repr(exc)[:300])
            connection.close()
            connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=30)
            continue
        if response.status == 201:  # noqa: PLR2004 - Created
            tally.latencies.append(time.perf_counter() - started)
        elif 400 <= response.status < 500:  # noqa: PLR2004 - client refusals
            tally.refused += 1
        else:
            tally.error(f"HTTP {response.status}")
    connection.close()
    start.report(tally)


def _figures(run: Run[_Tally], concurrency: int) -> dict[str, Any]:
    latencies = run.latencies
    return {
        "concurrency": concurrency,
        "seconds": round(run.elapsed, 2),
        "transfers": len(latencies),
        "transfers_per_second": round(len(latencies) / run.elapsed, 1),
        "p50_ms": latency_ms(latencies, 0.50),
        "p99_ms": latency_ms(latencies, 0.99),
        "refused": sum(tally.refused for tally in run.tallies),
        "errors": run.errors,
        "error_samples": run.error_samples,
    }


def _backend() -> str:
    from bourse.settings import load_settings

    return load_settings().database.get_backend_name()


concurrency_option = click.option(
    "--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Worker processes."
)
accounts_option = click.option(
    "--accounts", type=click.IntRange(2, 100_000), default=1000, show_default=True, help="Funded accounts to use."
)


@click.command("ledger")
@seconds_option
@concurrency_option
@accounts_option
@json_option
def bench_ledger(seconds: float, concurrency: int, accounts: int, as_json: bool) -> None:
    """Random transfers through the service layer, on the configured database."""
    command_settings()
    user_ids, _ = _prepare(accounts)
    run = run_processes(_service_worker, [(user_ids,)] * concurrency, seconds)
    emit(
        {
            "benchmark": "ledger",
            "database": _backend(),
            "accounts": accounts,
            **_figures(run, concurrency),
            "machine": machine(),
        },
        as_json,
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
    command_settings()
    user_ids, tokens = _prepare(accounts)
    run = run_processes(_http_worker, [(url, user_ids, tokens)] * concurrency, seconds)
    emit(
        {
            "benchmark": "ledger-http",
            "database": _backend(),
            "accounts": accounts,
            **_figures(run, concurrency),
            "machine": machine(),
        },
        as_json,
    )
