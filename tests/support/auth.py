"""Sign-in helpers for any test suite: create users and build Authorization headers.

``register_user`` writes the user directly through the identity service (no HTTP),
with cheap argon2 parameters so that suites creating many users stay fast; the
stored hash is still a real argon2id hash that the API verifies.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from fastapi import Depends, FastAPI
from sqlalchemy.orm import Session

from bourse.api.routing import router
from bourse.app import create_app
from bourse.db import Database, unit_of_work
from bourse.identity.dependencies import CurrentPrincipal, Principal, require_roles
from bourse.identity.models import Role, User
from bourse.identity.service import create_user
from bourse.identity.tokens import issue_access_token
from bourse.settings import Settings

# The cheapest argon2id parameters argon2-cffi accepts: tests, never production.
FAST_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID)
DEFAULT_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class TestUser:
    """Enough of a user to sign tokens for, detached from any session."""

    __test__ = False  # not a pytest test class

    id: uuid.UUID
    email: str
    role: Role
    password: str


def unique_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def register_user(
    target: Session | Database,
    role: Role = Role.client,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
) -> tuple[uuid.UUID, str]:
    """Create a user; return ``(user_id, password)``.

    With a ``Database`` the user is committed in its own transaction. With a
    ``Session`` it is only flushed: the caller's transaction decides.
    """
    user = make_user(target, role=role, email=email, password=password)
    return user.id, user.password


def make_user(
    target: Session | Database,
    role: Role = Role.client,
    email: str | None = None,
    password: str = DEFAULT_PASSWORD,
) -> TestUser:
    """Like :func:`register_user`, returning a :class:`TestUser` for :func:`bearer`."""
    email = email or unique_email(role.value)
    if isinstance(target, Database):
        with unit_of_work(target) as session:
            user = create_user(session, email=email, password=password, role=role, hasher=FAST_HASHER)
    else:
        user = create_user(target, email=email, password=password, role=role, hasher=FAST_HASHER)
    return TestUser(id=user.id, email=user.email, role=Role(user.role), password=password)


def access_token(settings: Settings, user: User | TestUser) -> str:
    return issue_access_token(settings, user)


def bearer(settings: Settings, user: User | TestUser) -> dict[str, str]:
    """The ``Authorization`` header for ``user``, signed with ``settings``' current key."""
    return {"Authorization": f"Bearer {issue_access_token(settings, user)}"}


STAFF_ONLY = require_roles(Role.operator, Role.admin)
PROBE_ME = "/api/v1/probe/me"
PROBE_STAFF = "/api/v1/probe/staff"


def probe_app(settings: Settings, database: Database) -> FastAPI:
    """The real app plus two endpoints guarded the way every domain guards its own:
    ``PROBE_ME`` (any signed-in user) and ``PROBE_STAFF`` (operators and admins). Neither
    takes a database session, so the principal is the only thing they read."""
    app: FastAPI = create_app(settings, database=database)
    probe = router(prefix="/api/v1/probe", tags=["probe"])

    @probe.get("/me")
    def whoami(principal: CurrentPrincipal) -> dict[str, str]:
        return {"user_id": str(principal.user_id), "role": principal.role.value, "email": principal.email}

    @probe.get("/staff")
    def staff(principal: Principal = Depends(STAFF_ONLY)) -> dict[str, str]:  # noqa: B008 - FastAPI idiom
        return {"role": principal.role.value}

    app.include_router(probe)
    return app
