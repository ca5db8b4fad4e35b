"""Fan-out of the market-data feed: subscriptions, per-connection queues, and Redis between replicas.

:mod:`bourse.trading.feed` builds the wire messages of each committed command and
hands them to the hubs of this process (:func:`live_hubs`). A :class:`Hub` routes
each message to the WebSocket connections subscribed to its key; the endpoint that
owns those connections is :mod:`bourse.trading.api.stream`. No web framework here.

Slow clients. Each connection has a bounded send queue. When a message for a
subscription does not fit, the queued messages of that subscription are dropped and
the server sends ``{"type": "resync"}`` followed by a fresh snapshot, so a client
never silently misses a change.

Several replicas. Without Redis the hub is in process: each replica only sees its
own commands. With ``BOURSE_REDIS_URL`` set, the committing thread PUBLISHes each
message as JSON to ``{prefix}md:{symbol}`` (book and trades) or
``{prefix}md:user:{user_id}`` (orders) instead, and every process that serves the
WebSocket (each API process, or with ``BOURSE_STREAM=external`` each ``bourse stream``
process and no API process) runs one subscriber (``PSUBSCRIBE {prefix}md:*``) that
feeds its local hub, so every replica sees every command. Redis pub/sub keeps no
history: when the subscriber's connection drops it reconnects with backoff and then
sends ``resync`` and a fresh snapshot to every book and trades subscriber, since
messages may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio

from bourse.logging import get_logger

log = get_logger("bourse.trading.fanout")

Key = tuple[str, str]  # (channel, instrument symbol or user id)
Message = tuple[Key, dict[str, Any]]
# A message with its JSON text, encoded once for every connection it goes to (None: not yet).
Encoded = tuple[Key, dict[str, Any], str | None]
DEFAULT_QUEUE_SIZE = 1000


# -- The hub: subscriptions and per-connection queues ---------------------------------------

_HUBS: list[Hub] = []
_HUBS_GUARD = threading.Lock()


def live_hubs() -> list[Hub]:
    """The hubs of the apps running in this process (none in a worker or a benchmark)."""
    with _HUBS_GUARD:
        return list(_HUBS)


class Connection:
    """One WebSocket's subscriptions and bounded send queue; used on its event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: deque[tuple[Key | None, dict[str, Any], str | None]] = deque()
        self.wake = asyncio.Event()
        self.needs: dict[Key, bool] = {}  # subscriptions owed a snapshot -> whether it is a resync
        self.floors: dict[Key, int] = {}  # the snapshot's sequence: older messages are skipped
        self.subscriptions: set[Key] = set()
        self.user_id: uuid.UUID | None = None
        self.loop = asyncio.get_running_loop()

    def control(self, message: dict[str, Any]) -> None:
        """A reply to the client (acks, errors): never dropped."""
        self.pending.append((None, message, None))
        self.wake.set()

    def offer_all(self, batch: list[Encoded]) -> None:
        for key, message, text in batch:
            self.offer(key, message, text)

    def resync(self, keys: list[Key]) -> None:
        for key in keys:
            if key in self.subscriptions:
                self.pending = deque(item for item in self.pending if item[0] != key)
                self.needs[key] = True
        self.wake.set()

    def offer(self, key: Key, message: dict[str, Any], text: str | None = None) -> None:
        if key not in self.subscriptions:
            return
        if len(self.pending) >= self.limit:
            # Too slow: drop this subscription's backlog and owe it a fresh snapshot.
            self.pending = deque(item for item in self.pending if item[0] != key)
            self.needs[key] = True
        elif not self.needs.get(key, False):
            self.pending.append((key, message, text))
        self.wake.set()


