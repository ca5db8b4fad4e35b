"""The real ``bourse worker`` process: memory exit, SIGTERM, SIGKILL, concurrency, flags, probes, metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import psutil  # type: ignore[import-untyped]
import pytest
import redis

from bourse.db import unit_of_work
from bourse.logging import configure_logging
from bourse.queue import enqueue
from bourse.queue.redis_driver import check_eviction_policy
from bourse.queue.worker import Worker, WorkerOptions
from tests.queue.jobs_for_tests import gauge_job, record_job, sleeping_job
from tests.queue.test_drivers import PRIORITY, relay_all
from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_output
from tests.support.queue_env import TEST_JOBS, QueueEnv, build_env, teardown_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

WORKER = ["-m", "bourse", "worker", "--import", TEST_JOBS, "--queue", "tests", "--sleep", "0.05", "--timeout", "5"]


def _wait_for_file(path: Path, process: subprocess.Popen[str], timeout: float = 30) -> None:
    def started() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited ({process.returncode}) before the job started: {stop(process)}")
        return path.exists()

    wait_until(started, lambda: f"the job to start: {stop(process)}", timeout=timeout)


def test_the_worker_exits_12_when_over_its_memory_limit(sqlite_queue: QueueEnv) -> None:
    queue = sqlite_queue
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {"marker": "before exit"})
        enqueue(session, record_job, {"marker": "left for the next worker"})
    result = run_bourse(*WORKER[2:], "--memory", "1", env=clean_env(**queue.env()))
    assert result.returncode == 12, result.stderr
    assert "worker_memory_exceeded" in result.stderr
    assert len(queue.runs("before exit")) == 1
    assert queue.runs("left for the next worker") == []


def test_sigterm_lets_the_running_job_finish_then_exits_0(queue: QueueEnv, tmp_path: Path) -> None:
    started = tmp_path / "started"
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, sleeping_job, {"seconds": 2, "started_file": str(started)})
        enqueue(session, record_job, {"marker": "not taken after SIGTERM"})
    process = start(WORKER, clean_env(**queue.env()))
    try:
        _wait_for_file(started, process)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        output = stop(process)
    assert queue.runs("slept") == [(job_id, 1)], output
    assert queue.runs("not taken after SIGTERM") == []
    assert "worker_stopping" in output


def test_a_second_signal_stops_hard_and_returns_the_job_to_the_queue(queue: QueueEnv, tmp_path: Path) -> None:
    started = tmp_path / "started"
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, sleeping_job, {"seconds": 4, "started_file": str(started)})
    process = start(WORKER, clean_env(**queue.env()))
    output = ""
    try:
        _wait_for_file(started, process)
        process.send_signal(signal.SIGTERM)
        # The second signal only once the first was taken as a request to stop.
        output = wait_for_output(process, "worker_stopping")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 1
    finally:
        output += stop(process)
    assert "worker_hard_stop" in output
    assert "job_returned_to_queue" in output
    assert queue.runs("slept") == []
    job = queue.driver.reserve(PRIORITY)
    assert job is not None, output
    # The interrupted attempt is not counted: this is its first real attempt.
    assert (job.id, job.attempts) == (job_id, 1)


@pytest.fixture(params=["database-sqlite", "database-postgresql", "redis-postgresql"])
def short_expiry_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    driver, backend = request.param.split("-")
    url: str = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    redis_url: str | None = request.getfixturevalue("redis_url") if driver == "redis" else None
    env = build_env(url, driver, tmp_path, redis_url, queue_retry_after_seconds=3)
    yield env
    teardown_env(env)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie no one has reaped yet counts as exited)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_a_job_whose_worker_is_sigkilled_runs_again_after_retry_after(
    short_expiry_queue: QueueEnv, tmp_path: Path
) -> None:
    queue = short_expiry_queue
    started = tmp_path / "started"
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, sleeping_job, {"seconds": 1, "started_file": str(started)})
    retry_after = queue.settings.queue_retry_after_seconds
    argv = [*WORKER[:-1], "2"]  # --timeout 2, under the 3 s retry_after
    # After the enqueue and before the worker starts: the job is due at this time, and
    # the reservation the worker takes later has not expired yet at it.
    before_reservation = time.time()
    process = start(argv, clean_env(**queue.env()))
    _wait_for_file(started, process)
    wait_until(lambda: len(started.read_text().split()) == 2, "the job to name its runner")
    runner = int(started.read_text().split()[1])
    process.kill()
    process.wait(timeout=10)
    stop(process)
    # The runner dies with its worker, so the job (one second of sleep) never commits.
    wait_until(lambda: _gone(runner), f"the runner {runner} to die with its worker")
    assert queue.runs("slept") == []
    relay_all(queue)
    queue.driver.clock = lambda: before_reservation
    assert queue.driver.reserve(PRIORITY) is None  # still reserved by the dead worker
    # A worker whose driver's clock runs retry_after ahead of the wall clock: whenever
    # it reads it, the dead worker's reservation (taken earlier, on the wall clock)
    # has expired, and the test does not wait for that.
    worker = Worker.create(
        queue.settings,
        # tries=2: the killed attempt counted as the first.
        WorkerOptions(
            queues=("tests",),
            modules=(TEST_JOBS,),
            sleep=0.05,
            timeout=2.0,
            tries=2,
            max_time=30,
            stop_when_empty=True,
            memory_mib=64 * 1024,
        ),
        queue.db,
    )
    worker.driver.clock = lambda: time.time() + retry_after
    try:
        code = worker.run()
    finally:
        worker.driver.close()
    assert code == 0
    assert queue.runs("slept") == [(job_id, 2)]
    assert queue.failed() == []


def test_four_concurrent_workers_run_2000_jobs_once_each(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        ids = {enqueue(session, record_job, {"marker": "load"}) for _ in range(2000)}
    # Warnings only: nobody reads the pipes until the workers exit, so they must not fill.
    env = clean_env(**queue.env(), BOURSE_LOG_LEVEL="warning")
    workers = [start([*WORKER, "--stop-when-empty"], env) for _ in range(4)]
    try:
        codes = [w.wait(timeout=240) for w in workers]
    finally:
        outputs = [stop(w) for w in workers]
    assert codes == [0, 0, 0, 0], outputs
    runs = queue.runs("load")
    assert len(runs) == 2000
    assert {job_id for job_id, _ in runs} == ids
    assert all(attempt == 1 for _, attempt in runs)
    assert queue.failed() == []
    # More than one worker did real work (the jobs were shared, not run by one).
    assert len(queue.runner_pids()) >= 2


def test_bad_flags_and_unsafe_timeouts_are_refused_with_exit_2(sqlite_queue: QueueEnv) -> None:
    queue = sqlite_queue
    env = clean_env(**queue.env())
    unknown = run_bourse("worker", "--queue", "deposits,deposit", env=env)
    assert unknown.returncode == 2
    assert "unknown queue deposit" in unknown.stderr
    malformed = run_bourse("worker", "--backoff", "10,sixty", env=env)
    assert malformed.returncode == 2
    assert "--backoff must be comma-separated seconds" in malformed.stderr
    unsafe = run_bourse("worker", "--import", TEST_JOBS, "--queue", "tests", "--timeout", "10", env=env)
    assert unsafe.returncode == 2
    assert "must be longer than --timeout" in unsafe.stderr


def test_healthcheck_worker_follows_the_heartbeat_file(sqlite_queue: QueueEnv) -> None:
    queue = sqlite_queue
    env = clean_env(**queue.env())
    heartbeat = queue.settings.worker_heartbeat_path
    assert run_bourse("healthcheck", "--worker", env=env).returncode == 1  # no worker has run
    process = start(WORKER, env)
    try:
        wait_until(heartbeat.exists, "the worker's first heartbeat")
        assert run_bourse("healthcheck", "--worker", env=env).returncode == 0
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        stop(process)
    stale = time.time() - queue.settings.heartbeat_max_age_seconds - 5
    os.utime(heartbeat, (stale, stale))
    assert run_bourse("healthcheck", "--worker", env=env).returncode == 1


def test_the_worker_serves_queue_metrics_on_its_own_port(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        enqueue(session, gauge_job, {"value": 42})
        enqueue(session, record_job, {"marker": "measured"})
        enqueue(session, record_job, {"marker": "waiting"}, delay=600)
    port = free_port()
    process = start(
        # A second queue, always empty, whose jobs fit this test's short retry_after.
        [*WORKER, "--queue", "tests,tests-idle"],
        clean_env(**queue.env(), BOURSE_WORKER_METRICS_PORT=str(port)),
    )
    try:
        output = wait_for_output(process, "job_done", timeout=30)
        while output.count("job_done") < 2:
            output += wait_for_output(process, "job_done", timeout=30)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        stop(process)
    assert 'bourse_queue_depth{queue="tests"} 0.0' in text
    assert 'bourse_queue_depth{queue="tests-idle"} 0.0' in text
    assert 'bourse_queue_oldest_job_age_seconds{queue="tests"}' in text
    assert 'bourse_jobs_processed_total{job="tests.record",queue="tests",status="done"} 1.0' in text
    assert 'bourse_job_duration_seconds_count{job="tests.record",queue="tests"} 1.0' in text
    assert "bourse_worker_busy 0.0" in text
    # A metric set by a handler (in the runner process) is served by the worker, once.
    assert "bourse_test_handler_gauge 42.0" in text
    assert text.count("# TYPE bourse_test_handler_gauge gauge") == 1


def test_a_redis_that_may_evict_keys_is_reported_loudly(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A private redis-server with an evicting policy (the shared one must stay noeviction)."""
    configure_logging("info", "json")  # to the captured stderr, whatever an earlier test configured
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "allkeys-lfu",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(answers, "the scratch redis-server to answer", timeout=10)
        assert check_eviction_policy(client) == "allkeys-lfu"
        captured = capfd.readouterr()
        assert "redis_may_evict_queued_jobs" in captured.out + captured.err
        client.config_set("maxmemory-policy", "noeviction")
        assert check_eviction_policy(client) == "noeviction"
        captured = capfd.readouterr()
        assert "redis_may_evict_queued_jobs" not in captured.out + captured.err
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)
