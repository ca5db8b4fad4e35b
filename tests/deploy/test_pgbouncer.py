"""Bourse through PgBouncer in transaction mode, as the CloudNativePG Pooler runs it.

Debian's PgBouncer (1.18, which does not track prepared statements) runs with the
Pooler's pool mode and parameters read from the rendered manifests. Each behaviour
that a transaction pooler breaks is shown broken without
BOURSE_DATABASE_TRANSACTION_POOLING and working with it (docs/decisions/0021).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2 as httpx
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bourse.db import Database, create_db_engine
from bourse.queue.database_driver import commit_asynchronously
from tests.support.auth import bearer, make_user
from tests.support.k8s import PgBouncer, config_env, one, pgbouncer, pooler_parameters, rendered
from tests.support.ledger import fund
from tests.support.processes import clean_env, run_bourse, wait_for_status
from tests.support.services import make_settings

PGBOUNCER_PORT = 18610
SERVE_PORT = 18620


@pytest.fixture
def bouncer(tmp_path: Path) -> Iterator[PgBouncer]:
    """PgBouncer with the Pooler's settings, but one server connection per database,
    so that every client provably shares it."""
    mode, parameters = pooler_parameters(rendered())
    assert mode == "transaction"
    with pgbouncer(PGBOUNCER_PORT, tmp_path / "pgbouncer", mode, {**parameters, "default_pool_size": "1"}) as bouncer:
        yield bouncer


def _through(bouncer: PgBouncer, postgres_url: str) -> str:
    return bouncer.url(make_url(postgres_url).database or "")


def test_the_manifests_route_every_process_through_the_pooler_but_the_migration() -> None:
    docs = rendered()
    for name in ("bourse-api", "bourse-worker", "bourse-scheduler"):
        env = config_env(docs, one(docs, "Deployment", name))
        assert "bourse-db-pooler-rw" in env["BOURSE_DATABASE_URL"]
        assert env["BOURSE_DATABASE_TRANSACTION_POOLING"] == "true"
    env = config_env(docs, one(docs, "Job", "bourse-migrate"))
    assert "bourse-db-rw." in env["BOURSE_DATABASE_URL"]
    assert env["BOURSE_DATABASE_TRANSACTION_POOLING"] == "false"


@pytest.mark.parametrize("pooled", [True, False], ids=["pooling-on", "control-pooling-off"])
def test_psycopg_prepared_statements_collide_on_a_shared_server_connection(
    bouncer: PgBouncer, postgres_url: str, pooled: bool
) -> None:
    settings = make_settings(_through(bouncer, postgres_url), database_transaction_pooling=pooled)
    engine = create_db_engine(settings, name=f"prepared-{pooled}", pool_size=2, max_overflow=0)
    query = text("SELECT count(*) FROM assets WHERE code <> :code")
    failure: DBAPIError | None = None
    try:
        with engine.connect() as first, engine.connect() as second:
            # psycopg prepares a statement server-side at its fifth execution on a
            # client connection; both clients share PgBouncer's one server connection.
            for conn in (first, second):
                for _ in range(8):
                    conn.execute(query, {"code": "XXX"})
                    conn.commit()
    except DBAPIError as exc:
        failure = exc
    finally:
        engine.dispose()
    if pooled:
        assert failure is None, f"with transaction pooling set, no statement may be prepared: {failure}"
    else:
        assert failure is not None, "the control should fail: the prepared statements collide on the shared connection"
        assert "_pg3_" in str(failure)


@pytest.mark.parametrize("pooled", [True, False], ids=["pooling-on", "control-pooling-off"])
def test_worker_session_settings_never_reach_other_clients(bouncer: PgBouncer, postgres_url: str, pooled: bool) -> None:
    """The worker's bookkeeping commits asynchronously, a session setting; through a
    transaction pooler it would stay on the shared server connection and make other
    clients' commits (money movements included) non-durable."""
    url = _through(bouncer, postgres_url)
    database = Database.from_settings(make_settings(url, database_transaction_pooling=pooled), name="leak")
    commit_asynchronously(database.engine, pooled=pooled)  # what bourse worker does at start-up
    try:
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    finally:
        database.dispose()
    with psycopg.connect(make_url(url).render_as_string(hide_password=False).replace("+psycopg", "")) as other:
        seen = other.execute("SHOW synchronous_commit").fetchone()
    assert seen is not None
    assert seen[0] == ("on" if pooled else "off")