class Hub:
    """Routes committed messages to the subscribed connections of this process.

    Submitting happens on the committing thread; each connection is then handed its
    messages on its own event loop, so the hub is shared safely between threads.
    """

    def __init__(self, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self.routes: dict[Key, set[Connection]] = {}
        self.relay: RedisRelay | None = None  # set while commits go through Redis
        self._guard = threading.Lock()

    def start(self) -> None:
        with _HUBS_GUARD:
            _HUBS.append(self)

    def stop(self) -> None:
        with _HUBS_GUARD:
            if self in _HUBS:
                _HUBS.remove(self)

    def submit(self, messages: list[Message]) -> None:
        """Hand messages over from any thread to each subscribed connection's event loop."""
        self.deliver([(key, message, None) for key, message in messages])

    def deliver(self, messages: list[Encoded]) -> None:
        """:meth:`submit` for messages whose JSON text may be known already (heard from Redis).

        Each message is encoded once, however many connections it goes to. On the
        connections' own event loop (the Redis subscriber's) they are handed their
        messages directly; from another thread (a committing one) through the loop.
        """
        batches: dict[Connection, list[Encoded]] = {}
        with self._guard:
            for key, message, text in messages:
                routes = self.routes.get(key)
                if not routes:
                    continue
                encoded = (key, message, text if text is not None else _encode(message))
                for connection in routes:
                    batches.setdefault(connection, []).append(encoded)
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for connection, batch in batches.items():
            if connection.loop is running:
                connection.offer_all(batch)
            elif not connection.loop.is_closed():
                connection.loop.call_soon_threadsafe(connection.offer_all, batch)

    def resync_all(self) -> None:
        """Owe every book and trades subscription a ``resync`` and a fresh snapshot."""
        owed: dict[Connection, list[Key]] = {}
        with self._guard:
            for key, connections in self.routes.items():
                if key[0] != "orders":
                    for connection in connections:
                        owed.setdefault(connection, []).append(key)
        for connection, keys in owed.items():
            if not connection.loop.is_closed():
                connection.loop.call_soon_threadsafe(connection.resync, keys)

    def subscribe(self, connection: Connection, key: Key) -> None:
        connection.subscriptions.add(key)
        with self._guard:
            self.routes.setdefault(key, set()).add(connection)

    def unsubscribe(self, connection: Connection, key: Key) -> None:
        connection.subscriptions.discard(key)
        connection.needs.pop(key, None)
        connection.floors.pop(key, None)
        connection.pending = deque(item for item in connection.pending if item[0] != key)
        with self._guard:
            routes = self.routes.get(key)
            if routes is not None:
                routes.discard(connection)
                if not routes:
                    del self.routes[key]

    def drop(self, connection: Connection) -> None:
        for key in list(connection.subscriptions):
            self.unsubscribe(connection, key)


def _encode(message: dict[str, Any]) -> str:
    """A message's JSON text, as the WebSocket sends it (and Redis carries it)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False)


# -- Redis fan-out between API replicas -----------------------------------------------------

RELAY_BACKOFF_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
_POLL_SECONDS = 1.0


class RedisRelay:
    """Carries committed messages through Redis pub/sub to the hub of every API process.

    ``publish`` runs on the committing thread with the app's sync client, one pipelined
    round trip per commit; ``run`` is this process's single subscriber, on its event loop.
    ``connect`` makes a fresh asyncio client for each (re)connection: it must not retry
    on its own, or a reconnection would go unnoticed and missed messages unrepaired.
    """

    def __init__(
        self,
        hub: Hub,
        client: redis.Redis,
        connect: Callable[[], redis.asyncio.Redis],
        *,
        prefix: str,
        identity: str,
    ) -> None:
        self.hub = hub
        self.client = client
        self.connect = connect
        self.prefix = f"{prefix}md:"
        self.identity = (identity, prefix)
        self.connected = asyncio.Event()  # set while subscribed (tests and readiness read it)
        self.client_name = f"bourse-md-{uuid.uuid4().hex[:12]}"
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def channel(self, key: Key) -> str:
        channel, target = key
        return f"{self.prefix}user:{target}" if channel == "orders" else f"{self.prefix}{target}"

    def key(self, channel: str, message: dict[str, Any]) -> Key | None:
        """The hub key of a message heard on ``channel``; None for one that is not ours."""
        if not channel.startswith(self.prefix):
            return None
        target = channel[len(self.prefix) :]
        if target.startswith("user:"):
            return ("orders", target[len("user:") :])
        kind = message.get("channel")
        return (kind, target) if kind in {"book", "trades"} else None

    def publish(self, messages: list[Message]) -> None:
        """PUBLISH the messages in order; a failure is logged, never raised into the commit.

        The command is already committed: subscribers that miss its messages see a
        sequence gap on the next one and resubscribe.
        """
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for key, message in messages:
                    pipe.publish(self.channel(key), _encode(message))
                pipe.execute()
        except redis.RedisError:
            log.exception("market_data_publish_failed", messages=len(messages))

    def attach(self) -> None:
        """Publish what this process commits, and subscribe to nothing: a process that
        serves no WebSocket (an API process under ``BOURSE_STREAM=external``, the matcher)."""
        self.hub.relay = self

    async def start(self) -> None:
        """Publish, and run this process's subscriber that feeds the hub's connections."""
        self.hub.relay = self
        self._task = asyncio.create_task(self.run(), name="market-data-relay")

    async def stop(self) -> None:
        self.hub.relay = None
        self._stopping = True  # redis-py may turn the cancellation into a ConnectionError
        if self._task is not None:
            self._task.cancel()
            # Bounded: shutting down must not wait on a Redis that does not answer.
            await asyncio.wait({self._task}, timeout=2)
            self._task = None

    async def run(self) -> None:
        """Subscribe, feed the hub, and on any failure reconnect with backoff."""
        failures = 0
        while not self._stopping:
            try:
                await self._listen()
            except (redis.RedisError, OSError) as exc:
                self.connected.clear()
                if self._stopping:  # set by stop() meanwhile
                    return  # type: ignore[unreachable]
                delay = RELAY_BACKOFF_SECONDS[min(failures, len(RELAY_BACKOFF_SECONDS) - 1)]
                failures += 1
                log.warning("market_data_relay_disconnected", error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not a secret
            else:
                failures = 0

    async def _listen(self) -> None:
        client = self.connect()
        pubsub = client.pubsub()
        try:
            await client.client_setname(self.client_name)
            await pubsub.psubscribe(f"{self.prefix}*")
            while True:  # wait for the confirmation: from here on nothing is missed
                reply = await pubsub.get_message(timeout=_POLL_SECONDS)
                if reply is not None and reply["type"] == "psubscribe":
                    break
            self.connected.set()
            # Whatever was published while no subscriber listened is lost: start over.
            self.hub.resync_all()
            log.info("market_data_relay_subscribed", pattern=f"{self.prefix}*")
            while True:
                heard = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_POLL_SECONDS)
                if heard is not None and heard["type"] == "pmessage":
                    self._feed(heard["channel"], heard["data"])
        finally:
            self.connected.clear()
            with contextlib.suppress(redis.RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(redis.RedisError, OSError):
                await client.aclose()

    def _feed(self, raw_channel: bytes | str, data: bytes | str) -> None:
        channel = raw_channel.decode() if isinstance(raw_channel, bytes) else raw_channel
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        key = self.key(channel, message) if isinstance(message, dict) else None
        if key is None or not isinstance(message, dict):
            log.warning("market_data_relay_ignored", channel=channel)
            return
        self.hub.deliver([(key, message, data.decode() if isinstance(data, bytes) else data)])
