"""A transient database failure in a job: an ordinary failed attempt, retried by the job's tries, and said so.

The job waits for a row the test holds locked, with PostgreSQL's ``lock_timeout``:
a real ``55P03``. The worker must retry it after its backoff like any failed
attempt (and fail it after its last try), and log and count it as transient.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bourse.db import unit_of_work
from bourse.logging import configure_logging
from bourse.queue import enqueue
from bourse.queue.worker import EXIT_OK
from tests.queue.jobs_for_tests import contended_job
from tests.support.queue_env import QueueEnv, build_env, teardown_env
from tests.support.waiting import wait_until

LABELS = {"source": "job", "code": "transient_conflict", "sqlstate": "55P03"}


@pytest.fixture
def pg_queue(postgres_url: str, tmp_path: Path) -> Iterator[QueueEnv]:
    env = build_env(postgres_url, "database", tmp_path, None)
    yield env
    teardown_env(env)


@pytest.fixture
def locked_table(pg_queue: QueueEnv, postgres_url: str) -> Iterator[tuple[str, psycopg.Connection[tuple[object, ...]]]]:
    """A one-row table, and a connection holding that row locked until it rolls back."""
    table = f"queue_test_lock_{uuid.uuid4().hex[:8]}"
    with pg_queue.db.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)"))
        conn.execute(text(f"INSERT INTO {table} VALUES (1)"))  # noqa: S608 - test table
    holder = psycopg.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False))
    holder.execute(f"SELECT 1 FROM {table} WHERE id = 1 FOR UPDATE")  # noqa: S608 - test table
    try:
        yield table, holder
    finally:
        holder.close()
        with pg_queue.db.engine.begin() as conn:
            conn.execute(text(f"DROP TABLE {table}"))


def _attempted(queue: QueueEnv, job_id: str) -> bool:
    """The job's first attempt has failed and the job waits out its backoff."""
    with queue.db.engine.connect() as conn:
        row = conn.execute(
            text("SELECT attempts, reserved_by FROM queue_jobs WHERE uuid = :u"), {"u": job_id}
        ).one_or_none()
    return row is not None and row.attempts == 1 and row.reserved_by is None


def _logged(capfd: pytest.CaptureFixture[str], event: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event]


def test_a_lock_timeout_in_a_job_is_retried_after_its_backoff_and_logged_as_transient(
    pg_queue: QueueEnv,
    locked_table: tuple[str, psycopg.Connection[tuple[object, ...]]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    table, holder = locked_table
    configure_logging("info", "json")  # to the captured stderr, whatever an earlier test configured
    counted = REGISTRY.get_sample_value("bourse_db_transient_errors_total", LABELS) or 0.0
    with unit_of_work(pg_queue.db) as session:
        job_id = enqueue(session, contended_job, {"table": table})
    assert job_id is not None

    def release_after_the_first_attempt() -> None:
        try:
            wait_until(lambda: _attempted(pg_queue, job_id), "the job's first attempt", interval=0.02)
        finally:
            holder.rollback()

    releaser = threading.Thread(target=release_after_the_first_attempt, daemon=True)
    releaser.start()
    code, worker = pg_queue.worker(max_jobs=2, max_time=60)
    releaser.join(30)
    assert code == EXIT_OK
    assert worker.processed == 2
    assert pg_queue.runs("contended") == [(job_id, 2)]  # the second attempt committed
    assert pg_queue.failed() == []
    [retry] = _logged(capfd, "job_will_retry")
    assert retry["level"] == "warning"
    assert (retry["transient"], retry["sqlstate"], retry["attempt"]) == ("transient_conflict", "55P03", 1)
    assert "LockNotAvailable" in str(retry["error"])
    assert REGISTRY.get_sample_value("bourse_db_transient_errors_total", LABELS) == counted + 1


def test_a_job_that_keeps_failing_transiently_fails_after_its_last_try(
    pg_queue: QueueEnv,
    locked_table: tuple[str, psycopg.Connection[tuple[object, ...]]],
    capfd: pytest.CaptureFixture[str],
) -> None:
    table, _ = locked_table  # held for the whole test
    configure_logging("info", "json")
    with unit_of_work(pg_queue.db) as session:
        job_id = enqueue(session, contended_job, {"table": table})
    code, worker = pg_queue.worker(max_jobs=2, max_time=60)
    assert code == EXIT_OK
    assert worker.processed == 2
    assert pg_queue.runs("contended") == []
    [failed] = pg_queue.failed()
    assert failed["uuid"] == job_id
    assert failed["attempts"] == 2
    assert "LockNotAvailable" in str(failed["exception"])
    [gave_up] = _logged(capfd, "job_failed")
    assert (gave_up["transient"], gave_up["sqlstate"]) == ("transient_conflict", "55P03")
