"""Liveness, readiness and metrics endpoints.

``/livez`` answers from the process alone: a database or Redis blip must never
make Kubernetes restart healthy pods. ``/readyz`` says whether this pod should get
traffic now: the database answers in time and is migrated to head, Redis answers
(when configured), and the process is not draining for shutdown.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import Redis
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from bourse import lifecycle
from bourse.api.capacity import ProgressMonitor
from bourse.api.errors import REQUEST_ID_SCOPE_KEY, error_body
from bourse.db import SQLITE_BEGIN_OPTION, Database
from bourse.metrics import metrics_registry
from bourse.migrations import SchemaState, schema_state

router = APIRouter(include_in_schema=False)
metrics_router = APIRouter(include_in_schema=False)


@router.get("/livez")
async def livez(request: Request) -> JSONResponse:
    """Alive while the event loop answers and the worker threads make progress.

    A process whose threads have all been stuck for ``BOURSE_LIVENESS_STALL_SECONDS``
    cannot serve anything again by itself: 503 here gets it restarted.
    """
    progress: ProgressMonitor | None = getattr(request.app.state, "progress", None)
    stalled = progress.stalled_for() if progress is not None else None
    if stalled is not None:
        body = error_body(
            "stalled",
            f"No worker thread has been free for {stalled:.0f} s",
            request.scope.get(REQUEST_ID_SCOPE_KEY),
        )
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
    return JSONResponse({"status": "alive"}, headers={"Cache-Control": "no-store"})


def _check_database(db: Database) -> str | None:
    with db.engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"}) as conn:
        conn.execute(text("SELECT 1"))
        if schema_state(conn) is SchemaState.BEHIND:
            return "migrations: database is behind this release's migrations (run `bourse migrate`)"
    return None


def _check_redis(client: Redis) -> None:
    client.ping()


async def _timed(check: Any, *args: Any, timeout: float) -> tuple[bool, str | None]:
    """Run a blocking check with a deadline; (ok, reason)."""
    try:
        reason = await asyncio.wait_for(run_in_threadpool(check, *args), timeout=timeout)
    except TimeoutError:
        return False, f"timed out after {timeout:g}s"
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with its type as the reason
        return False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'failed'}"
    return reason is None, reason


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    timeout: float = state.settings.readiness_timeout_seconds
    checks: dict[str, str] = {}
    reasons: list[str] = []

    redis_client: Redis | None = state.redis
    db_task = _timed(_check_database, state.probe_db, timeout=timeout)
    if redis_client is not None:
        (db_ok, db_reason), (redis_ok, redis_reason) = await asyncio.gather(
            db_task, _timed(_check_redis, redis_client, timeout=timeout)
        )
    else:
        db_ok, db_reason = await db_task
        redis_ok, redis_reason = True, None

    if db_ok:
        checks["database"] = "ok"
    elif db_reason and db_reason.startswith("migrations:"):
        checks["database"] = "not migrated"
        reasons.append(db_reason)
    else:
        checks["database"] = "unavailable"
        reasons.append(f"database: {db_reason}")
    if redis_client is None:
        checks["redis"] = "not configured"
    elif redis_ok:
        checks["redis"] = "ok"
    else:
        checks["redis"] = "unavailable"
        reasons.append(f"redis: {redis_reason}")
    if lifecycle.is_draining():
        checks["server"] = "draining"
        reasons.append("server: draining for shutdown")
    else:
        checks["server"] = "ok"

    if reasons:
        body = error_body(
            "not_ready",
            "; ".join(reasons),
            request.scope.get(REQUEST_ID_SCOPE_KEY),
            reasons=reasons,
            checks=checks,
        )
        return JSONResponse(body, status_code=503, headers={"Cache-Control": "no-store"})
    return JSONResponse({"status": "ready", "checks": checks}, headers={"Cache-Control": "no-store"})


@metrics_router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)
