"""Liveness of workers and schedulers.

Two records, for two readers:

- a **file** touched every few seconds, which ``bourse healthcheck --worker`` (an
  exec probe, in the same container) checks without touching the database, so a
  database outage cannot get healthy workers restarted;
- a **row** in ``queue_processes``, which ``bourse jobs stats`` reads to count
  live and busy workers across machines.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

from sqlalchemy import delete, insert, update

from bourse.db import Database
from bourse.logging import get_logger
from bourse.queue.models import QueueProcess

log = get_logger("bourse.queue.heartbeat")

# A process whose row is older than this is considered gone.
PROCESS_STALE_SECONDS = 60.0


def touch(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        os.utime(path)
    except OSError as exc:
        log.warning("heartbeat_file_unwritable", path=str(path), error=exc.strerror)


def file_age(path: Path) -> float | None:
    """Seconds since the heartbeat file was touched, or None if there is none."""
    try:
        return max(0.0, time.time() - path.stat().st_mtime)
    except OSError:
        return None


class ProcessHeartbeat:
    """Keeps this process's ``queue_processes`` row and heartbeat file fresh."""

    def __init__(self, db: Database, kind: str, path: Path, *, queues: str = "", interval: float = 2.0) -> None:
        self.db = db
        self.kind = kind
        self.path = path
        self.interval = interval
        self.id = f"{kind}-{uuid.uuid4().hex[:12]}"
        self.queues = queues
        self.started_at = time.time()
        self._last = 0.0
        self._inserted = False

    def beat(self, *, busy: bool = False, current_job: str | None = None, force: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        touch(self.path)
        values = {"busy": busy, "current_job": current_job, "heartbeat_at": now}
        try:
            with self.db.engine.begin() as conn:
                if self._inserted:
                    conn.execute(update(QueueProcess).where(QueueProcess.id == self.id).values(**values))
                else:
                    conn.execute(
                        insert(QueueProcess).values(
                            id=self.id,
                            kind=self.kind,
                            hostname=socket.gethostname()[:255],
                            pid=os.getpid(),
                            queues=self.queues[:255],
                            started_at=self.started_at,
                            **values,
                        )
                    )
                    self._inserted = True
                # Rows of processes that vanished without saying goodbye.
                conn.execute(
                    delete(QueueProcess).where(
                        QueueProcess.heartbeat_at < now - 10 * PROCESS_STALE_SECONDS, QueueProcess.kind != "pipeline"
                    )
                )
        except Exception as exc:  # noqa: BLE001 - a database blip must not stop the worker
            log.warning("heartbeat_failed", error=str(exc))

    def goodbye(self) -> None:
        try:
            with self.db.engine.begin() as conn:
                conn.execute(delete(QueueProcess).where(QueueProcess.id == self.id))
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            log.warning("heartbeat_goodbye_failed", error=str(exc))
