"""Prune expired idempotency keys every hour, on one scheduler only."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bourse.idempotency.jobs import prune_job
from bourse.queue.producer import enqueue
from bourse.queue.registry import task


@task("23 * * * *", name="idempotency.prune", on_one_server=True)
def enqueue_prune(session: Session) -> None:
    enqueue(session, prune_job, {})
