"""The queue's own job: the end-to-end heartbeat.

The scheduler enqueues ``queue.heartbeat`` every minute; a worker running it
stamps a row that ``bourse jobs stats`` shows. A stale stamp means the path
scheduler -> queue -> worker is broken somewhere, even if each process looks alive.

Idempotent: running it twice just stamps the row twice (never backwards).
"""

from __future__ import annotations

import os
import socket
import time

from sqlalchemy import select

from bourse.queue.models import QueueProcess
from bourse.queue.operations import PIPELINE_HEARTBEAT_ID
from bourse.queue.registry import JobContext, job


@job("queue.heartbeat", queue="default", tries=1, timeout=30, unique=lambda _payload: "queue.heartbeat")
def heartbeat(ctx: JobContext) -> None:
    now = time.time()
    row = ctx.session.scalars(select(QueueProcess).where(QueueProcess.id == PIPELINE_HEARTBEAT_ID)).first()
    if row is None:
        ctx.session.add(
            QueueProcess(
                id=PIPELINE_HEARTBEAT_ID,
                kind="pipeline",
                hostname=socket.gethostname()[:255],
                pid=os.getpid(),
                queues=ctx.queue,
                busy=False,
                started_at=now,
                heartbeat_at=now,
            )
        )
    else:
        row.heartbeat_at = max(row.heartbeat_at, now)
        row.hostname = socket.gethostname()[:255]
        row.pid = os.getpid()
