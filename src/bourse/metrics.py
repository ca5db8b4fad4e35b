"""Prometheus metrics shared by the API, the workers and the scheduler.

Metrics live in the default registry, next to the process and platform
collectors that prometheus-client registers there. Under ``bourse serve --workers N``
each server process writes its values to ``PROMETHEUS_MULTIPROC_DIR`` and
``/metrics`` serves their sum (gauges say how with ``multiprocess_mode``).
"""

from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import Engine, event
from sqlalchemy.pool import QueuePool

HTTP_REQUESTS = Counter(
    "bourse_http_requests_total",
    "HTTP requests served, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "bourse_http_request_duration_seconds",
    "Time from the first byte of the request to the end of the response.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
HTTP_IN_FLIGHT = Gauge(
    "bourse_http_requests_in_flight",
    "Requests being served right now (summed over the pod's server processes); the autoscaler's per-pod load metric.",
    multiprocess_mode="livesum",
)

WS_CONNECTIONS = Gauge(
    "bourse_ws_connections",
    "Market-data WebSocket connections open (summed over the pod's server processes).",
    multiprocess_mode="livesum",
)

HTTP_SHED = Counter(
    "bourse_http_requests_shed_total",
    "API requests refused at once with 503 overloaded because BOURSE_HTTP_MAX_IN_FLIGHT were being served.",
)
DB_LEASES_IN_USE = Gauge(
    "bourse_db_leases_in_use",
    "Requests holding one of the database connection leases (as many as the pool has connections).",
    multiprocess_mode="livesum",
)
DB_LEASE_WAITING = Gauge(
    "bourse_db_lease_waiting",
    "Requests waiting on the event loop for a database connection lease.",
    multiprocess_mode="livesum",
)
DB_LEASE_TIMEOUTS = Counter(
    "bourse_db_lease_timeouts_total",
    "Requests refused with 503 database_busy after waiting BOURSE_DATABASE_POOL_TIMEOUT_SECONDS for a lease.",
)
DB_TRANSIENT_ERRORS = Counter(
    "bourse_db_transient_errors_total",
    "Transient database failures (deadlock, serialization, lock or statement timeout, lost connection)"
    " answered with a retryable 503 or retried as a job, by source, code and SQLSTATE.",
    ["source", "code", "sqlstate"],
)


# Pool gauges are kept up to date by the pool's own events rather than read at scrape
# time, so that they are right summed over the processes of ``bourse serve --workers``
# (prometheus-client's multiprocess mode can only sum values, not call collectors).
DB_POOL_SIZE = Gauge(
    "bourse_db_pool_size",
    "Configured connections in the pool (without overflow).",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_CHECKED_OUT = Gauge(
    "bourse_db_pool_checked_out",
    "Connections currently lent out.",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_CONNECTIONS = Gauge(
    "bourse_db_pool_connections",
    "Connections open, idle or lent out (above bourse_db_pool_size means overflow connections).",
    ["pool"],
    multiprocess_mode="livesum",
)

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def track_pool(name: str, engine: Engine) -> None:
    """Export the engine's pool under ``pool=name``; undone by :func:`untrack_pool`."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):
        return
    size, checked_out, connections = (
        DB_POOL_SIZE.labels(name),
        DB_POOL_CHECKED_OUT.labels(name),
        DB_POOL_CONNECTIONS.labels(name),
    )
    size.inc(pool.size())
    event.listen(pool, "connect", lambda *_: connections.inc())
    event.listen(pool, "close", lambda *_: connections.dec())
    event.listen(pool, "detach", lambda *_: connections.dec())
    event.listen(pool, "checkout", lambda *_: checked_out.inc())
    event.listen(pool, "checkin", lambda *_: checked_out.dec())


def untrack_pool(name: str, engine: Engine) -> None:
    pool = engine.pool
    if isinstance(pool, QueuePool):
        DB_POOL_SIZE.labels(name).dec(pool.size())


def multiprocess() -> bool:
    """True in a process of ``bourse serve --workers N`` (metrics are summed across them)."""
    return bool(os.environ.get(MULTIPROCESS_DIR_ENV))


def metrics_registry() -> CollectorRegistry:
    """What ``/metrics`` serves: this process's registry, or the sum over the server's
    processes in multiprocess mode."""
    if not multiprocess():
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry
