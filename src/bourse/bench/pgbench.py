"""``bourse bench pgbench``: the ledger benchmarks' peer baseline.

pgbench's built-in TPC-B-like script with ``-M prepared`` and the same client
count as ``bench ledger``, on a scratch database on the configured server;
``make bench-ledger`` prints the three side by side.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import click

from bourse.bench.harness import command_settings, emit, json_option, machine, seconds_option
from bourse.cli_support import check_cli_database

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

    settings = command_settings(check=False)
    url = settings.database
    if url.get_backend_name() != "postgresql":
        raise click.UsageError("pgbench needs BOURSE_DATABASE_URL to point at PostgreSQL")
    check_cli_database(settings, require_migrated=False)  # one line and exit 3, not a driver's traceback
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise click.UsageError("pgbench is not installed (Debian: postgresql-client)")
    scratch = f"bourse_pgbench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{scratch}"'))
    env = {**os.environ, "PGPASSWORD": url.password} if url.password else {**os.environ}
    base = [pgbench, "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "postgres"]
    try:
        for argv in (
            [*base, "-i", "-q", "-s", str(scale), scratch],
            [*base, "-M", "prepared", "-c", str(clients), "-j", str(clients), "-T", str(int(seconds)), scratch],
        ):
            run = subprocess.run(argv, check=False, capture_output=True, text=True, env=env)  # noqa: S603 - fixed argv
            if run.returncode != 0:
                click.echo(f"bourse: pgbench failed (exit {run.returncode}):\n{run.stderr.strip()}", err=True)
                sys.exit(1)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
        admin.dispose()
    tps, latency = _TPS.search(run.stdout), _LATENCY.search(run.stdout)
    if tps is None:
        click.echo(run.stdout + run.stderr, err=True)
        sys.exit(1)
    emit(
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
