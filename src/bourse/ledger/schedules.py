"""The ledger's scheduled tasks, each on one scheduler only: verify the books every hour,
and queue a sweep of every per-instrument fee account holding fees every minute."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bourse.ledger.jobs import sweep_fees_job, verify_job
from bourse.ledger.sweeps import fee_accounts_to_sweep
from bourse.queue.producer import enqueue
from bourse.queue.registry import task


@task("7 * * * *", name="ledger.verify", on_one_server=True)
def enqueue_verify(session: Session) -> None:
    enqueue(session, verify_job, {})


@task("* * * * *", name="ledger.sweep_fees", on_one_server=True)
def enqueue_fee_sweeps(session: Session) -> None:
    for account_id, _, _ in fee_accounts_to_sweep(session):
        enqueue(session, sweep_fees_job, {"account_id": str(account_id)})
