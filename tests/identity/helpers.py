"""Helpers shared by the identity tests."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

# argon2id at its cheapest (the API's configured hasher); the tests are about the
# protocol, not the cost. test_passwords.py checks the cost parameters themselves.
FAST_HASH = {"password_hash_time_cost": 1, "password_hash_memory_kib": 1024, "password_hash_parallelism": 1}
PASSWORD = "correct horse battery staple"


def unique_ip() -> str:
    raw = uuid.uuid4().bytes
    return f"10.{raw[0]}.{raw[1]}.{raw[2]}"


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def register(client: TestClient, email: str | None = None, password: str = PASSWORD) -> dict[str, object]:
    response = client.post("/api/v1/auth/register", json={"email": email or unique_email(), "password": password})
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def login(client: TestClient, email: str, password: str = PASSWORD, **extra: object) -> dict[str, Any]:
    response = client.post("/api/v1/auth/login", json={"email": email, "password": password, **extra})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def auth_header(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
