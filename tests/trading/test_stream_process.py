"""The WebSocket fan-out in processes of its own (``BOURSE_STREAM=external``), on PostgreSQL and Redis.

The production layout on one machine: ``bourse serve`` (``BOURSE_STREAM=external``,
``BOURSE_MATCHER=external``) takes orders, ``bourse matcher`` matches them and
publishes their market data through Redis, and ``bourse stream --workers 2`` serves
``/api/v1/ws`` from its own processes, each with its own Redis subscriber. WebSocket
clients of the stream see the trades of orders placed through the API, in gapless
sequences; the API answers no WebSocket and holds no subscriber; ``bourse bench
fanout`` runs against the stack; and the stream stops on SIGTERM with exit 0.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil  # type: ignore[import-untyped]
import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from bourse.bench.orders_http import Traders, prepare_traders
from tests.support.processes import clean_env, free_port, run_bourse, stop, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

STREAM_WORKERS = 2
CLIENTS = 3
PAIRS = 5  # a sell and a buy that cross, each pair one trade
Json = dict[str, Any]


@dataclass
class _Stack:
    url: str
    env: dict[str, str]
    redis_url: str
    api: str
    stream_port: int
    processes: dict[str, subprocess.Popen[str]]
    logs: dict[str, Path]

    def tails(self) -> str:
        return "\n".join(
            f"--- {name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:])
            for name, path in self.logs.items()
        )


def _popen(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bourse", *args], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
        )


def _terminate(process: subprocess.Popen[str]) -> int | None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stop(process)
            return None
    return process.returncode


@pytest.fixture(scope="module")
def stack(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Stack]:
    url = create_postgres_database()
    work = tmp_path_factory.mktemp("stream")
    processes: dict[str, subprocess.Popen[str]] = {}
    try:
        env = clean_env(
            BOURSE_DATABASE_URL=url,
            BOURSE_DATABASE_DIRECT_URL=url,
            BOURSE_REDIS_URL=redis_url,
            # Channels of its own: no other test (or stack) on this Redis is heard.
            BOURSE_QUEUE_REDIS_PREFIX=f"test-{uuid.uuid4().hex[:8]}:",
            BOURSE_STREAM="external",
            BOURSE_MATCHER="external",
            BOURSE_MATCHER_HEARTBEAT_PATH=str(work / "matcher.heartbeat"),
            BOURSE_LOG_LEVEL="warning",
            BOURSE_ORDER_WAIT_MS="5000",
            BOURSE_SHUTDOWN_DRAIN_SECONDS="0",
        )
        migrated = run_bourse("migrate", env=env)
        assert migrated.returncode == 0, migrated.stderr
        api_port, stream_port = free_port(), free_port()
        logs = {name: work / f"{name}.log" for name in ("serve", "matcher", "stream")}
        processes["serve"] = _popen(["serve", "--port", str(api_port)], env, logs["serve"])
        processes["matcher"] = _popen(["matcher"], env, logs["matcher"])
        processes["stream"] = _popen(
            ["stream", "--port", str(stream_port), "--workers", str(STREAM_WORKERS)], env, logs["stream"]
        )
        wait_for_status(f"http://127.0.0.1:{api_port}/readyz", timeout=90)
        wait_for_status(f"http://127.0.0.1:{stream_port}/readyz", timeout=90)
        yield _Stack(url, env, redis_url, f"http://127.0.0.1:{api_port}", stream_port, processes, logs)
    finally:
        for process in processes.values():
            children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
            _terminate(process)
            for child in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
        drop_postgres_database(url)


def _tree_ports(process: subprocess.Popen[str], remote_port: int) -> set[int]:
    """The local ports of the process's (and its children's) TCP connections to ``remote_port``."""
    root = psutil.Process(process.pid)
    ports = set()
    for member in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            ports |= {
                c.laddr.port for c in member.net_connections(kind="tcp") if c.raddr and c.raddr.port == remote_port
            }
    return ports


def _subscribers_of(stack: _Stack, name: str) -> int:
    """How many market-data subscribers (Redis clients named bourse-md-*) the process tree holds."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        listed = client.client_list()
        redis_port = int(client.connection_pool.connection_kwargs.get("port", 6379))
    finally:
        client.close()
    ports = _tree_ports(stack.processes[name], redis_port)
    return sum(
        1
        for c in listed
        if str(c.get("name", "")).startswith("bourse-md-") and int(c["addr"].rsplit(":", 1)[1]) in ports
    )


def _subscribe(ws: ClientConnection, symbol: str) -> dict[str, int]:
    """Subscribe to the book and the trades; the sequences of their snapshots."""
    for channel in ("book", "trades"):
        ws.send(json.dumps({"op": "subscribe", "channel": channel, "instrument": symbol}))
    last: dict[str, int] = {}
    while len(last) < 2:
        message = json.loads(ws.recv(timeout=30))
        if message["type"] == "snapshot":
            last[message["channel"]] = message["sequence"]
    return last


def _place(api: str, traders: Traders, trader: str, side: str, price: str) -> None:
    response = httpx.post(
        f"{api}/api/v1/orders",
        json={"instrument": traders.market.symbol, "side": side, "type": "limit", "price": price, "quantity": "0.01"},
        headers={"Authorization": f"Bearer {traders.tokens[trader]}", "Idempotency-Key": uuid.uuid4().hex},
        timeout=30,
    )
    assert response.status_code in {201, 202}, response.text


