"""Transient database failures at the request boundary: a retryable 503 with a stable code, never a 500.

Every failure is provoked for real, with a second connection doing what another
transaction or an operator would do, never by raising a fake exception:

- ``deadlock``: the request holds row 1; the other connection holds row 2 and waits
  for row 1; the request then waits for row 2 (PostgreSQL aborts the request: the
  other connection's ``deadlock_timeout`` is longer);
- ``serialization``: a ``REPEATABLE READ`` request locks row 2 after the other
  connection updated and committed it (``could not serialize access``);
- ``lock_timeout``: the request sets ``lock_timeout`` and waits for row 2, held by
  the other connection;
- ``statement_timeout``: the same wait, cut short by ``statement_timeout``;
- ``lost_connection``: the other connection terminates the request's backend
  (``pg_terminate_backend``) while it waits for row 2.

Each happens either in the endpoint (it locks row 2 itself) or in the commit (a
deferred constraint trigger locks row 2 at ``COMMIT``; PostgreSQL does not apply
``statement_timeout`` there, so that one is tested in the endpoint only). Nothing may be written, the
answer is a 503 with ``Retry-After``, the failure is logged with its SQLSTATE and
counted, and the next request is served normally.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bourse.api.routing import DbSession, router
from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.identity.service import issue_tokens
from bourse.ledger.models import AccountKind
from bourse.logging import configure_logging
from bourse.settings import Settings
from tests.support.auth import bearer, make_user
from tests.support.ledger import balance, fund
from tests.support.services import make_settings
from tests.support.waiting import wait_until

# failure -> (error code, SQLSTATE, Retry-After)
EXPECTED = {
    "deadlock": ("transient_conflict", "40P01", "1"),
    "serialization": ("transient_conflict", "40001", "1"),
    "lock_timeout": ("transient_conflict", "55P03", "1"),
    "statement_timeout": ("database_unavailable", "57014", "2"),
    "lost_connection": ("database_unavailable", "57P01", "2"),
}


def libpq_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def transient_count(code: str, sqlstate: str, source: str = "request") -> float:
    value = REGISTRY.get_sample_value(
        "bourse_db_transient_errors_total", {"source": source, "code": code, "sqlstate": sqlstate}
    )
    return value or 0.0


@pytest.fixture
def logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]

    yield read
    configure_logging("info", "json")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    wait_until(condition, what, timeout=timeout, interval=0.01)


def waiting_for_a_lock(watch: psycopg.Connection[Any], pid: int) -> bool:
    row = watch.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
    return row is not None and row[0] == "Lock"


def gone(watch: psycopg.Connection[Any], pid: int) -> bool:
    return watch.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() is None


@dataclass
class Other:
    """The other connection: what another transaction (or an operator) does meanwhile."""

    url: str
    rows: str
    ready: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    errors: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self, failure: str, request_pid: int) -> None:
        """Called by the endpoint: returns once the other connection holds (or has changed) row 2."""
        if failure == "serialization":
            with psycopg.connect(self.url, autocommit=True) as conn:
                # Committed: the request's snapshot is stale.
                conn.execute(f"UPDATE {self.rows} SET v = v + 1 WHERE id = 2")  # noqa: S608 - a test table
            return
        self.thread = threading.Thread(target=self._run, args=(failure, request_pid), daemon=True)
        self.thread.start()
        assert self.ready.wait(10), self.errors

    def _run(self, failure: str, request_pid: int) -> None:
        try:
            with psycopg.connect(self.url) as conn, psycopg.connect(self.url, autocommit=True) as watch:
                # The request must be the deadlock's victim: this side checks only after 10 s.
                conn.execute("SET deadlock_timeout = '10s'")
                conn.execute(f"SELECT 1 FROM {self.rows} WHERE id = 2 FOR UPDATE")  # noqa: S608 - a test table
                self.ready.set()
                if failure in {"deadlock", "lost_connection"}:
                    wait_for(lambda: waiting_for_a_lock(watch, request_pid), "the request to wait for row 2")
                    if failure == "deadlock":
                        # The cycle: this side holds row 2 and waits for row 1.
                        conn.execute(f"SELECT 1 FROM {self.rows} WHERE id = 1 FOR UPDATE")  # noqa: S608 - a test table
                    else:
                        watch.execute("SELECT pg_terminate_backend(%s)", (request_pid,))
                        wait_for(lambda: gone(watch, request_pid), "the request's backend to exit")
                else:
                    self.release.wait(30)
                conn.rollback()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
            self.ready.set()

    def finish(self) -> None:
        self.release.set()
        if self.thread is not None:
            self.thread.join(30)
            assert not self.thread.is_alive()
        assert self.errors == []


@dataclass
class Probe:
    client: TestClient
    app: FastAPI
    database: Database
    url: str
    rows: str
    notes: str
    other: Other

    def notes_written(self) -> list[str]:
        with psycopg.connect(self.url) as conn:
            return [row[0] for row in conn.execute(f"SELECT note FROM {self.notes}")]  # noqa: S608 - a test table


@pytest.fixture
def pg(postgres_url: str) -> Iterator[tuple[Settings, Database, FastAPI]]:
    settings = make_settings(postgres_url)
    database = Database.from_settings(settings)
    yield settings, database, create_app(settings, database=database)
    database.dispose()


@pytest.fixture
def probe(pg: tuple[Settings, Database, FastAPI], postgres_url: str) -> Iterator[Probe]:
    _, database, app = pg
    url = libpq_url(postgres_url)
    name = f"probe_{uuid.uuid4().hex[:10]}"
    rows, notes = f"{name}_rows", f"{name}_notes"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {rows} (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
        conn.execute(f"INSERT INTO {rows} VALUES (1, 0), (2, 0)")  # noqa: S608 - a test table
        conn.execute(f"CREATE TABLE {notes} (note TEXT NOT NULL)")
        # At COMMIT, every transaction that wrote a note locks row 2.
        conn.execute(
            f"CREATE FUNCTION {name}_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN PERFORM 1 FROM {rows} WHERE id = 2 FOR UPDATE; RETURN NULL; END $$"
        )
        conn.execute(
            f"CREATE CONSTRAINT TRIGGER {name}_at_commit AFTER INSERT ON {notes}"
            f" DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION {name}_at_commit()"
        )
    other = Other(url, rows)
    probes = router(prefix=f"/api/v1/{name}")

    @probes.post("/{failure}/{where}")
    def provoke(failure: str, where: str, session: DbSession) -> dict[str, str]:
        if failure == "serialization":
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        insert = f"INSERT INTO {notes} (note) VALUES (:note)"  # noqa: S608 - a test table
        session.execute(text(insert), {"note": f"{failure} {where}"})
        session.execute(text(f"SELECT 1 FROM {rows} WHERE id = 1 FOR UPDATE"))  # noqa: S608 - a test table
        if failure in {"lock_timeout", "statement_timeout"}:
            session.execute(text(f"SET LOCAL {failure} = '300ms'"))
        other.start(failure, pid)
        if where == "endpoint":
            session.execute(text(f"SELECT 1 FROM {rows} WHERE id = 2 FOR UPDATE"))  # noqa: S608 - a test table
        return {"written": "no: this transaction never commits"}

    @probes.post("/note")
    def note(session: DbSession) -> dict[str, int]:
        session.execute(text(f"INSERT INTO {notes} (note) VALUES ('served')"))  # noqa: S608 - a test table
        count = session.execute(text(f"SELECT count(*) FROM {notes}")).scalar_one()  # noqa: S608 - a test table
        return {"notes": int(count)}

    app.include_router(probes)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Probe(client, app, database, url, rows, notes, other)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP TABLE {notes}")
        conn.execute(f"DROP TABLE {rows}")
        conn.execute(f"DROP FUNCTION {name}_at_commit()")


CASES = [
    (failure, where)
    for failure in EXPECTED
    for where in ("endpoint", "commit")
    # PostgreSQL does not apply statement_timeout to the deferred triggers COMMIT runs.
    if (failure, where) != ("statement_timeout", "commit")
]


@pytest.mark.parametrize(("failure", "where"), CASES)
def test_a_transient_failure_is_a_retryable_503_and_writes_nothing(
    probe: Probe, failure: str, where: str, logs: Callable[[], list[dict[str, Any]]]
) -> None:
    code, sqlstate, retry_after = EXPECTED[failure]
    counted = transient_count(code, sqlstate)
    path = f"/api/v1/{probe.rows.removesuffix('_rows')}"

    response = probe.client.post(f"{path}/{failure}/{where}", headers={"X-Request-ID": f"r-{failure}"})
    probe.other.finish()

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == retry_after
    body = response.json()
    assert body["error"] == code
    assert body["request_id"] == f"r-{failure}"
    assert "Idempotency-Key" in body["detail"]
    assert probe.notes_written() == []
    assert transient_count(code, sqlstate) == counted + 1
    [warning] = [line for line in logs() if line["event"] == "database_transient_failure"]
    assert warning["level"] == "warning"
    assert (warning["sqlstate"], warning["code"], warning["source"]) == (sqlstate, code, "request")
    assert warning["request_id"] == f"r-{failure}"
    assert not [line for line in logs() if line["event"] == "unhandled_error"]
    # The pool recovered (a terminated connection was discarded): the next request is served.
    served = probe.client.post(f"{path}/note")
    assert served.status_code == 200, served.text
    assert served.json() == {"notes": 1}


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_an_unreachable_database_is_a_retryable_503(refused_port: int) -> None:
    settings = make_settings(f"postgresql://postgres@127.0.0.1:{refused_port}/nowhere")
    database = Database.from_settings(settings)
    app = create_app(settings, database=database)
    # A route outside the transactional routers (none should exist): the error handler answers.
    plain = APIRouter()

    @plain.get("/api/v1/plain-database")
    def plain_database() -> dict[str, int]:
        with unit_of_work(database) as session:
            return {"one": int(session.execute(text("SELECT 1")).scalar_one())}

    app.include_router(plain)
    counted = transient_count("database_unavailable", "none")
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            responses = [client.get("/api/v1/assets"), client.get("/api/v1/plain-database")]
    finally:
        database.dispose()
    for response in responses:
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "database_unavailable"
        assert response.headers["retry-after"] == "2"
    assert transient_count("database_unavailable", "none") == counted + 2


def test_sqlite_database_is_locked_is_a_retryable_503(sqlite_url: str) -> None:
    settings = make_settings(sqlite_url, sqlite_busy_timeout_ms=100)
    database = Database.from_settings(settings)
    app = create_app(settings, database=database)
    counted = transient_count("transient_conflict", "SQLITE_BUSY")
    email = f"busy-{uuid.uuid4().hex[:8]}@example.com"
    holder = sqlite3.connect(make_url(sqlite_url).database or "", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another writer holds SQLite's one write lock
        with TestClient(app, raise_server_exceptions=False) as client:
            response = client.post("/api/v1/auth/register", json={"email": email, "password": "x" * 16})
            holder.execute("ROLLBACK")
            again = client.post("/api/v1/auth/register", json={"email": email, "password": "x" * 16})
    finally:
        holder.close()
        database.dispose()
    assert response.status_code == 503, response.text
    assert response.json()["error"] == "transient_conflict"
    assert response.headers["retry-after"] == "1"
    assert transient_count("transient_conflict", "SQLITE_BUSY") == counted + 1
    assert again.status_code == 201, again.text  # nothing was written: the retry registers


class Blocker:
    """Another connection holding a lock until released; it terminates the request that waits on it."""

    def __init__(self, url: str, statement: str, params: tuple[object, ...] = ()) -> None:
        self.conn = psycopg.connect(url)
        self.watch = psycopg.connect(url, autocommit=True)
        self.conn.execute(statement, params)
        self.terminated: list[int] = []
        self.thread = threading.Thread(target=self._terminate_the_waiter, daemon=True)
        self.thread.start()

    def _terminate_the_waiter(self) -> None:
        mine = self.conn.info.backend_pid
        found: list[int] = []

        def waiter() -> bool:
            found[:] = [
                row[0]
                for row in self.watch.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                    " AND application_name = 'bourse' AND pid <> %s",
                    (mine,),
                )
            ]
            return bool(found)

        wait_for(waiter, "a request waiting for the lock")
        self.watch.execute("SELECT pg_terminate_backend(%s)", (found[0],))
        self.terminated.append(found[0])

    def release(self) -> None:
        self.thread.join(20)
        self.conn.rollback()
        self.conn.close()
        self.watch.close()


def test_login_and_refresh_in_their_own_transactions_are_retryable_503s(
    pg: tuple[Settings, Database, FastAPI], postgres_url: str
) -> None:
    settings, database, app = pg
    user = make_user(database)
    with unit_of_work(database) as session:
        from bourse.identity.models import User  # noqa: PLC0415 - only this test needs it

        pair = issue_tokens(session, settings, session.get_one(User, user.id))
    url = libpq_url(postgres_url)
    with TestClient(app, raise_server_exceptions=False) as client:
        blocker = Blocker(url, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        login = client.post("/api/v1/auth/login", json={"email": user.email, "password": user.password})
        blocker.release()
        assert blocker.terminated
        assert login.status_code == 503, login.text
        assert login.json()["error"] == "database_unavailable"
        assert (
            client.post("/api/v1/auth/login", json={"email": user.email, "password": user.password}).status_code == 200
        )

        blocker = Blocker(url, "SELECT 1 FROM refresh_tokens WHERE user_id = %s FOR UPDATE", (user.id,))
        refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token})
        blocker.release()
        assert refreshed.status_code == 503, refreshed.text
        assert refreshed.json()["error"] == "database_unavailable"
        # Nothing was used up: the same refresh token still works (no key needed).
        again = client.post("/api/v1/auth/refresh", json={"refresh_token": pair.refresh_token})
        assert again.status_code == 200, again.text


def test_retrying_with_the_same_idempotency_key_after_a_503_moves_money_once(
    pg: tuple[Settings, Database, FastAPI], postgres_url: str
) -> None:
    settings, database, app = pg
    sender, recipient = make_user(database), make_user(database)
    fund(database, sender.id, "USD", 10_000)
    before = balance(database, sender.id, "USD")
    with unit_of_work(database) as session:
        from bourse.ledger.accounts import user_account  # noqa: PLC0415 - only this test needs it

        source = user_account(session, sender.id, "USD", AccountKind.available)
    key = str(uuid.uuid4())
    transfer = {"to_user_id": str(recipient.id), "asset": "USD", "amount": "12.34"}
    headers = {**bearer(settings, sender), "Idempotency-Key": key}
    with TestClient(app, raise_server_exceptions=False) as client:
        # Another transaction holds the sender's account; the request waits for it and its connection is lost.
        blocker = Blocker(libpq_url(postgres_url), "SELECT 1 FROM accounts WHERE id = %s FOR UPDATE", (source,))
        failed = client.post("/api/v1/transfers", json=transfer, headers=headers)
        blocker.release()
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"] == "database_unavailable"
        assert failed.headers["retry-after"] == "2"
        assert balance(database, sender.id, "USD") == before
        assert balance(database, recipient.id, "USD") == 0

        first = client.post("/api/v1/transfers", json=transfer, headers=headers)
        replayed = client.post("/api/v1/transfers", json=transfer, headers=headers)
    assert first.status_code == 201, first.text
    assert first.headers["idempotent-replayed"] == "false"
    assert replayed.status_code == 201
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json() == first.json()
    assert balance(database, sender.id, "USD") == before - 1234
    assert balance(database, recipient.id, "USD") == 1234
