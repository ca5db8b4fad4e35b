"""The per-process principal cache (docs/decisions/0023-principal-cache.md).

A user's role and status may be served from this process's cache for at most
``BOURSE_AUTH_CACHE_SECONDS`` (1 s). A change made elsewhere (another process, a
connection outside the ORM) is seen once that has passed; a change this process makes
through the ORM is seen by the very next request, because the user is forgotten when
the change commits. The clock is moved by hand: nothing here sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Connection, Table, delete, event, update

from bourse.db import Database, unit_of_work
from bourse.identity import principals
from bourse.identity.dependencies import Principal, authenticate
from bourse.identity.errors import AccountLocked
from bourse.identity.models import Role, User, UserStatus
from bourse.identity.principals import PrincipalCache, Ticket, UserState
from bourse.identity.service import set_user_status
from bourse.settings import Settings
from tests.support.auth import PROBE_ME, PROBE_STAFF, TestUser, bearer, make_user, probe_app

USERS = cast("Table", User.__table__)  # the Core table: statements on it bypass the ORM


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def cache(clock: ManualClock) -> Iterator[PrincipalCache]:
    """This process's cache for the test: empty, on the manual clock."""
    fresh = PrincipalCache(clock=clock)
    previous = principals.use_cache(fresh)
    yield fresh
    principals.use_cache(previous)


@pytest.fixture
def probe(settings: Settings, database: Database, cache: PrincipalCache) -> Iterator[TestClient]:
    with TestClient(probe_app(settings, database), raise_server_exceptions=False) as client:
        yield client


def _elsewhere(database: Database, statement: Any) -> None:
    """A change made outside this process's ORM sessions, as another process makes it."""
    with database.engine.begin() as connection:
        connection.execute(statement)


def _status(response: Any) -> tuple[int, str | None]:
    body = response.json()
    return response.status_code, body.get("error") if isinstance(body, dict) else None


class Statements:
    """The SQL statements an engine sends, but for opening a transaction."""

    def __init__(self, database: Database) -> None:
        self.sent: list[str] = []
        self._engine = database.engine
        event.listen(self._engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        # Not SQLite's BEGIN IMMEDIATE (bourse.db issues it to open every transaction).
        if not statement.startswith("BEGIN"):
            self.sent.append(statement)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._record)


@pytest.fixture
def statements(database: Database) -> Iterator[Statements]:
    counter = Statements(database)
    yield counter
    counter.close()


# --- (a) another process's change: served until the lifetime passes, never longer --------


def test_a_user_locked_elsewhere_is_refused_once_the_lifetime_has_passed(
    probe: TestClient, settings: Settings, database: Database, clock: ManualClock
) -> None:
    assert settings.auth_cache_seconds == 1.0  # the default
    user = make_user(database)
    headers = bearer(settings, user)
    assert probe.get(PROBE_ME, headers=headers).status_code == 200  # read and cached
    _elsewhere(database, update(USERS).where(USERS.c.id == user.id).values(status=UserStatus.locked))

    clock.advance(0.999)
    assert probe.get(PROBE_ME, headers=headers).status_code == 200  # still the cached answer
    clock.advance(0.001)
    assert _status(probe.get(PROBE_ME, headers=headers)) == (403, "account_locked")


def test_a_user_demoted_elsewhere_loses_staff_endpoints_once_the_lifetime_has_passed(
    probe: TestClient, settings: Settings, database: Database, clock: ManualClock
) -> None:
    user = make_user(database, role=Role.admin)
    headers = bearer(settings, user)
    assert probe.get(PROBE_STAFF, headers=headers).json() == {"role": "admin"}
    _elsewhere(database, update(USERS).where(USERS.c.id == user.id).values(role=Role.client))

    clock.advance(0.5)
    assert probe.get(PROBE_STAFF, headers=headers).status_code == 200
    clock.advance(0.5)
    assert _status(probe.get(PROBE_STAFF, headers=headers)) == (403, "forbidden")
    assert probe.get(PROBE_ME, headers=headers).json()["role"] == "client"


def test_a_user_deleted_elsewhere_gets_401_once_the_lifetime_has_passed(
    probe: TestClient, settings: Settings, database: Database, clock: ManualClock
) -> None:
    user = make_user(database)
    headers = bearer(settings, user)
    assert probe.get(PROBE_ME, headers=headers).status_code == 200
    _elsewhere(database, delete(USERS).where(USERS.c.id == user.id))

    clock.advance(0.5)
    assert probe.get(PROBE_ME, headers=headers).status_code == 200
    clock.advance(0.5)
    assert _status(probe.get(PROBE_ME, headers=headers)) == (401, "invalid_token")


# --- (b) this process's change: seen by the very next request ----------------------------


