"""Identity's scheduled task: prune expired refresh tokens and throttle windows hourly."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bourse.identity.jobs import prune_expired
from bourse.queue.producer import enqueue
from bourse.queue.registry import task


@task("17 * * * *", name="identity.prune_expired", on_one_server=True)
def enqueue_prune_expired(session: Session) -> None:
    enqueue(session, prune_expired, {})
