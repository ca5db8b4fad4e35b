"""Authorisation, in one place: who is calling, and may they?

Every domain's endpoints take ``principal: CurrentPrincipal`` (any signed-in,
active user) or ``Depends(require_roles(Role.operator, Role.admin))``. Object-level
rules are applied by each domain's queries: another user's object is reported as
missing (404), never as forbidden (403), so ids cannot be probed for existence.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bourse.api.routing import get_db_session
from bourse.errors import raises
from bourse.identity import principals
from bourse.identity.errors import AccountLocked, Forbidden, InvalidToken
from bourse.identity.models import Role, UserStatus
from bourse.identity.principals import UserState
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


def _principal(user_id: uuid.UUID, state: UserState | None) -> Principal:
    if state is None:
        raise InvalidToken
    if state.status != UserStatus.active:
        raise AccountLocked
    return Principal(user_id=user_id, role=state.role, email=state.email)


def authenticate(session: Session, settings: Settings, token: str) -> Principal:
    """The user an access token names, checked against the user's current state.

    The one check behind every authenticated caller: the HTTP dependency below and
    the market-data WebSocket's ``auth`` message. The user's role and status come
    from the ``users`` row (by primary key, in the caller's transaction) or from this
    process's cache of such reads (:mod:`bourse.identity.principals`), never older
    than ``BOURSE_AUTH_CACHE_SECONDS`` (at most 1 s), and forgotten at once in the
    process that changes the user. So locking a user or changing their role takes
    effect within a second rather than when their token expires. A deleted user's
    token is invalid; a locked user is refused with 403 ``account_locked``.
    """
    return _resolve(session, settings, decode_access_token(settings, token).user_id)


def _resolve(session: Session, settings: Settings, user_id: uuid.UUID) -> Principal:
    """The principal for ``user_id``: from the cache, or read (and cached) in ``session``."""
    lifetime = settings.auth_cache_seconds
    cache = principals.process_cache()
    state = cache.get(user_id, lifetime)
    if state is None:
        ticket = cache.ticket()
        state = principals.read_user(session, user_id)
        if state is not None:
            cache.put(user_id, state, ticket, lifetime)
    return _principal(user_id, state)


@raises(InvalidToken, AccountLocked)
async def current_principal(request: Request) -> Principal:
    """The caller of a request, from its ``Authorization: Bearer`` access token (see :func:`authenticate`).

    Async: the token is checked on the event loop, and a cached caller costs neither a
    thread nor a database lease. Only on a miss does it take the request's session
    and read the user, in one trip to a worker thread.
    """
    settings: Settings = request.app.state.settings
    user_id = decode_access_token(settings, bearer_token(request)).user_id
    state = principals.process_cache().get(user_id, settings.auth_cache_seconds)
    if state is not None:
        return _principal(user_id, state)
    session = await get_db_session(request)
    return await run_in_threadpool(_resolve, session, settings, user_id)


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]


def require_roles(*roles: Role) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency that admits only callers with one of ``roles`` (403 ``forbidden`` otherwise)."""
    if not roles:
        raise ValueError("require_roles() needs at least one role")
    allowed = frozenset(roles)
    names = ", ".join(sorted(role.value for role in allowed))

    @raises(Forbidden)
    async def dependency(principal: CurrentPrincipal) -> Principal:
        if principal.role not in allowed:
            raise Forbidden(f"This needs one of the roles: {names}")
        return principal

    return dependency