def _cached(probe: TestClient, settings: Settings, user: TestUser, path: str = PROBE_ME) -> dict[str, str]:
    headers = bearer(settings, user)
    assert probe.get(path, headers=headers).status_code == 200
    assert principals.process_cache().get(user.id, settings.auth_cache_seconds) is not None
    return headers


def test_locking_a_user_here_takes_effect_on_the_next_request(
    probe: TestClient, settings: Settings, database: Database
) -> None:
    user = make_user(database)
    headers = _cached(probe, settings, user)
    with unit_of_work(database) as session:
        set_user_status(session, user.id, UserStatus.locked)
    assert _status(probe.get(PROBE_ME, headers=headers)) == (403, "account_locked")

    with unit_of_work(database) as session:
        set_user_status(session, user.id, UserStatus.active)
    assert probe.get(PROBE_ME, headers=headers).status_code == 200


def test_demoting_a_user_here_takes_effect_on_the_next_request(
    probe: TestClient, settings: Settings, database: Database
) -> None:
    user = make_user(database, role=Role.operator)
    headers = _cached(probe, settings, user, PROBE_STAFF)
    with unit_of_work(database) as session:
        session.get_one(User, user.id).role = Role.client
    assert _status(probe.get(PROBE_STAFF, headers=headers)) == (403, "forbidden")


def test_a_bulk_update_of_users_here_takes_effect_on_the_next_request(
    probe: TestClient, settings: Settings, database: Database
) -> None:
    """As ``tests/referrals/helpers.set_role`` promotes and demotes: which rows changed is unknown."""
    user = make_user(database, role=Role.admin)
    headers = _cached(probe, settings, user, PROBE_STAFF)
    with unit_of_work(database) as session:
        session.execute(update(User).where(User.id == user.id).values(role=Role.ib))
    assert _status(probe.get(PROBE_STAFF, headers=headers)) == (403, "forbidden")


def test_deleting_a_user_here_takes_effect_on_the_next_request(
    probe: TestClient, settings: Settings, database: Database
) -> None:
    user = make_user(database)
    headers = _cached(probe, settings, user)
    with unit_of_work(database) as session:
        session.delete(session.get_one(User, user.id))
    assert _status(probe.get(PROBE_ME, headers=headers)) == (401, "invalid_token")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_the_user_is_forgotten_when_the_change_commits_not_before(
    probe: TestClient, settings: Settings, database: Database
) -> None:
    """A request between the change's flush and its commit reads (and caches) the old
    state; the commit must still make the next request see the new one.

    PostgreSQL only: on SQLite every transaction begins by taking the write lock, so
    no request can run between the flush and the commit.
    """
    user = make_user(database, role=Role.admin)
    headers = bearer(settings, user)
    with unit_of_work(database) as session:
        session.get_one(User, user.id).role = Role.client
        session.flush()  # written, not committed: other connections still see an admin
        with session.begin_nested():
            pass  # a savepoint released is not the transaction committed
        assert probe.get(PROBE_STAFF, headers=headers).status_code == 200
    assert _status(probe.get(PROBE_STAFF, headers=headers)) == (403, "forbidden")


def test_a_rolled_back_change_forgets_nothing(probe: TestClient, settings: Settings, database: Database) -> None:
    user = make_user(database)
    _cached(probe, settings, user)
    session = database.sessions()
    try:
        session.get_one(User, user.id).status = UserStatus.locked
        session.flush()
        session.rollback()
        session.commit()  # a later commit of the same session must not act on the rolled-back change
    finally:
        session.close()
    assert principals.process_cache().get(user.id, settings.auth_cache_seconds) is not None


def test_a_read_under_way_when_a_user_is_forgotten_is_not_stored(clock: ManualClock) -> None:
    cache = PrincipalCache(clock=clock)
    user_id = uuid.uuid4()
    ticket = cache.ticket()  # a read begins...
    cache.forget({uuid.uuid4()})  # ...a change commits (any user: the read's result may predate it)...
    assert not cache.put(user_id, UserState(Role.admin, UserStatus.active, "a@example.com"), ticket, 1.0)
    assert cache.get(user_id, 1.0) is None
    assert cache.put(user_id, UserState(Role.admin, UserStatus.active, "a@example.com"), cache.ticket(), 1.0)


def test_an_entry_ages_from_when_its_read_began(clock: ManualClock) -> None:
    cache = PrincipalCache(clock=clock)
    user_id = uuid.uuid4()
    ticket = cache.ticket()
    clock.advance(0.4)  # the read took this long
    assert cache.put(user_id, UserState(Role.client, UserStatus.active, "a@example.com"), ticket, 1.0)
    clock.advance(0.599)
    assert cache.get(user_id, 1.0) is not None
    clock.advance(0.001)
    assert cache.get(user_id, 1.0) is None


# --- (c) a miss is one query, a hit none --------------------------------------------------


