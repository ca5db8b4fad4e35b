"""The queue's own scheduled task: enqueue the end-to-end heartbeat job every minute."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bourse.queue.jobs import heartbeat
from bourse.queue.producer import enqueue
from bourse.queue.registry import task


@task("* * * * *", name="queue.heartbeat", on_one_server=True)
def enqueue_heartbeat(session: Session) -> None:
    enqueue(session, heartbeat, {})
