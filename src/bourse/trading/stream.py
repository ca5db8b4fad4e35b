"""Streaming market data over a WebSocket (``/api/v1/ws``), published after commit.

The order service calls :func:`publish_after_commit` inside each command's
transaction; the messages are built there (under the instrument lock, so they match
the committed state exactly) and handed to the process's hubs only once the
transaction commits, so no client ever sees a fill that was rolled back.

Sequence numbers. Every committed command on an instrument publishes exactly one
``delta`` on its ``book`` channel with ``sequence`` (the instrument's sequence after
the command) and ``prev_sequence`` (before it). A client keeps the last sequence it
applied (the snapshot's, then each delta's): a delta whose ``prev_sequence`` equals it
is the next one; one whose ``sequence`` is not above it is old and is skipped; any
other is a gap, and the client subscribes again for a fresh snapshot. ``trade``
messages on the ``trades`` channel chain the same way from one trade's sequence to
the next (``prev_sequence`` is the instrument's previous trade, or null).

Slow clients. Each connection has a bounded send queue. When a message for a
subscription does not fit, the queued messages of that subscription are dropped and
the server sends ``{"type": "resync"}`` followed by a fresh snapshot, so a client
never silently misses a change.

Several replicas. Without Redis the hub is in process: each replica only sees its
own commands. With ``BOURSE_REDIS_URL`` set, the committing thread PUBLISHes each
message as JSON to ``{prefix}md:{symbol}`` (book and trades) or
``{prefix}md:user:{user_id}`` (orders) instead, and every API process runs one
subscriber (``PSUBSCRIBE {prefix}md:*``) that feeds its local hub, so every replica
sees every command. Redis pub/sub keeps no history: when the subscriber's connection
drops it reconnects with backoff and then sends ``resync`` and a fresh snapshot to
every book and trades subscriber, since messages may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import anyio.abc
import redis
import redis.asyncio
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from bourse.api.capacity import ConnectionLeases, DatabaseBusy, run_with_lease
from bourse.assets.amounts import format_amount
from bourse.db import Database
from bourse.errors import BourseError
from bourse.identity.errors import AccountLocked, InvalidToken
from bourse.identity.models import User, UserStatus
from bourse.identity.tokens import decode_access_token
from bourse.logging import get_logger
from bourse.settings import Settings
from bourse.trading import market_data
from bourse.trading.instruments import format_price, format_quantity, get_instrument
from bourse.trading.models import Instrument, Order, Trade

log = get_logger("bourse.trading.stream")

Key = tuple[str, str]  # (channel, instrument symbol or user id)
Message = tuple[Key, dict[str, Any]]
DEFAULT_QUEUE_SIZE = 1000
MAX_SUBSCRIPTIONS = 100
TRADES_SNAPSHOT = 50
_OUTBOX = "bourse.market_data.outbox"
_HOOKED = "bourse.market_data.hooked"


# -- Building the messages of a command (inside its transaction) ----------------------------


def _order_wire(instrument: Instrument, order: Order) -> dict[str, Any]:
    return {
        "type": "order",
        "channel": "orders",
        "id": order.id,
        "instrument": order.instrument,
        "client_order_id": order.client_order_id,
        "side": order.side,
        "order_type": order.kind,
        "price": None if order.price is None else format_price(instrument, order.price),
        "quantity": format_quantity(instrument, order.quantity),
        "filled_quantity": format_quantity(instrument, order.filled_quantity),
        "status": order.status.value,
        "cancel_reason": order.cancel_reason,
        "sequence": instrument.sequence,
    }


def _fill_wire(instrument: Instrument, trade: Trade, *, maker: bool) -> dict[str, Any]:
    taker_side = trade.taker_side
    return {
        "type": "fill",
        "channel": "orders",
        "trade_id": trade.id,
        "instrument": trade.instrument,
        "order_id": trade.maker_order_id if maker else trade.taker_order_id,
        "side": ("sell" if taker_side == "buy" else "buy") if maker else taker_side,
        "liquidity": "maker" if maker else "taker",
        "price": format_price(instrument, trade.price),
        "quantity": format_quantity(instrument, trade.quantity),
        "fee": format_amount(trade.maker_fee if maker else trade.taker_fee, instrument.quote_scale),
        "sequence": trade.sequence,
    }


def command_messages(
    session: Session, instrument: Instrument, prev_sequence: int, orders: Sequence[Order], trades: Sequence[Trade]
) -> list[Message]:
    """The public and private messages of one committed command on ``instrument``.

    ``orders`` are the orders the command placed or cancelled; the makers of
    ``trades`` and the resting orders self-trade prevention cancelled are found in
    the session. Levels are sent as absolute values, so naming a level that did not
    change is harmless.
    """
    symbol = instrument.symbol
    touched: dict[int, Order] = {order.id: order for order in orders}
    for trade in trades:
        maker = session.get(Order, trade.maker_order_id)
        if maker is not None:
            touched[maker.id] = maker
    owners = {order.user_id for order in orders}
    for candidate in list(session.identity_map.values()):
        if (
            isinstance(candidate, Order)
            and candidate.instrument == symbol
            and candidate.cancel_reason == "self_trade"
            and candidate.user_id in owners
        ):
            touched[candidate.id] = candidate
    keys = {(order.side, order.price) for order in touched.values() if order.price is not None}
    bids, asks = market_data.levels(session, symbol, prices=keys)
    present = {("buy", level[0]): level for level in bids} | {("sell", level[0]): level for level in asks}
    changes = []
    for side, price in sorted(keys, key=lambda key: (key[0], key[1])):
        level = present.get((side, price), (price, 0, 0))
        changes.append([side, *market_data.level_wire(instrument, level)])
    messages: list[Message] = []
    if trades:
        previous = session.scalar(
            select(func.max(Trade.sequence)).where(Trade.instrument == symbol, Trade.sequence < trades[0].sequence)
        )
        for trade in trades:
            wire = market_data.trade_wire(instrument, trade)
            messages.append(
                (
                    ("trades", symbol),
                    {"type": "trade", "channel": "trades", "instrument": symbol, "prev_sequence": previous, **wire},
                )
            )
            previous = trade.sequence
    messages.append(
        (
            ("book", symbol),
            {
                "type": "delta",
                "channel": "book",
                "instrument": symbol,
                "sequence": instrument.sequence,
                "prev_sequence": prev_sequence,
                "changes": changes,
            },
        )
    )
    messages.extend((("orders", str(order.user_id)), _order_wire(instrument, order)) for order in touched.values())
    for trade in trades:
        messages.append((("orders", str(trade.maker_user_id)), _fill_wire(instrument, trade, maker=True)))
        messages.append((("orders", str(trade.taker_user_id)), _fill_wire(instrument, trade, maker=False)))
    return messages


def publish_after_commit(
    session: Session,
    instrument: Instrument,
    *,
    prev_sequence: int,
    orders: Sequence[Order],
    trades: Sequence[Trade] = (),
) -> None:
    """Queue the command's messages; they go to the hubs when the transaction commits."""
    session.flush()
    messages = command_messages(session, instrument, prev_sequence, orders, trades)
    if not session.info.get(_HOOKED):
        event.listen(session, "after_commit", _deliver_outbox)
        event.listen(session, "after_rollback", _drop_outbox)
        session.info[_HOOKED] = True
    session.info.setdefault(_OUTBOX, []).extend(messages)