def test_websocket_clients_of_the_stream_see_the_trades_of_orders_placed_through_the_api(stack: _Stack) -> None:
    traders = prepare_traders(make_settings(stack.url), 2)
    seller, buyer = traders.user_ids
    scale = traders.market.price_scale
    price = f"{traders.market.mid / 10**scale:.{scale}f}"
    with contextlib.ExitStack() as opened:
        clients = [
            opened.enter_context(connect(f"ws://127.0.0.1:{stack.stream_port}/api/v1/ws", open_timeout=30))
            for _ in range(CLIENTS)
        ]
        lasts = [_subscribe(ws, traders.market.symbol) for ws in clients]
        # Each stream process subscribes to Redis once; the API process not at all. The
        # stream is ready when its first process is: the second may still be connecting.
        wait_until(
            lambda: _subscribers_of(stack, "stream") >= STREAM_WORKERS,
            lambda: f"{STREAM_WORKERS} subscribers in the stream's processes\n{stack.tails()}",
            timeout=60,
        )
        assert _subscribers_of(stack, "stream") == STREAM_WORKERS, stack.tails()
        assert _subscribers_of(stack, "serve") == 0, stack.tails()
        metrics = httpx.get(f"http://127.0.0.1:{stack.stream_port}/metrics", timeout=10).text
        assert f"bourse_ws_connections {float(CLIENTS)}" in metrics
        for _ in range(PAIRS):
            _place(stack.api, traders, seller, "sell", price)
            _place(stack.api, traders, buyer, "buy", price)
        symbol = traders.market.symbol
        for ws, last in zip(clients, lasts, strict=True):
            trades: list[Json] = []
            target = None  # the book's sequence once every order has traded
            while target is None or last["book"] < target:
                message = json.loads(ws.recv(timeout=60))
                if message["type"] == "delta":
                    assert message["prev_sequence"] == last["book"], (message, last)
                    last["book"] = message["sequence"]
                elif message["type"] == "trade":
                    assert message["prev_sequence"] == (last["trades"] or None), (message, last)
                    last["trades"] = message["sequence"]
                    trades.append(message)
                else:
                    assert message["type"] == "subscribed", message  # an acknowledgement after its snapshot
                if target is None and len(trades) == PAIRS:
                    target = httpx.get(f"{stack.api}/api/v1/instruments/{symbol}/book", timeout=10).json()["sequence"]
            assert last["book"] == target
            assert {(t["price"], t["quantity"]) for t in trades} == {(price, "0.01000000")}
            assert len(trades) == PAIRS
    # The API process serves no WebSocket: a plain GET is a 404, a handshake is refused.
    answer = httpx.get(f"{stack.api}/api/v1/ws", timeout=10)
    assert (answer.status_code, answer.json()["error"]) == (404, "not_found")
    with pytest.raises(InvalidStatus) as refused, connect(stack.api.replace("http://", "ws://") + "/api/v1/ws"):
        pass
    assert refused.value.response.status_code in {403, 404}
    # ... and the stream process serves nothing of the API.
    assert httpx.get(f"http://127.0.0.1:{stack.stream_port}/api/v1/version", timeout=10).status_code == 404


def test_bench_fanout_runs_against_the_api_and_the_stream(stack: _Stack) -> None:
    bench = run_bourse(
        "bench",
        "fanout",
        "--api-url",
        stack.api,
        "--stream-url",
        f"http://127.0.0.1:{stack.stream_port}",
        "--subscribers",
        "5",
        "--rate",
        "10",
        "--seconds",
        "3",
        "--warmup",
        "1",
        "--concurrency",
        "2",
        "--traders",
        "4",
        "--json",
        env=stack.env,
        timeout=300,
    )
    assert bench.returncode == 0, bench.stderr + stack.tails()
    result = json.loads(bench.stdout)
    assert result["benchmark"] == "fanout"
    assert result["stream_url"] == f"ws://127.0.0.1:{stack.stream_port}/api/v1/ws"
    for run in ("baseline", "subscribed"):
        figures = result[run]
        assert figures["errors"] == 0, figures["error_samples"]
        assert figures["requests"] > 0
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert set(figures["refused"]) <= {"order_not_open"}, figures["refused"]
        # The servers are found by the ports they listen on, and their CPU counted by role.
        assert {"api", "stream", "matcher", "machine busy"} <= set(figures["cpu_seconds"]), figures["cpu_seconds"]
        assert figures["cpu_window_seconds"] >= 3
    assert result["baseline"]["subscribers"] == 0
    assert "fanout" not in result["baseline"]
    fanout = result["subscribed"]["fanout"]
    assert fanout["subscribers"] == fanout["complete"] == 5
    assert (fanout["gaps"], fanout["with_gaps"], fanout["failures"]) == (0, 0, {})
    assert fanout["gapless_or_resynced"] is True
    # Every subscriber saw the run's messages: a delta per command at least.
    low, high = fanout["messages_per_subscriber"]
    assert 0 < low <= high
    assert fanout["last_sequences"]["book"] > 0
    assert result["p99_ratio"] == round(result["subscribed"]["p99_ms"] / result["baseline"]["p99_ms"], 2)


def test_sigterm_stops_the_stream_processes_with_exit_0(stack: _Stack) -> None:
    stream = stack.processes["stream"]
    children = psutil.Process(stream.pid).children()
    assert len(children) == STREAM_WORKERS
    assert _terminate(stream) == 0, stack.tails()
    wait_until(lambda: not any(child.is_running() for child in children), "the stream's processes to exit", timeout=30)
    assert "Traceback" not in stack.logs["stream"].read_text(errors="replace")
