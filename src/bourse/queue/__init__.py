"""Background jobs and scheduled tasks (docs/decisions/0006-queue.md).

The public API for domains is small:

**Declare a job** in your package's ``jobs.py`` (every ``bourse.<pkg>.jobs`` module
is imported by the worker)::

    from bourse.queue import JobContext, job

    @job("withdrawals.send", queue="withdrawals", tries=5, timeout=60, backoff=(10, 60, 300),
         unique=lambda payload: f"withdrawal:{payload['withdrawal_id']}")
    def send_withdrawal(ctx: JobContext) -> None:
        ...  # ctx.session is the job's own transaction; ctx.payload is the JSON payload

The name (``"withdrawals.send"``) is what is stored, so it must never change.
``queue``, ``tries`` (0 = unlimited), ``timeout`` (seconds) and ``backoff``
(seconds per retry, the last one repeats) override the worker's flags. ``unique``
turns the payload into a key: while a job with that key is pending or running,
enqueueing another does nothing.

**Enqueue** inside the caller's transaction (an API request's ``DbSession`` or a
job's ``ctx.session``)::

    from bourse.queue import enqueue

    enqueue(session, send_withdrawal, {"withdrawal_id": str(w.id)}, delay=0, unique_key=None)

The job exists if and only if that transaction commits, whatever the driver.

**Delivery is at least once.** A job runs again if its worker dies, if it times
out, or if its transaction committed but the worker died before settling it.
Every handler must therefore be idempotent: check-then-act under a row lock or a
unique constraint, or key external calls by ``ctx.job_id`` (stable across retries).
With the database driver the job's row is deleted in the handler's own
transaction, so a handler whose effects are all in the database runs effectively
once; with Redis the job is settled after that commit.

**Declare a scheduled task** in your package's ``schedules.py``::

    from bourse.queue import task

    @task("0 * * * *", name="ledger.verify", on_one_server=True, without_overlapping=True)
    def verify_hourly(session: Session) -> None:
        enqueue(session, verify_ledger, {})

Tasks run in one transaction, should only enqueue jobs, and use UTC cron
expressions. ``on_one_server`` makes several scheduler replicas run the task once
per slot; ``without_overlapping`` skips a run while the previous one still holds
its lease.

The request id of the API request that enqueued a job is bound into every log
line the job writes (``request_id``), together with ``job``, ``job_id``,
``attempt`` and ``queue``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bourse.queue.producer import InvalidJob, enqueue
    from bourse.queue.registry import JobContext, JobSpec, TaskSpec, job, task

__all__ = ["InvalidJob", "JobContext", "JobSpec", "TaskSpec", "enqueue", "job", "task"]

# Resolved on first use, so that importing a submodule (the CLI, for `bourse
# healthcheck`) does not pull in SQLAlchemy.
_EXPORTS = {
    "InvalidJob": "bourse.queue.producer",
    "enqueue": "bourse.queue.producer",
    "JobContext": "bourse.queue.registry",
    "JobSpec": "bourse.queue.registry",
    "TaskSpec": "bourse.queue.registry",
    "job": "bourse.queue.registry",
    "task": "bourse.queue.registry",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bourse.queue' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
