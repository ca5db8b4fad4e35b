"""Request ids, access logs and HTTP metrics."""

from __future__ import annotations

import io
import json
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bourse.api.routing import router
from bourse.app import create_app
from bourse.logging import configure_logging, get_logger
from bourse.metrics import HTTP_IN_FLIGHT


@pytest.fixture
def logs():  # type: ignore[no-untyped-def]
    stream = io.StringIO()
    configure_logging("info", "json", stream=stream)

    def read() -> list[dict]:  # type: ignore[type-arg]
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    yield read
    configure_logging("info", "json")


@pytest.mark.parametrize("incoming", ["abc-123", "0f8c2d9e4b7a4c1e9d3f5a6b7c8d9e0f", "req.1:retry_2"])
def test_valid_request_id_is_kept_and_echoed(client: TestClient, incoming: str) -> None:
    response = client.get("/livez", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["", "x" * 129, "has space", "semi;colon", "-leading-dash", "ünïcode"])
def test_invalid_request_id_is_replaced(client: TestClient, incoming: str) -> None:
    response = client.get("/api/v1/nothing", headers={"X-Request-ID": incoming.encode()})  # type: ignore[arg-type]  # raw bytes: non-ASCII on purpose
    generated = response.headers["x-request-id"]
    assert generated != incoming
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert response.json()["request_id"] == generated


def test_missing_request_id_is_generated_per_request(client: TestClient) -> None:
    first = client.get("/livez").headers["x-request-id"]
    second = client.get("/livez").headers["x-request-id"]
    assert first != second


def test_access_log_has_route_template_status_and_duration(app: FastAPI, logs) -> None:  # type: ignore[no-untyped-def]
    things = router(prefix="/api/v1/things")

    @things.get("/{thing_id}")
    def get_thing(thing_id: int) -> dict[str, int]:
        return {"id": thing_id}

    app.include_router(things)
    with TestClient(app) as client:
        client.get("/api/v1/things/42", headers={"X-Request-ID": "log-test-1"})
    access = [line for line in logs() if line.get("event") == "http_request"]
    assert len(access) == 1
    line = access[0]
    assert line["method"] == "GET"
    assert line["route"] == "/api/v1/things/{thing_id}"
    assert line["status"] == 200
    assert isinstance(line["duration_ms"], float)
    assert line["request_id"] == "log-test-1"
    assert line["level"] == "info"


def test_every_log_line_of_a_request_carries_its_request_id(app: FastAPI, logs) -> None:  # type: ignore[no-untyped-def]
    inner = router(prefix="/api/v1/inner")

    @inner.get("")
    def handler() -> dict[str, bool]:
        get_logger("bourse.test").info("inside_handler")
        return {"ok": True}

    app.include_router(inner)
    with TestClient(app) as client:
        client.get("/api/v1/inner", headers={"X-Request-ID": "ctx-7"})
    lines = [line for line in logs() if line.get("event") in {"inside_handler", "http_request"}]
    assert [line["event"] for line in lines] == ["inside_handler", "http_request"]
    assert {line["request_id"] for line in lines} == {"ctx-7"}


def test_credentials_never_reach_the_logs(app: FastAPI, logs) -> None:  # type: ignore[no-untyped-def]
    # Not /api/v1/auth: the real identity routes own that prefix.
    auth = router(prefix="/api/v1/test-auth")

    @auth.post("/login")
    def login(body: dict[str, str]) -> dict[str, str]:
        # Even a careless log call with sensitive keys is masked.
        get_logger("bourse.test").info("login_attempt", password=body["password"], headers={"Authorization": "x"})
        return {"access_token": "tok-abcdef"}

    app.include_router(auth)
    with TestClient(app) as client:
        client.post(
            "/api/v1/test-auth/login",
            json={"email": "a@example.com", "password": "correct-horse-battery"},
            headers={"Authorization": "Bearer very-secret-token", "Cookie": "session=cookie-secret"},
        )
    text = json.dumps(logs())
    for secret in ("correct-horse-battery", "very-secret-token", "cookie-secret", "tok-abcdef"):
        assert secret not in text
    assert "login_attempt" in text


def test_metrics_use_route_templates_and_count_requests(app: FastAPI) -> None:
    things = router(prefix="/api/v1/widgets")

    @things.get("/{widget_id}")
    def get_widget(widget_id: int) -> dict[str, int]:
        return {"id": widget_id}

    app.include_router(things)
    with TestClient(app) as client:
        before = _sample(client.get("/metrics").text, "/api/v1/widgets/{widget_id}")
        for widget_id in (1, 2, 3):
            client.get(f"/api/v1/widgets/{widget_id}")
        client.get("/api/v1/widgets/xyz")  # 422: malformed path parameter
        metrics = client.get("/metrics").text
    assert _sample(metrics, "/api/v1/widgets/{widget_id}") == before + 3
    assert "/api/v1/widgets/1" not in metrics
    malformed = 'bourse_http_requests_total{method="GET",route="/api/v1/widgets/{widget_id}",status="422"}'
    assert malformed in metrics
    assert "bourse_http_request_duration_seconds_bucket" in metrics
    assert "bourse_http_requests_in_flight" in metrics
    assert "process_resident_memory_bytes" in metrics
    assert re.search(r'bourse_db_pool_checked_out\{pool="main"\}', metrics)


def test_docs_routes_are_labelled_by_their_path(client: TestClient) -> None:
    client.get("/api/openapi.json")
    metrics = client.get("/metrics").text
    assert 'bourse_http_requests_total{method="GET",route="/api/openapi.json",status="200"}' in metrics


def _sample(metrics: str, route: str) -> float:
    pattern = re.escape(f'bourse_http_requests_total{{method="GET",route="{route}",status="200"}}') + r" (\S+)"
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


def test_in_flight_gauge_counts_the_current_request(app: FastAPI) -> None:
    probe = router(prefix="/api/v1/gauge")

    @probe.get("")
    async def read_gauge() -> dict[str, float]:
        return {"in_flight": HTTP_IN_FLIGHT._value.get()}

    app.include_router(probe)
    with TestClient(app) as client:
        assert client.get("/api/v1/gauge").json()["in_flight"] >= 1


def test_metrics_can_move_to_their_own_port(settings, database) -> None:  # type: ignore[no-untyped-def]
    app = create_app(settings.model_copy(update={"metrics_port": 9109}), database=database)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/metrics").status_code == 404
