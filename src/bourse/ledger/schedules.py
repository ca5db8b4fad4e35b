"""The ledger's scheduled task: verify the books every hour, on one scheduler only."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bourse.ledger.jobs import verify_job
from bourse.queue.producer import enqueue
from bourse.queue.registry import task


@task("7 * * * *", name="ledger.verify", on_one_server=True)
def enqueue_verify(session: Session) -> None:
    enqueue(session, verify_job, {})
