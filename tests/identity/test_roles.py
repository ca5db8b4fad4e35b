"""Authorisation lives in the dependencies: CurrentPrincipal and require_roles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from bourse.db import Database, unit_of_work
from bourse.identity.dependencies import require_roles
from bourse.identity.models import Role, User
from bourse.settings import Settings
from tests.support.auth import bearer, make_user, probe_app


@pytest.fixture
def guarded(settings: Settings, database: Database) -> Iterator[TestClient]:
    """The real app plus two endpoints guarded the way every domain guards its own."""
    with TestClient(probe_app(settings, database), raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize("role", list(Role))
def test_require_roles_admits_only_the_named_roles(
    guarded: TestClient, settings: Settings, database: Database, role: Role
) -> None:
    user = make_user(database, role=role)
    response = guarded.get("/api/v1/probe/staff", headers=bearer(settings, user))
    if role in {Role.operator, Role.admin}:
        assert response.status_code == 200
        assert response.json() == {"role": role.value}
    else:
        assert response.status_code == 403
        assert response.json()["error"] == "forbidden"


def test_current_principal_comes_from_the_token(guarded: TestClient, settings: Settings, database: Database) -> None:
    user = make_user(database, role=Role.ib)
    response = guarded.get("/api/v1/probe/me", headers=bearer(settings, user))
    assert response.json() == {"user_id": str(user.id), "role": "ib", "email": user.email}


def test_the_role_is_read_from_the_database_not_trusted_from_the_token(
    guarded: TestClient, settings: Settings, database: Database
) -> None:
    """A token minted while the user was an admin stops opening admin doors once they are not."""
    user = make_user(database, role=Role.admin)
    headers = bearer(settings, user)
    assert guarded.get("/api/v1/probe/staff", headers=headers).status_code == 200
    with unit_of_work(database) as session:
        session.get_one(User, user.id).role = Role.client
    demoted = guarded.get("/api/v1/probe/staff", headers=headers)
    assert (demoted.status_code, demoted.json()["error"]) == (403, "forbidden")


def test_no_token_is_401_before_any_role_check(guarded: TestClient) -> None:
    response = guarded.get("/api/v1/probe/staff")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_require_roles_needs_a_role() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        require_roles()
