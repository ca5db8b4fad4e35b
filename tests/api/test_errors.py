"""Every error has the body {"error", "detail", "request_id"}; 422 only for malformed input."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, Field

from bourse import __version__
from bourse.api.routing import router

ONE_MIB = 1024 * 1024


class Credentials(BaseModel):
    email: str
    password: str = Field(min_length=12)
    age: int


@pytest.fixture
def calls() -> list[str]:
    return []


@pytest.fixture
def echo_client(app: FastAPI, calls: list[str]) -> Iterator[TestClient]:
    echo = router(prefix="/api/v1/echo")

    @echo.post("")
    def create(body: Credentials) -> dict[str, str]:
        calls.append("called")
        return {"email": body.email}

    app.include_router(echo)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def, type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"] == code
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body  # type: ignore[no-any-return]


def test_unknown_route_is_a_json_404(client: TestClient) -> None:
    body = assert_error(client.get("/api/v1/no/such/thing"), 404, "not_found")
    assert "/api/v1/no/such/thing" in body["detail"]


def test_wrong_method_is_a_json_405(client: TestClient) -> None:
    assert_error(client.delete("/api/v1/version"), 405, "method_not_allowed")


def test_invalid_json_is_422_invalid_json(echo_client: TestClient, calls: list[str]) -> None:
    response = echo_client.post(
        "/api/v1/echo", content=b'{"email": "a@b.c", "password":', headers={"Content-Type": "application/json"}
    )
    assert_error(response, 422, "invalid_json")
    assert calls == []


def test_validation_errors_are_422_and_never_echo_the_input(echo_client: TestClient) -> None:
    secret = "hunter2-but-short"
    response = echo_client.post("/api/v1/echo", json={"email": "a@b.c", "password": secret[:5], "age": "old"})
    body = assert_error(response, 422, "validation_error")
    assert {error["loc"] for error in body["errors"]} == {"body.password", "body.age"}
    assert secret[:5] not in response.text
    assert "old" not in response.text


def test_declared_oversize_body_is_refused_before_it_is_read(echo_client: TestClient, calls: list[str]) -> None:
    payload = b"x" * (ONE_MIB + 1)
    response = echo_client.post("/api/v1/echo", content=payload, headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert calls == []


def test_streamed_oversize_body_is_refused_while_streaming(echo_client: TestClient, calls: list[str]) -> None:
    sent: list[int] = []

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            sent.append(1)
            yield b"x" * (64 * 1024)

    # No Content-Length: the body arrives chunked and is counted as it streams.
    response = echo_client.post("/api/v1/echo", content=chunks(), headers={"Content-Type": "application/json"})
    assert_error(response, 413, "payload_too_large")
    assert calls == []


def test_body_at_the_limit_is_accepted(echo_client: TestClient) -> None:
    filler = "a" * (ONE_MIB - 100)
    body = f'{{"email": "a@b.c", "password": "correct horse battery", "age": 3, "pad": "{filler}"}}'.encode()
    assert len(body) <= ONE_MIB
    response = echo_client.post("/api/v1/echo", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    assert "/api/v1/version" in schema.json()["paths"]
    docs = client.get("/api/docs")
    assert docs.status_code == 200
    assert "/api/openapi.json" in docs.text


def test_version_endpoint(client: TestClient) -> None:
    assert client.get("/api/v1/version").json() == {"version": __version__, "api": "v1"}
