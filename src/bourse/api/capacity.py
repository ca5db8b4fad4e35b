"""How much work one API process takes on, and what it does beyond that.

Three mechanisms keep a process answering under any load
(docs/decisions/0012-overload.md):

- **Admission.** :class:`Admission` counts the API requests being served. Beyond
  ``BOURSE_HTTP_MAX_IN_FLIGHT`` a new one is refused at once with ``503 overloaded``
  and ``Retry-After``, before any of its work is done. Probes and metrics are never
  refused.
- **Connection leases.** A request may use the database only while it holds a
  lease from :class:`ConnectionLeases`, and there are exactly as many leases as the
  pool has connections. The lease is awaited on the event loop, never in a worker
  thread, so no thread ever waits for a pooled connection, and a request holding a
  connection can always get a thread to finish. The wait is bounded
  (``BOURSE_DATABASE_POOL_TIMEOUT_SECONDS``): past it the request gets
  ``503 database_busy`` and the event is logged. Before leases, a request held its
  connection across several thread-pool hops while up to 40 threads waited for one
  of the 20 connections, and the process deadlocked for good.
- **Liveness.** :class:`ProgressMonitor` hands a no-op to the worker threads every
  second. ``/livez`` fails when none has come back for
  ``BOURSE_LIVENESS_STALL_SECONDS``, so a process that can no longer make progress is
  restarted, without the probe touching PostgreSQL or Redis.

All three read time, and wait on it, through a :class:`Clock`: the monotonic clock and
the event loop's waits in production, a clock moved by hand in the tests, which can
then show what each waits for without measuring the wall clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import anyio
import anyio.to_thread

from bourse.errors import TemporarilyUnavailable
from bourse.logging import get_logger
from bourse.metrics import DB_LEASE_TIMEOUTS, DB_LEASE_WAITING, DB_LEASES_IN_USE

log = get_logger("bourse.capacity")

T = TypeVar("T")


class Overloaded(TemporarilyUnavailable):
    code = "overloaded"


class DatabaseBusy(TemporarilyUnavailable):
    code = "database_busy"


class Clock:
    """Monotonic time, and the two kinds of wait that are measured on it.

    The mechanisms here take one (``clock=``) and default to this one, which is
    ``time.monotonic`` and the event loop's own timers. A test passes a subclass
    whose time moves only when told to.
    """

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def fail_after(self, seconds: float) -> contextlib.AbstractContextManager[anyio.CancelScope]:
        """A scope that is cancelled after ``seconds`` and then raises :class:`TimeoutError`."""
        return anyio.fail_after(seconds)


SYSTEM_CLOCK = Clock()


class Admission:
    """Counts admitted API requests; refuses beyond the limit.

    A client that comes back sooner than the ``Retry-After`` it was given (``wrk``
    does, a tight retry loop does) is made to wait out the rest of it before its
    request is considered again: otherwise a few hundred such connections keep the
    event loop busy writing 503s, and the requests admitted starve.
    """

    # Paths that are always admitted: probes must answer for what they are meant to
    # tell, and a scrape under load is exactly when metrics matter.
    EXEMPT: ClassVar[frozenset[str]] = frozenset({"/livez", "/readyz", "/metrics"})

    def __init__(self, limit: int, retry_after: int = 1, clock: Clock = SYSTEM_CLOCK) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.clock = clock
        self.in_flight = 0
        # client address -> when it was last refused, oldest first
        self._refused: dict[object, float] = {}
        self._shed_since_log = 0
        self._last_log = float("-inf")  # never: the first refusal is logged

    async def enter(self, client: object) -> bool:
        """Admit the request (True) or refuse it (False); the caller calls
        :meth:`leave` after an admitted request."""
        if self._try_enter():
            return True
        now = self.clock.now()
        last = self._refused.get(client)
        if last is not None and now - last < self.retry_after:
            await self.clock.sleep(self.retry_after - (now - last))
            if self._try_enter():
                return True
        self._note_refusal(client)
        return False

    def leave(self) -> None:
        self.in_flight -= 1

    def _try_enter(self) -> bool:
        if self.in_flight >= self.limit:
            return False
        self.in_flight += 1
        return True

    def _note_refusal(self, client: object) -> None:
        now = self.clock.now()
        self._refused.pop(client, None)
        self._refused[client] = now
        while self._refused:
            oldest = next(iter(self._refused))
            if now - self._refused[oldest] < self.retry_after:
                break
            del self._refused[oldest]
        # One warning a second at most, with the count: a log line per refused
        # request would cost the CPU that shedding is meant to save.
        self._shed_since_log += 1
        if now - self._last_log >= 1.0:
            log.warning("overload_shedding", refused=self._shed_since_log, limit=self.limit)
            self._shed_since_log = 0
            self._last_log = now


class ConnectionLeases:
    """A first-come, first-served count of the pool's connections, awaited on the event loop.

    Only the event loop's thread calls these methods (the request boundary and the
    WebSocket run there), so no lock is needed. A released lease goes straight to the
    longest waiter.
    """

    def __init__(self, size: int, timeout: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.size = size
        self.timeout = timeout
        self.clock = clock
        self._free = size
        self._waiters: deque[anyio.Event] = deque()

    @property
    def in_use(self) -> int:
        return self.size - self._free

    @property
    def waiting(self) -> int:
        """Requests queued for a lease (a cancelled one leaves the queue at once)."""
        return len(self._waiters)

    async def acquire(self) -> None:
        """Take a lease, waiting at most ``timeout``; :class:`DatabaseBusy` after that."""
        if self._free > 0 and not self._waiters:
            self._free -= 1
            DB_LEASES_IN_USE.inc()
            return
        granted = anyio.Event()
        self._waiters.append(granted)
        DB_LEASE_WAITING.inc()
        started = self.clock.now()
        try:
            with self.clock.fail_after(self.timeout):
                await granted.wait()
        except BaseException as exc:
            if granted.is_set():
                # Handed a lease in the same instant as the timeout or a cancellation:
                # pass it on rather than lose it.
                self.release()
            else:
                self._waiters.remove(granted)
            if isinstance(exc, TimeoutError):
                DB_LEASE_TIMEOUTS.inc()
                log.warning(
                    "database_lease_timeout",
                    waited_seconds=round(self.clock.now() - started, 3),
                    leases=self.size,
                    waiting=self.waiting,
                )
                raise DatabaseBusy(
                    f"No database connection became free within {self.timeout:g} s; retry shortly",
                    retry_after=1,
                ) from None
            raise
        finally:
            DB_LEASE_WAITING.dec()

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.is_set():
                waiter.set()  # the lease passes to the waiter; in_use is unchanged
                return
        self._free += 1
        DB_LEASES_IN_USE.dec()


async def run_with_lease(leases: ConnectionLeases, func: Callable[..., T], *args: Any) -> T:
    """Run ``func(*args)`` in a worker thread while holding a lease (for code outside
    a request route, such as the WebSocket, that reads the database).

    The lease is given back when ``func`` has finished in its thread, never earlier,
    even if the caller is cancelled meanwhile; if the call never reached a thread, it
    is given back at once.
    """
    await leases.acquire()
    loop = asyncio.get_running_loop()
    state = {"started": False, "abandoned": False}
    guard = threading.Lock()

    def call() -> T:
        with guard:
            if state["abandoned"]:
                raise asyncio.CancelledError
            state["started"] = True
        try:
            return func(*args)
        finally:
            loop.call_soon_threadsafe(leases.release)

    try:
        return await anyio.to_thread.run_sync(call)
    except BaseException:
        with guard:
            if not state["started"]:
                state["abandoned"] = True
                leases.release()
        raise


class ProgressMonitor:
    """The worker threads' heartbeat, read by ``/livez``."""

    def __init__(
        self,
        stall_seconds: float,
        interval: float = 1.0,
        heartbeat_path: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.stall_seconds = stall_seconds
        self.interval = interval
        # Touched on every beat, for a supervising process (``serve --workers``).
        self.heartbeat_path = heartbeat_path
        self.clock = clock
        self.last_progress = clock.now()
        self._task: asyncio.Task[None] | None = None
        self._reported = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def stalled_for(self) -> float | None:
        """Seconds since the last heartbeat if that is past the limit, else None."""
        if not self.running:
            return None
        age = self.clock.now() - self.last_progress
        if age <= self.stall_seconds:
            if self._reported:
                log.info("worker_threads_recovered")
                self._reported = False
            return None
        if not self._reported:
            log.error("worker_threads_stalled", stalled_seconds=round(age, 1), limit_seconds=self.stall_seconds)
            self._reported = True
        return age

    def start(self) -> None:
        self.last_progress = self.clock.now()
        self._task = asyncio.get_running_loop().create_task(self._beat(), name="bourse-progress-monitor")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    def _touch(self) -> None:
        """Runs in a worker thread: the beat is that it runs at all."""
        if self.heartbeat_path is not None:
            self.heartbeat_path.touch()

    async def _beat(self) -> None:
        while True:
            # abandon_on_cancel: stopping must not wait for a thread that may never come.
            await anyio.to_thread.run_sync(self._touch, abandon_on_cancel=True)
            self.last_progress = self.clock.now()
            await self.clock.sleep(self.interval)
