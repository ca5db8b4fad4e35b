"""The request transaction boundary.

Every API route runs through :class:`TransactionalRoute`. The route lends one
database session to the request (through the :data:`DbSession` dependency), and
once the endpoint has returned its response it commits that session **before the
response is sent**. If the commit fails, the client gets an error instead of a
success that was never stored. If the endpoint raises (every refusal is a raised
:class:`bourse.errors.BourseError`), the session rolls back and nothing is written.

Endpoints and services never call ``commit()``.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bourse.api.input_check import InputCheck
from bourse.db import Database
from bourse.errors import BourseError

_SESSION_KEY = "bourse.db_session"
_BOUNDARY_KEY = "bourse.transaction_boundary"


class UnsupportedMediaType(BourseError):
    status_code = 415
    code = "unsupported_media_type"


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def _has_body(request: Request) -> bool:
    length = request.headers.get("content-length")
    if length is not None:
        return length.strip() not in {"", "0"}
    return "transfer-encoding" in request.headers


class TransactionalRoute(APIRoute):
    """An API route whose request is one database transaction."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        expects_json = self.body_field is not None
        check_inputs = InputCheck(self)

        async def transactional_handler(request: Request) -> Response:
            if expects_json and _has_body(request) and not _is_json(request.headers.get("content-type")):
                raise UnsupportedMediaType("This endpoint accepts application/json bodies only")
            await check_inputs(request)
            request.scope[_BOUNDARY_KEY] = True
            try:
                response = await handler(request)
                session: Session | None = request.scope.get(_SESSION_KEY)
                if session is not None:
                    await run_in_threadpool(session.commit)
            except BaseException:
                session = request.scope.get(_SESSION_KEY)
                if session is not None:
                    await run_in_threadpool(session.rollback)
                raise
            else:
                return response
            finally:
                session = request.scope.pop(_SESSION_KEY, None)
                if session is not None:
                    await run_in_threadpool(session.close)

        return transactional_handler


def router(**kwargs: Any) -> APIRouter:
    """An :class:`APIRouter` whose routes are transactional. Domains use this."""
    return APIRouter(route_class=TransactionalRoute, **kwargs)


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_db_session(request: Request) -> Session:
    """The request's session, created on first use and committed by the route."""
    if not request.scope.get(_BOUNDARY_KEY):
        raise RuntimeError(
            f"{request.url.path}: DbSession used outside a TransactionalRoute; "
            "build the router with bourse.api.routing.router()"
        )
    session: Session | None = request.scope.get(_SESSION_KEY)
    if session is None:
        session = get_database(request).sessions()
        request.scope[_SESSION_KEY] = session
    return session


DbSession = Annotated[Session, Depends(get_db_session)]
