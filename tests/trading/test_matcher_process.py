"""``bourse matcher`` as processes on PostgreSQL: a leader and a standby, the leader killed
(SIGKILL) while orders keep arriving, the standby taking over with nothing lost or
duplicated; a clean SIGTERM; and the refusals of a matcher that cannot run."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import psycopg
import pytest
from sqlalchemy import func, select, text

from bourse.db import Database, unit_of_work
from bourse.trading.matcher import rebuild_book
from bourse.trading.models import PENDING_COMMANDS_SQL, Instrument, Order, Trade
from tests.support.ledger import fund, verify
from tests.support.processes import clean_env, run_bourse, stop
from tests.support.services import POSTGRES_ADMIN_URL as ADMIN
from tests.support.services import make_settings
from tests.support.waiting import wait_until
from tests.trading.orders_support import market, new_user
from tests.trading.test_matcher import accept

pytestmark = pytest.mark.process


@pytest.fixture
def pg(postgres_url: str) -> Iterator[Database]:
    database = Database.from_settings(make_settings(postgres_url))
    yield database
    database.dispose()


def _matcher(postgres_url: str, tmp_path: Path, name: str) -> subprocess.Popen[str]:
    """``bourse matcher``, its output in a file (a pipe nobody reads would fill and block it)."""
    env = clean_env(
        BOURSE_DATABASE_URL=postgres_url,
        BOURSE_MATCHER_HEARTBEAT_PATH=str(tmp_path / f"{name}.heartbeat"),
        BOURSE_LOG_LEVEL="info",
    )
    with (tmp_path / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bourse", "matcher"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )


def _pending(database: Database) -> int:
    with unit_of_work(database) as session:
        return int(
            session.scalar(select(func.count()).select_from(Order).where(text(f"({PENDING_COMMANDS_SQL})"))) or 0
        )


def _leader_pid(database: Database) -> int | None:
    with unit_of_work(database) as session:
        pid = session.scalar(
            text(
                "SELECT a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :c AND l.objid = 0"
                # Advisory locks are per database: tests running beside this one lead shards of their own.
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"c": 0x0B0_05E},
        )
    return None if pid is None else int(pid)


def _holds(process: subprocess.Popen[str], backend_pid: int | None) -> bool:
    """Whether the PostgreSQL backend ``backend_pid`` is a connection of ``process``."""
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        row = conn.execute("SELECT client_port FROM pg_stat_activity WHERE pid = %s", (backend_pid,)).fetchone()
    if row is None:
        return False
    ports = {c.laddr.port for c in psutil.Process(process.pid).net_connections(kind="tcp")}
    return row[0] in ports


def test_a_standby_takes_over_from_a_killed_leader_losing_and_duplicating_nothing(
    postgres_url: str, pg: Database, tmp_path: Path
) -> None:
    symbol, base, quote = market(pg)
    sellers = [new_user(pg) for _ in range(3)]
    buyers = [new_user(pg) for _ in range(3)]
    for user in sellers:
        fund(pg, user, base, 10**10)
    for user in buyers:
        fund(pg, user, quote, 10**9)
    first = _matcher(postgres_url, tmp_path, "first")
    second = _matcher(postgres_url, tmp_path, "second")
    try:
        wait_until(lambda: _leader_pid(pg) is not None, "a matcher to lead shard 0", timeout=60)
        placed: list[int] = []
        for round_ in range(4):
            for i in range(15):
                seller, buyer = sellers[i % 3], buyers[i % 3]
                placed.append(accept(pg, seller, symbol, side="sell", price_text="100.00", quantity_text="0.01").id)
                placed.append(accept(pg, buyer, symbol, side="buy", price_text="100.00", quantity_text="0.01").id)
            if round_ == 1:
                # The leader dies mid-stream: whatever batch it had begun never commits.
                def leading() -> subprocess.Popen[str] | None:
                    return next((p for p in (first, second) if _holds(p, _leader_pid(pg))), None)

                leader = wait_until(leading, "the leading matcher process to be found", timeout=30)
                assert leader is not None
                leader.send_signal(signal.SIGKILL)
                leader.wait(timeout=30)
        wait_until(lambda: _pending(pg) == 0, "every order to be matched by the surviving matcher", timeout=90)
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=30) == 0
            stop(process)
    with unit_of_work(pg) as session:
        orders = session.scalars(select(Order).where(Order.id.in_(placed))).all()
        assert {order.status.value for order in orders} == {"filled"}
        trades = session.scalars(select(Trade).where(Trade.instrument == symbol)).all()
        # Every buy met one sell of the same size: exactly 60 fills, each order in exactly one.
        assert len(trades) == 60
        assert len({trade.taker_order_id for trade in trades} | {trade.maker_order_id for trade in trades}) == 120
        sequences = sorted(order.sequence or 0 for order in orders)
        assert len(set(sequences)) == len(sequences)
        # Every order filled: nothing rests, in the database or in a book rebuilt from it.
        assert rebuild_book(session, session.get_one(Instrument, symbol)).orders() == []
    assert verify(pg).ok


def test_sigterm_stops_the_matcher_with_exit_0(postgres_url: str, tmp_path: Path) -> None:
    process = _matcher(postgres_url, tmp_path, "solo")
    try:
        heartbeat = tmp_path / "solo.heartbeat"
        wait_until(heartbeat.exists, "the matcher's heartbeat", timeout=60)
        env = clean_env(BOURSE_DATABASE_URL=postgres_url, BOURSE_MATCHER_HEARTBEAT_PATH=str(heartbeat))
        assert run_bourse("healthcheck", "--matcher", env=env).returncode == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)


def test_a_matcher_that_cannot_run_says_why(postgres_url: str) -> None:
    pooled = run_bourse(
        "matcher",
        env=clean_env(
            BOURSE_DATABASE_URL=postgres_url, BOURSE_DATABASE_TRANSACTION_POOLING="true", BOURSE_MATCHER="external"
        ),
    )
    assert pooled.returncode == 2, pooled.stderr
    assert "matcher_unavailable" in pooled.stderr
    assert "BOURSE_DATABASE_DIRECT_URL" in pooled.stderr
    # The API refuses to run a matcher it could not lead, before it serves anything.
    serve = run_bourse(
        "serve", env=clean_env(BOURSE_DATABASE_URL=postgres_url, BOURSE_DATABASE_TRANSACTION_POOLING="true")
    )
    assert serve.returncode == 2, serve.stderr
    assert "BOURSE_MATCHER=external" in serve.stderr
    assert "Traceback" not in serve.stderr
    wrong = run_bourse("matcher", "--shards", "3", env=clean_env(BOURSE_DATABASE_URL=postgres_url))
    assert wrong.returncode == 2, wrong.stderr
    assert "invalid_shards" in wrong.stderr
