"""``BOURSE_STREAM=external`` in process: the API serves no WebSocket and runs no Redis
subscriber, yet still publishes what its matcher commits; the stream app
(``create_stream_app``, what ``bourse stream`` serves) delivers it to its clients; and
the commands refuse to start a fan-out that could not be fed (exit 2, ``stream_unavailable``).

The processes themselves are in ``test_stream_process.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from bourse.app import create_app, create_stream_app
from bourse.cli import main
from bourse.db import Database
from bourse.settings import Settings, SettingsError, load_settings
from bourse.trading.fanout import RedisRelay
from tests.support.auth import bearer, make_user
from tests.support.ledger import fund
from tests.support.services import make_settings
from tests.support.waiting import wait_until
from tests.trading.orders_support import market

pytestmark = pytest.mark.timeout(60)
Json = dict[str, Any]


# --- the setting and the refusals -------------------------------------------------------


def test_the_stream_is_in_process_by_default_and_takes_only_its_two_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().stream == "in-process"
    monkeypatch.setenv("BOURSE_STREAM", "external")
    assert load_settings().stream == "external"
    monkeypatch.setenv("BOURSE_STREAM", "gateway")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = excinfo.value.problems
    assert problem.startswith("BOURSE_STREAM: ")


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["stream"], {}, "BOURSE_REDIS_URL"),
        (["serve"], {"BOURSE_STREAM": "external"}, "BOURSE_REDIS_URL"),
    ],
)
def test_a_stream_without_redis_is_refused_before_serving(
    args: list[str], env: dict[str, str], named: str, tmp_path: Any
) -> None:
    """Nothing would feed the WebSocket: exit 2 with the stable code, before any port is bound."""
    result = CliRunner().invoke(main, args, env={"BOURSE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", **env})
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("bourse: stream_unavailable: "), result.stderr
    assert named in result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_bourse_up_refuses_an_external_stream_it_would_not_run(tmp_path: Any) -> None:
    result = CliRunner().invoke(
        main, ["up"], env={"BOURSE_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "BOURSE_STREAM": "external"}
    )
    assert result.exit_code == 2, result.output
    assert "BOURSE_STREAM=external" in result.stderr
    assert not (tmp_path / "x.db").exists(), "it refused before migrating anything"


def test_the_stream_app_needs_redis(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="BOURSE_REDIS_URL"):
        create_stream_app(make_settings(sqlite_url))


# --- the API under BOURSE_STREAM=external, and the stream app ----------------------------


@pytest.fixture
def stream_settings(postgres_url: str, redis_url: str) -> Settings:
    # A prefix of its own: no other test (or replica) hears these channels.
    return make_settings(
        postgres_url, redis_url=redis_url, queue_redis_prefix=f"test-{uuid.uuid4().hex[:8]}:", stream="external"
    )


@pytest.fixture
def shared_database(stream_settings: Settings) -> Iterator[Database]:
    db = Database.from_settings(stream_settings)
    yield db
    db.dispose()


def _md_clients(settings: Settings) -> set[str]:
    """The names of the market-data subscribers connected to Redis now."""
    client = redis.Redis.from_url(str(settings.redis_url))
    try:
        return {str(c.get("name")) for c in client.client_list() if str(c.get("name", "")).startswith("bourse-md-")}
    finally:
        client.close()


def _place(client: TestClient, headers: dict[str, str], symbol: str, side: str, price: str, quantity: str) -> Json:
    response = client.post(
        "/api/v1/orders",
        json={"instrument": symbol, "side": side, "type": "limit", "price": price, "quantity": quantity},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert response.status_code == 201, response.text
    body: Json = response.json()
    return body


def test_the_api_serves_no_websocket_and_subscribes_to_nothing_but_publishes(
    stream_settings: Settings, shared_database: Database
) -> None:
    symbol, base, quote = market(shared_database)
    seller, buyer = make_user(shared_database), make_user(shared_database)
    fund(shared_database, seller.id, base, 10 * 10**8)
    fund(shared_database, buyer.id, quote, 10_000_000)
    listener = redis.Redis.from_url(str(stream_settings.redis_url)).pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    listener.subscribe(f"{stream_settings.queue_redis_prefix}md:{symbol}")
    app = create_app(stream_settings, database=shared_database)
    try:
        with TestClient(app, raise_server_exceptions=False) as api:
            relay = app.state.market_relay
            assert isinstance(relay, RedisRelay)
            assert app.state.market_hub.relay is relay, "what this process commits is published"
            assert api.get("/api/v1/ws").json()["error"] == "not_found"
            with pytest.raises(WebSocketDisconnect), api.websocket_connect("/api/v1/ws") as ws:
                ws.receive_json()
            _place(api, bearer(stream_settings, seller), symbol, "sell", "100.00", "0.5")
            _place(api, bearer(stream_settings, buyer), symbol, "buy", "100.00", "0.5")
            heard: list[Json] = []

            def published() -> bool:
                message = listener.get_message(timeout=0.1)
                if message is not None:
                    heard.append(message)
                return any(b'"type":"trade"' in m["data"] for m in heard)

            wait_until(published, "the in-process matcher's trade on Redis", timeout=20, interval=0)
            # No subscriber of its own: not connected, no task, no client of that name on Redis.
            assert relay._task is None
            assert not relay.connected.is_set()
            assert relay.client_name not in _md_clients(stream_settings)
    finally:
        listener.close()


def test_the_stream_app_serves_what_the_api_commits_in_sequence(
    stream_settings: Settings, shared_database: Database
) -> None:
    symbol, base, quote = market(shared_database)
    seller, buyer = make_user(shared_database), make_user(shared_database)
    fund(shared_database, seller.id, base, 10 * 10**8)
    fund(shared_database, buyer.id, quote, 10_000_000)
    api_app = create_app(stream_settings, database=shared_database)
    stream_app = create_stream_app(stream_settings, database=shared_database)
    with (
        TestClient(api_app, raise_server_exceptions=False) as api,
        TestClient(stream_app, raise_server_exceptions=False) as stream,
    ):
        relay = stream_app.state.market_relay
        wait_until(relay.connected.is_set, "the stream's subscriber to subscribe", timeout=10, interval=0.02)
        assert relay.client_name in _md_clients(stream_settings)
        # The stream serves the WebSocket and the probes, and nothing of the API.
        assert stream.get("/livez").status_code == 200
        assert stream.get("/readyz").json()["checks"] == {"database": "ok", "redis": "ok", "server": "ok"}
        assert "bourse_ws_connections" in stream.get("/metrics").text
        assert stream.get("/api/v1/version").status_code == 404
        assert stream.get("/api/openapi.json").status_code == 404
        with stream.websocket_connect("/api/v1/ws") as ws:
            snapshots: dict[str, Json] = {}
            for channel in ("book", "trades"):
                ws.send_json({"op": "subscribe", "channel": channel, "instrument": symbol})
            while len(snapshots) < 2:
                message = ws.receive_json()
                if message["type"] == "snapshot":
                    snapshots[message["channel"]] = message
            last = snapshots["book"]["sequence"]
            sell = _place(api, bearer(stream_settings, seller), symbol, "sell", "100.00", "0.5")
            buy = _place(api, bearer(stream_settings, buyer), symbol, "buy", "100.00", "0.5")
            assert (sell["status"], buy["status"]) == ("open", "filled")
            deltas: list[Json] = []
            trades: list[Json] = []
            while len(deltas) < 2 or not trades:
                message = ws.receive_json()
                if message["type"] in {"delta", "trade"}:  # the acknowledgements may come after the snapshots
                    (deltas if message["type"] == "delta" else trades).append(message)
            for delta in deltas:
                assert delta["prev_sequence"] == last, deltas
                last = delta["sequence"]
            [trade] = trades
            assert (trade["price"], trade["quantity"]) == ("100.00", "0.50000000")
            assert trade["prev_sequence"] is None or trade["prev_sequence"] == snapshots["trades"]["sequence"]
        wait_until(
            lambda: "bourse_ws_connections 0.0" in stream.get("/metrics").text,
            "the closed connection to be counted out",
            timeout=5,
        )
