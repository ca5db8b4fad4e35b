"""The market-data WebSocket (``/api/v1/ws``): clients subscribe to the feed.

A connection may authenticate (``{"op": "auth", "token": ...}``, checked as every
request's bearer token is, by :func:`bourse.identity.dependencies.authenticate`) and
subscribe to an instrument's ``book`` and ``trades`` and to its own ``orders``. Each
subscription starts with a snapshot read from the database, then follows the
messages :mod:`bourse.trading.feed` publishes after each command commits (routed by :mod:`bourse.trading.fanout`); the
sequence numbers, the slow-client resync and the Redis fan-out are described there.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import anyio
import anyio.abc
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from bourse.api.capacity import ConnectionLeases, DatabaseBusy, run_with_lease
from bourse.db import Database
from bourse.errors import BourseError
from bourse.identity.dependencies import authenticate
from bourse.logging import get_logger
from bourse.metrics import WS_CONNECTIONS
from bourse.settings import Settings
from bourse.trading import market_data
from bourse.trading.fanout import Connection, Hub, Key
from bourse.trading.instruments import get_instrument

log = get_logger("bourse.trading.api.stream")

MAX_SUBSCRIPTIONS = 100
TRADES_SNAPSHOT = 50

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
    with database.sessions() as session:
        return authenticate(session, settings, token).user_id


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
            key_or_none, message, text = connection.pending.popleft()
            if key_or_none is not None:
                if key_or_none not in connection.subscriptions:
                    continue
                floor = connection.floors.get(key_or_none)
                if floor is not None and message.get("sequence", floor + 1) <= floor:
                    continue
            if text is None:
                await websocket.send_json(message)
            else:
                await websocket.send_text(text)  # encoded once for every connection


@ws_router.websocket("/api/v1/ws")
async def market_stream(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.market_hub
    await websocket.accept()
    connection = Connection(hub.queue_size)
    WS_CONNECTIONS.inc()

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
        WS_CONNECTIONS.dec()
