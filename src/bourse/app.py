"""The FastAPI application factories: a composition root.

It sits on top of the layers (docs/decisions/0022-layers.md): it assembles the HTTP
infrastructure (:mod:`bourse.api`) and every domain's routes, and passes each hook a
lower domain needs from a higher one. Nothing imports it but the ``bourse`` command
and the tests.

:func:`create_app` is the API (``bourse serve``). :func:`create_stream_app` is the
market-data WebSocket alone (``bourse stream``), for ``BOURSE_STREAM=external``
(docs/decisions/0028-stream-process.md): the API then neither serves ``/api/v1/ws`` nor
subscribes to Redis for it, and only publishes what its in-process matcher commits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from redis import Redis

import bourse
from bourse.api import health
from bourse.api.capacity import Admission, ConnectionLeases, ProgressMonitor
from bourse.api.errors import install_error_handlers
from bourse.api.jobs import close_driver as close_queue_driver
from bourse.api.jobs import jobs_router
from bourse.api.middleware import RequestContextMiddleware
from bourse.api.routing import router
from bourse.commissions import api as commissions_api
from bourse.commissions import service as commissions_service
from bourse.db import Database, listening_connection, pool_capacity
from bourse.identity.api import include_identity
from bourse.identity.dependencies import require_roles
from bourse.identity.models import Role
from bourse.ledger import api as ledger_api
from bourse.payments import api as payments_api
from bourse.psp.registry import close_all as close_connectors
from bourse.redis_client import create_async_redis, create_redis
from bourse.referrals import api as referrals_api
from bourse.referrals import service as referrals_service
from bourse.settings import Settings, load_settings
from bourse.trading import fanout
from bourse.trading.api import admin as trading_admin_api
from bourse.trading.api import instruments as instruments_api
from bourse.trading.api import market_data as market_data_api
from bourse.trading.api import orders as orders_api
from bourse.trading.api import stream
from bourse.trading.matcher import MatcherService
from bourse.trading.results import Listener
from bourse.webui import mount_ui

API_PREFIX = "/api/v1"
# Worker threads beyond the connection leases, for work that holds none (health
# checks, the liveness heartbeat, dependencies that do no I/O).
THREADS_BEYOND_LEASES = 20


def _market_relay(settings: Settings, hub: fanout.Hub, client: Redis | None) -> fanout.RedisRelay | None:
    """With Redis, commits are published through it so that every replica's clients see them."""
    redis_url = settings.redis_url
    if redis_url is None or client is None:
        return None
    return fanout.RedisRelay(
        hub,
        client,
        lambda: create_async_redis(settings, redis_url),
        prefix=settings.queue_redis_prefix,
        identity=redis_url,
    )


class _Matching:
    """The matcher in this process (``BOURSE_MATCHER=in-process``) and the listener for
    its outcomes, which requests that place or cancel orders wait for: announced here by
    an in-process matcher, and heard from any matcher on PostgreSQL (``LISTEN`` needs a
    session of its own: the direct connection)."""

    def __init__(self, settings: Settings) -> None:
        self.matcher = MatcherService(settings) if settings.matcher == "in-process" else None
        self.results_db = (
            Database.direct(settings, name="order-results", pool_size=1)
            if settings.database.get_backend_name() == "postgresql"
            else None
        )
        results_db = self.results_db
        self.listener = None if results_db is None else Listener(lambda: listening_connection(results_db))

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()
        if self.matcher is not None:
            self.matcher.start()

    def stop(self) -> None:
        if self.matcher is not None:
            self.matcher.stop()
        if self.listener is not None:
            self.listener.stop()
        if self.results_db is not None:
            self.results_db.dispose()


def _meta_router() -> APIRouter:
    meta = router(prefix=API_PREFIX, tags=["meta"])

    @meta.get("/version", summary="Server version")
    def version() -> dict[str, str]:
        return {"version": bourse.__version__, "api": "v1"}

    return meta


