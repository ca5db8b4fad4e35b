"""Enqueueing inside the caller's transaction.

:func:`enqueue` only inserts a ``queue_jobs`` row through the caller's session. It
never talks to Redis. The row is therefore committed or rolled back with the
business transaction: a job exists if and only if that transaction commits. With
the database driver, workers reserve that row directly. With the Redis driver, the
row is an outbox entry that a relay in every worker moves into Redis once it is
committed (docs/decisions/0006-queue.md). On PostgreSQL the transaction also
notifies idle workers, who are woken when it commits (:mod:`bourse.queue.wake`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import structlog
from sqlalchemy import insert
from sqlalchemy.orm import Session

from bourse.db import upsert
from bourse.errors import BadRequest
from bourse.queue.models import QueueJob
from bourse.queue.registry import JOBS, JobSpec, check_queue_name, load_jobs
from bourse.queue.wake import notify


class InvalidJob(BadRequest):
    code = "invalid_job"


def encode_payload(payload: Mapping[str, Any] | None) -> str:
    try:
        return json.dumps(dict(payload or {}), separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidJob(f"job payload is not JSON-serialisable: {exc}") from None


def enqueue(
    session: Session,
    job: JobSpec | str,
    payload: Mapping[str, Any] | None = None,
    *,
    delay: float = 0.0,
    unique_key: str | None = None,
    queue: str | None = None,
) -> str | None:
    """Queue ``job`` with ``payload`` as part of ``session``'s transaction.

    Returns the job id, or ``None`` when ``unique_key`` (or the job's ``unique``
    function) names a job that is already pending or running. ``delay`` seconds
    from now the job becomes available. The request id bound in the logging
    context (the API request's) travels with the job into its logs.
    """
    spec = JOBS.get(job) if isinstance(job, str) else job
    if spec is None and isinstance(job, str):
        # By name, from a module that cannot import the handler (it imports us):
        # discover the domains' jobs modules once, as the worker does.
        spec = load_jobs().get(job)
    if spec is None:
        raise InvalidJob(f"unknown job {job!r}")
    if delay < 0:
        raise InvalidJob("delay must not be negative")
    body = encode_payload(payload)
    if unique_key is None and spec.unique is not None:
        unique_key = spec.unique(payload or {})
    if unique_key is not None and not 0 < len(unique_key) <= 255:  # noqa: PLR2004 - the column's width
        raise InvalidJob("unique_key must be 1-255 characters")
    now = time.time()
    job_id = uuid.uuid4().hex
    values = {
        "uuid": job_id,
        "queue": check_queue_name(queue or spec.queue),
        "job": spec.name,
        "payload": body,
        "attempts": 0,
        "available_at": now + delay,
        "created_at": now,
        "unique_key": unique_key,
        "request_id": structlog.contextvars.get_contextvars().get("request_id"),
    }
    if unique_key is None:
        session.execute(insert(QueueJob).values(**values))
        notify(session)
        return job_id
    statement = upsert(session, QueueJob).values(**values)
    inserted = session.execute(statement.on_conflict_do_nothing(index_elements=["unique_key"]).returning(QueueJob.id))
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO NOTHING.
    if inserted.first() is None:
        return None
    notify(session)
    return job_id
