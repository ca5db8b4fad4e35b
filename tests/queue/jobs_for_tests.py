"""Jobs used by the queue tests; workers import this module with ``--import``.

They live on their own ``tests`` queue (the deposit job aside), so a test worker
serves only them, whatever jobs other packages declare on ``default``.

Every job that has an effect records it in ``queue_test_runs`` (created by the
tests, not a Bourse table) in the job's own transaction, so a test can count how
many times each job really committed.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from prometheus_client import Gauge
from sqlalchemy import text

from bourse.logging import get_logger
from bourse.queue import JobContext, job

log = get_logger("tests.queue.jobs")

RUNS_DDL = (
    "CREATE TABLE IF NOT EXISTS queue_test_runs ("
    " job_id VARCHAR(32) NOT NULL, attempt INTEGER NOT NULL, marker VARCHAR(100), request_id VARCHAR(128),"
    " pid INTEGER NOT NULL, at DOUBLE PRECISION NOT NULL)"
)


def record(ctx: JobContext, marker: str | None = None) -> None:
    ctx.session.execute(
        text(
            "INSERT INTO queue_test_runs (job_id, attempt, marker, request_id, pid, at) VALUES (:j, :a, :m, :r, :p, :t)"
        ),
        {"j": ctx.job_id, "a": ctx.attempt, "m": marker, "r": ctx.request_id, "p": os.getpid(), "t": time.time()},
    )


@job("tests.record", queue="tests")
def record_job(ctx: JobContext) -> None:
    log.info("test_job_recorded", marker=ctx.payload.get("marker"))
    record(ctx, ctx.payload.get("marker"))


@job("tests.idle", queue="tests-idle")
def idle_job(ctx: JobContext) -> None:
    """Never enqueued: it makes ``tests-idle`` a known, always empty queue with short jobs."""
    record(ctx, "idle")


@job("tests.deposit", queue="deposits")
def deposit_job(ctx: JobContext) -> None:
    record(ctx, "deposit")


@job("tests.fail", queue="tests", tries=3, backoff=(1, 2))
def failing_job(ctx: JobContext) -> None:
    record(ctx, "never committed")
    raise RuntimeError(f"deliberate failure on attempt {ctx.attempt}")


@job("tests.sleep", queue="tests")
def sleeping_job(ctx: JobContext) -> None:
    started = ctx.payload.get("started_file")
    if started:
        # Written whole in one call: the attempt, and the runner process running it.
        Path(started).write_text(f"{ctx.attempt} {os.getpid()}")
    time.sleep(float(ctx.payload["seconds"]))
    record(ctx, "slept")


@job("tests.c_call", queue="tests")
def c_call_job(ctx: JobContext) -> None:
    # Catastrophic backtracking: one call into the C regex engine that holds the GIL
    # and never returns to the interpreter, so no Python-level signal could stop it.
    re.match(r"(a+)+$", "a" * 64 + "b")
    record(ctx, "impossible")


@job("tests.unique", queue="tests", unique=lambda payload: f"unique:{payload['key']}")
def unique_job(ctx: JobContext) -> None:
    record(ctx, f"unique:{ctx.payload['key']}")


HANDLER_GAUGE = Gauge("bourse_test_handler_gauge", "Set by a test job's handler, in the runner process.")


@job("tests.gauge", queue="tests")
def gauge_job(ctx: JobContext) -> None:
    HANDLER_GAUGE.set(float(ctx.payload["value"]))


@job("tests.contended", queue="tests", tries=2, backoff=(1,))
def contended_job(ctx: JobContext) -> None:
    """Waits at most 200 ms for a row the test may hold locked: PostgreSQL's lock timeout (55P03) meanwhile."""
    ctx.session.execute(text("SET LOCAL lock_timeout = '200ms'"))
    ctx.session.execute(text(f"SELECT 1 FROM {ctx.payload['table']} WHERE id = 1 FOR UPDATE"))  # noqa: S608 - test table
    record(ctx, "contended")
