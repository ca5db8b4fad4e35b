"""Queue metrics, served by the worker and the scheduler on their own ports.

Depth and oldest-job age are read from the queue when Prometheus scrapes (one
cheap query per scrape), so every worker and scheduler reports the same numbers
and an autoscaler can scale workers on them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, Metric, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from bourse.logging import get_logger
from bourse.queue.driver import QueueDepth

log = get_logger("bourse.queue.metrics")

JOBS_PROCESSED = Counter(
    "bourse_jobs_processed_total",
    "Jobs finished by this worker, by queue, job name and status (done, retried, failed, lost).",
    ["queue", "job", "status"],
)
JOB_DURATION = Histogram(
    "bourse_job_duration_seconds",
    "Time a job's handler ran, including its transaction's commit.",
    ["queue", "job"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
WORKER_BUSY = Gauge("bourse_worker_busy", "1 while this worker runs a job, 0 while it waits.")
SCHEDULER_LAST_RUN = Gauge(
    "bourse_scheduler_last_run_timestamp",
    "Unix time this scheduler last ran each task.",
    ["task"],
)


class QueueDepthCollector(Collector):
    """``bourse_queue_depth`` and ``bourse_queue_oldest_job_age_seconds``, read at scrape time."""

    def __init__(self, read: Callable[[], Sequence[QueueDepth]]) -> None:
        self._read = read
        self._lock = threading.Lock()

    def collect(self) -> Iterable[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "bourse_queue_depth", "Jobs available to run now (excluding delayed and reserved).", labels=["queue"]
        )
        age = GaugeMetricFamily(
            "bourse_queue_oldest_job_age_seconds",
            "Age of the oldest job available to run now (0 when none waits).",
            labels=["queue"],
        )
        with self._lock:
            try:
                depths = self._read()
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the queue is down
                log.warning("queue_depth_unavailable", error=str(exc))
                depths = []
        for entry in depths:
            depth.add_metric([entry.queue], entry.ready)
            age.add_metric([entry.queue], entry.oldest_age_seconds)
        yield depth
        yield age


_registered: list[Collector] = []


def serve_metrics(host: str, port: int | None, read_depths: Callable[[], Sequence[QueueDepth]]) -> None:
    """Register the depth collector and, if a port is given, serve /metrics on it."""
    collector = QueueDepthCollector(read_depths)
    for old in _registered:
        REGISTRY.unregister(old)
    _registered[:] = [collector]
    REGISTRY.register(collector)
    if port is not None:
        start_http_server(port, addr=host)
        log.info("metrics_listening", host=host, port=port)


def stop_serving() -> None:
    """Unregister our collectors (the HTTP listener, a daemon thread, ends with the process)."""
    for old in [*_registered, *_runner_metrics]:
        REGISTRY.unregister(old)
    _registered.clear()
    _runner_metrics.clear()


# --- metrics set by job handlers -------------------------------------------------------
#
# Handlers run in the runner child, so a metric a job module updates (ledger.verify's
# discrepancy gauge, for instance) lives in the runner's registry, which nobody scrapes.
# The runner therefore sends the current samples of the job modules' metrics back to
# the worker (at most once a second, with a job's answer), and the worker serves them.

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def family_names() -> set[str]:
    return {metric.name for metric in REGISTRY.collect()}


def sample_names(families: set[str]) -> frozenset[str]:
    """Every sample name the given families can produce (for ``restricted_registry``)."""
    names: set[str] = set()
    for metric in REGISTRY.collect():
        if metric.name in families:
            names.update(metric.name + suffix for suffix in _SUFFIXES.get(metric.type, ("",)))
            names.update(sample.name for sample in metric.samples)
    return frozenset(names)


def snapshot(names: frozenset[str]) -> list[dict[str, Any]]:
    """The current samples of the metrics named, as plain data for the pipe."""
    return [
        {
            "name": metric.name,
            "documentation": metric.documentation,
            "type": metric.type,
            "unit": metric.unit,
            "samples": [[sample.name, sample.labels, sample.value] for sample in metric.samples],
        }
        for metric in REGISTRY.restricted_registry(sorted(names)).collect()
    ]


class RunnerMetricsCollector(Collector):
    """Serves the latest samples the runner sent, in place of the worker's own idle copies."""

    def __init__(self) -> None:
        self._families: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def update(self, families: list[dict[str, Any]]) -> None:
        with self._lock:
            new = [f["name"] for f in families if f["name"] not in self._families]
            for family in families:
                self._families[family["name"]] = family
        if new:
            # The worker imported the same job modules, so it registered the same metrics,
            # never updated. Serving both would repeat names in the exposition.
            # prometheus_client has no public lookup of a collector by name.
            names_to_collectors = getattr(REGISTRY, "_names_to_collectors", {})
            for name in new:
                collector = names_to_collectors.get(name)
                if collector is not None and collector is not self:
                    REGISTRY.unregister(collector)

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            families = list(self._families.values())
        for family in families:
            metric = Metric(family["name"], family["documentation"], family["type"], family["unit"])
            for name, labels, value in family["samples"]:
                metric.add_sample(name, labels, value)
            yield metric


_runner_metrics: list[RunnerMetricsCollector] = []


def serve_runner_metrics() -> RunnerMetricsCollector:
    collector = RunnerMetricsCollector()
    REGISTRY.register(collector)
    _runner_metrics.append(collector)
    return collector
