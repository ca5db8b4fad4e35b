"""Liveness never touches dependencies; readiness checks them all."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from bourse import lifecycle
from bourse.app import create_app
from bourse.db import Database
from bourse.migrations import upgrade
from bourse.redis_client import create_redis
from bourse.settings import Settings
from tests.support.services import make_settings

UNREACHABLE_POSTGRES = "postgresql://bourse@127.0.0.1:1/bourse"


def _client(settings: Settings, database: Database | None = None) -> TestClient:
    return TestClient(create_app(settings, database=database), raise_server_exceptions=False)


def test_livez_and_readyz_when_everything_is_up(client: TestClient) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "checks": {"database": "ok", "redis": "not configured", "server": "ok"},
    }


def test_livez_works_and_readyz_fails_when_the_database_is_down() -> None:
    settings = make_settings(UNREACHABLE_POSTGRES, database_connect_timeout_seconds=1)
    with _client(settings) as client:
        assert client.get("/livez").status_code == 200
        ready = client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["error"] == "not_ready"
    assert body["checks"]["database"] == "unavailable"
    assert body["reasons"][0].startswith("database: ")


def test_readyz_fails_when_the_schema_is_not_migrated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = make_settings(f"sqlite:///{tmp_path}/empty.db")
    with _client(settings) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "not migrated"
    assert "bourse migrate" in ready.json()["detail"]


def test_readyz_on_an_unmigrated_postgres_database(empty_postgres_url: str) -> None:
    with _client(make_settings(empty_postgres_url)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "not migrated"


def test_readyz_checks_redis_when_configured(database_url: str, redis_url: str) -> None:
    with _client(make_settings(database_url, redis_url=redis_url)) as client:
        ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["redis"] == "ok"


def test_readyz_fails_when_redis_is_down_or_hangs(database_url: str, silent_port: int) -> None:
    for url in ("redis://127.0.0.1:1/0", f"redis://127.0.0.1:{silent_port}/0"):
        settings = make_settings(database_url, redis_url=url, readiness_timeout_seconds=0.5)
        with _client(settings) as client:
            assert client.get("/livez").status_code == 200
            ready = client.get("/readyz")
        assert ready.status_code == 503, url
        assert ready.json()["checks"]["redis"] == "unavailable"
        assert ready.json()["checks"]["database"] == "ok"


def test_readyz_fails_while_draining(client: TestClient) -> None:
    lifecycle.start_draining()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["server"] == "draining"
    assert client.get("/livez").status_code == 200


def test_readyz_stays_ready_when_a_newer_release_has_migrated(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """During a rolling deploy old pods keep serving a schema migrated by the new release."""
    url = f"sqlite:///{tmp_path}/ahead.db"
    settings = make_settings(url)
    upgrade(settings)
    db = Database.from_settings(settings)
    try:
        with db.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = 'from_a_newer_release'"))
        with _client(settings, db) as client:
            ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["database"] == "ok"
    finally:
        db.dispose()


def test_redis_password_secret_wins_over_the_url() -> None:
    settings = make_settings(
        "sqlite:///unused.db", redis_url="redis://user:from-url@127.0.0.1:6379/0", redis_password="from-secret"
    )
    client = create_redis(settings)
    assert client is not None
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["password"] == "from-secret"
    assert kwargs["username"] == "user"
    client.close()
