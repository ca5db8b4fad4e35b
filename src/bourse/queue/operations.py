"""Operator actions on failed jobs, and queue statistics (shared by the CLI and the admin API).

Retrying a failed job enqueues a copy through the ordinary transactional path
(a new ``queue_jobs`` row, relayed by the Redis driver) with fresh attempts, and
removes the failed record in the same transaction.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from bourse.errors import NotFound
from bourse.inputs import INT64_MAX
from bourse.queue.driver import Driver
from bourse.queue.heartbeat import PROCESS_STALE_SECONDS
from bourse.queue.models import FailedJob, QueueJob, QueueProcess

_ID = re.compile(r"[0-9]{1,19}")


class FailedJobNotFound(NotFound):
    code = "failed_job_not_found"


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


@dataclass(frozen=True)
class FailedJobView:
    id: int
    uuid: str
    queue: str
    job: str
    payload: str
    attempts: int
    exception: str
    traceback: str
    request_id: str | None
    created_at: str | None
    failed_at: str | None

    @classmethod
    def of(cls, row: FailedJob) -> FailedJobView:
        return cls(
            row.id,
            row.uuid,
            row.queue,
            row.job,
            row.payload,
            row.attempts,
            row.exception,
            row.traceback,
            row.request_id,
            iso(row.created_at),
            iso(row.failed_at),
        )

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def list_failed(session: Session, *, limit: int = 100, offset: int = 0) -> list[FailedJobView]:
    rows = session.scalars(select(FailedJob).order_by(FailedJob.id.desc()).limit(limit).offset(offset))
    return [FailedJobView.of(row) for row in rows]


def _find(session: Session, ident: str) -> FailedJob:
    """The failed job ``ident`` names: its id (a BIGINT, in ASCII digits) or its uuid."""
    by_id = _ID.fullmatch(ident) is not None and int(ident) <= INT64_MAX
    row = session.scalars(select(FailedJob).where(FailedJob.id == int(ident))).first() if by_id else None
    if row is None:
        row = session.scalars(select(FailedJob).where(FailedJob.uuid == ident)).first()
    if row is None:
        raise FailedJobNotFound(f"no failed job {ident!r}")
    return row


def _requeue(session: Session, row: FailedJob) -> str:
    job_id = uuid.uuid4().hex
    now = time.time()
    session.execute(
        insert(QueueJob).values(
            uuid=job_id,
            queue=row.queue,
            job=row.job,
            payload=row.payload,
            attempts=0,
            available_at=now,
            created_at=now,
            request_id=row.request_id,
        )
    )
    session.delete(row)
    return job_id


def retry(session: Session, ident: str) -> list[str]:
    """Requeue one failed job (by id or uuid) or, with ``all``, every one; the new job ids."""
    if ident == "all":
        rows = list(session.scalars(select(FailedJob).order_by(FailedJob.id)))
        return [_requeue(session, row) for row in rows]
    return [_requeue(session, _find(session, ident))]


def forget(session: Session, ident: str) -> None:
    session.delete(_find(session, ident))


def flush(session: Session) -> int:
    result = session.execute(delete(FailedJob))
    return int(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class QueueStats:
    queues: list[dict[str, object]]
    failed: int
    workers: int
    busy_workers: int
    pipeline_heartbeat_at: str | None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def stats(session: Session, driver: Driver, queues: tuple[str, ...] = ()) -> QueueStats:
    now = time.time()
    depths = driver.depths(queues)
    failed = session.scalar(select(func.count()).select_from(FailedJob)) or 0
    live = QueueProcess.heartbeat_at >= now - PROCESS_STALE_SECONDS
    workers = session.scalar(select(func.count()).where(live, QueueProcess.kind == "worker")) or 0
    busy = session.scalar(select(func.count()).where(live, QueueProcess.kind == "worker", QueueProcess.busy)) or 0
    pipeline = session.scalar(select(QueueProcess.heartbeat_at).where(QueueProcess.id == PIPELINE_HEARTBEAT_ID))
    return QueueStats(
        queues=[
            {
                "queue": d.queue,
                "ready": d.ready,
                "delayed": d.delayed,
                "reserved": d.reserved,
                "oldest_job_age_seconds": round(d.oldest_age_seconds, 3),
            }
            for d in depths
        ],
        failed=int(failed),
        workers=int(workers),
        busy_workers=int(busy),
        pipeline_heartbeat_at=iso(pipeline),
    )


PIPELINE_HEARTBEAT_ID = "pipeline-heartbeat"
