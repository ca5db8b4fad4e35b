"""The ledger's jobs: ``ledger.verify``, the hourly proof that the books are consistent, and
``ledger.sweep_fees``, which moves one instrument's fees into the asset's pool
(:mod:`bourse.ledger.sweeps`).

``ledger.verify``:

The scheduler enqueues it every hour (``bourse.ledger.schedules``); a worker runs
:func:`bourse.ledger.verify.verify_ledger` and publishes the outcome as metrics
on its own port, so an alert fires on any discrepancy:

- ``bourse_ledger_discrepancies``: how many the last run found (0 when sound);
- ``bourse_ledger_verified_timestamp_seconds``: when a run last finished.

Idempotent: it only reads the ledger, so running it twice (at-least-once
delivery) gives the same answer twice.
"""

from __future__ import annotations

import time
import uuid

from prometheus_client import Gauge

from bourse.ledger.sweeps import sweep_account
from bourse.ledger.verify import verify_ledger
from bourse.logging import get_logger
from bourse.queue.registry import JobContext, job

log = get_logger("bourse.ledger.jobs")

DISCREPANCIES = Gauge("bourse_ledger_discrepancies", "Discrepancies found by the last ledger verification.")
VERIFIED_AT = Gauge("bourse_ledger_verified_timestamp_seconds", "Unix time the last ledger verification finished.")


@job("ledger.verify", queue="default", tries=1, timeout=120, unique=lambda _payload: "ledger.verify")
def verify_job(ctx: JobContext) -> None:
    report = verify_ledger(ctx.session, limit=20)
    DISCREPANCIES.set(report.total_discrepancies)
    VERIFIED_AT.set(time.time())
    if report.ok:
        log.info("ledger_verified", entries=report.entries, postings=report.postings, accounts=report.accounts)
        return
    log.error(
        "ledger_discrepancies",
        total=report.total_discrepancies,
        first=[item.describe() for item in report.discrepancies],
    )


@job(
    "ledger.sweep_fees",
    queue="default",
    tries=5,
    timeout=30,
    unique=lambda payload: f"fee_sweep:{payload['account_id']}",
)
def sweep_fees_job(ctx: JobContext) -> None:
    swept = sweep_account(ctx.session, uuid.UUID(str(ctx.payload["account_id"])))
    if swept is not None:
        log.info("fees_swept", account_id=str(swept.account_id), asset=swept.asset, ref=swept.ref, amount=swept.amount)
