"""Admission, connection leases and the liveness heartbeat (bourse.api.capacity)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator

import anyio
import anyio.to_thread
import pytest
from fastapi.testclient import TestClient

from bourse.api.capacity import Admission, ConnectionLeases, DatabaseBusy, ProgressMonitor, run_with_lease
from bourse.app import create_app
from bourse.db import LOCK_WAIT_SECONDS, Database, pool_capacity
from bourse.settings import Settings
from bourse.trading import book_cache
from bourse.trading.errors import InstrumentBusy
from tests.support.auth import bearer, make_user
from tests.support.services import make_settings

# --- ConnectionLeases ------------------------------------------------------------------------


def test_leases_are_granted_first_come_first_served_and_handed_over_on_release() -> None:
    async def scenario() -> list[str]:
        leases = ConnectionLeases(size=1, timeout=5)
        order: list[str] = []
        await leases.acquire()

        async def waiter(name: str) -> None:
            await leases.acquire()
            order.append(name)
            await anyio.sleep(0.01)
            leases.release()

        async with anyio.create_task_group() as group:
            for name in ("first", "second", "third"):
                group.start_soon(waiter, name)
                await anyio.sleep(0.01)  # they queue in this order
            assert leases.in_use == 1
            leases.release()
        assert leases.in_use == 0
        return order

    assert anyio.run(scenario) == ["first", "second", "third"]


def test_a_lease_wait_is_bounded_and_refused_with_a_retryable_503() -> None:
    async def scenario() -> tuple[DatabaseBusy, float, int]:
        leases = ConnectionLeases(size=1, timeout=0.2)
        await leases.acquire()
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as refused:
            await leases.acquire()
        waited = time.monotonic() - started
        leases.release()
        return refused.value, waited, leases.in_use

    refusal, waited, in_use = anyio.run(scenario)
    assert 0.19 <= waited < 1.0
    assert refusal.status_code == 503
    assert refusal.code == "database_busy"
    assert refusal.headers == {"Retry-After": "1"}
    assert in_use == 0  # the refused waiter took nothing


def test_a_cancelled_waiter_loses_no_lease() -> None:
    async def scenario() -> int:
        leases = ConnectionLeases(size=1, timeout=5)
        await leases.acquire()
        with anyio.move_on_after(0.05):
            await leases.acquire()  # cancelled while waiting
        leases.release()
        # Both leases of a pool of one must be obtainable in turn again.
        await leases.acquire()
        leases.release()
        return leases.in_use

    assert anyio.run(scenario) == 0


def test_a_lease_handed_to_a_waiter_that_is_cancelled_in_the_same_instant_is_passed_on() -> None:
    async def scenario() -> tuple[int, bool]:
        leases = ConnectionLeases(size=1, timeout=5)
        await leases.acquire()
        got_it = False

        async def doomed(scope: anyio.CancelScope) -> None:
            with scope:
                await leases.acquire()
                leases.release()  # had it returned, it would be given back as a request does

        async def patient() -> None:
            nonlocal got_it
            await leases.acquire()
            got_it = True
            leases.release()

        scope = anyio.CancelScope()
        async with anyio.create_task_group() as group:
            group.start_soon(doomed, scope)
            await anyio.sleep(0.01)
            group.start_soon(patient)
            await anyio.sleep(0.01)
            scope.cancel()  # `doomed` is cancelled, and before it runs...
            leases.release()  # ...is handed the lease: it must pass it on to `patient`
        return leases.in_use, got_it

    assert anyio.run(scenario) == (0, True)


def test_run_with_lease_gives_the_lease_back_only_after_the_thread_finished() -> None:
    async def scenario() -> tuple[int, int, int]:
        leases = ConnectionLeases(size=1, timeout=5)
        release_worker = threading.Event()

        def work() -> None:
            release_worker.wait(5)

        # Cancelled the way a server cancels its requests at shutdown (a native
        # cancellation, which anyio's shielding does not stop): the thread goes on.
        caller = asyncio.ensure_future(run_with_lease(leases, work))
        await asyncio.sleep(0.1)
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        while_running = leases.in_use
        release_worker.set()
        await asyncio.sleep(0.2)
        after = leases.in_use
        await run_with_lease(leases, lambda: None)
        return while_running, after, leases.in_use

    assert asyncio.run(scenario()) == (1, 0, 0)


# --- Admission -------------------------------------------------------------------------------


def test_admission_refuses_beyond_the_limit_and_admits_again_after_leave() -> None:
    async def scenario() -> list[bool]:
        admission = Admission(limit=2, retry_after=1)
        results = [await admission.enter(("a", 1)), await admission.enter(("b", 2)), await admission.enter(("c", 3))]
        admission.leave()
        results.append(await admission.enter(("d", 4)))
        return results

    assert anyio.run(scenario) == [True, True, False, True]


def test_a_client_back_before_its_retry_after_waits_it_out_before_being_considered() -> None:
    async def scenario() -> tuple[bool, float, bool, float]:
        admission = Admission(limit=1, retry_after=1)
        assert await admission.enter(("busy", 1))
        assert not await admission.enter(("eager", 2))  # refused at once
        started = time.monotonic()
        refused_again = await admission.enter(("eager", 2))  # came straight back: waits ~1 s
        waited = time.monotonic() - started
        # A client that has not been refused lately is answered at once.
        started = time.monotonic()
        other = await admission.enter(("polite", 3))
        return refused_again, waited, other, time.monotonic() - started

    refused_again, waited, other, other_waited = anyio.run(scenario)
    assert refused_again is False
    assert 0.9 <= waited < 1.5
    assert other is False
    assert other_waited < 0.1


def test_a_client_made_to_wait_is_admitted_if_room_appears_meanwhile() -> None:
    async def scenario() -> bool:
        admission = Admission(limit=1, retry_after=1)
        assert await admission.enter(("busy", 1))
        assert not await admission.enter(("eager", 2))

        async def finish_soon() -> None:
            await anyio.sleep(0.3)
            admission.leave()

        async with anyio.create_task_group() as group:
            group.start_soon(finish_soon)
            admitted = await admission.enter(("eager", 2))
        return admitted  # noqa: RET504 - returned after the task group, which could swallow an exit

    assert anyio.run(scenario) is True


def test_admission_forgets_refused_clients_once_their_retry_after_has_passed() -> None:
    async def scenario() -> int:
        admission = Admission(limit=0, retry_after=1)
        for port in range(1000):
            await admission.enter(("10.0.0.1", port))
        await anyio.sleep(1.05)
        await admission.enter(("10.0.0.2", 1))
        return len(admission._refused)

    assert anyio.run(scenario) == 1


# --- Through the app -------------------------------------------------------------------------


@pytest.fixture
def one_connection_app(postgres_url: str) -> Iterator[tuple[TestClient, Settings, Database]]:
    settings = make_settings(
        postgres_url, database_pool_size=1, database_max_overflow=0, database_pool_timeout_seconds=0.3
    )
    database = Database.from_settings(settings)
    with TestClient(create_app(settings, database=database), raise_server_exceptions=False) as client:
        yield client, settings, database
    database.dispose()


def test_as_many_leases_as_the_pool_has_connections(one_connection_app: tuple[TestClient, Settings, Database]) -> None:
    client, _, database = one_connection_app
    leases: ConnectionLeases = client.app.state.db_leases  # type: ignore[attr-defined]
    assert leases.size == pool_capacity(database.engine) == 1


def test_a_request_that_cannot_get_a_connection_in_time_gets_503_database_busy(
    one_connection_app: tuple[TestClient, Settings, Database],
) -> None:
    client, settings, database = one_connection_app
    user = make_user(database)
    leases: ConnectionLeases = client.app.state.db_leases  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(leases.acquire)  # the only connection is taken
    try:
        busy = client.get("/api/v1/wallets", headers=bearer(settings, user))
    finally:
        client.portal.call(leases.release)
    assert busy.status_code == 503
    assert busy.headers["Retry-After"] == "1"
    assert busy.json()["error"] == "database_busy"
    # Readiness has a connection of its own: a busy pool is not an unready database.
    assert client.get("/api/v1/wallets", headers=bearer(settings, user)).status_code == 200
    assert leases.in_use == 0


def test_livez_fails_when_the_worker_threads_make_no_progress(postgres_url: str) -> None:
    settings = make_settings(postgres_url, liveness_stall_seconds=2)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/livez").status_code == 200
        assert client.portal is not None
        progress: ProgressMonitor = client.app.state.progress  # type: ignore[attr-defined]
        assert progress.running
        unblock = threading.Event()
        limiter = client.portal.call(anyio.to_thread.current_default_thread_limiter)
        tokens = int(limiter.total_tokens)

        async def occupy() -> None:
            await anyio.to_thread.run_sync(unblock.wait, 30, abandon_on_cancel=True)

        for _ in range(tokens):
            client.portal.start_task_soon(occupy)
        try:
            deadline = time.monotonic() + 15
            while (stalled := client.get("/livez")).status_code == 200:
                assert time.monotonic() < deadline, "livez never noticed the stalled threads"
                time.sleep(0.2)
            assert stalled.status_code == 503
            assert stalled.json()["error"] == "stalled"
        finally:
            unblock.set()
        deadline = time.monotonic() + 10
        while client.get("/livez").status_code != 200:
            assert time.monotonic() < deadline, "livez did not recover once the threads were free"
            time.sleep(0.2)


def test_an_instruments_turn_is_waited_for_no_longer_than_a_lock(postgres_url: str) -> None:
    settings = make_settings(postgres_url, database_lock_timeout_ms=200)
    database = Database.from_settings(settings)
    try:
        mutex = book_cache._writer("WAIT-TEST")
        mutex.acquire()
        try:
            with database.sessions() as session:
                assert session.info[LOCK_WAIT_SECONDS] == 0.2
                started = time.monotonic()
                with pytest.raises(InstrumentBusy) as refused:
                    book_cache.take_turn(session, "WAIT-TEST")
                waited = time.monotonic() - started
        finally:
            mutex.release()
    finally:
        database.dispose()
    assert 0.15 <= waited < 2
    assert refused.value.status_code == 503
    assert refused.value.code == "instrument_busy"
