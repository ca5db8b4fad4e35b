"""Prometheus metrics shared by the API and, later, workers and the scheduler.

Metrics live in the default registry, next to the process and platform
collectors that prometheus-client registers there.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import Engine
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
    "Requests being served right now by this process; the autoscaler's per-pod load metric.",
)
DB_TRANSIENT_ERRORS = Counter(
    "bourse_db_transient_errors_total",
    "Transient database failures (deadlock, serialization, lock or statement timeout, lost connection)"
    " answered with a retryable 503 or retried as a job, by source, code and SQLSTATE.",
    ["source", "code", "sqlstate"],
)


class DatabasePoolCollector(Collector):
    """Reports the connection pool of every live engine this process created."""

    def __init__(self) -> None:
        self._engines: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def track(self, name: str, engine: Engine) -> None:
        with self._lock:
            self._engines[name] = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        size = GaugeMetricFamily("bourse_db_pool_size", "Configured connections in the pool.", labels=["pool"])
        checked_out = GaugeMetricFamily(
            "bourse_db_pool_checked_out", "Connections currently lent out.", labels=["pool"]
        )
        overflow = GaugeMetricFamily(
            "bourse_db_pool_overflow", "Connections open beyond the pool size.", labels=["pool"]
        )
        with self._lock:
            engines = list(self._engines.items())
        for name, engine in engines:
            pool = engine.pool
            if isinstance(pool, QueuePool):
                size.add_metric([name], pool.size())
                checked_out.add_metric([name], pool.checkedout())
                overflow.add_metric([name], max(pool.overflow(), 0))
        yield size
        yield checked_out
        yield overflow


DB_POOLS = DatabasePoolCollector()
REGISTRY.register(DB_POOLS)
