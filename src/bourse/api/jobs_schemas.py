"""Wire format of the admin jobs API."""

from __future__ import annotations

from pydantic import BaseModel


class FailedJobOut(BaseModel):
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


class RequeuedOut(BaseModel):
    requeued: list[str]


class FlushedOut(BaseModel):
    flushed: int


class QueueDepthOut(BaseModel):
    queue: str
    ready: int
    delayed: int
    reserved: int
    oldest_job_age_seconds: float


class QueueStatsOut(BaseModel):
    queues: list[QueueDepthOut]
    failed: int
    workers: int
    busy_workers: int
    pipeline_heartbeat_at: str | None
