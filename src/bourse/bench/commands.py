"""The ``bourse bench`` group: every benchmark's subcommand, assembled in one place.

``bourse`` imports this at start-up, so the benchmark modules import their
heavy dependencies (SQLAlchemy, the domains) inside their functions.
"""

from __future__ import annotations

import click

from bourse.bench.deposits import bench_deposits
from bourse.bench.fanout import bench_fanout
from bourse.bench.ledger import bench_ledger, bench_ledger_http
from bourse.bench.matcher import bench_matcher
from bourse.bench.matching import bench_matching
from bourse.bench.orders_http import bench_orders_http
from bourse.bench.pgbench import bench_pgbench
from bourse.bench.queue import bench_queue
from bourse.bench.wallets_http import bench_wallets_http


@click.group()
def bench() -> None:
    """Measure throughput and latency against the configured database and Redis."""


for command in (
    bench_queue,
    bench_ledger,
    bench_ledger_http,
    bench_pgbench,
    bench_matching,
    bench_matcher,
    bench_deposits,
    bench_orders_http,
    bench_fanout,
    bench_wallets_http,
):
    bench.add_command(command)
