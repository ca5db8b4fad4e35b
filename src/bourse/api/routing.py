"""The request transaction boundary.

Every API route runs through :class:`TransactionalRoute`. The route lends one
database session to the request (through the :data:`DbSession` dependency), and
once the endpoint has returned its response it commits that session **before the
response is sent**. If the commit fails, the client gets an error instead of a
success that was never stored. If the endpoint raises (every refusal is a raised
:class:`bourse.errors.BourseError`), the session rolls back and nothing is written.
A transient database failure (deadlock, serialization failure, lock or statement
timeout, lost connection; see :mod:`bourse.dberrors`), in the endpoint, in the
commit, or in a transaction of the endpoint's own (``unit_of_work``), becomes a
retryable ``503`` with ``Retry-After``.

Endpoints and services never call ``commit()``.

A plain (``def``) endpoint runs in **one** worker-thread call from its first
statement to the end of its transaction: the call runs the endpoint, commits the
session and closes it (:func:`_run_to_the_commit`), and the response is serialised
on the event loop afterwards. FastAPI alone would spend three more thread hops on
the same request (the response model's validation, the commit and the close), and
a hop costs more than most of the statements a request makes. The commit still
comes before the response is sent; what changes is that a response that fails its
own model's validation (a bug, a 500) does so after the commit rather than before.
``async def`` endpoints, which do their database work through ``run_in_threadpool``
themselves, keep the commit and the close at the route's boundary.

A request may use the database only while it holds one of the process's connection
leases (:class:`bourse.api.capacity.ConnectionLeases`). The session dependency awaits
the lease on the event loop the first time the request asks for a session, and the
route gives it back after the session is closed. There are as many leases as the
pool has connections, so a worker thread never waits for a pooled connection.
Cleanup (rollback, close, the lease) is shielded from cancellation: a request
cancelled at shutdown never leaves a connection idle in a
transaction.
"""

from __future__ import annotations

import asyncio
import email.message
import functools
from collections.abc import Callable, Coroutine, MutableMapping
from contextvars import ContextVar
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.routing import APIRoute
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from bourse.api.capacity import ConnectionLeases, DatabaseBusy
from bourse.api.input_check import InputCheck
from bourse.db import Database
from bourse.dberrors import transient_failure
from bourse.errors import BourseError
from bourse.logging import get_logger

_SESSION_KEY = "bourse.db_session"
_BOUNDARY_KEY = "bourse.transaction_boundary"
_LEASE_KEY = "bourse.db_lease"

log = get_logger("bourse.api")

# The scope of the request whose handler is running: the plain endpoint's thread call
# reads its session from there (the endpoint may have asked for it through another
# dependency, so it is not always among the endpoint's arguments).
_REQUEST_SCOPE: ContextVar[MutableMapping[str, Any] | None] = ContextVar("bourse_request_scope", default=None)


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

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not asyncio.iscoroutinefunction(endpoint):
            # FastAPI then sees a coroutine endpoint, so it neither hops to a thread to
            # call it nor to validate its response; the wrapper makes the one hop itself.
            # It carries the endpoint's signature and annotations (``__wrapped__``).
            endpoint = _in_one_thread_call(endpoint)
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        expects_json = self.body_field is not None
        check_inputs = InputCheck(self)

        async def transactional_handler(request: Request) -> Response:
            if expects_json and _has_body(request) and not _is_json(request.headers.get("content-type")):
                raise UnsupportedMediaType("This endpoint accepts application/json bodies only")
            await check_inputs(request)
            request.scope[_BOUNDARY_KEY] = True
            _REQUEST_SCOPE.set(request.scope)
            try:
                response = await handler(request)
                session: Session | None = request.scope.get(_SESSION_KEY)
                if session is not None:
                    await run_in_threadpool(session.commit)
            except BaseException as exc:
                # Closing the session (in _end) rolls back whatever was not committed.
                if isinstance(exc, sa_exc.TimeoutError):
                    # The pool's own checkout timeout: leases should make it unreachable,
                    # but a connection used outside them (a bug) must not become a 500.
                    log.warning("database_pool_timeout", path=request.url.path)
                    raise DatabaseBusy("No database connection became free in time; retry shortly") from exc
                # A deadlock, lock timeout or lost connection, in the endpoint or in the
                # commit: the transaction did not happen (or, if the connection was lost
                # in COMMIT itself, its Idempotency-Key replays it): a retryable 503.
                unavailable = transient_failure(exc, source="request")
                if unavailable is not None:
                    raise unavailable from exc
                raise
            else:
                return response
            finally:
                await _end(request)

        return transactional_handler


def router(**kwargs: Any) -> APIRouter:
    """An :class:`APIRouter` whose routes are transactional. Domains use this."""
    return APIRouter(route_class=TransactionalRoute, **kwargs)


