"""Idle workers block until an enqueue commits (LISTEN/NOTIFY), instead of polling.

Each worker here runs with ``--sleep 120``: a worker that polled would look for work
two minutes later, far past every wait below, so a job that starts within them
started because the worker was woken.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import event, text

from bourse.db import unit_of_work
from bourse.queue import enqueue
from bourse.queue.wake import ListeningWaker
from tests.queue.jobs_for_tests import deposit_job, record_job
from tests.support.processes import clean_env, start, stop
from tests.support.queue_env import TEST_JOBS, QueueEnv, build_env, teardown_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

LONG_SLEEP = "120"
HEARTBEAT_INTERVAL = 2.0  # ProcessHeartbeat's default
# Well under LONG_SLEEP, and generous for a loaded machine.
WOKEN_WITHIN = 30.0


@pytest.fixture(params=["database", "redis"])
def pg_queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueueEnv]:
    """Both drivers on PostgreSQL, where workers listen."""
    url: str = request.getfixturevalue("postgres_url")
    redis_url: str | None = request.getfixturevalue("redis_url") if request.param == "redis" else None
    # Longer than every declared job timeout on the deposits queue, which one worker serves.
    env = build_env(url, request.param, tmp_path, redis_url, queue_retry_after_seconds=60)
    yield env
    teardown_env(env)


def _blocked_worker(queue: QueueEnv, queues: str = "tests") -> subprocess.Popen[str]:
    """A worker that has run a first job and is now idle, waiting for the next."""
    argv = ["-m", "bourse", "worker", "--import", TEST_JOBS, "--queue", queues, "--sleep", LONG_SLEEP]
    process = start([*argv, "--timeout", "5"], clean_env(**queue.env()))
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {"marker": "warm-up"})

    def warmed_up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited ({process.returncode}): {stop(process)}")
        return len(queue.runs("warm-up")) == 1

    # The worker's start-up (its runner's imports) is not what is measured here.
    wait_until(warmed_up, lambda: f"the warm-up job: {stop(process)}", timeout=90)
    warmed_up_at = max(at for (at,) in _query(queue, "SELECT at FROM queue_test_runs"))

    def blocked() -> bool:
        # With no work left, the only beats later than one heartbeat interval after the
        # warm-up job are those of the idle wait: the worker is blocked, not about to
        # reserve (a reservation racing the enqueue would not show the wake-up).
        beats = _query(queue, "SELECT heartbeat_at FROM queue_processes WHERE kind = 'worker' AND NOT busy")
        return any(at > warmed_up_at + HEARTBEAT_INTERVAL + 0.5 for (at,) in beats)

    wait_until(blocked, lambda: f"the worker to wait idle: {stop(process)}", timeout=60)
    return process


def _query(queue: QueueEnv, sql: str) -> list[tuple[float]]:
    with queue.db.engine.connect() as conn:
        return [(float(row[0]),) for row in conn.execute(text(sql))]


def test_an_enqueue_notifies_listeners_when_its_transaction_commits(pg_queue: QueueEnv) -> None:
    waker = ListeningWaker(pg_queue.db)
    try:
        assert waker.wait(0) is True  # the first wait starts listening, and says to look for work
        with unit_of_work(pg_queue.db) as session:
            enqueue(session, record_job, {})
            enqueue(session, record_job, {})
            assert waker.wait(0.2) is False  # not before the commit
        wait_until(lambda: waker.wait(0.2), "the notification of the commit")
    finally:
        waker.close()


def test_a_blocked_worker_starts_a_job_once_it_is_committed_and_stops_on_sigterm(pg_queue: QueueEnv) -> None:
    process = _blocked_worker(pg_queue)
    try:
        with unit_of_work(pg_queue.db) as session:
            job_id = enqueue(session, record_job, {"marker": "woken"})
        wait_until(lambda: pg_queue.runs("woken") == [(job_id, 1)], "the job to run", timeout=WOKEN_WITHIN)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WOKEN_WITHIN) == 0
    finally:
        output = stop(process)
    assert "worker_stopping" in output


def test_a_woken_worker_still_takes_the_highest_priority_job(pg_queue: QueueEnv) -> None:
    process = _blocked_worker(pg_queue, queues="deposits,tests")
    try:
        with unit_of_work(pg_queue.db) as session:
            background = enqueue(session, record_job, {"marker": "background"})
            deposit = enqueue(session, deposit_job, {})
        wait_until(lambda: len(pg_queue.runs()) == 3, "both jobs to run", timeout=WOKEN_WITHIN)
    finally:
        output = stop(process)
    assert [job_id for job_id, _ in pg_queue.runs()][1:] == [deposit, background], output


def test_a_delayed_job_runs_when_due_while_the_worker_is_blocked(pg_queue: QueueEnv) -> None:
    process = _blocked_worker(pg_queue)
    try:
        with unit_of_work(pg_queue.db) as session:
            job_id = enqueue(session, record_job, {"marker": "delayed"}, delay=3)
        wait_until(lambda: pg_queue.runs("delayed") == [(job_id, 1)], "the delayed job", timeout=WOKEN_WITHIN)
    finally:
        stop(process)


def test_the_enqueueing_transaction_never_notifies_itself(pg_queue: QueueEnv) -> None:
    """The wake-up is announced after the commit, on a connection of its own: a NOTIFY in
    the business transaction would serialise every enqueueing commit in the database."""
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    waker = ListeningWaker(pg_queue.db)
    event.listen(pg_queue.db.engine, "before_cursor_execute", record)
    try:
        assert waker.wait(0) is True
        with unit_of_work(pg_queue.db) as session:
            enqueue(session, record_job, {})
            enqueue(session, record_job, {})
        assert any("queue_jobs" in statement for statement in statements)
        assert not any("NOTIFY" in statement.upper() for statement in statements), statements
        wait_until(lambda: waker.wait(0.2), "the announcement after the commit")
        assert waker.wait(0.2) is False  # two enqueues, one announcement

        # A transaction that rolls back announces nothing.
        session = pg_queue.db.sessions()
        try:
            enqueue(session, record_job, {})
            session.rollback()
        finally:
            session.close()
        assert waker.wait(0.5) is False
    finally:
        event.remove(pg_queue.db.engine, "before_cursor_execute", record)
        waker.close()
