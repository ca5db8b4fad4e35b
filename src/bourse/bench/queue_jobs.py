"""The no-op jobs ``bourse bench queue`` measures, ours and RQ's.

A module of their own, imported only by the benchmark and by the workers it
starts (``--import bourse.bench.queue_jobs``), so that loading the ``bourse``
command does not import the queue and SQLAlchemy.
"""

from __future__ import annotations

from bourse.queue.registry import JobContext, job

BENCH_QUEUE = "bench"


@job("bench.noop", queue=BENCH_QUEUE, tries=1, timeout=30)
def noop_job(_ctx: JobContext) -> None:
    """Does nothing: the benchmark measures the queue, not the handler."""


def noop() -> None:
    """RQ's no-op job."""
