"""``/api/v1/admin/jobs``: failed jobs and queue statistics, for operators and admins.

The same operations as ``bourse jobs ...``; every change is logged with the
operator's user id. HTTP infrastructure over :mod:`bourse.queue`: it knows no
domain, so the composition root (:mod:`bourse.app`) passes in the dependency that
admits the staff (see :func:`jobs_router`).

Annotations are evaluated as the functions are defined (no ``from __future__ import
annotations``): the endpoints' dependency is a parameter of :func:`jobs_router`,
which FastAPI could not resolve from a string.
"""

import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response

from bourse.api.jobs_schemas import FailedJobOut, FlushedOut, QueueStatsOut, RequeuedOut
from bourse.api.routing import DbSession, router
from bourse.db import Database
from bourse.errors import raises
from bourse.inputs import Offset
from bourse.logging import get_logger
from bourse.queue import operations
from bourse.queue.driver import Driver
from bourse.queue.drivers import make_driver
from bourse.queue.worker import DEFAULT_QUEUES
from bourse.settings import Settings

log = get_logger("bourse.queue.admin")

_DRIVER_LOCK = threading.Lock()


class Staff(Protocol):
    """The caller the staff dependency admits: only its user id is logged."""

    @property
    def user_id(self) -> uuid.UUID: ...


def _driver(request: Request) -> Driver:
    """One driver per app, created on first use (for Redis, one connection pool).

    Endpoints run in a thread pool, so creation is locked: two first requests at
    once must not each open a pool and leak one.
    """
    driver: Driver | None = getattr(request.app.state, "queue_driver", None)
    if driver is None:
        with _DRIVER_LOCK:
            driver = getattr(request.app.state, "queue_driver", None)
            if driver is None:
                settings: Settings = request.app.state.settings
                db: Database = request.app.state.db
                driver = make_driver(settings, db)
                request.app.state.queue_driver = driver
    return driver


def close_driver(app: FastAPI) -> None:
    """Close the driver the admin endpoints opened, if any (at application shutdown)."""
    driver: Driver | None = getattr(app.state, "queue_driver", None)
    if driver is not None:
        app.state.queue_driver = None
        driver.close()


def jobs_router(staff: Callable[..., Awaitable[Staff]]) -> APIRouter:
    """The admin jobs endpoints, each admitting the callers ``staff`` admits.

    ``staff`` is a FastAPI dependency (identity's ``require_roles(Role.operator,
    Role.admin)``, passed in by :mod:`bourse.app`); the refusals it declares are
    documented on every endpoint.
    """
    admin_jobs = router(prefix="/api/v1/admin/jobs", tags=["admin: jobs"])
    operator_dependency = Depends(staff)

    @admin_jobs.get("/failed", summary="Failed jobs, newest first")
    def list_failed(
        session: DbSession,
        _operator: Annotated[Staff, operator_dependency],
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Offset = 0,
    ) -> list[FailedJobOut]:
        return [FailedJobOut(**row.as_dict()) for row in operations.list_failed(session, limit=limit, offset=offset)]

    @raises(operations.FailedJobNotFound)
    @admin_jobs.post("/failed/{ident}/retry", summary="Put a failed job (id or uuid), or `all`, back on its queue")
    def retry_failed(ident: str, session: DbSession, operator: Annotated[Staff, operator_dependency]) -> RequeuedOut:
        ids = operations.retry(session, ident)
        log.info("failed_jobs_retried", target=ident, count=len(ids), operator_id=str(operator.user_id))
        return RequeuedOut(requeued=ids)

    @raises(operations.FailedJobNotFound)
    @admin_jobs.delete("/failed/{ident}", status_code=204, summary="Forget one failed job (id or uuid)")
    def forget_failed(ident: str, session: DbSession, operator: Annotated[Staff, operator_dependency]) -> Response:
        operations.forget(session, ident)
        log.info("failed_job_forgotten", target=ident, operator_id=str(operator.user_id))
        return Response(status_code=204)

    @admin_jobs.delete("/failed", summary="Forget every failed job")
    def flush_failed(session: DbSession, operator: Annotated[Staff, operator_dependency]) -> FlushedOut:
        count = operations.flush(session)
        log.info("failed_jobs_flushed", count=count, operator_id=str(operator.user_id))
        return FlushedOut(flushed=count)

    @admin_jobs.get("/stats", summary="Depth and oldest job age per queue, failed jobs, workers")
    def stats(request: Request, session: DbSession, _operator: Annotated[Staff, operator_dependency]) -> QueueStatsOut:
        result = operations.stats(session, _driver(request), DEFAULT_QUEUES)
        return QueueStatsOut(**result.as_dict())

    return admin_jobs
