"""The worker in this process (its job runner is a real child): tries, backoff, timeouts, bad input."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
import structlog
from sqlalchemy import insert, text

from bourse.db import unit_of_work
from bourse.logging import configure_logging
from bourse.queue import enqueue, operations
from bourse.queue.models import QueueJob
from bourse.queue.worker import EXIT_OK, WorkerConfigError, WorkerOptions, check_config, parse_backoff, parse_queues
from tests.queue.jobs_for_tests import c_call_job, failing_job, record_job, sleeping_job
from tests.queue.test_drivers import PRIORITY, relay_all
from tests.support.processes import free_port
from tests.support.queue_env import QueueEnv, build_env, clean_tables


def test_tries_and_backoff_then_failed_jobs_then_retry(queue: QueueEnv, tmp_path: Path) -> None:
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, failing_job, {"order": 7})
    timings = tmp_path / "timings.json"
    code, worker = queue.worker(max_jobs=3, latency_file=timings, max_time=30)
    assert code == EXIT_OK
    assert worker.processed == 3
    starts = [t[1] for t in json.loads(timings.read_text())["timings"]]
    assert len(starts) == 3
    # The job declares backoff=(1, 2): one second before the 2nd try, two before the 3rd.
    assert 1.0 <= starts[1] - starts[0] < 2.5
    assert 2.0 <= starts[2] - starts[1] < 3.5
    assert queue.runs() == []  # every attempt's transaction rolled back
    [failed] = queue.failed()
    assert failed["uuid"] == job_id
    assert failed["job"] == "tests.fail"
    assert failed["attempts"] == 3
    assert failed["exception"] == "RuntimeError: deliberate failure on attempt 3"
    assert "deliberate failure" in str(failed["traceback"])
    assert "Traceback" in str(failed["traceback"])
    assert json.loads(str(failed["payload"])) == {"order": 7}
    assert float(failed["created_at"]) <= float(failed["failed_at"])  # type: ignore[arg-type]
    relay_all(queue)
    assert queue.driver.reserve(PRIORITY) is None

    with unit_of_work(queue.db) as session:
        [new_id] = operations.retry(session, str(failed["id"]))
    assert queue.failed() == []
    relay_all(queue)
    again = queue.driver.reserve(PRIORITY)
    assert again is not None
    assert (again.id, again.job, again.attempts, json.loads(again.payload)) == (new_id, "tests.fail", 1, {"order": 7})


def test_jobs_stuck_in_sleep_or_in_a_c_call_are_killed_at_the_timeout(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        sleeper = enqueue(session, sleeping_job, {"seconds": 1000})
        c_call = enqueue(session, c_call_job, {})
        enqueue(session, record_job, {"marker": "after the timeouts"})
    # The sleeper would take 1000 s and the C call forever: the worker gets through all
    # three jobs only because both were killed (max_time is the worker's own cap).
    code, worker = queue.worker(timeout=1.0, tries=1, max_jobs=3, max_time=60)
    assert code == EXIT_OK
    assert worker.processed == 3
    failed = {row["uuid"]: row for row in queue.failed()}
    assert set(failed) == {sleeper, c_call}
    for row in failed.values():
        assert str(row["exception"]).startswith("JobTimedOut: the job ran longer than its timeout of 1s")
    assert len(queue.runs("after the timeouts")) == 1
    assert queue.runs("slept") == []
    assert queue.runs("impossible") == []


def test_a_timed_out_attempt_counts_and_is_retried(sqlite_queue: QueueEnv) -> None:
    queue = sqlite_queue  # releasing with backoff is covered on every driver above
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, sleeping_job, {"seconds": 1000})
    code, _ = queue.worker(timeout=1.0, tries=2, backoff=(0,), max_jobs=2, max_time=60)
    assert code == EXIT_OK
    [failed] = queue.failed()
    assert failed["uuid"] == job_id
    assert failed["attempts"] == 2


def test_undecodable_payloads_and_unknown_jobs_fail_with_a_reason_and_the_worker_goes_on(queue: QueueEnv) -> None:
    now = time.time()
    base = {"queue": "tests", "attempts": 0, "available_at": now, "created_at": now}
    with unit_of_work(queue.db) as session:
        session.execute(insert(QueueJob).values(uuid=uuid.uuid4().hex, job="tests.record", payload="{not json", **base))
        session.execute(insert(QueueJob).values(uuid=uuid.uuid4().hex, job="tests.record", payload="[1, 2]", **base))
        session.execute(insert(QueueJob).values(uuid=uuid.uuid4().hex, job="tests.gone", payload="{}", **base))
        enqueue(session, record_job, {"marker": "still working"})
    code, worker = queue.worker(stop_when_empty=True, max_time=60)
    assert code == EXIT_OK
    assert worker.processed == 4
    reasons = {str(row["payload"]): str(row["exception"]) for row in queue.failed()}
    undecodable = "UndecodablePayload: the job payload could not be deserialised: "
    assert reasons["[1, 2]"] == undecodable + "expected a JSON object, got list"
    assert reasons["{not json"].startswith(undecodable + "Expecting property name")
    assert reasons["{}"] == "UnknownJob: no job named 'tests.gone' is registered in this worker"
    assert len(queue.runs("still working")) == 1


def test_a_job_carries_the_request_id_into_its_logs(queue: QueueEnv, capfd: pytest.CaptureFixture[str]) -> None:
    request_id = f"req-{uuid.uuid4().hex[:8]}"
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        with unit_of_work(queue.db) as session:
            job_id = enqueue(session, record_job, {"marker": "traced"})
    finally:
        structlog.contextvars.clear_contextvars()
    code, _ = queue.worker(stop_when_empty=True, max_time=60)
    assert code == EXIT_OK
    with queue.db.engine.connect() as conn:
        stored = conn.execute(text("SELECT request_id FROM queue_test_runs WHERE job_id = :j"), {"j": job_id}).scalar()
    assert stored == request_id
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    handler_lines = [line for line in lines if line.get("event") == "test_job_recorded"]
    assert handler_lines, "the job's own log line was not written"
    assert all(line["request_id"] == request_id and line["job_id"] == job_id for line in handler_lines)


def test_worker_flags_are_validated() -> None:
    assert parse_queues("deposits, withdrawals,default") == ("deposits", "withdrawals", "default")
    assert parse_backoff("10,60,300") == (10.0, 60.0, 300.0)
    for bad in ("", "deposits,,default", "Deposits", "a b"):
        with pytest.raises(WorkerConfigError):
            parse_queues(bad)
    for bad in ("ten", "10,,20", "-1", "nan", "inf"):
        with pytest.raises(WorkerConfigError):
            parse_backoff(bad)
    assert check_config(WorkerOptions(timeout=120), {}, retry_after=150) == []
    [problem] = check_config(WorkerOptions(timeout=150), {}, retry_after=150)
    assert "must be longer than --timeout" in problem


def test_the_worker_waits_out_a_queue_outage_instead_of_crashing(
    sqlite_url: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Redis unreachable (nothing listens on the port): the worker logs, waits and retries."""
    configure_logging("info", "json")  # to the captured stderr, whatever an earlier test configured
    queue = build_env(sqlite_url, "redis", tmp_path, f"redis://127.0.0.1:{free_port()}/0")
    try:
        with unit_of_work(queue.db) as session:
            enqueue(session, record_job, {"marker": "kept in the outbox"})
        code, worker = queue.worker(max_time=3, sleep=0.1)
        assert code == EXIT_OK
        assert worker.processed == 0
        captured = capfd.readouterr()
        assert "queue_unavailable" in captured.out + captured.err
        # Nothing was lost: the committed job is still in the outbox.
        with queue.db.engine.connect() as conn:
            assert conn.execute(text("SELECT COUNT(*) FROM queue_jobs")).scalar_one() == 1
    finally:
        # Not teardown_env(): there is no Redis to flush.
        queue.driver.close()
        clean_tables(queue.db, recreate=False)
        queue.db.dispose()
