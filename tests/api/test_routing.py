"""The request transaction boundary: commit before the response, roll back on error."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator

import anyio
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import Column, Integer, MetaData, String, Table, event, select
from sqlalchemy.orm import Session

from bourse.api.routing import DbSession, router
from bourse.db import Database
from bourse.errors import Conflict


class Note(BaseModel):
    id: int
    text: str


@pytest.fixture
def probe_table(database: Database) -> Iterator[Table]:
    """A scratch table, unique per test, so both backends can share a database."""
    metadata = MetaData()
    table = Table(
        f"probe_{uuid.uuid4().hex[:10]}",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("text", String(200), nullable=False),
    )
    metadata.create_all(database.engine)
    yield table
    metadata.drop_all(database.engine)


@pytest.fixture
def events() -> list[str]:
    return []


@pytest.fixture
def probe_client(app: FastAPI, probe_table: Table, events: list[str]) -> Iterator[TestClient]:
    notes = router(prefix="/api/v1/probe")

    @notes.post("", status_code=201)
    def create(note: Note, session: DbSession) -> Note:
        session.execute(probe_table.insert().values(id=note.id, text=note.text))
        event.listen(session, "after_commit", lambda _s: events.append("commit"))
        return note

    @notes.post("/deferred", status_code=201)
    def create_deferred(note: Note, session: DbSession) -> Note:
        # Nothing reaches the database until the boundary flushes at commit.
        session.info["pending"] = note
        event.listen(session, "before_commit", _insert_pending(probe_table))
        return note

    @notes.post("/refused")
    def refused(note: Note, session: DbSession) -> Note:
        session.execute(probe_table.insert().values(id=note.id, text=note.text))
        raise Conflict("refused after writing")

    @notes.post("/crash")
    def crash(note: Note, session: DbSession) -> Note:
        session.execute(probe_table.insert().values(id=note.id, text=note.text))
        raise RuntimeError("boom")

    app.include_router(notes)
    plain = FastAPI()

    @plain.get("/not-transactional")
    def not_transactional(session: DbSession) -> dict[str, str]:
        return {"never": "reached"}

    app.include_router(plain.router, prefix="/api/v1/plain")

    async def record_response_start(scope, receive, send):  # type: ignore[no-untyped-def]
        async def send_wrapper(message):  # type: ignore[no-untyped-def]
            if message["type"] == "http.response.start":
                events.append("response_start")
            await send(message)

        await app(scope, receive, send_wrapper)

    with TestClient(record_response_start, raise_server_exceptions=False) as client:
        yield client


def _insert_pending(table: Table):  # type: ignore[no-untyped-def]
    def before_commit(session: Session) -> None:
        note = session.info.pop("pending", None)
        if note is not None:
            session.execute(table.insert().values(id=note.id, text=note.text))

    return before_commit


def _rows(database: Database, table: Table) -> list[tuple[int, str]]:
    with database.engine.connect() as conn:
        return [(row.id, row.text) for row in conn.execute(select(table).order_by(table.c.id))]


def test_commit_happens_before_the_response_is_sent(
    probe_client: TestClient, database: Database, probe_table: Table, events: list[str]
) -> None:
    response = probe_client.post("/api/v1/probe", json={"id": 1, "text": "hello"})
    assert response.status_code == 201
    assert events == ["commit", "response_start"]
    assert _rows(database, probe_table) == [(1, "hello")]


def test_a_failed_commit_is_an_error_not_a_success(
    probe_client: TestClient, database: Database, probe_table: Table
) -> None:
    assert probe_client.post("/api/v1/probe", json={"id": 7, "text": "first"}).status_code == 201
    # The duplicate key is only discovered when the boundary commits.
    response = probe_client.post("/api/v1/probe/deferred", json={"id": 7, "text": "second"})
    assert response.status_code == 500
    assert response.json()["error"] == "internal_error"
    assert _rows(database, probe_table) == [(7, "first")]


def test_a_refusal_rolls_back_what_the_request_wrote(
    probe_client: TestClient, database: Database, probe_table: Table
) -> None:
    response = probe_client.post("/api/v1/probe/refused", json={"id": 2, "text": "nope"})
    assert response.status_code == 409
    assert response.json()["error"] == "conflict"
    assert _rows(database, probe_table) == []


def test_an_unexpected_error_rolls_back_and_is_a_json_500(
    probe_client: TestClient, database: Database, probe_table: Table
) -> None:
    response = probe_client.post("/api/v1/probe/crash", json={"id": 3, "text": "nope"}, headers={"X-Request-ID": "r-1"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal_error", "detail": "An unexpected error occurred", "request_id": "r-1"}
    assert response.headers["x-request-id"] == "r-1"
    assert _rows(database, probe_table) == []


def test_a_session_outside_a_transactional_route_is_refused(probe_client: TestClient) -> None:
    # A router built without bourse.api.routing.router() would never commit; fail loudly instead.
    response = probe_client.get("/api/v1/plain/not-transactional")
    assert response.status_code == 500


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 201),
        ("application/json; charset=utf-8", 201),
        ("application/merge-patch+json", 201),
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        (None, 415),
    ],
)
def test_json_endpoints_refuse_other_content_types(
    probe_client: TestClient, database: Database, probe_table: Table, content_type: str | None, status: int
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = probe_client.post("/api/v1/probe", content=b'{"id": 5, "text": "x"}', headers=headers)
    assert response.status_code == status
    if status == 415:
        assert response.json()["error"] == "unsupported_media_type"
        assert _rows(database, probe_table) == []


def test_a_plain_endpoint_runs_from_its_first_statement_to_its_commit_in_one_thread_call(
    probe_client: TestClient, database: Database, probe_table: Table, events: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker-thread call per request: the endpoint, its commit and the session's close.

    FastAPI alone would make four: the endpoint, the response model's validation, and
    the boundary's commit and close.
    """
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counting(func, *args, **kwargs):  # type: ignore[no-untyped-def]
        called = func
        while isinstance(called, functools.partial):
            called = called.func
        hops.append(getattr(called, "__qualname__", repr(called)))
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    response = probe_client.post("/api/v1/probe", json={"id": 11, "text": "one hop"})
    assert response.status_code == 201
    assert hops == ["_run_to_the_commit"]
    assert events == ["commit", "response_start"]
    assert _rows(database, probe_table) == [(11, "one hop")]

    # A refusal rolls back and closes within the same call.
    hops.clear()
    assert probe_client.post("/api/v1/probe/refused", json={"id": 12, "text": "nope"}).status_code == 409
    assert hops == ["_run_to_the_commit"]
    assert _rows(database, probe_table) == [(11, "one hop")]
