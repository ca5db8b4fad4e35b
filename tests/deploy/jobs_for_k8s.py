"""A job for the worker-rollout test; the worker imports this module with ``--import``.

It runs on the ``default`` queue, one of the manifest's (the control's copy on a
queue of its own), and records its effect in
``k8s_job_effects`` (created by the test) in the job's own transaction, so the test
counts how many times the effect really committed.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from bourse.queue import JobContext, job

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS k8s_job_effects ("
    " job_id VARCHAR(32) NOT NULL, attempt INTEGER NOT NULL, finished_at DOUBLE PRECISION NOT NULL)"
)


def _slow_effect(ctx: JobContext) -> None:
    with Path(ctx.payload["started_file"]).open("a") as started:
        started.write(f"{ctx.attempt}\n")
    time.sleep(float(ctx.payload["seconds"]))
    ctx.session.execute(
        text("INSERT INTO k8s_job_effects (job_id, attempt, finished_at) VALUES (:j, :a, :t)"),
        {"j": ctx.job_id, "a": ctx.attempt, "t": time.time()},
    )


@job("k8s.slow_effect", queue="default", tries=3)
def slow_effect(ctx: JobContext) -> None:
    _slow_effect(ctx)


@job("k8s.slow_effect_control", queue="k8s-control", tries=3)
def slow_effect_control(ctx: JobContext) -> None:
    """The same job on a queue of its own, so the control's worker can run with a
    reservation expiry shorter than the domain jobs' timeouts."""
    _slow_effect(ctx)
