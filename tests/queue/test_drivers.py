"""Driver semantics on every driver: strict priority, transactional enqueue, delays, unique jobs."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from bourse.db import unit_of_work
from bourse.queue import InvalidJob, enqueue
from bourse.queue.database_driver import complete_in
from bourse.queue.driver import ReservationLost, Reserved
from bourse.queue.models import QueueJob
from tests.queue.jobs_for_tests import deposit_job, record_job, unique_job
from tests.support.queue_env import QueueEnv

PRIORITY = ("deposits", "withdrawals", "commissions", "tests")


def relay_all(queue: QueueEnv) -> None:
    while queue.driver.relay():
        pass


def settle_ok(queue: QueueEnv, job: Reserved) -> None:
    """What the runner and worker do after a successful handler."""
    if queue.driver.name == "database":
        with unit_of_work(queue.db) as session:
            complete_in(session, job.id, job.token)
    queue.driver.acknowledge(job)


def test_a_deposit_enqueued_mid_run_is_reserved_before_a_thousand_queued_jobs(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        for i in range(1000):
            enqueue(session, record_job, {"marker": f"bulk-{i}"})
    relay_all(queue)
    for _ in range(3):
        job = queue.driver.reserve(PRIORITY)
        assert job is not None
        assert job.queue == "tests"
        settle_ok(queue, job)
    with unit_of_work(queue.db) as session:
        deposit_id = enqueue(session, deposit_job, {})
    relay_all(queue)
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    assert (job.id, job.queue, job.job, job.attempts) == (deposit_id, "deposits", "tests.deposit", 1)
    following = queue.driver.reserve(PRIORITY)
    assert following is not None
    assert following.queue == "tests"
    depths = {d.queue: d for d in queue.driver.depths(PRIORITY)}
    assert depths["tests"].ready == 1000 - 4
    assert depths["tests"].reserved == 1
    assert depths["deposits"].ready == 0


def test_a_job_enqueued_in_a_transaction_that_rolls_back_does_not_exist(queue: QueueEnv) -> None:
    class BusinessFailure(Exception):
        pass

    def business_transaction() -> None:
        with unit_of_work(queue.db) as session:
            enqueue(session, record_job, {"marker": "rolled back"})
            raise BusinessFailure

    with pytest.raises(BusinessFailure):
        business_transaction()
    relay_all(queue)
    assert queue.driver.reserve(PRIORITY) is None
    with queue.db.sessions() as session:
        assert session.scalar(select(func.count()).select_from(QueueJob)) == 0

    with unit_of_work(queue.db) as session:
        committed = enqueue(session, record_job, {"marker": "committed"})
    relay_all(queue)
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    assert job.id == committed


class StoppedClock:
    """A driver's clock that reads ``now`` until a test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_delayed_job_becomes_available_at_its_time(queue: QueueEnv) -> None:
    delay = 60.0
    # Enqueueing reads the wall clock: the job is due ``delay`` after some moment
    # between these two readings, so it is certainly not due before ``earliest``
    # and certainly due at ``latest``, however long the enqueue took.
    clock = StoppedClock(time.time())
    queue.driver.clock = clock
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, record_job, {}, delay=delay)
    earliest, latest = clock.now + delay, time.time() + delay
    relay_all(queue)
    assert queue.driver.reserve(PRIORITY) is None
    assert {d.queue: d.delayed for d in queue.driver.depths(PRIORITY)}["tests"] == 1
    clock.now = earliest - 0.001
    assert queue.driver.reserve(PRIORITY) is None
    clock.now = latest
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    assert job.id == job_id
    assert {d.queue: d.reserved for d in queue.driver.depths(PRIORITY)}["tests"] == 1