def test_a_miss_reads_the_user_in_one_query_and_a_hit_in_none(
    probe: TestClient, settings: Settings, database: Database, statements: Statements, clock: ManualClock
) -> None:
    warm, user = make_user(database), make_user(database)
    assert probe.get(PROBE_ME, headers=bearer(settings, warm)).status_code == 200  # the pool's first connection
    headers = bearer(settings, user)

    statements.sent.clear()
    assert probe.get(PROBE_ME, headers=headers).status_code == 200
    [read] = statements.sent
    assert "users" in read.lower()
    assert "refresh_tokens" not in read.lower()

    statements.sent.clear()
    for _ in range(3):
        clock.advance(0.25)
        assert probe.get(PROBE_ME, headers=headers).status_code == 200
        assert probe.get(PROBE_STAFF, headers=headers).status_code == 403  # a client: the role, from the cache
    assert statements.sent == []

    clock.advance(0.25)  # 1.0 s since the read: read again
    assert probe.get(PROBE_ME, headers=headers).status_code == 200
    assert len(statements.sent) == 1


# --- (d) the cap ------------------------------------------------------------------------


def test_the_cache_holds_at_most_its_cap_dropping_the_least_recently_used(clock: ManualClock) -> None:
    cache = PrincipalCache(max_entries=3, clock=clock)
    ids = [uuid.uuid4() for _ in range(5)]

    def put(user_id: uuid.UUID) -> None:
        assert cache.put(
            user_id, UserState(Role.client, UserStatus.active, f"{user_id}@example.com"), cache.ticket(), 1.0
        )

    for user_id in ids[:3]:
        put(user_id)
    assert cache.get(ids[0], 1.0) is not None  # now the most recently used
    put(ids[3])
    assert len(cache) == 3
    assert cache.get(ids[1], 1.0) is None  # the least recently used went
    assert {user_id for user_id in ids[:4] if cache.get(user_id, 1.0)} == {ids[0], ids[2], ids[3]}
    for _ in range(50):
        put(uuid.uuid4())
    assert len(cache) == 3


def test_the_process_cache_has_a_cap() -> None:
    assert principals.process_cache().max_entries == principals.DEFAULT_MAX_ENTRIES == 10_000
    with pytest.raises(ValueError, match="at least 1"):
        PrincipalCache(max_entries=0)


# --- (e) 0 turns it off -------------------------------------------------------------------


def test_a_lifetime_of_zero_reads_the_user_on_every_request(
    settings: Settings, database: Database, cache: PrincipalCache, statements: Statements
) -> None:
    off = settings.model_copy(update={"auth_cache_seconds": 0.0})
    user = make_user(database)
    headers = bearer(off, user)
    with TestClient(probe_app(off, database), raise_server_exceptions=False) as probe:
        assert probe.get(PROBE_ME, headers=headers).status_code == 200
        statements.sent.clear()
        assert probe.get(PROBE_ME, headers=headers).status_code == 200
        assert len(statements.sent) == 1
        _elsewhere(database, update(USERS).where(USERS.c.id == user.id).values(status=UserStatus.locked))
        assert _status(probe.get(PROBE_ME, headers=headers)) == (403, "account_locked")  # no clock movement
    assert len(cache) == 0


def test_a_lifetime_of_zero_neither_serves_nor_stores(clock: ManualClock) -> None:
    cache = PrincipalCache(clock=clock)
    user_id = uuid.uuid4()
    state = UserState(Role.client, UserStatus.active, "a@example.com")
    assert not cache.put(user_id, state, cache.ticket(), 0.0)
    assert cache.put(user_id, state, cache.ticket(), 1.0)
    assert cache.get(user_id, 0.0) is None


def test_a_ticket_records_the_clock_and_the_generation(clock: ManualClock) -> None:
    assert PrincipalCache(clock=clock).ticket() == Ticket(read_at=1000.0, generation=0)


# --- the WebSocket's check shares the cache ------------------------------------------------


def test_authenticate_shares_the_cache_with_the_http_dependency(
    probe: TestClient, settings: Settings, database: Database, statements: Statements
) -> None:
    """The market-data WebSocket's ``auth`` message goes through ``authenticate``."""
    user = make_user(database, role=Role.ib)
    token = bearer(settings, user)["Authorization"].removeprefix("Bearer ")
    with unit_of_work(database) as session:
        statements.sent.clear()
        assert authenticate(session, settings, token) == Principal(user.id, Role.ib, user.email)
        assert len(statements.sent) == 1  # a miss: read, and cached
        assert authenticate(session, settings, token).role == Role.ib
        assert len(statements.sent) == 1
    assert probe.get(PROBE_ME, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert len(statements.sent) == 1  # the HTTP request was served from what the WebSocket read

    with unit_of_work(database) as session:
        set_user_status(session, user.id, UserStatus.locked)
    with unit_of_work(database) as session, pytest.raises(AccountLocked):
        authenticate(session, settings, token)
