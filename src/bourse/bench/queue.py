"""``bourse bench queue``: no-op job throughput and latency, next to RQ on the same Redis.

Two phases per system, both with real worker processes:

1. **Throughput.** Enqueue N no-op jobs (timed: enqueue/s), then start W workers
   with ``--stop-when-empty``. processed/s counts the jobs started while *every*
   worker was running (from the last worker's first job to the first worker's last
   job), so staggered process start-up is not counted.
2. **Latency.** Start W workers, warm them up with a few jobs, then enqueue
   min(N, 1000) jobs one per transaction at a steady 200/s and report p50/p99 of
   the time from enqueue to the handler's start. On PostgreSQL idle workers are
   woken by the enqueue's notification, so they run with ``--sleep 30``: a figure
   that came from polling would be seconds, not milliseconds. On SQLite they poll,
   at ``--sleep 0.05``.

RQ gets the same phases with ``SimpleWorker`` (no fork per job) on the same Redis,
enqueueing through a pipeline in batches like ours.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from bourse.bench.harness import Children, bourse_command, check_database, emit, latency_ms, machine

BENCH_QUEUE = "bench"  # bourse.bench.queue_jobs declares its jobs on this queue
BENCH_JOBS_MODULE = "bourse.bench.queue_jobs"
LATENCY_RATE = 200.0
LATENCY_JOBS = 1000
ENQUEUE_BATCH = 500
# The latency phase's --sleep: where workers listen, long enough that no job is found by a poll.
LISTENING_SLEEP = "30"
POLLING_SLEEP = "0.05"


def steady_rate(per_worker: Sequence[Sequence[tuple[float, float]]]) -> float:
    """Jobs per second while every worker was running: from the last worker's first job
    start to the first worker's last job end, so staggered start-up is not counted."""
    spans = [(min(s for s, _ in jobs), max(e for _, e in jobs)) for jobs in per_worker if jobs]
    begin, end = max(s for s, _ in spans), min(e for _, e in spans)
    if end - begin < 0.5:  # noqa: PLR2004 - too short a window to mean anything: use the whole run
        begin, end = min(s for s, _ in spans), max(e for _, e in spans)
    done = sum(1 for jobs in per_worker for start, _ in jobs if begin <= start <= end)
    return done / (end - begin)


def _figures(enqueued_per_second: float, processed_per_second: float, latencies: Sequence[float]) -> dict[str, Any]:
    return {
        "enqueue_per_second": round(enqueued_per_second, 1),
        "processed_per_second": round(processed_per_second, 1),
        "latency_jobs": len(latencies),
        "latency_p50_ms": latency_ms(latencies, 0.5),
        "latency_p99_ms": latency_ms(latencies, 0.99),
    }


