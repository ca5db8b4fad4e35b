"""Idempotency keys: concurrent duplicates, in-flight refusals, expiry and pruning."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text

from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.idempotency import service
from bourse.idempotency.models import IdempotencyRecord
from bourse.ledger.models import JournalEntry
from bourse.settings import Settings
from bourse.sqltypes import utcnow
from tests.support.auth import bearer, make_user
from tests.support.ledger import balance, fund, verify
from tests.support.services import make_settings


@pytest.fixture
def pg_settings(postgres_url: str) -> Settings:
    return make_settings(postgres_url, database_pool_size=30)


@pytest.fixture
def pg(pg_settings: Settings) -> Iterator[Database]:
    database = Database.from_settings(pg_settings)
    yield database
    database.dispose()


@pytest.fixture
def pg_client(pg_settings: Settings, pg: Database) -> Iterator[TestClient]:
    with TestClient(create_app(pg_settings, database=pg), raise_server_exceptions=False) as client:
        yield client


def test_concurrent_duplicates_move_money_once(pg_client: TestClient, pg_settings: Settings, pg: Database) -> None:
    alice, bob = make_user(pg), make_user(pg)
    fund(pg, alice.id, "USD", 10_000)
    key = str(uuid.uuid4())
    headers = {**bearer(pg_settings, alice), "Idempotency-Key": key}
    body = {"to_user_id": str(bob.id), "asset": "USD", "amount": "1.00"}
    barrier = threading.Barrier(20)

    def post(_: int) -> tuple[int, str]:
        barrier.wait()
        response = pg_client.post("/api/v1/transfers", json=body, headers=headers)
        if response.status_code == 201:
            return 201, response.headers["Idempotent-Replayed"]
        return response.status_code, response.json()["error"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        outcomes = Counter(pool.map(post, range(20)))
    assert outcomes[(201, "false")] == 1, outcomes
    assert set(outcomes) <= {(201, "false"), (201, "true"), (409, "idempotency_in_progress")}, outcomes
    assert balance(pg, alice.id, "USD") == 9_900
    assert balance(pg, bob.id, "USD") == 100
    with unit_of_work(pg) as session:
        entries = session.scalar(
            select(func.count()).select_from(JournalEntry).where(JournalEntry.idempotency_key.like(f"%:{key}"))
        )
    assert entries == 1
    # Once the first has committed, every retry replays it.
    replay = pg_client.post("/api/v1/transfers", json=body, headers=headers)
    assert (replay.status_code, replay.headers["Idempotent-Replayed"]) == (201, "true")
    assert verify(pg).ok


def test_a_duplicate_while_the_first_is_in_flight_is_409(
    pg_client: TestClient, pg_settings: Settings, pg: Database
) -> None:
    alice, bob = make_user(pg), make_user(pg)
    fund(pg, alice.id, "USD", 1_000)
    key = str(uuid.uuid4())
    headers = {**bearer(pg_settings, alice), "Idempotency-Key": key}
    body = {"to_user_id": str(bob.id), "asset": "USD", "amount": "1.00"}
    # Play the first request: hold its transaction-scoped claim on (alice, key) open.
    with pg.engine.connect() as first:
        assert first.execute(select(func.pg_try_advisory_xact_lock(service._lock_id(alice.id, key)))).scalar()
        duplicate = pg_client.post("/api/v1/transfers", json=body, headers=headers)
        assert (duplicate.status_code, duplicate.json()["error"]) == (409, "idempotency_in_progress")
        first.rollback()
    assert balance(pg, alice.id, "USD") == 1_000
    # The first "request" ended without storing anything, so the key is free again.
    after = pg_client.post("/api/v1/transfers", json=body, headers=headers)
    assert (after.status_code, after.headers["Idempotent-Replayed"]) == (201, "false")


def test_an_expired_key_runs_again_and_prune_removes_old_records(database: Database) -> None:
    user = make_user(database)
    fingerprint = service.fingerprint("POST", "/x", {"a": 1})
    with unit_of_work(database) as session:
        assert service.begin(session, user_id=user.id, key="k1", request_fingerprint=fingerprint) is None
        service.complete(
            session,
            user_id=user.id,
            key="k1",
            request_fingerprint=fingerprint,
            status=201,
            body={"ok": 1},
            ttl=timedelta(hours=24),
        )
    with unit_of_work(database) as session:
        stored = service.begin(session, user_id=user.id, key="k1", request_fingerprint=fingerprint)
        assert stored == service.StoredResponse(status=201, body={"ok": 1})
    with unit_of_work(database) as session:
        session.execute(
            text("UPDATE idempotency_keys SET expires_at = :t WHERE user_id = :u"),
            {
                "t": utcnow() - timedelta(seconds=1),
                "u": user.id if database.engine.dialect.name == "postgresql" else user.id.hex,
            },
        )
    with unit_of_work(database) as session:
        assert service.prune_expired(session) >= 1
        remaining = session.scalar(
            select(func.count()).select_from(IdempotencyRecord).where(IdempotencyRecord.user_id == user.id)
        )
    assert remaining == 0


def test_fingerprint_ignores_key_order_and_whitespace_but_not_values() -> None:
    assert service.fingerprint("post", "/a", {"x": 1, "y": "2"}) == service.fingerprint(
        "POST", "/a", {"y": "2", "x": 1}
    )
    assert service.fingerprint("POST", "/a", {"x": 1}) != service.fingerprint("POST", "/b", {"x": 1})
    assert service.fingerprint("POST", "/a", {"x": "1.00"}) != service.fingerprint("POST", "/a", {"x": "1.0"})
