"""What a queue driver does: the protocol both drivers follow and the types they share.

Both drivers share ``queue_jobs`` for enqueueing (see :mod:`bourse.queue.producer`)
and ``queue_failed_jobs`` for jobs that ran out of tries; they differ in where a
worker reserves from. :mod:`bourse.queue.drivers` picks one from the settings.

Every time a driver compares or stores (availability, reservation expiry, a failed
job's time) comes from its ``clock``, the wall clock unless a caller (a test) sets
another. Enqueueing (:mod:`bourse.queue.producer`) reads the wall clock itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import Connection, insert

from bourse.queue.models import FailedJob

# Seconds since the epoch, as ``time.time`` reads them: what the queue tables and keys store.
Clock = Callable[[], float]


@dataclass(frozen=True)
class Reserved:
    """A job one worker holds until ``retry_after`` expires; ``token`` proves it."""

    id: str
    queue: str
    job: str
    payload: str
    attempts: int
    created_at: float
    request_id: str | None
    unique_key: str | None
    token: str


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    ready: int
    delayed: int
    reserved: int
    oldest_age_seconds: float


class ReservationLost(Exception):
    """The reservation expired and another worker holds the job now."""


class Driver(Protocol):
    name: str
    # Read for every time the driver compares or stores; ``time.time`` unless replaced.
    clock: Clock

    def reserve(self, queues: Sequence[str], *, acknowledge: Reserved | None = None) -> Reserved | None:
        """Take the oldest available job of the first non-empty queue, counting an attempt.

        ``acknowledge``: a finished job to forget first, as :meth:`acknowledge` would
        (only if its token still holds), in the same round trip where the driver can.
        """

    def next_available(self, queues: Sequence[str]) -> float | None:
        """When the first delayed job or reservation expiry of ``queues`` is due (None: none)."""

    def acknowledge(self, job: Reserved) -> None:
        """Forget a job whose handler committed (the database driver did it in that commit)."""

    def release(self, job: Reserved, delay: float, *, uncount: bool = False) -> None:
        """Make the job available again after ``delay``; ``uncount`` takes back the attempt."""

    def fail(self, job: Reserved, exception: str, traceback: str) -> None:
        """Move the job to ``queue_failed_jobs`` for good."""

    def relay(self) -> int:
        """Move committed outbox rows into the queue; how many moved (0 if nothing to do)."""

    def depths(self, queues: Sequence[str]) -> list[QueueDepth]:
        """Depth and oldest-job age of the given queues plus every queue that has jobs."""

    def close(self) -> None: ...


def failed_row(job: Reserved, exception: str, traceback: str, failed_at: float) -> dict[str, object]:
    return {
        "uuid": job.id,
        "queue": job.queue,
        "job": job.job,
        "payload": job.payload,
        "attempts": job.attempts,
        "exception": exception,
        "traceback": traceback,
        "request_id": job.request_id,
        "created_at": job.created_at,
        "failed_at": failed_at,
    }


def insert_failed(conn: Connection, job: Reserved, exception: str, traceback: str, failed_at: float) -> None:
    conn.execute(insert(FailedJob).values(**failed_row(job, exception, traceback, failed_at)))