class OurQueue:
    """Drives Bourse workers as subprocesses against the configured database (and Redis)."""

    def __init__(self, driver: str, workers: int, children: Children, tmp: Path) -> None:
        from bourse.db import Database
        from bourse.settings import load_settings

        self.driver = driver
        self.workers = workers
        self.children = children
        self.tmp = tmp
        prefix = children.env["BOURSE_QUEUE_REDIS_PREFIX"]
        self.settings = load_settings(queue_driver=driver, queue_redis_prefix=prefix)
        self.db = Database.from_settings(self.settings, name="bench")

    def clear(self) -> None:
        from sqlalchemy import text

        with self.db.engine.begin() as conn:
            conn.execute(text("DELETE FROM queue_jobs WHERE queue = :q"), {"q": BENCH_QUEUE})
            conn.execute(text("DELETE FROM queue_failed_jobs WHERE queue = :q"), {"q": BENCH_QUEUE})
        if self.driver == "redis":
            from bourse.queue.redis_driver import RedisDriver

            redis_driver = RedisDriver.from_settings(self.settings, self.db)
            redis_driver.flush_keys()
            redis_driver.client.close()

    def enqueue(self, count: int, batch: int) -> float:
        from bourse.bench.queue_jobs import noop_job
        from bourse.db import unit_of_work
        from bourse.queue.producer import enqueue

        started = time.perf_counter()
        done = 0
        while done < count:
            size = min(batch, count - done)
            with unit_of_work(self.db) as session:
                for _ in range(size):
                    enqueue(session, noop_job, {})
            done += size
        return time.perf_counter() - started

    def start_workers(self, *extra: str) -> list[tuple[subprocess.Popen[bytes], Path]]:
        started = []
        for _ in range(self.workers):
            path = self.tmp / f"worker-{uuid.uuid4().hex[:8]}.json"
            argv = bourse_command(
                "worker",
                "--queue",
                BENCH_QUEUE,
                "--import",
                BENCH_JOBS_MODULE,
                "--memory",
                "2048",
                "--latency-file",
                str(path),
                *extra,
            )
            started.append((self.children.start("worker", argv), path))
        return started

    @staticmethod
    def collect(started: list[tuple[subprocess.Popen[bytes], Path]]) -> list[list[list[float]]]:
        """Each worker's (enqueued, started, finished) times."""
        per_worker: list[list[list[float]]] = []
        for process, path in started:
            process.wait(timeout=600)
            per_worker.append(json.loads(path.read_text())["timings"])
        return per_worker

    def pending(self) -> int:
        from bourse.queue.drivers import make_driver

        driver = make_driver(self.settings, self.db)
        try:
            depth = next((d for d in driver.depths((BENCH_QUEUE,)) if d.queue == BENCH_QUEUE), None)
        finally:
            driver.close()
        return 0 if depth is None else depth.ready + depth.delayed + depth.reserved

    def drain(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.pending() and time.monotonic() < deadline:
            time.sleep(0.1)

    def run(self, count: int) -> dict[str, Any]:
        self.clear()
        enqueue_seconds = self.enqueue(count, ENQUEUE_BATCH)
        per_worker = self.collect(self.start_workers("--stop-when-empty", "--sleep", "0.05"))
        ran = sum(len(jobs) for jobs in per_worker)
        if ran != count:
            raise click.ClickException(f"{self.driver}: {ran} of {count} jobs ran")
        rate = steady_rate([[(t[1], t[2]) for t in jobs] for jobs in per_worker])
        # Latency phase: warmed-up idle workers, a steady trickle of jobs, one per transaction.
        latency_jobs = min(count, LATENCY_JOBS)
        listening = self.db.engine.dialect.name == "postgresql" and not self.settings.database_transaction_pooling
        workers = self.start_workers("--sleep", LISTENING_SLEEP if listening else POLLING_SLEEP)
        self.enqueue(4 * self.workers, 4 * self.workers)
        self.drain()
        measured_from = time.time()
        for _ in range(latency_jobs):
            self.enqueue(1, 1)
            time.sleep(1 / LATENCY_RATE)
        self.drain()
        for process, _ in workers:
            process.send_signal(signal.SIGTERM)
        # Blocked workers see SIGTERM within a wait slice (half a second), not after --sleep.
        latencies = [t[1] - t[0] for jobs in self.collect(workers) for t in jobs if t[0] >= measured_from]
        self.clear()
        self.db.dispose()
        return _figures(count / enqueue_seconds, rate, latencies)


class RQBaseline:
    """RQ with SimpleWorker on the same Redis, the peer baseline."""

    def __init__(self, redis_url: str, workers: int, children: Children) -> None:
        from redis import Redis
        from rq import Queue

        self.connection = Redis.from_url(redis_url)
        self.name = f"bourse-bench-{uuid.uuid4().hex[:8]}"
        self.queue = Queue(self.name, connection=self.connection)
        self.redis_url = redis_url
        self.workers = workers
        self.children = children

    def start_workers(self, *, burst: bool) -> list[subprocess.Popen[bytes]]:
        rq = shutil.which("rq", path=str(Path(sys.executable).parent)) or "rq"
        argv = [rq, "worker", "--worker-class", "rq.worker.SimpleWorker", "--url", self.redis_url, "--quiet"]
        if burst:
            argv.append("--burst")
        return [self.children.start("rq worker", [*argv, self.name]) for _ in range(self.workers)]

    def enqueue(self, count: int, batch: int) -> tuple[float, list[str]]:
        from rq import Queue

        ids: list[str] = []
        started = time.perf_counter()
        done = 0
        while done < count:
            size = min(batch, count - done)
            jobs = self.queue.enqueue_many(
                [Queue.prepare_data(f"{BENCH_JOBS_MODULE}.noop", result_ttl=600) for _ in range(size)]
            )
            ids.extend(j.id for j in jobs)
            done += size
        return time.perf_counter() - started, ids

    def _fetch(self, ids: list[str]) -> list[Any]:
        from rq.job import Job

        found: list[Any] = []
        for start in range(0, len(ids), 1000):
            found.extend(j for j in Job.fetch_many(ids[start : start + 1000], connection=self.connection) if j)
        return found

    def run(self, count: int) -> dict[str, Any]:
        enqueue_seconds, ids = self.enqueue(count, ENQUEUE_BATCH)
        for process in self.start_workers(burst=True):
            process.wait(timeout=600)
        jobs = [j for j in self._fetch(ids) if j.started_at and j.ended_at]
        if len(jobs) != count:
            raise click.ClickException(f"rq: {len(jobs)} of {count} jobs ran")
        by_worker: dict[str, list[tuple[float, float]]] = {}
        for j in jobs:
            by_worker.setdefault(str(j.worker_name), []).append((j.started_at.timestamp(), j.ended_at.timestamp()))
        rate = steady_rate(list(by_worker.values()))
        latency_jobs = min(count, LATENCY_JOBS)
        workers = self.start_workers(burst=False)
        _, warmup = self.enqueue(4 * self.workers, 4 * self.workers)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not all(j.ended_at for j in self._fetch(warmup)):
            time.sleep(0.1)
        latency_ids: list[str] = []
        for _ in range(latency_jobs):
            latency_ids.extend(self.enqueue(1, 1)[1])
            time.sleep(1 / LATENCY_RATE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = [j for j in self._fetch(latency_ids) if j.ended_at]
            if len(done) == latency_jobs:
                break
            time.sleep(0.2)
        for process in workers:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        latencies = [(j.started_at - j.enqueued_at).total_seconds() for j in self._fetch(latency_ids) if j.started_at]
        self.queue.delete(delete_jobs=True)
        self.connection.close()
        return _figures(count / enqueue_seconds, rate, latencies)


@click.command("queue")
@click.option("--driver", type=click.Choice(["database", "redis"]), required=True)
@click.option("--jobs", "count", type=click.IntRange(min=1), default=10000, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=2, show_default=True)
@click.option("--rq/--no-rq", "with_rq", default=True, show_default=True, help="Measure RQ in the same run.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def bench_queue(driver: str, count: int, workers: int, with_rq: bool, as_json: bool) -> None:
    """No-op jobs: enqueue/s, processed/s and enqueue-to-start p50/p99, with RQ as the baseline."""
    from bourse.settings import SettingsError, load_settings

    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    check_database(settings)
    if (driver == "redis" or with_rq) and settings.redis_url is None:
        raise click.ClickException("BOURSE_REDIS_URL must be set for the redis driver and the RQ baseline")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    env = {
        **os.environ,
        "BOURSE_QUEUE_DRIVER": driver,
        "BOURSE_QUEUE_REDIS_PREFIX": prefix,
        "BOURSE_LOG_LEVEL": "warning",
        "BOURSE_WORKER_HEARTBEAT_PATH": str(Path(tempfile.gettempdir()) / f"{prefix[:-1]}.heartbeat"),
    }
    env.pop("BOURSE_WORKER_METRICS_PORT", None)
    with tempfile.TemporaryDirectory() as tmp, Children(env) as children:
        ours = OurQueue(driver, workers, children, Path(tmp)).run(count)
    result: dict[str, Any] = {
        "driver": driver,
        "database": settings.database.get_backend_name(),
        "jobs": count,
        "workers": workers,
        "bourse": ours,
        "machine": machine(),
    }
    if with_rq and settings.redis_url is not None:
        with Children(env) as children:
            rq = RQBaseline(settings.redis_url, workers, children).run(count)
        result["rq"] = rq
        result["processed_ratio_to_rq"] = round(ours["processed_per_second"] / rq["processed_per_second"], 2)
    summary = "\n".join(
        f"{name:<7} enqueue {r['enqueue_per_second']:>9}/s  processed {r['processed_per_second']:>8}/s"
        f"  p50 {r['latency_p50_ms']} ms  p99 {r['latency_p99_ms']} ms"
        for name in ("bourse", "rq")
        if (r := result.get(name))
    )
    emit(result, as_json, indent=2, summary=summary)
