"""The scheduler: once per slot across replicas, catch-up of at most one slot, leases, the CLI."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx2 as httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from bourse.db import unit_of_work
from bourse.queue import enqueue
from bourse.queue.models import QueueJob, SchedulerClaim, SchedulerLease
from bourse.queue.registry import TaskSpec
from bourse.queue.scheduler import Scheduler, latest_due_slot
from tests.queue.jobs_for_tests import record_job
from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_output
from tests.support.queue_env import QueueEnv
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

T0 = datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def enqueuing(marker: str) -> Callable[[Session], None]:
    def func_(session: Session) -> None:
        enqueue(session, record_job, {"marker": marker})

    return func_


def jobs_enqueued(queue: QueueEnv, marker: str) -> int:
    with queue.db.engine.connect() as conn:
        return int(
            conn.execute(
                text("SELECT COUNT(*) FROM queue_jobs WHERE payload = :p"), {"p": f'{{"marker":"{marker}"}}'}
            ).scalar_one()
        )


def test_three_replicas_over_three_minutes_run_each_task_exactly_once_per_slot(database_queue: QueueEnv) -> None:
    queue = database_queue
    tasks = {
        "every-minute": TaskSpec("every-minute", "* * * * *", enqueuing("every-minute"), on_one_server=True),
        "every-two": TaskSpec(
            "every-two", "*/2 * * * *", enqueuing("every-two"), on_one_server=True, without_overlapping=True
        ),
    }
    replicas = [Scheduler(queue.db, tasks) for _ in range(3)]
    outcomes: list[tuple[str, str, str]] = []
    lock = threading.Lock()
    for minute in range(3):
        now = T0 + timedelta(minutes=minute, seconds=5)
        barrier = threading.Barrier(len(replicas))

        def tick(replica: Scheduler, now: datetime = now, barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            for outcome in replica.tick(now):
                with lock:
                    outcomes.append((outcome.task, outcome.slot.isoformat(), outcome.status))

        threads = [threading.Thread(target=tick, args=(replica,)) for replica in replicas]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    ran = sorted((task, slot) for task, slot, status in outcomes if status == "ran")
    assert ran == [("every-minute", (T0 + timedelta(minutes=m)).isoformat()) for m in range(3)] + [
        ("every-two", T0.isoformat()),
        ("every-two", (T0 + timedelta(minutes=2)).isoformat()),
    ]
    assert not [o for o in outcomes if o[2] == "failed"]
    assert jobs_enqueued(queue, "every-minute") == 3
    assert jobs_enqueued(queue, "every-two") == 2
    with queue.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SchedulerClaim)) == 5
        # Every lease was given back.
        assert session.scalar(select(func.count()).select_from(SchedulerLease)) == 0


def test_after_downtime_at_most_one_missed_slot_is_caught_up(database_queue: QueueEnv) -> None:
    queue = database_queue
    tasks = {"five": TaskSpec("five", "*/5 * * * *", enqueuing("five"), on_one_server=True)}
    first = Scheduler(queue.db, tasks)
    assert [o.status for o in first.tick(T0)] == ["ran"]
    # Down from 10:01 to 10:37: slots 10:05 ... 10:35 were missed. A fresh process
    # (state from the claims table) runs only the latest, 10:35.
    restarted = Scheduler(queue.db, tasks)
    [caught_up] = restarted.tick(T0 + timedelta(minutes=37))
    assert (caught_up.slot, caught_up.status) == (T0 + timedelta(minutes=35), "ran")
    assert restarted.tick(T0 + timedelta(minutes=38)) == []
    [on_time] = restarted.tick(T0 + timedelta(minutes=40))
    assert on_time.slot == T0 + timedelta(minutes=40)
    assert jobs_enqueued(queue, "five") == 3


def test_a_task_that_never_ran_starts_at_the_current_minute(database_queue: QueueEnv) -> None:
    tasks = {"hourly": TaskSpec("hourly", "0 * * * *", enqueuing("hourly"), on_one_server=True)}
    scheduler = Scheduler(database_queue.db, tasks)
    assert scheduler.tick(T0 + timedelta(minutes=37)) == []
    assert [o.status for o in scheduler.tick(T0 + timedelta(hours=1))] == ["ran"]


def test_without_overlapping_skips_while_another_holder_has_the_lease(database_queue: QueueEnv) -> None:
    queue = database_queue
    tasks = {"locked": TaskSpec("locked", "* * * * *", enqueuing("locked"), without_overlapping=True)}
    with unit_of_work(queue.db) as session:
        session.add(SchedulerLease(task="locked", owner="someone-else", expires_at=time.time() + 600))
    scheduler = Scheduler(queue.db, tasks)
    assert [o.status for o in scheduler.tick(T0)] == ["overlapping"]
    assert jobs_enqueued(queue, "locked") == 0
    with unit_of_work(queue.db) as session:
        session.get(SchedulerLease, "locked").expires_at = time.time() - 1  # type: ignore[union-attr]
    assert [o.status for o in scheduler.tick(T0 + timedelta(minutes=1))] == ["ran"]
    assert jobs_enqueued(queue, "locked") == 1


def test_a_failing_task_rolls_back_its_claim_and_jobs_and_is_retried(database_queue: QueueEnv) -> None:
    queue = database_queue
    attempts: list[int] = []

    def flaky(session: Session) -> None:
        enqueue(session, record_job, {"marker": "flaky"})
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("first run fails")

    tasks = {"flaky": TaskSpec("flaky", "* * * * *", flaky, on_one_server=True)}
    scheduler = Scheduler(queue.db, tasks)
    assert [o.status for o in scheduler.tick(T0)] == ["failed"]
    assert jobs_enqueued(queue, "flaky") == 0
    with queue.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(SchedulerClaim)) == 0
        assert session.scalar(select(func.count()).select_from(QueueJob)) == 0
    assert [o.status for o in scheduler.tick(T0 + timedelta(seconds=30))] == ["ran"]
    assert jobs_enqueued(queue, "flaky") == 1


def test_latest_due_slot_includes_the_current_minute() -> None:
    spec = TaskSpec("x", "*/5 * * * *", enqueuing("x"))
    assert latest_due_slot(spec, T0 + timedelta(minutes=10)) == T0 + timedelta(minutes=10)
    assert latest_due_slot(spec, T0 + timedelta(minutes=12)) == T0 + timedelta(minutes=10)


def test_schedule_list_and_run_and_the_scheduler_process(sqlite_queue: QueueEnv) -> None:
    queue = sqlite_queue
    env = clean_env(**queue.env())
    listed = run_bourse("schedule", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "queue.heartbeat" in listed.stdout
    assert "* * * * *" in listed.stdout
    # Two runs in the same minute: the second finds every task claimed. A run takes a few
    # seconds to start, so two may straddle a minute; then the later one is the first of
    # the next pair (each minute's claims are the minute's own).
    minutes: set[str] = set()
    ran = run_bourse("schedule", "run", env=env)
    for _ in range(3):
        assert ran.returncode == 0, ran.stderr
        assert "queue.heartbeat" in ran.stdout
        assert "ran" in ran.stdout
        minutes |= _minutes(ran.stdout)
        again = run_bourse("schedule", "run", env=env)
        assert again.returncode == 0, again.stderr
        if not _minutes(again.stdout) - _minutes(ran.stdout):  # nothing for a later minute
            break
        ran = again
    else:
        raise AssertionError("no two `schedule run`s in the same minute out of four")
    assert "ran" not in again.stdout.replace("queue.heartbeat", ""), again.stdout
    # One heartbeat job, whether the runs saw one minute or two: the job is unique while it
    # waits (no worker runs here), so a later minute's run finds it queued and adds none.
    assert minutes
    assert jobs_enqueued_named(queue, "queue.heartbeat") == 1

    port = free_port()
    process = start(["-m", "bourse", "scheduler"], clean_env(**queue.env(), BOURSE_SCHEDULER_METRICS_PORT=str(port)))
    try:
        wait_for_output(process, "scheduler_started", timeout=30)
        wait_until(queue.settings.scheduler_heartbeat_path.exists, "the scheduler's first heartbeat")
        assert run_bourse("healthcheck", "--scheduler", env=env).returncode == 0
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "bourse_queue_depth" in metrics
        assert "bourse_scheduler_last_run_timestamp" in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        stop(process)


def _minutes(output: str) -> set[str]:
    """The minutes a `schedule run` printed its tasks for."""
    return set(re.findall(r"\d{4}-\d\d-\d\dT\d\d:\d\d:00\+00:00", output))


def jobs_enqueued_named(queue: QueueEnv, job: str) -> int:
    with queue.db.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM queue_jobs WHERE job = :j"), {"j": job}).scalar_one())
