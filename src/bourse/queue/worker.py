"""``bourse worker``: reserve jobs in strict queue priority, run each with a hard timeout.

The loop, with Laravel's ``queue:work`` semantics:

1. (Redis driver) relay committed outbox rows into Redis.
2. Reserve from the **first non-empty queue** of ``--queue``, counting an attempt
   (the Redis driver acknowledges the previous job in the same script). With
   nothing to reserve, wait for an enqueue's notification (:mod:`bourse.queue.wake`),
   at most until the next delayed job or expiring reservation is due, and at most
   ``--sleep`` seconds, then look again.
3. Check the job: an unknown name or a payload that does not decode goes straight
   to ``queue_failed_jobs`` with the reason; a job whose attempts already exceed its
   tries (its earlier attempts timed out or their worker died) fails too.
4. Hand it to the runner child (:mod:`bourse.queue.runner`) and wait up to the
   job's timeout. At the timeout the runner is SIGKILLed, which stops the job even
   inside ``time.sleep`` or a C call, and the attempt counts as failed.
5. A failed attempt is retried after its backoff, or moved to ``queue_failed_jobs``
   after the last try.
6. If this worker's resident memory (itself plus its runner) is over ``--memory``
   MiB, exit with code 12 so the supervisor starts a fresh one.

SIGTERM or SIGINT: stop reserving, let the running job finish (within its
timeout), exit 0. A second signal kills the runner, puts the job back in its
queue (the interrupted attempt is not counted) and exits 1. After a SIGKILL the
reserved job becomes available again once ``retry_after`` has passed.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil  # type: ignore[import-untyped]
import structlog
from redis import RedisError
from sqlalchemy.exc import SQLAlchemyError

from bourse import dberrors
from bourse.db import Database
from bourse.logging import get_logger
from bourse.queue import metrics
from bourse.queue.database_driver import commit_asynchronously
from bourse.queue.driver import Driver, Reserved
from bourse.queue.drivers import make_driver
from bourse.queue.heartbeat import ProcessHeartbeat
from bourse.queue.registry import JobSpec, RegistryError, check_queue_name, load_jobs
from bourse.queue.runner import settings_payload
from bourse.queue.wake import Waker, make_waker
from bourse.settings import Settings

log = get_logger("bourse.queue.worker")

EXIT_OK = 0
EXIT_HARD_STOP = 1
EXIT_MEMORY = 12
DEFAULT_QUEUES = ("deposits", "withdrawals", "commissions", "default")
RUNNER_START_TIMEOUT = 60.0
RELAY_INTERVAL = 0.05
# An idle worker's wait is cut into slices this long, to see signals and beat its heartbeat.
WAIT_SLICE = 0.5
# The shortest idle wait: a job due now but locked by another worker's reservation is
# looked for again after this, not in a busy loop.
MIN_WAIT = 0.005
MIB = 1024 * 1024


class WorkerConfigError(ValueError):
    """A worker flag or job declaration that cannot work (exit code 2)."""


def parse_queues(raw: str) -> tuple[str, ...]:
    names = [part.strip() for part in raw.split(",")]
    if not raw.strip() or any(not name for name in names):
        raise WorkerConfigError(f"--queue must be a comma-separated list of queue names, got {raw!r}")
    try:
        return tuple(dict.fromkeys(check_queue_name(name) for name in names))
    except RegistryError as exc:
        raise WorkerConfigError(f"--queue: {exc}") from None


def parse_backoff(raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise WorkerConfigError(f"--backoff must be comma-separated seconds, e.g. 10,60,300; got {raw!r}") from None
    if any(not (v >= 0 and v < float("inf")) for v in values):
        raise WorkerConfigError(f"--backoff values must be finite and not negative; got {raw!r}")
    return values


@dataclass(frozen=True)
class WorkerOptions:
    queues: tuple[str, ...] = DEFAULT_QUEUES
    tries: int = 1
    timeout: float = 60.0
    memory_mib: int = 256
    sleep: float = 3.0
    backoff: tuple[float, ...] = (0.0,)
    max_jobs: int = 0
    max_time: float = 0.0
    once: bool = False
    stop_when_empty: bool = False
    modules: tuple[str, ...] = ()
    # Benchmarks: write each job's enqueued/started/finished times here on exit.
    latency_file: Path | None = None


def check_config(options: WorkerOptions, jobs: dict[str, JobSpec], retry_after: float) -> list[str]:
    """Refuse timeouts that reach the reservation expiry: the job would run twice at once.

    Only jobs declared on the queues this worker serves count.
    """
    problems: list[str] = []
    if retry_after <= options.timeout:
        problems.append(
            f"BOURSE_QUEUE_RETRY_AFTER_SECONDS ({retry_after:g}) must be longer than --timeout ({options.timeout:g}),"
            " or a job still running would be handed to a second worker"
        )
    problems.extend(
        f"job {spec.name}: its timeout ({spec.timeout:g}) must be shorter than"
        f" BOURSE_QUEUE_RETRY_AFTER_SECONDS ({retry_after:g})"
        for spec in jobs.values()
        if spec.queue in options.queues and spec.timeout is not None and spec.timeout >= retry_after
    )
    return problems


def payload_problem(payload: str) -> str | None:
    """Why a stored payload cannot be handed to a handler, or None if it can."""
    try:
        decoded = json.loads(payload)
    except ValueError as exc:
        return str(exc)
    if not isinstance(decoded, dict):
        return f"expected a JSON object, got {type(decoded).__name__}"
    return None


class RunnerDied(Exception):
    pass


class HardStop(Exception):
    pass


class RunnerProcess:
    """The parent's handle on the runner child (see :mod:`bourse.queue.runner`)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, tick: Callable[[], None]) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own module, fixed argv
            [sys.executable, "-m", "bourse.queue.runner", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._buffer = b""
        self._send(self.config)
        ready = self._read(time.monotonic() + RUNNER_START_TIMEOUT, tick)
        if ready is None or not ready.get("ready"):
            self.kill()
            raise RunnerDied("the job runner did not start")
        log.info("runner_started", pid=self.process.pid)

    def _send(self, message: dict[str, Any]) -> None:
        assert self.process is not None  # noqa: S101 - started before use
        assert self.process.stdin is not None  # noqa: S101
        try:
            self.process.stdin.write(json.dumps(message).encode() + b"\n")
            self.process.stdin.flush()
        except OSError as exc:
            raise RunnerDied(f"the job runner is gone ({exc})") from None

    def _read(self, deadline: float, tick: Callable[[], None]) -> dict[str, Any] | None:
        assert self.process is not None  # noqa: S101
        assert self.process.stdout is not None  # noqa: S101
        fd = self.process.stdout.fileno()
        while b"\n" not in self._buffer:
            tick()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.25))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    code = self.process.wait()
                    raise RunnerDied(f"the job runner exited with code {code}")
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, request: dict[str, Any], timeout: float, tick: Callable[[], None]) -> dict[str, Any] | None:
        """The runner's answer, or None if the job did not finish within ``timeout``."""
        self._send(request)
        return self._read(time.monotonic() + timeout, tick)

    def kill(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    stream.close()
        self.process = None

    def stop(self) -> None:
        """Let the runner finish on EOF; kill it if it does not."""
        if self.process is None:
            return
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.kill()

    def rss(self) -> int:
        if self.process is None:
            return 0
        try:
            return int(psutil.Process(self.process.pid).memory_info().rss)
        except psutil.Error:
            return 0


@dataclass
class Worker:
    settings: Settings
    options: WorkerOptions
    db: Database
    driver: Driver
    jobs: dict[str, JobSpec] = field(default_factory=dict)
    # (enqueued, started, finished) wall times per job, for --latency-file.
    timings: list[tuple[float, float, float]] = field(default_factory=list)
    processed: int = 0
    _signals: int = 0
    _hard_stop: bool = False
    _busy: bool = False
    _current: str | None = None
    # A job whose handler committed, acknowledged with the next reservation (or on exit).
    _unacknowledged: Reserved | None = None
    heartbeat: ProcessHeartbeat = field(init=False)
    waker: Waker = field(init=False)
    # Metrics set by handlers in the runner, served here (only when serving metrics).
    job_metrics: metrics.RunnerMetricsCollector | None = None
    runner: RunnerProcess = field(init=False)

    @classmethod
    def create(cls, settings: Settings, options: WorkerOptions, db: Database | None = None) -> Worker:
        database = db
        if database is None:
            database = Database.from_settings(settings, name="worker")
            commit_asynchronously(database.engine, pooled=settings.database_transaction_pooling)
        jobs = load_jobs(options.modules)
        problems = check_config(options, jobs, settings.queue_retry_after_seconds)
        if problems:
            raise WorkerConfigError("\n".join(problems))
        return cls(settings, options, database, make_driver(settings, database), dict(jobs))

    # --- signals -----------------------------------------------------------------------

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("worker_stopping", signal=signal.Signals(sig).name, running_job=self._current)
        else:
            log.warning("worker_hard_stop", signal=signal.Signals(sig).name, running_job=self._current)
            self._hard_stop = True

    @property
    def stopping(self) -> bool:
        return self._signals > 0

    def _tick(self) -> None:
        self.heartbeat.beat(busy=self._busy, current_job=self._current)
        self.waker.drain()
        if self._hard_stop:
            raise HardStop

    # --- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        self.waker = make_waker(self.settings, self.db)
        self.heartbeat = ProcessHeartbeat(
            self.db, "worker", self.settings.worker_heartbeat_path, queues=",".join(self.options.queues)
        )
        metrics.serve_metrics(
            self.settings.host, self.settings.worker_metrics_port, lambda: self.driver.depths(self.options.queues)
        )
        if self.settings.worker_metrics_port is not None:
            self.job_metrics = metrics.serve_runner_metrics()
        check = getattr(self.driver, "check", None)
        if check is not None:
            check()
        self.runner = RunnerProcess(
            {
                "settings": settings_payload(self.settings),
                "sys_path": sys.path,
                "modules": sorted({spec.module for spec in self.jobs.values()} | set(self.options.modules)),
            }
        )
        log.info("worker_started", queues=list(self.options.queues), driver=self.driver.name, pid=os.getpid())
        try:
            code = self._loop()
        except HardStop:
            code = EXIT_HARD_STOP
        finally:
            self._acknowledge_last()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.waker.close()
            self.runner.stop()
            metrics.WORKER_BUSY.set(0)
            metrics.stop_serving()
            self.heartbeat.goodbye()
            self._write_latencies()
        log.info("worker_stopped", exit_code=code, processed=self.processed)
        return code

    def _loop(self) -> int:
        started = time.monotonic()
        last_relay = 0.0
        self.heartbeat.beat(force=True)
        while not self.stopping:
            if self.options.max_jobs and self.processed >= self.options.max_jobs:
                log.info("worker_max_jobs_reached", max_jobs=self.options.max_jobs)
                break
            if self.options.max_time and time.monotonic() - started >= self.options.max_time:
                log.info("worker_max_time_reached", max_time=self.options.max_time)
                break
            self._tick()
            if not self.runner.alive:
                # Before reserving: the reservation's expiry clock should not pay for start-up.
                self.runner.start(self._tick)
                if self._signals:  # a stop request arrived while the runner started
                    break
            try:
                if time.monotonic() - last_relay >= RELAY_INTERVAL:
                    self.driver.relay()
                    last_relay = time.monotonic()
                job = self.driver.reserve(self.options.queues, acknowledge=self._unacknowledged)
                self._unacknowledged = None
                if job is None and self.driver.relay() > 0:
                    last_relay = time.monotonic()
                    continue
            except (SQLAlchemyError, RedisError) as exc:
                # The database or Redis is down: nothing was reserved, so wait and retry
                # rather than exit (and be restarted into the same outage).
                log.warning("queue_unavailable", error=str(exc), retry_in_seconds=max(self.options.sleep, 1.0))
                self._sleep(max(self.options.sleep, 1.0))
                continue
            if job is None:
                if self.options.stop_when_empty or self.options.once:
                    break
                self._idle()
                continue
            self._process(job)
            self.processed += 1
            if self.options.once:
                break
            if self._over_memory():
                return EXIT_MEMORY
        return EXIT_OK

    def _idle(self) -> None:
        """Wait for work: until woken, the next due job or ``--sleep``, whichever comes first."""
        seconds = self.options.sleep
        try:
            due = self.driver.next_available(self.options.queues)
        except (SQLAlchemyError, RedisError) as exc:
            log.warning("queue_unavailable", error=str(exc), retry_in_seconds=max(self.options.sleep, 1.0))
            self._sleep(max(self.options.sleep, 1.0))
            return
        if due is not None:
            seconds = min(seconds, max(due - self.driver.clock(), MIN_WAIT))
        deadline = time.monotonic() + seconds
        while not self.stopping and (remaining := deadline - time.monotonic()) > 0:
            if self.waker.wait(min(remaining, WAIT_SLICE)):
                return
            self._tick()

    def _acknowledge_last(self) -> None:
        """On the way out: the last job's acknowledgement, which no next reservation carried."""
        job, self._unacknowledged = self._unacknowledged, None
        if job is None:
            return
        try:
            self.driver.acknowledge(job)
        except (SQLAlchemyError, RedisError) as exc:
            # The job's effects are committed; it runs again after retry_after (at least once).
            log.warning("job_acknowledgement_failed", job_id=job.id, error=str(exc))

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and (remaining := deadline - time.monotonic()) > 0:
            time.sleep(min(remaining, 0.5))
            self._tick()

    def _over_memory(self) -> bool:
        rss = int(psutil.Process().memory_info().rss) + self.runner.rss()
        if rss > self.options.memory_mib * MIB:
            log.warning("worker_memory_exceeded", rss_mib=round(rss / MIB, 1), limit_mib=self.options.memory_mib)
            return True
        return False

    # --- one job -----------------------------------------------------------------------

    def _process(self, job: Reserved) -> None:
        structlog.contextvars.bind_contextvars(
            request_id=job.request_id, job=job.job, job_id=job.id, attempt=job.attempts, queue=job.queue
        )
        try:
            self._process_bound(job)
        finally:
            structlog.contextvars.clear_contextvars()

    def _check(self, job: Reserved) -> tuple[JobSpec, int] | None:
        """The job's spec and tries, or None after failing a job that can never run."""
        spec = self.jobs.get(job.job)
        if spec is None:
            self._fail(job, f"UnknownJob: no job named {job.job!r} is registered in this worker", "")
            return None
        problem = payload_problem(job.payload)
        if problem is not None:
            self._fail(job, f"UndecodablePayload: the job payload could not be deserialised: {problem}", "")
            return None
        tries = spec.tries if spec.tries is not None else self.options.tries
        if tries and job.attempts > tries:
            self._fail(
                job,
                f"MaxAttemptsExceeded: attempted {job.attempts} times with {tries} allowed;"
                " earlier attempts timed out or their worker died",
                "",
            )
            return None
        return spec, tries

    def _process_bound(self, job: Reserved) -> None:
        checked = self._check(job)
        if checked is None:
            return
        spec, tries = checked
        timeout = spec.timeout if spec.timeout is not None else self.options.timeout
        request = {
            "id": job.id,
            "job": job.job,
            "payload": job.payload,
            "attempt": job.attempts,
            "queue": job.queue,
            "request_id": job.request_id,
            "token": job.token,
        }
        self._busy, self._current = True, job.job
        metrics.WORKER_BUSY.set(1)
        started, started_wall = time.monotonic(), time.time()
        try:
            if not self.runner.alive:
                self.runner.start(self._tick)
                # The job's timeout and duration start once the runner is ready.
                started, started_wall = time.monotonic(), time.time()
            answer = self.runner.run(request, timeout, self._tick)
        except HardStop:
            self.runner.kill()
            self.driver.release(job, 0, uncount=True)
            log.warning("job_returned_to_queue", reason="hard stop")
            raise
        except RunnerDied as exc:
            self.runner.kill()
            answer = {"ok": False, "lost": False, "exception": f"RunnerDied: {exc}", "traceback": ""}
        finally:
            self._busy, self._current = False, None
            metrics.WORKER_BUSY.set(0)
        duration = time.monotonic() - started
        if self.options.latency_file is not None:
            self.timings.append((job.created_at, started_wall, time.time()))
        metrics.JOB_DURATION.labels(job.queue, job.job).observe(duration)
        if answer is None:
            self.runner.kill()
            log.error("job_timed_out", timeout_seconds=timeout)
            answer = {
                "ok": False,
                "lost": False,
                "exception": f"JobTimedOut: the job ran longer than its timeout of {timeout:g}s and was killed",
                "traceback": "",
            }
        self._settle(job, spec, tries, answer, duration)

    def _settle(self, job: Reserved, spec: JobSpec, tries: int, answer: dict[str, Any], duration: float) -> None:
        if self.job_metrics is not None and "metrics" in answer:
            self.job_metrics.update(answer["metrics"])
        # A transient database failure (deadlock, lock timeout, lost connection: see
        # bourse.dberrors) is an ordinary failed attempt, retried by the job's tries and
        # backoff; the logs and bourse_db_transient_errors_total say that it was one.
        transient: dict[str, str] = {}
        described = answer.get("transient")
        if isinstance(described, dict):
            transient = {"transient": str(described["code"]), "sqlstate": str(described["sqlstate"])}
            dberrors.count("job", transient["transient"], transient["sqlstate"])
        if answer["ok"]:
            # Forgotten by the next reservation, in the same round trip (or on exit).
            self._unacknowledged = job
            metrics.JOBS_PROCESSED.labels(job.queue, job.job, "done").inc()
            log.info("job_done", duration_ms=round(duration * 1000, 3))
        elif answer.get("lost"):
            metrics.JOBS_PROCESSED.labels(job.queue, job.job, "lost").inc()
        elif tries and job.attempts >= tries:
            self._fail(job, answer["exception"], answer["traceback"], **transient)
        else:
            backoff = spec.backoff if spec.backoff is not None else self.options.backoff
            delay = backoff[min(job.attempts, len(backoff)) - 1]
            self.driver.release(job, delay)
            metrics.JOBS_PROCESSED.labels(job.queue, job.job, "retried").inc()
            log.warning("job_will_retry", error=answer["exception"], retry_in_seconds=delay, **transient)

    def _fail(self, job: Reserved, exception: str, traceback: str, **fields: str) -> None:
        self.driver.fail(job, exception, traceback)
        metrics.JOBS_PROCESSED.labels(job.queue, job.job, "failed").inc()
        log.error("job_failed", error=exception, **fields)

    def _write_latencies(self) -> None:
        if self.options.latency_file is not None:
            self.options.latency_file.write_text(json.dumps({"timings": self.timings}))


def run_worker(settings: Settings, options: WorkerOptions, *, db: Database | None = None) -> int:
    worker = Worker.create(settings, options, db)
    try:
        return worker.run()
    finally:
        worker.driver.close()
        if db is None:
            worker.db.dispose()