def _include_routers(app: FastAPI, settings: Settings) -> None:
    app.include_router(health.router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    app.include_router(_meta_router())
    include_identity(app, referral_at_signup=referrals_service.referral_at_signup)
    app.include_router(ledger_api.ledger)
    app.include_router(ledger_api.admin)
    app.include_router(payments_api.payments)
    app.include_router(payments_api.inbox)
    app.include_router(payments_api.payments_admin)
    app.include_router(referrals_api.ib)
    app.include_router(referrals_api.ib_admin)
    app.include_router(commissions_api.ib_commissions)
    app.include_router(instruments_api.instruments)
    app.include_router(instruments_api.instruments_admin)
    app.include_router(orders_api.orders)
    app.include_router(trading_admin_api.trading_admin_router(claw_back=commissions_service.claw_back))
    app.include_router(market_data_api.market_data)
    if settings.stream == "in-process":
        app.include_router(stream.ws_router)
    app.include_router(jobs_router(require_roles(Role.operator, Role.admin)))


def create_app(
    settings: Settings | None = None,
    *,
    database: Database | None = None,
    redis: Redis | None = None,
    web_dist: Path | None = None,
) -> FastAPI:
    """Build the API. The caller may pass a database or Redis client to share, and the
    web UI's build directory (default: the one inside the package, :mod:`bourse.webui`)."""
    settings = settings or load_settings()
    db = database or Database.from_settings(settings, lock_timeout_ms=settings.database_lock_timeout_ms)
    redis_client = redis if redis is not None else create_redis(settings)
    owns_db = database is None
    owns_redis = redis is None and redis_client is not None
    # Readiness asks the database over a connection of its own, so a pool lent out
    # to a busy API does not read as "database unavailable".
    probe_db = Database.from_settings(settings, name="readiness", pool_size=1, max_overflow=0)
    leases = ConnectionLeases(pool_capacity(db.engine), settings.database_pool_timeout_seconds)
    progress = ProgressMonitor(settings.liveness_stall_seconds)
    matching = _Matching(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # More worker threads than leases: a request holding a connection always finds
        # a thread to finish on (docs/decisions/0012-overload.md).
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, leases.size + THREADS_BEYOND_LEASES)
        progress.start()
        hub.start()
        if relay is not None:
            if settings.stream == "in-process":
                await relay.start()
            else:
                relay.attach()  # publish what this process commits; the stream processes subscribe
        matching.start()
        yield
        await anyio.to_thread.run_sync(matching.stop)
        if relay is not None:
            await relay.stop()
        hub.stop()
        await progress.stop()
        close_queue_driver(app)
        close_connectors()
        probe_db.dispose()
        if owns_db:
            db.dispose()
        if owns_redis and redis_client is not None:
            redis_client.close()

    app = FastAPI(
        title="Bourse",
        version=bourse.__version__,
        summary="Brokerage trading platform API",
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
        lifespan=lifespan,
        # Bourse exports Prometheus metrics and JSON logs of its own; FastAPI's native
        # OpenTelemetry layer would only cost CPU on every request (it reads the
        # environment each time).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.db = db
    app.state.probe_db = probe_db
    app.state.db_leases = leases
    app.state.progress = progress
    app.state.redis = redis_client
    hub = fanout.Hub()
    app.state.market_hub = hub
    relay = _market_relay(settings, hub, redis_client)
    app.state.market_relay = relay

    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        admission=Admission(settings.http_max_in_flight),
    )
    _include_routers(app, settings)
    mount_ui(app, web_dist)  # after the routers: the UI answers only where none does
    return app


def create_stream_app(settings: Settings | None = None, *, database: Database | None = None) -> FastAPI:
    """The market-data WebSocket alone (``bourse stream``): ``/api/v1/ws``, ``/livez``,
    ``/readyz`` and ``/metrics``, fed by this process's Redis subscriber.

    Every committed command reaches it through Redis, from the matcher or from an API
    process, so it needs ``BOURSE_REDIS_URL`` (``ValueError`` without it; the command
    refuses first). Snapshots and sign-ins read the database, through the same leases
    as the API's requests.
    """
    settings = settings or load_settings()
    redis_client = create_redis(settings)
    if redis_client is None:
        raise ValueError("the market-data stream is fed through Redis: set BOURSE_REDIS_URL")
    db = database or Database.from_settings(settings, lock_timeout_ms=settings.database_lock_timeout_ms)
    owns_db = database is None
    probe_db = Database.from_settings(settings, name="readiness", pool_size=1, max_overflow=0)
    leases = ConnectionLeases(pool_capacity(db.engine), settings.database_pool_timeout_seconds)
    progress = ProgressMonitor(settings.liveness_stall_seconds)
    hub = fanout.Hub()
    relay = _market_relay(settings, hub, redis_client)
    assert relay is not None  # noqa: S101 - Redis is configured, checked above

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, leases.size + THREADS_BEYOND_LEASES)
        progress.start()
        hub.start()
        await relay.start()
        yield
        await relay.stop()
        hub.stop()
        await progress.stop()
        probe_db.dispose()
        if owns_db:
            db.dispose()
        redis_client.close()

    app = FastAPI(
        title="Bourse market data",
        version=bourse.__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
    )
    app.state.settings = settings
    app.state.db = db
    app.state.probe_db = probe_db
    app.state.db_leases = leases
    app.state.progress = progress
    app.state.redis = redis_client
    app.state.market_hub = hub
    app.state.market_relay = relay
    install_error_handlers(app)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        admission=Admission(settings.http_max_in_flight),
    )
    app.include_router(health.router)
    if settings.metrics_port is None:
        app.include_router(health.metrics_router)
    app.include_router(stream.ws_router)
    return app