def _deliver_outbox(session: Session) -> None:
    messages: list[Message] = session.info.pop(_OUTBOX, [])
    if messages:
        with _HUBS_GUARD:
            hubs = list(_HUBS)
        published: set[tuple[str, str]] = set()
        for hub in hubs:
            if hub.relay is None:
                hub.submit(messages)
            elif hub.relay.identity not in published:
                # Hubs sharing one Redis and prefix (apps in one process) hear it back once each.
                published.add(hub.relay.identity)
                hub.relay.publish(messages)


def _drop_outbox(session: Session) -> None:
    session.info.pop(_OUTBOX, None)


# -- The hub: subscriptions and per-connection queues ---------------------------------------

_HUBS: list[Hub] = []
_HUBS_GUARD = threading.Lock()


class Connection:
    """One WebSocket's subscriptions and bounded send queue; used on its event loop only."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.pending: deque[tuple[Key | None, dict[str, Any]]] = deque()
        self.wake = asyncio.Event()
        self.needs: dict[Key, bool] = {}  # subscriptions owed a snapshot -> whether it is a resync
        self.floors: dict[Key, int] = {}  # the snapshot's sequence: older messages are skipped
        self.subscriptions: set[Key] = set()
        self.user_id: uuid.UUID | None = None
        self.loop = asyncio.get_running_loop()

    def control(self, message: dict[str, Any]) -> None:
        """A reply to the client (acks, errors): never dropped."""
        self.pending.append((None, message))
        self.wake.set()

    def offer_all(self, batch: list[Message]) -> None:
        for key, message in batch:
            self.offer(key, message)

    def resync(self, keys: list[Key]) -> None:
        for key in keys:
            if key in self.subscriptions:
                self.pending = deque(item for item in self.pending if item[0] != key)
                self.needs[key] = True
        self.wake.set()

    def offer(self, key: Key, message: dict[str, Any]) -> None:
        if key not in self.subscriptions:
            return
        if len(self.pending) >= self.limit:
            # Too slow: drop this subscription's backlog and owe it a fresh snapshot.
            self.pending = deque(item for item in self.pending if item[0] != key)
            self.needs[key] = True
        elif not self.needs.get(key, False):
            self.pending.append((key, message))
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
        batches: dict[Connection, list[Message]] = {}
        with self._guard:
            for key, message in messages:
                for connection in self.routes.get(key, ()):
                    batches.setdefault(connection, []).append((key, message))
        for connection, batch in batches.items():
            if not connection.loop.is_closed():
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
                    pipe.publish(self.channel(key), json.dumps(message, separators=(",", ":")))
                pipe.execute()
        except redis.RedisError:
            log.exception("market_data_publish_failed", messages=len(messages))

    async def start(self) -> None:
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
        self.hub.submit([(key, message)])


# -- The WebSocket endpoint -----------------------------------------------------------------

ws_router = APIRouter()


class _Refused(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def _snapshot(database: Database, key: Key) -> dict[str, Any]:
    channel, symbol = key
    with database.sessions() as session:
        if channel == "book":
            return {"type": "snapshot", "channel": "book", **market_data.book_snapshot(session, symbol).wire()}
        instrument = get_instrument(session, symbol)
        trades = market_data.recent_trades(session, symbol, TRADES_SNAPSHOT)
        return {
            "type": "snapshot",
            "channel": "trades",
            "instrument": symbol,
            "sequence": trades[0].sequence if trades else 0,
            "trades": [market_data.trade_wire(instrument, trade) for trade in trades],
        }


def _check_instrument(database: Database, symbol: str) -> None:
    with database.sessions() as session:
        get_instrument(session, symbol)


def _authenticate(database: Database, settings: Settings, token: str) -> uuid.UUID:
    claims = decode_access_token(settings, token)
    with database.sessions() as session:
        user = session.get(User, claims.user_id)
        if user is None:
            raise InvalidToken
        if user.status != UserStatus.active:
            raise AccountLocked
        return user.id


def _leases(websocket: WebSocket) -> ConnectionLeases:
    leases: ConnectionLeases = websocket.app.state.db_leases
    return leases


async def _handle(websocket: WebSocket, hub: Hub, connection: Connection, raw: str) -> None:  # noqa: PLR0912 - one branch per operation
    database: Database = websocket.app.state.db
    try:
        request = json.loads(raw)
    except ValueError:
        raise _Refused("invalid_message") from None
    if not isinstance(request, dict):
        raise _Refused("invalid_message")
    op = request.get("op")
    if op == "auth":
        token = request.get("token")
        if not isinstance(token, str) or not token:
            raise _Refused("invalid_token")
        try:
            connection.user_id = await run_with_lease(
                _leases(websocket), _authenticate, database, websocket.app.state.settings, token
            )
        except BourseError as refusal:
            raise _Refused(refusal.code) from None
        connection.control({"type": "authenticated"})
        return
    if op not in {"subscribe", "unsubscribe"}:
        raise _Refused("unknown_op")
    channel = request.get("channel")
    if channel == "orders":
        if connection.user_id is None:
            raise _Refused("auth_required")
        key: Key = ("orders", str(connection.user_id))
    elif channel in {"book", "trades"}:
        symbol = request.get("instrument")
        if not isinstance(symbol, str):
            raise _Refused("unknown_instrument")
        key = (channel, symbol)
    else:
        raise _Refused("unknown_channel")
    reply: dict[str, Any] = {"channel": channel} | ({} if channel == "orders" else {"instrument": key[1]})
    if op == "unsubscribe":
        hub.unsubscribe(connection, key)
        connection.control({"type": "unsubscribed", **reply})
        return
    if channel != "orders":
        try:
            await run_with_lease(_leases(websocket), _check_instrument, database, key[1])
        except BourseError as refusal:
            raise _Refused(refusal.code) from None
    if key not in connection.subscriptions and len(connection.subscriptions) >= MAX_SUBSCRIPTIONS:
        raise _Refused("too_many_subscriptions")
    # Subscribe first, then read the snapshot: whatever commits in between is queued
    # and then skipped if the snapshot already includes it.
    hub.subscribe(connection, key)
    connection.control({"type": "subscribed", **reply})
    if channel != "orders":
        connection.needs[key] = False
        connection.wake.set()


async def _receive(websocket: WebSocket, hub: Hub, connection: Connection) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text")
        try:
            if raw is None:
                raise _Refused("invalid_message")  # noqa: TRY301 - a frame that is not text is refused like bad JSON
            await _handle(websocket, hub, connection, raw)
        except _Refused as refusal:
            connection.control({"type": "error", "error": refusal.code})


async def _send(websocket: WebSocket, connection: Connection) -> None:
    database: Database = websocket.app.state.db
    while True:
        await connection.wake.wait()
        connection.wake.clear()
        while connection.needs or connection.pending:
            if connection.needs:
                key, resync = next(iter(connection.needs.items()))
                del connection.needs[key]
                channel, target = key
                if resync:
                    await websocket.send_json({"type": "resync", "channel": channel, "instrument": target})
                if channel == "orders":
                    continue  # a client's orders are re-read from the REST API
                try:
                    snapshot = await run_with_lease(_leases(websocket), _snapshot, database, key)
                except DatabaseBusy:
                    # Try again shortly rather than drop the subscription.
                    connection.needs[key] = False
                    await asyncio.sleep(1)
                    continue
                if key in connection.subscriptions:
                    connection.floors[key] = snapshot["sequence"]
                    await websocket.send_json(snapshot)
                continue
            key_or_none, message = connection.pending.popleft()
            if key_or_none is not None:
                if key_or_none not in connection.subscriptions:
                    continue
                floor = connection.floors.get(key_or_none)
                if floor is not None and message.get("sequence", floor + 1) <= floor:
                    continue
            await websocket.send_json(message)


@ws_router.websocket("/api/v1/ws")
async def market_stream(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.market_hub
    await websocket.accept()
    connection = Connection(hub.queue_size)

    async def receive_then_stop(group: anyio.abc.TaskGroup) -> None:
        await _receive(websocket, hub, connection)
        group.cancel_scope.cancel()  # the client left: stop sending

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(receive_then_stop, group)
            group.start_soon(_send, websocket, connection)
    except* (WebSocketDisconnect, RuntimeError) as closed:
        log.info("stream_closed", reason=repr(closed.exceptions[0]))
    finally:
        hub.drop(connection)
