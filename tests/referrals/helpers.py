"""Helpers shared by the referral tests: codes, sign-ups and role changes."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from fastapi.testclient import TestClient
from sqlalchemy import update

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role, User
from tests.identity.helpers import PASSWORD, unique_email
from tests.support.auth import TestUser

Headers = Callable[[TestUser], dict[str, str]]
CODES = "/api/v1/ib/referral-codes"


def unique_code(prefix: str = "IB") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10].upper()}"


def set_role(database: Database, user_id: uuid.UUID, role: Role) -> None:
    """What an admin does to promote a referred client to sub-IB (or demote an IB)."""
    with unit_of_work(database) as session:
        session.execute(update(User).where(User.id == user_id).values(role=role))


def create_code(client: TestClient, headers: dict[str, str], code: str | None = None) -> str:
    response = client.post(CODES, json={"code": code} if code else None, headers=headers)
    assert response.status_code == 201, response.text
    created: str = response.json()["code"]
    return created


def register(client: TestClient, referral_code: str | None = None, email: str | None = None) -> TestUser:
    """Sign up over the API, as a prospective client does."""
    body: dict[str, str] = {"email": email or unique_email("referred"), "password": PASSWORD}
    if referral_code is not None:
        body["referral_code"] = referral_code
    response = client.post("/api/v1/auth/register", json=body)
    assert response.status_code == 201, response.text
    found = response.json()
    return TestUser(id=uuid.UUID(found["id"]), email=found["email"], role=Role(found["role"]), password=PASSWORD)
