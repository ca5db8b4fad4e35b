"""Admission, connection leases and the liveness heartbeat (bourse.api.capacity).

What each mechanism waits for is shown on a :class:`ManualClock`, whose time moves
only when a test moves it: the test sees the exact wait asked for, and whether a
waiter is still waiting just before its time is up and done just after, with no
interval measured on the wall clock. The tests through the app use the real clock
and wait on state (``wait_until``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import pytest
from fastapi.testclient import TestClient

from bourse.api.capacity import Admission, Clock, ConnectionLeases, DatabaseBusy, ProgressMonitor, run_with_lease
from bourse.app import create_app
from bourse.db import Database, pool_capacity
from bourse.settings import Settings
from tests.support.auth import bearer, make_user
from tests.support.services import make_settings
from tests.support.waiting import wait_until, wait_until_async


class ManualClock(Clock):
    """A clock that stands still until :meth:`advance`; its sleeps and deadlines fire then."""

    def __init__(self, start: float = 1000.0) -> None:
        self.time = start
        self.slept: list[float] = []  # every sleep asked for, in order
        self._timers: list[tuple[float, Callable[[], None]]] = []

    @property
    def pending(self) -> int:
        """Sleeps and deadlines that have not fired yet."""
        return len(self._timers)

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        woken = anyio.Event()
        timer = (self.time + seconds, woken.set)
        self._timers.append(timer)
        try:
            await woken.wait()
        finally:
            with contextlib.suppress(ValueError):
                self._timers.remove(timer)

    @contextlib.contextmanager
    def fail_after(self, seconds: float) -> Iterator[anyio.CancelScope]:
        with anyio.CancelScope() as scope:
            timer = (self.time + seconds, scope.cancel)
            self._timers.append(timer)
            try:
                yield scope
            finally:
                with contextlib.suppress(ValueError):
                    self._timers.remove(timer)
        if scope.cancelled_caught:
            raise TimeoutError

    def advance(self, seconds: float) -> None:
        """Move time on, and fire what has come due (the woken tasks run at their next turn)."""
        self.time += seconds
        due = [timer for timer in self._timers if timer[0] <= self.time]
        for timer in due:
            self._timers.remove(timer)
            timer[1]()


# --- ConnectionLeases ------------------------------------------------------------------------


async def _queued(leases: ConnectionLeases, count: int) -> None:
    await wait_until_async(lambda: leases.waiting == count, f"{count} request(s) queued for a lease")


def test_leases_are_granted_first_come_first_served_and_handed_over_on_release() -> None:
    async def scenario() -> list[str]:
        leases = ConnectionLeases(size=1, timeout=5)
        order: list[str] = []
        await leases.acquire()

        async def waiter(name: str) -> None:
            await leases.acquire()
            order.append(name)
            await anyio.lowlevel.checkpoint()
            leases.release()

        async with anyio.create_task_group() as group:
            for queued, name in enumerate(("first", "second", "third"), start=1):
                group.start_soon(waiter, name)
                await _queued(leases, queued)  # they queue in this order
            assert leases.in_use == 1
            leases.release()
        assert leases.in_use == 0
        return order

    assert anyio.run(scenario) == ["first", "second", "third"]


def test_a_lease_wait_is_bounded_and_refused_with_a_retryable_503() -> None:
    async def scenario() -> tuple[bool, DatabaseBusy, int, int]:
        clock = ManualClock()
        leases = ConnectionLeases(size=1, timeout=5, clock=clock)
        await leases.acquire()
        outcome: list[DatabaseBusy] = []

        async def wait_for_a_lease() -> None:
            try:
                await leases.acquire()
            except DatabaseBusy as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(wait_for_a_lease)
            await _queued(leases, 1)
            assert clock.pending == 1  # its deadline
            clock.advance(4.5)
            await anyio.wait_all_tasks_blocked()
            still_waiting_before_the_timeout = leases.waiting == 1 and not outcome
            clock.advance(0.5)  # the timeout, to the tick
            await wait_until_async(lambda: outcome, "the waiter to be refused at its timeout")
        leases.release()
        return still_waiting_before_the_timeout, outcome[0], leases.waiting, leases.in_use

    still_waiting_before_the_timeout, refusal, waiting, in_use = anyio.run(scenario)
    assert still_waiting_before_the_timeout
    assert refusal.status_code == 503
    assert refusal.code == "database_busy"
    assert refusal.headers == {"Retry-After": "1"}
    assert waiting == 0  # the refused waiter left the queue...
    assert in_use == 0  # ...and took nothing


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
            await _queued(leases, 1)
            group.start_soon(patient)
            await _queued(leases, 2)
            scope.cancel()  # `doomed` is cancelled, and before it runs...
            leases.release()  # ...is handed the lease: it must pass it on to `patient`
        return leases.in_use, got_it

    assert anyio.run(scenario) == (0, True)


def test_run_with_lease_gives_the_lease_back_only_after_the_thread_finished() -> None:
    async def scenario() -> tuple[int, int]:
        leases = ConnectionLeases(size=1, timeout=5)
        started = threading.Event()
        release_worker = threading.Event()

        def work() -> None:
            started.set()
            release_worker.wait(30)

        # Cancelled the way a server cancels its requests at shutdown (a native
        # cancellation, which anyio's shielding does not stop): the thread goes on.
        caller = asyncio.ensure_future(run_with_lease(leases, work))
        await wait_until_async(started.is_set, "the function to start in its thread")
        caller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await caller
        while_running = leases.in_use
        release_worker.set()
        await wait_until_async(lambda: leases.in_use == 0, "the lease to come back once the thread finished")
        await run_with_lease(leases, lambda: None)
        return while_running, leases.in_use

    assert asyncio.run(scenario()) == (1, 0)


# --- Admission -------------------------------------------------------------------------------


def test_admission_refuses_beyond_the_limit_and_admits_again_after_leave() -> None:
    async def scenario() -> list[bool]:
        admission = Admission(limit=2, retry_after=1)
        results = [await admission.enter(("a", 1)), await admission.enter(("b", 2)), await admission.enter(("c", 3))]
        admission.leave()
        results.append(await admission.enter(("d", 4)))
        return results

    assert anyio.run(scenario) == [True, True, False, True]


async def _enter_in_background(
    group: anyio.abc.TaskGroup, admission: Admission, clock: ManualClock, client: object
) -> list[bool]:
    """Start ``admission.enter(client)`` in ``group``; return the list its answer will be put in,
    once it is waiting out its Retry-After on ``clock``."""
    answer: list[bool] = []
    sleeps = len(clock.slept)

    async def enter() -> None:
        answer.append(await admission.enter(client))

    group.start_soon(enter)
    await wait_until_async(lambda: len(clock.slept) > sleeps and clock.pending == 1, f"{client} to be made to wait")
    return answer


def test_a_client_back_before_its_retry_after_waits_it_out_before_being_considered() -> None:
    async def scenario() -> tuple[list[float], bool, list[bool], list[bool], list[float]]:
        clock = ManualClock()
        admission = Admission(limit=1, retry_after=1, clock=clock)
        assert await admission.enter(("busy", 1))
        assert not await admission.enter(("eager", 2))  # refused at once, with no wait
        assert clock.slept == []
        clock.advance(0.25)
        async with anyio.create_task_group() as group:
            # Came back a quarter of a second later: made to wait the other three quarters.
            answer = await _enter_in_background(group, admission, clock, ("eager", 2))
            waits = list(clock.slept)
            clock.advance(0.5)
            await anyio.wait_all_tasks_blocked()
            unanswered_before_its_retry_after = not answer
            clock.advance(0.25)
            await wait_until_async(lambda: answer, "an answer once its Retry-After is over")
        # A client that has not been refused lately is answered at once.
        other = [await admission.enter(("polite", 3))]
        return waits, unanswered_before_its_retry_after, answer, other, clock.slept

    waits, unanswered_before_its_retry_after, answer, other, slept = anyio.run(scenario)
    assert waits == [0.75]
    assert unanswered_before_its_retry_after
    assert answer == [False]  # still no room once it had waited: refused
    assert other == [False]
    assert slept == [0.75]  # the polite client was not made to wait


def test_a_client_made_to_wait_is_admitted_if_room_appears_meanwhile() -> None:
    async def scenario() -> tuple[list[bool], list[bool]]:
        clock = ManualClock()
        admission = Admission(limit=1, retry_after=1, clock=clock)
        assert await admission.enter(("busy", 1))
        assert not await admission.enter(("eager", 2))
        async with anyio.create_task_group() as group:
            answer = await _enter_in_background(group, admission, clock, ("eager", 2))
            admission.leave()  # room appears while it waits...
            await anyio.wait_all_tasks_blocked()
            before_its_retry_after = list(answer)  # ...but it is considered only once its wait is over
            clock.advance(1)
            await wait_until_async(lambda: answer, "an answer once its Retry-After is over")
        return before_its_retry_after, answer

    assert anyio.run(scenario) == ([], [True])


def test_admission_forgets_refused_clients_once_their_retry_after_has_passed() -> None:
    async def scenario() -> tuple[int, int]:
        clock = ManualClock()
        admission = Admission(limit=0, retry_after=1, clock=clock)
        for port in range(1000):
            await admission.enter(("10.0.0.1", port))
        clock.advance(0.5)
        await admission.enter(("10.0.0.2", 1))
        remembered_within = len(admission._refused)
        clock.advance(0.5)  # the first thousand's Retry-After has passed; not the last one's
        await admission.enter(("10.0.0.2", 2))
        return remembered_within, len(admission._refused)

    assert anyio.run(scenario) == (1001, 2)


# --- ProgressMonitor -------------------------------------------------------------------------


def test_the_heartbeat_reports_a_stall_only_past_the_limit_and_recovers_when_a_thread_comes_back() -> None:
    async def scenario() -> list[float | None]:
        clock = ManualClock()
        progress = ProgressMonitor(stall_seconds=20, interval=1, clock=clock)
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = 1  # this event loop's worker threads: one, so one task can take them all
        unblock = threading.Event()
        seen: list[float | None] = []
        progress.start()
        try:
            await wait_until_async(lambda: clock.slept == [1], "the first beat to come back")
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: anyio.to_thread.run_sync(unblock.wait, 30, abandon_on_cancel=True))
                await wait_until_async(lambda: limiter.borrowed_tokens == 1, "the worker thread to be taken")
                clock.advance(1)  # the next beat is due, and finds no thread
                await wait_until_async(lambda: limiter.statistics().tasks_waiting == 1, "the beat to wait")
                seen.append(progress.stalled_for())
                clock.advance(19)
                seen.append(progress.stalled_for())  # exactly the limit: not yet a stall
                clock.advance(1)
                seen.append(progress.stalled_for())
                unblock.set()
                await wait_until_async(lambda: clock.slept == [1, 1], "the stalled beat to come back")
                seen.append(progress.stalled_for())
        finally:
            unblock.set()
            await progress.stop()
        return seen

    assert anyio.run(scenario) == [None, None, 21.0, None]


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
            wait_until(
                lambda: client.get("/livez").status_code == 503,
                "livez to notice the stalled threads",
                interval=0.2,
            )
            assert client.get("/livez").json()["error"] == "stalled"
        finally:
            unblock.set()
        wait_until(
            lambda: client.get("/livez").status_code == 200,
            "livez to recover once the threads were free",
            interval=0.2,
        )
