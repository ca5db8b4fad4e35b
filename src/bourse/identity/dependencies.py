"""Authorisation, in one place: who is calling, and may they?

Every domain's endpoints take ``principal: CurrentPrincipal`` (any signed-in,
active user) or ``Depends(require_roles(Role.operator, Role.admin))``. Object-level
rules are applied by each domain's queries: another user's object is reported as
missing (404), never as forbidden (403), so ids cannot be probed for existence.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from bourse.api.routing import DbSession
from bourse.errors import raises
from bourse.identity.errors import AccountLocked, Forbidden, InvalidToken
from bourse.identity.models import Role, User, UserStatus
from bourse.identity.tokens import decode_access_token
from bourse.settings import Settings


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of a request."""

    user_id: uuid.UUID
    role: Role
    email: str

    def has_role(self, *roles: Role) -> bool:
        return self.role in roles


def bearer_token(request: Request) -> str:
    """The token from ``Authorization: Bearer <token>``, or :class:`InvalidToken`."""
    header = request.headers.get("authorization")
    if not header:
        raise InvalidToken("Sign in: send Authorization: Bearer <access token>")
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise InvalidToken("The Authorization header must be: Bearer <access token>")
    return token


def authenticate(session: Session, settings: Settings, token: str) -> Principal:
    """The user an access token names, checked against the user's current state.

    The one check behind every authenticated caller: the HTTP dependency below and
    the market-data WebSocket's ``auth`` message. The user row is read each time (by
    primary key, in the caller's transaction), so locking a user or changing their
    role takes effect at once rather than when their token expires. A deleted
    user's token is invalid; a locked user is refused with 403 ``account_locked``.
    """
    claims = decode_access_token(settings, token)
    user = session.get(User, claims.user_id)
    if user is None:
        raise InvalidToken
    if user.status != UserStatus.active:
        raise AccountLocked
    return Principal(user_id=user.id, role=Role(user.role), email=user.email)


@raises(InvalidToken, AccountLocked)
def current_principal(request: Request, session: DbSession) -> Principal:
    """The caller of a request, from its ``Authorization: Bearer`` access token (see :func:`authenticate`)."""
    settings: Settings = request.app.state.settings
    return authenticate(session, settings, bearer_token(request))


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Principal]:
    """A dependency that admits only callers with one of ``roles`` (403 ``forbidden`` otherwise)."""
    if not roles:
        raise ValueError("require_roles() needs at least one role")
    allowed = frozenset(roles)
    names = ", ".join(sorted(role.value for role in allowed))

    @raises(Forbidden)
    def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(f"This needs one of the roles: {names}")
        return principal

    return dependency