@contextmanager
def _serve(url: str, tmp_path: Path, *, pooled: bool) -> Iterator[str]:
    """A real ``bourse serve`` on the database URL; yields its base URL."""
    env = clean_env(
        BOURSE_DATABASE_URL=url,
        BOURSE_DATABASE_TRANSACTION_POOLING="true" if pooled else "false",
        # Behind the pooler, as in production: orders are matched by `bourse matcher`
        # processes on the direct connection, not by the API (docs/decisions/0027); the
        # control run differs from the real one in the pooling setting alone.
        BOURSE_MATCHER="external",
        BOURSE_DATABASE_LOCK_TIMEOUT_MS="1000",
        BOURSE_SHUTDOWN_DRAIN_SECONDS="0",
        BOURSE_LOG_LEVEL="warning",
    )
    with (tmp_path / f"serve-{pooled}.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "bourse", "serve", "--port", str(SERVE_PORT)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{SERVE_PORT}"
        finally:
            server.terminate()
            server.wait(timeout=30)


def test_the_api_works_through_pgbouncer_with_lock_timeouts_per_transaction(
    bouncer: PgBouncer, postgres_url: str, tmp_path: Path
) -> None:
    settings = make_settings(postgres_url)
    database = Database.from_settings(settings)
    try:
        alice, bob = make_user(database), make_user(database)
        fund(database, alice.id, "USD", 1_000_00)
    finally:
        database.dispose()
    with _serve(_through(bouncer, postgres_url), tmp_path, pooled=True) as base:
        wait_for_status(f"{base}/readyz", 200, timeout=60)
        statuses: list[int] = []

        def send(count: int) -> None:
            with httpx.Client(base_url=base, timeout=10) as client:
                for _ in range(count):
                    response = client.post(
                        "/api/v1/transfers",
                        json={"to_user_id": str(bob.id), "asset": "USD", "amount": "1.00"},
                        headers={**bearer(settings, alice), "Idempotency-Key": str(uuid.uuid4())},
                    )
                    statuses.append(response.status_code)

        threads = [threading.Thread(target=send, args=(10,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert statuses == [201] * 40

        # lock_timeout still bounds lock waits: SET LOCAL in each transaction, since
        # PgBouncer refuses the "options" startup parameter that carries it otherwise.
        direct = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(direct) as locker:
            # The wallets read the accounts (the caller, cached for a second, may not touch users).
            locker.execute("LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE")
            # Answered while the lock is still held (it goes with the rollback below):
            # the server gave up on the lock instead of waiting for it.
            response = httpx.get(f"{base}/api/v1/wallets", headers=bearer(settings, alice), timeout=15)
            locker.rollback()
        # Refused by the lock_timeout, not by the 15 s client timeout (that would have
        # raised): a retryable 503 that says so, as on a direct connection.
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "transient_conflict"
        assert response.headers["retry-after"] == "1"
    assert "canceling statement due to lock timeout" in (tmp_path / "serve-True.log").read_text()


def test_control_without_the_setting_pgbouncer_refuses_the_api_connections(
    bouncer: PgBouncer, postgres_url: str, tmp_path: Path
) -> None:
    with _serve(_through(bouncer, postgres_url), tmp_path, pooled=False) as base:
        wait_for_status(f"{base}/livez", 200, timeout=60)
        response = httpx.get(f"{base}/api/v1/assets", timeout=15)
        assert response.status_code >= 500
    assert "unsupported startup parameter: options" in bouncer.log.read_text()


def test_migrate_refuses_to_run_through_a_transaction_pooler(postgres_url: str) -> None:
    result = run_bourse(
        "migrate", env=clean_env(BOURSE_DATABASE_URL=postgres_url, BOURSE_DATABASE_TRANSACTION_POOLING="true")
    )
    assert result.returncode == 2
    assert "BOURSE_DATABASE_TRANSACTION_POOLING" in result.stderr
    assert "primary" in result.stderr
