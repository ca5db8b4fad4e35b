"""Webhook delivery: signed, concurrent, retried with exponential backoff until a 2xx.

Each event is signed afresh at every attempt (a new ``t``), as a real PSP does,
so a receiver's replay window applies to the attempt and not to the event.
Attempts run concurrently, bounded by a semaphore and the HTTP client's pool;
a failed attempt is retried after 0.5 s, 1 s, 2 s ... capped at 30 s (with a
little jitter, so a recovering receiver is not hit by a synchronized wave),
until a 2xx or until the event is 24 hours old.

Faults shape delivery: duplicates (1 + N copies, each with its own retries), a
delay before the first attempt, and an out-of-order window that buffers events
and then sends their first attempts newest first, one after another, so the
receiver really sees them reversed. Each event records the delay and the window
it was scheduled with (``GET /admin/events``), and every wait goes through the
dispatcher's ``sleep``, which a test can replace to hold and release it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from bourse.logging import get_logger
from bourse.psp import signing
from bourse.psp.sim.faults import FaultSwitchboard
from bourse.psp.sim.store import SimError, new_id, now

log = get_logger("bourse.psp.sim.delivery")

BASE_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 30.0
GIVE_UP_AFTER_SECONDS = 24 * 3600
ATTEMPT_TIMEOUT_SECONDS = 10.0
CONCURRENCY = 32
_JITTER = 0.1
_SUCCESS_FIRST, _SUCCESS_END = 200, 300

#: How the dispatcher waits (a delay, a window, a backoff): ``asyncio.sleep`` unless a test injects its own.
Sleep = Callable[[float], Awaitable[None]]


def backoff(failures: int) -> float:
    """Seconds to wait after the ``failures``-th failed attempt (1-based)."""
    delay = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2.0 ** min(failures - 1, 16))
    return delay * (1 + random.uniform(-_JITTER, _JITTER))  # noqa: S311 - jitter, not cryptography


@dataclass
class EventRecord:
    id: str
    type: str
    object_id: str
    body: bytes
    created: int
    sequence: int
    delay_seconds: float = 0.0  # waited before the first attempt (the webhook_delay_seconds fault)
    window_seconds: float = 0.0  # then held to be sent newest first (the out_of_order_window_seconds fault)
    attempts: int = 0
    delivered: bool = False
    last_status: int | None = None
    last_error: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "object_id": self.object_id,
            "delay_seconds": self.delay_seconds,
            "window_seconds": self.window_seconds,
            "attempts": self.attempts,
            "delivered": self.delivered,
            "last_status": self.last_status,
            "last_error": self.last_error,
        }


class WebhookDispatcher:
    """Owns every event and its delivery tasks; lives on the server's event loop."""

    def __init__(
        self,
        url: str,
        secret: str,
        faults: FaultSwitchboard,
        *,
        concurrency: int = CONCURRENCY,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._url = url
        self._secret = secret
        self._faults = faults
        self._concurrency = concurrency
        self._sleep = sleep
        self._events: dict[str, EventRecord] = {}
        self._sequence = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()
        self._buffer: list[tuple[EventRecord, int]] = []
        self._flush_scheduled = False
        self._client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None

    async def start(self) -> None:
        limits = httpx.Limits(max_connections=self._concurrency, max_keepalive_connections=self._concurrency)
        self._client = httpx.AsyncClient(timeout=ATTEMPT_TIMEOUT_SECONDS, limits=limits)
        self._slots = asyncio.Semaphore(self._concurrency)

    async def stop(self) -> None:
        """Cancel pending deliveries (the state is in memory anyway) and close the client."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        pending = sum(1 for event in self._events.values() if not event.delivered)
        if pending:
            log.info("psp_sim_undelivered_events", count=pending)
        if self._client is not None:
            await self._client.aclose()

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run ``coroutine`` in the background, cancelled at shutdown."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Events ---------------------------------------------------------------------

    def emit(self, event_type: str, obj: dict[str, Any]) -> EventRecord:
        """Record an event about ``obj`` and start delivering it (call on the event loop)."""
        created = now()
        event_id = new_id("evt")
        payload = {"id": event_id, "object": "event", "type": event_type, "created": created, "data": {"object": obj}}
        body = json.dumps(payload, separators=(",", ":")).encode()
        faults = self._faults.current
        record = EventRecord(
            event_id,
            event_type,
            str(obj["id"]),
            body,
            created,
            next(self._sequence),
            delay_seconds=faults.webhook_delay_seconds,
            window_seconds=faults.out_of_order_window_seconds,
        )
        self._events[event_id] = record
        self.spawn(self._dispatch(record, 1 + faults.duplicate_webhooks))
        return record

    def events(self) -> list[dict[str, Any]]:
        return [event.to_api() for event in self._events.values()]

    async def redeliver(self, event_id: str) -> EventRecord:
        """One more attempt now, whatever happened before; no retries follow it."""
        record = self._events.get(event_id)
        if record is None:
            raise SimError(404, "not_found", f"No event {event_id}")
        await self._attempt(record)
        return record

    # --- Delivery -------------------------------------------------------------------

    async def _dispatch(self, record: EventRecord, copies: int) -> None:
        if record.delay_seconds > 0:
            await self._sleep(record.delay_seconds)
        if record.window_seconds > 0:
            self._buffer.append((record, copies))
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self.spawn(self._flush_after(record.window_seconds))
            return
        for _ in range(copies):
            self.spawn(self._deliver(record))

    async def _flush_after(self, window: float) -> None:
        await self._sleep(window)
        batch, self._buffer, self._flush_scheduled = self._buffer, [], False
        batch.sort(key=lambda item: item[0].sequence, reverse=True)
        # First attempts one after another, so the receiver sees this exact order;
        # any retries then run concurrently like every other delivery.
        for record, copies in batch:
            for _ in range(copies):
                if not await self._attempt(record):
                    self.spawn(self._deliver(record, failures=1))

    async def _deliver(self, record: EventRecord, failures: int = 0) -> None:
        started = time.monotonic()
        if failures == 0:
            if await self._attempt(record):
                return
            failures = 1
        while time.monotonic() - started < GIVE_UP_AFTER_SECONDS:
            await self._sleep(backoff(failures))
            if await self._attempt(record):
                return
            failures += 1
        log.warning("psp_sim_webhook_abandoned", event_id=record.id, attempts=record.attempts)

    async def _attempt(self, record: EventRecord) -> bool:
        if self._client is None or self._slots is None:
            raise RuntimeError("start() the dispatcher first")
        async with self._slots:
            headers = {
                signing.SIGNATURE_HEADER: signing.sign(self._secret, record.body),
                "Content-Type": "application/json",
            }
            record.attempts += 1
            try:
                response = await self._client.post(self._url, content=record.body, headers=headers)
            except httpx.HTTPError as exc:
                record.last_status = None
                record.last_error = f"{type(exc).__name__}: {exc}"[:500]
                log.info("psp_sim_webhook_failed", event_id=record.id, attempt=record.attempts, error=record.last_error)
                return False
            record.last_status = response.status_code
            ok = _SUCCESS_FIRST <= response.status_code < _SUCCESS_END
            record.last_error = None if ok else f"HTTP {response.status_code}"
            record.delivered = record.delivered or ok
            if ok:
                log.debug("psp_sim_webhook_delivered", event_id=record.id, attempt=record.attempts)
            else:
                log.info(
                    "psp_sim_webhook_failed", event_id=record.id, attempt=record.attempts, status=response.status_code
                )
            return ok
