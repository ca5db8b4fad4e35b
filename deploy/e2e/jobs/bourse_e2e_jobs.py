"""A job that takes 20 seconds, for the end-to-end run's worker-stop check only.

Mounted into the worker by deploy/e2e/compose.e2e.yaml and loaded with
``bourse worker --import bourse_e2e_jobs``; it is never part of the image. The
e2e run stops the worker while this job runs and then reads these log lines: the
job must finish, the worker must exit 0, and the job must never start again.
"""

from __future__ import annotations

import time

from bourse.logging import get_logger
from bourse.queue import JobContext, job

log = get_logger("bourse_e2e_jobs")

SLOW_SECONDS = 20.0


@job("e2e.slow", queue="default", timeout=60)
def slow(ctx: JobContext) -> None:
    log.info("e2e_slow_job_started", job_id=ctx.job_id, attempt=ctx.attempt)
    time.sleep(SLOW_SECONDS)
    log.info("e2e_slow_job_finished", job_id=ctx.job_id, attempt=ctx.attempt)
