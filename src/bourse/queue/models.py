"""Queue tables: jobs (also the Redis driver's outbox), failed jobs, workers, scheduler claims.

Times are seconds since the epoch as double precision floats: the queue compares
them arithmetically (``available_at <= now``), they index well, and they mean the
same thing on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from bourse.db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY, PostgreSQL wants a BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class QueueJob(Base):
    """A pending or reserved job.

    With the database driver this row *is* the job: workers reserve it by setting
    ``reserved_by`` and pushing ``available_at`` past the reservation expiry, and
    the handler's own transaction deletes it. With the Redis driver it is the
    transactional outbox: the relay moves committed rows into Redis.
    """

    __tablename__ = "queue_jobs"
    __table_args__ = (Index("ix_queue_jobs_queue_available", "queue", "available_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(32), unique=True)
    queue: Mapped[str] = mapped_column(String(64))
    job: Mapped[str] = mapped_column(String(200))
    # The JSON payload as enqueued; decoded (and validated) only by the worker.
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    available_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    reserved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A random token per reservation: only the current holder may complete or release.
    reserved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # At most one pending job per key: the unique constraint is the lock.
    unique_key: Mapped[str | None] = mapped_column(String(255), unique=True, nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)


class FailedJob(Base):
    """A job that used up its tries, or could never run (unknown job, bad payload)."""

    __tablename__ = "queue_failed_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    uuid: Mapped[str] = mapped_column(String(32), unique=True)
    queue: Mapped[str] = mapped_column(String(64))
    job: Mapped[str] = mapped_column(String(200))
    payload: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    exception: Mapped[str] = mapped_column(Text)
    traceback: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    failed_at: Mapped[float] = mapped_column(Float, index=True)


class QueueProcess(Base):
    """Heartbeat of a worker or scheduler process, for ``bourse jobs stats``."""

    __tablename__ = "queue_processes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255), default="")
    busy: Mapped[bool] = mapped_column(Boolean, default=False)
    current_job: Mapped[str | None] = mapped_column(String(200), nullable=True)
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float, index=True)


class SchedulerClaim(Base):
    """One row per (task, minute slot) run: the primary key makes replicas agree."""

    __tablename__ = "scheduler_claims"

    task: Mapped[str] = mapped_column(String(200), primary_key=True)
    slot: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    claimed_by: Mapped[str] = mapped_column(String(64))
    claimed_at: Mapped[float] = mapped_column(Float)


class SchedulerLease(Base):
    """``without_overlapping``: a task runs only while its holder's lease is unexpired."""

    __tablename__ = "scheduler_leases"

    task: Mapped[str] = mapped_column(String(200), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)
