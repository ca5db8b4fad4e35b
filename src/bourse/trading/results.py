"""Waiting for the matcher's outcome of an order or a cancel, in the process that asked.

The matcher names the order ids of each batch it commits (:func:`announce` in its own
process, and ``NOTIFY bourse_order_results`` on PostgreSQL, which a :class:`Listener`
in every API process turns into the same call). A request that placed or cancelled an
order takes a :func:`mark` *before* its transaction, then awaits
:meth:`OrderResults.wait` for the ids announced after that mark: an announcement that
arrives between the commit and the wait is not missed, and an older one (the order's
placement, when the request is its cancel) does not count.

An announcement is only a wake-up: whoever waited reads the order's state from the
database afterwards, and a wait that times out (no listener, a lost notification)
answers with the state as it is then.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from bourse.logging import get_logger

log = get_logger("bourse.trading.results")

RESULTS_CHANNEL = "bourse_order_results"
COMMANDS_CHANNEL = "bourse_orders"
# How many recent announcements are remembered, for waits that start after them.
_REMEMBERED = 65_536


class OrderResults:
    """Announced order ids and the waits for them, for one process. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counter = 0
        self._announced: OrderedDict[int, int] = OrderedDict()  # order id -> counter when announced
        self._waiters: dict[int, list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None], int]]] = {}
        # Who announces in this process: a listener on PostgreSQL, and each shard an
        # in-process matcher leads. Without any, a request polls for its outcome.
        self._sources = 0

    @property
    def listening(self) -> bool:
        """True while something in this process announces outcomes (else a wait just times out)."""
        return self._sources > 0

    def add_source(self) -> None:
        with self._lock:
            self._sources += 1

    def remove_source(self) -> None:
        with self._lock:
            self._sources = max(0, self._sources - 1)

    def mark(self) -> int:
        with self._lock:
            return self._counter

    def announce(self, order_ids: Iterable[int]) -> None:
        with self._lock:
            self._counter += 1
            counter = self._counter
            for order_id in order_ids:
                self._announced[order_id] = counter
                self._announced.move_to_end(order_id)
                for loop, future, after in self._waiters.pop(order_id, []):
                    if counter > after:
                        loop.call_soon_threadsafe(_resolve, future)
            while len(self._announced) > _REMEMBERED:
                self._announced.popitem(last=False)

    async def wait(self, order_ids: Iterable[int], *, after: int, timeout: float) -> bool:
        """Wait until every id was announced after ``after`` (a :meth:`mark`); False on timeout."""
        loop = asyncio.get_running_loop()
        futures: list[tuple[int, asyncio.Future[None]]] = []
        with self._lock:
            for order_id in order_ids:
                if self._announced.get(order_id, 0) > after:
                    continue
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(order_id, []).append((loop, future, after))
                futures.append((order_id, future))
        if not futures:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*(future for _, future in futures)), timeout)
        except TimeoutError:
            return False
        finally:
            with self._lock:
                for order_id, future in futures:
                    waiting = self._waiters.get(order_id)
                    if waiting is None:
                        continue
                    waiting[:] = [entry for entry in waiting if entry[1] is not future]
                    if not waiting:
                        del self._waiters[order_id]
        return True


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


_RESULTS = OrderResults()


def order_results() -> OrderResults:
    """This process's outcomes."""
    return _RESULTS


def announce(order_ids: Iterable[int]) -> None:
    _RESULTS.announce(order_ids)


def parse_payload(payload: str) -> list[int]:
    """The order ids of a ``bourse_order_results`` payload (comma-separated); junk is ignored."""
    ids = []
    for part in payload.split(","):
        with contextlib.suppress(ValueError):
            ids.append(int(part))
    return ids


class Listener:
    """``LISTEN bourse_order_results`` on a direct connection, in a thread of its own,
    turning each notification into :func:`announce`. Reconnects after a failure (a wait
    meanwhile times out and reads the state, so nothing is lost but time)."""

    def __init__(self, connect: Any, results: OrderResults | None = None) -> None:
        self._connect = connect  # () -> an autocommit psycopg connection
        self._results = results or _RESULTS
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="order-results-listener", daemon=True)
        self._conn: Any = None

    def start(self) -> None:
        self._results.add_source()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._conn = self._connect()
                self._conn.execute(f"LISTEN {RESULTS_CHANNEL}")
                while not self._stop.is_set():
                    for notice in self._conn.notifies(timeout=0.5):
                        self._results.announce(parse_payload(notice.payload))
            except Exception as exc:  # noqa: BLE001 - a lost listener is made up for by the waits' timeouts
                if self._stop.is_set():
                    return
                log.warning("order_results_listen_failed", error=str(exc))
                self._close_conn()
                self._stop.wait(1.0)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._close_conn()
        self._results.remove_source()