def _in_one_thread_call(endpoint: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    @functools.wraps(endpoint)
    async def in_one_thread(**values: Any) -> Any:
        scope = _REQUEST_SCOPE.get()
        if scope is None:
            raise RuntimeError(f"{endpoint.__qualname__} called outside its TransactionalRoute")
        return await run_in_threadpool(_run_to_the_commit, endpoint, values, scope)

    return in_one_thread


def _run_to_the_commit(endpoint: Callable[..., Any], values: dict[str, Any], scope: MutableMapping[str, Any]) -> Any:
    """Run a plain endpoint, then commit and close the request's session: one thread call.

    The session leaves the scope here, so the route's boundary has nothing left to
    commit or close and only gives the lease back. Whatever fails, in the endpoint or
    in the commit, the session is rolled back and closed before the error leaves.
    """
    try:
        result = endpoint(**values)
        session: Session | None = scope.get(_SESSION_KEY)
        if session is not None:
            session.commit()
        return result
    finally:
        ended: Session | None = scope.pop(_SESSION_KEY, None)
        if ended is not None:
            _rollback_and_close(ended)


def _rollback_and_close(session: Session) -> None:
    # An explicit rollback before the close, not the close alone: close() returns the
    # connection without firing the session's rollback events, and code that holds
    # something until the transaction ends (an instrument's writer turn) listens there.
    # After a commit the rollback is a no-op.
    try:
        session.rollback()
    finally:
        session.close()


async def _end(request: Request) -> None:
    """Close the request's session (rolling back anything uncommitted) and give its
    lease back, whatever happened.

    The cleanup runs as a task of its own behind ``asyncio.shield``: if the request
    is cancelled meanwhile (shutdown), the cleanup still finishes, so no connection is
    ever left idle in a transaction and no lease is lost.
    """
    session: Session | None = request.scope.pop(_SESSION_KEY, None)
    leased = request.scope.pop(_LEASE_KEY, False)
    if session is None:
        # Nothing to close (a plain endpoint closed its session in its own thread call):
        # giving the lease back needs no I/O and cannot be interrupted.
        if leased:
            get_leases(request).release()
        return
    leases = get_leases(request)

    async def cleanup() -> None:
        try:
            if session is not None:
                await run_in_threadpool(_rollback_and_close, session)
        finally:
            if leased:
                leases.release()

    await asyncio.shield(asyncio.ensure_future(cleanup()))


async def end_request_transaction(request: Request) -> None:
    """Commit and close the request's session now, keeping its lease.

    For an ``async`` endpoint that goes on to run transactions of its own and to wait
    between them (placing an order, then waiting for the matcher): the session its
    dependencies used (the principal's look-up) must not stay open meanwhile, holding a
    connection idle in a transaction, and on SQLite the write lock its first statement
    took. What the dependencies wrote, if anything, commits here, as it would at the end.
    """
    _check_boundary(request, "end_request_transaction")
    session: Session | None = request.scope.pop(_SESSION_KEY, None)
    if session is None:
        return

    def commit_and_close() -> None:
        try:
            session.commit()
        finally:
            _rollback_and_close(session)

    await asyncio.shield(asyncio.ensure_future(run_in_threadpool(commit_and_close)))


def release_lease(request: Request) -> None:
    """Give the request's lease back while it waits on something that is not the database.

    For an ``async`` endpoint between two transactions of its own (an order waiting for
    the matcher): a lease is a connection of the pool, and a request that only waits
    must not keep others from the database. Its session must be closed already
    (:func:`end_request_transaction`). Take a lease again with :func:`lease_again`
    before the next transaction; the boundary gives back whatever the request holds at
    its end.
    """
    _check_boundary(request, "release_lease")
    if _SESSION_KEY in request.scope:
        raise RuntimeError("release_lease with the request's session open: end its transaction first")
    if request.scope.pop(_LEASE_KEY, False):
        get_leases(request).release()


async def lease_again(request: Request) -> None:
    """Take a lease again after :func:`release_lease` (waiting for one like any request)."""
    _check_boundary(request, "lease_again")
    await _lease(request)


def get_database(request: Request) -> Database:
    db: Database = request.app.state.db
    return db


def get_leases(request: Request) -> ConnectionLeases:
    leases: ConnectionLeases = request.app.state.db_leases
    return leases


def _check_boundary(request: Request, what: str) -> None:
    if not request.scope.get(_BOUNDARY_KEY):
        raise RuntimeError(
            f"{request.url.path}: {what} used outside a TransactionalRoute; "
            "build the router with bourse.api.routing.router()"
        )


async def _lease(request: Request) -> None:
    if not request.scope.get(_LEASE_KEY):
        await get_leases(request).acquire()
        request.scope[_LEASE_KEY] = True


async def get_db_session(request: Request) -> Session:
    """The request's session, created on first use and committed by the route.

    Async on purpose: the lease is awaited on the event loop, and creating a
    session does no I/O (the connection is checked out by its first statement).
    """
    _check_boundary(request, "DbSession")
    session: Session | None = request.scope.get(_SESSION_KEY)
    if session is None:
        await _lease(request)
        session = get_database(request).sessions()
        request.scope[_SESSION_KEY] = session
    return session


async def get_leased_database(request: Request) -> Database:
    """The database, for an endpoint that runs transactions of its own (``unit_of_work``).

    Such an endpoint holds a lease like any other, and must use one connection at a
    time: one lease is one connection.
    """
    _check_boundary(request, "LeasedDatabase")
    await _lease(request)
    return get_database(request)


DbSession = Annotated[Session, Depends(get_db_session)]
LeasedDatabase = Annotated[Database, Depends(get_leased_database)]