def test_at_most_one_job_per_unique_key_is_pending(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        first = enqueue(session, unique_job, {"key": "k1"})
        assert first is not None
        assert enqueue(session, unique_job, {"key": "k1"}) is None
        other = enqueue(session, unique_job, {"key": "k2"})
    relay_all(queue)
    with unit_of_work(queue.db) as session:
        # With Redis the outbox row was relayed away; the relay drops the duplicate.
        enqueue(session, unique_job, {"key": "k1"})
    relay_all(queue)
    reserved = [queue.driver.reserve(PRIORITY), queue.driver.reserve(PRIORITY), queue.driver.reserve(PRIORITY)]
    assert first is not None
    assert other is not None
    assert sorted(j.id for j in reserved if j is not None) == sorted([first, other])
    assert reserved[2] is None
    for job in reserved:
        if job is not None:
            settle_ok(queue, job)
    with unit_of_work(queue.db) as session:
        again = enqueue(session, unique_job, {"key": "k1"})
    relay_all(queue)
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    assert job.id == again


def test_only_the_current_reservation_can_settle_a_job(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {})
    relay_all(queue)
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    stale = Reserved(**{**job.__dict__, "token": "not-the-token"})
    queue.driver.release(stale, 0)
    queue.driver.fail(stale, "Nope", "")
    assert queue.driver.reserve(PRIORITY) is None  # still reserved by the real holder
    assert queue.failed() == []
    if queue.driver.name == "database":
        with pytest.raises(ReservationLost), unit_of_work(queue.db) as session:
            complete_in(session, stale.id, stale.token)
    queue.driver.release(job, 0)
    again = queue.driver.reserve(PRIORITY)
    assert again is not None
    assert (again.id, again.attempts) == (job.id, 2)


def test_enqueue_refuses_bad_input(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        with pytest.raises(InvalidJob, match="unknown job"):
            enqueue(session, "tests.no-such-job", {})
        with pytest.raises(InvalidJob, match="JSON"):
            enqueue(session, record_job, {"when": object()})
        with pytest.raises(InvalidJob, match="delay"):
            enqueue(session, record_job, {}, delay=-1)
        with pytest.raises(ValueError, match="invalid queue name"):
            enqueue(session, record_job, {}, queue="Not A Queue")


def test_next_available_is_the_first_delayed_job_or_expiring_reservation(queue: QueueEnv) -> None:
    assert queue.driver.next_available(PRIORITY) is None
    before = time.time()
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {}, delay=600)
    after = time.time()
    relay_all(queue)
    delayed = queue.driver.next_available(PRIORITY)
    assert delayed is not None
    assert before + 600 <= delayed <= after + 600
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {})
    relay_all(queue)
    clock = StoppedClock(time.time())
    queue.driver.clock = clock
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    # The reservation expires before the delayed job is due: that is the next time to look.
    assert queue.driver.next_available(PRIORITY) == clock.now + queue.settings.queue_retry_after_seconds
    assert queue.driver.next_available(("deposits",)) is None


def test_the_acknowledgement_folded_into_the_next_reservation_keeps_tokens_honest(queue: QueueEnv) -> None:
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {"marker": "taken over"})
    relay_all(queue)
    clock = StoppedClock(time.time())
    queue.driver.clock = clock
    first = queue.driver.reserve(PRIORITY)
    assert first is not None
    clock.now += queue.settings.queue_retry_after_seconds + 1
    second = queue.driver.reserve(PRIORITY)
    assert second is not None
    assert (second.id, second.attempts) == (first.id, 2)
    # The first reservation was lost: acknowledging it with the next reservation forgets nothing.
    assert queue.driver.reserve(PRIORITY, acknowledge=first) is None
    assert {d.queue: d.reserved for d in queue.driver.depths(PRIORITY)}["tests"] == 1
    with unit_of_work(queue.db) as session:
        enqueue(session, record_job, {"marker": "background"})
        deposit_id = enqueue(session, deposit_job, {})
    relay_all(queue)
    if queue.driver.name == "database":
        with unit_of_work(queue.db) as session:
            complete_in(session, second.id, second.token)
    # The holder's acknowledgement goes with the next reservation, which still takes
    # from the first non-empty queue.
    following = queue.driver.reserve(PRIORITY, acknowledge=second)
    assert following is not None
    assert following.id == deposit_id
    tests_depth = {d.queue: d for d in queue.driver.depths(PRIORITY)}["tests"]
    assert (tests_depth.ready, tests_depth.reserved) == (1, 0)
