"""The market-data feed: what each committed command publishes, and where it goes.

The order service calls :func:`publish_after_commit` inside each command's
transaction, under the instrument lock. It only copies what the messages need
(plain values: the orders and trades the command touched, the levels it changed, as
the transaction sees them, so they match the committed state exactly) and returns.
The wire messages are built from that copy after the transaction commits, outside
the instrument's critical section, and handed to the process's hubs; a rolled-back
command publishes nothing, so no client ever sees a fill that was rolled back.

No web framework here: the WebSocket endpoint that serves the feed to clients is
:mod:`bourse.trading.api.stream`.

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
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import redis
import redis.asyncio
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import format_amount
from bourse.logging import get_logger
from bourse.trading import market_data
from bourse.trading.instruments import format_price, format_quantity
from bourse.trading.models import Instrument, Order, OrderStatus, Trade

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = get_logger("bourse.trading.feed")

Key = tuple[str, str]  # (channel, instrument symbol or user id)
Message = tuple[Key, dict[str, Any]]
DEFAULT_QUEUE_SIZE = 1000
_OUTBOX = "bourse.market_data.outbox"
_HOOKED = "bourse.market_data.hooked"
_Copied = TypeVar("_Copied", bound="DataclassInstance")


# -- What a command touched, copied inside its transaction --------------------------------------


@dataclass(frozen=True, slots=True)
class _Market:
    """The instrument as the command left it."""

    symbol: str
    price_scale: int
    base_scale: int
    quote_scale: int
    sequence: int


@dataclass(frozen=True, slots=True)
class _OrderState:
    id: int
    instrument: str
    client_order_id: str | None
    side: str
    kind: str
    price: int | None
    quantity: int
    filled_quantity: int
    status: OrderStatus
    cancel_reason: str | None
    user_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class _Fill:
    id: int
    instrument: str
    sequence: int
    price: int
    quantity: int
    taker_side: str
    created_at: datetime
    maker_order_id: int
    taker_order_id: int
    maker_user_id: uuid.UUID
    taker_user_id: uuid.UUID
    maker_fee: int
    taker_fee: int


@dataclass(frozen=True, slots=True)
class Command:
    """One committed command's part of the feed, in plain values (no ORM object, no session)."""

    market: _Market
    prev_sequence: int
    previous_trade_sequence: int | None  # the instrument's trade before the command's first one
    levels: tuple[tuple[str, market_data.Level], ...]  # (side, level) of each level it changed
    orders: tuple[_OrderState, ...]  # placed, cancelled, filled as a maker, cancelled by self-trade prevention
    trades: tuple[_Fill, ...]


def _copy(kind: type[_Copied], row: object) -> _Copied:
    """A frozen copy of the fields of ``row`` that ``kind`` names: plain values, no session behind them."""
    return kind(**{field.name: getattr(row, field.name) for field in fields(kind)})


def capture(
    session: Session, instrument: Instrument, prev_sequence: int, orders: Sequence[Order], trades: Sequence[Trade]
) -> Command:
    """What the messages of one command on ``instrument`` need, read in its transaction.

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
    ordered = sorted(keys, key=lambda key: (key[0], key[1]))
    changed = tuple((side, present.get((side, price), (price, 0, 0))) for side, price in ordered)
    previous = None
    if trades:
        previous = session.scalar(
            select(func.max(Trade.sequence)).where(Trade.instrument == symbol, Trade.sequence < trades[0].sequence)
        )
    market = _Market(symbol, instrument.price_scale, instrument.base_scale, instrument.quote_scale, instrument.sequence)
    return Command(
        market=market,
        prev_sequence=prev_sequence,
        previous_trade_sequence=previous,
        levels=changed,
        orders=tuple(_copy(_OrderState, order) for order in touched.values()),
        trades=tuple(_copy(_Fill, trade) for trade in trades),
    )


# -- Building the wire messages of a committed command (after commit) ----------------------------


def _order_wire(market: _Market, order: _OrderState) -> dict[str, Any]:
    return {
        "type": "order",
        "channel": "orders",
        "id": order.id,
        "instrument": order.instrument,
        "client_order_id": order.client_order_id,
        "side": order.side,
        "order_type": order.kind,
        "price": None if order.price is None else format_price(market, order.price),
        "quantity": format_quantity(market, order.quantity),
        "filled_quantity": format_quantity(market, order.filled_quantity),
        "status": order.status.value,
        "cancel_reason": order.cancel_reason,
        "sequence": market.sequence,
    }


def _fill_wire(market: _Market, trade: _Fill, *, maker: bool) -> dict[str, Any]:
    taker_side = trade.taker_side
    return {
        "type": "fill",
        "channel": "orders",
        "trade_id": trade.id,
        "instrument": trade.instrument,
        "order_id": trade.maker_order_id if maker else trade.taker_order_id,
        "side": ("sell" if taker_side == "buy" else "buy") if maker else taker_side,
        "liquidity": "maker" if maker else "taker",
        "price": format_price(market, trade.price),
        "quantity": format_quantity(market, trade.quantity),
        "fee": format_amount(trade.maker_fee if maker else trade.taker_fee, market.quote_scale),
        "sequence": trade.sequence,
    }


def command_messages(command: Command) -> list[Message]:
    """The public and private messages of one committed command, in publishing order."""
    market = command.market
    symbol = market.symbol
    messages: list[Message] = []
    previous = command.previous_trade_sequence
    for trade in command.trades:
        wire = market_data.trade_wire(market, trade)
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
                "sequence": market.sequence,
                "prev_sequence": command.prev_sequence,
                "changes": [[side, *market_data.level_wire(market, level)] for side, level in command.levels],
            },
        )
    )
    messages.extend((("orders", str(order.user_id)), _order_wire(market, order)) for order in command.orders)
    for trade in command.trades:
        messages.append((("orders", str(trade.maker_user_id)), _fill_wire(market, trade, maker=True)))
        messages.append((("orders", str(trade.taker_user_id)), _fill_wire(market, trade, maker=False)))
    return messages


def publish_after_commit(
    session: Session,
    instrument: Instrument,
    *,
    prev_sequence: int,
    orders: Sequence[Order],
    trades: Sequence[Trade] = (),
) -> None:
    """Note the command in the transaction; its messages are built and sent when it commits."""
    session.flush()
    command = capture(session, instrument, prev_sequence, orders, trades)
    if not session.info.get(_HOOKED):
        event.listen(session, "after_commit", _deliver_outbox)
        event.listen(session, "after_rollback", _drop_outbox)
        session.info[_HOOKED] = True
    session.info.setdefault(_OUTBOX, []).append(command)


def _deliver_outbox(session: Session) -> None:
    commands: list[Command] = session.info.pop(_OUTBOX, [])
    if not commands:
        return
    with _HUBS_GUARD:
        hubs = list(_HUBS)
    if not hubs:
        return  # no API in this process (a worker, a benchmark): nobody to build them for
    messages = [message for command in commands for message in command_messages(command)]
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
