"""The payments schedule: expire stale deposits, chase stuck payouts, reconcile daily."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from bourse.payments import withdrawals
from bourse.payments.jobs import check_payout, expire_deposits, reconcile_day
from bourse.psp.connectors.base import Capability
from bourse.psp.registry import connectors
from bourse.queue.producer import enqueue
from bourse.queue.registry import task
from bourse.settings import load_settings

# A payout untouched this long lost its webhook or its job: ask the provider.
STUCK_AFTER = timedelta(minutes=10)


@task("* * * * *", name="payments.expire_deposits", on_one_server=True)
def enqueue_expiry(session: Session) -> None:
    enqueue(session, expire_deposits, {})


@task("*/5 * * * *", name="payments.check_payouts", on_one_server=True, without_overlapping=True)
def enqueue_payout_checks(session: Session) -> None:
    for withdrawal_id in withdrawals.stuck(session, older_than=STUCK_AFTER):
        enqueue(
            session, check_payout, {"withdrawal_id": str(withdrawal_id)}, unique_key=f"check_payout:{withdrawal_id}"
        )


@task("30 0 * * *", name="payments.reconcile", on_one_server=True)
def enqueue_reconciliation(session: Session) -> None:
    """Reconcile yesterday (UTC) with every connector that lists its transactions."""
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    for name, connector in connectors(load_settings()).items():
        if connector.supports(Capability.transactions):
            enqueue(
                session,
                reconcile_day,
                {"connector": name, "day": yesterday},
                unique_key=f"reconcile:{name}:{yesterday}",
            )
