"""The payments jobs: provider events, payouts, expiry and reconciliation.

Deposit events run on the ``deposits`` queue; payouts and payout events on
``withdrawals``. Every handler is safe to run twice (delivery is at least once):
event processing is guarded by the event row and the ledger's idempotency keys,
payouts by the provider's idempotency key and the withdrawal's state.
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta

from prometheus_client import Gauge

from bourse.logging import get_logger
from bourse.payments import deposits, inbox, queries, reconcile, withdrawals
from bourse.payments.audit import Actor
from bourse.payments.connectors import connector_named
from bourse.payments.models import Withdrawal
from bourse.psp.connectors.base import Capability
from bourse.queue.registry import JobContext, job

log = get_logger("bourse.payments.jobs")

RECONCILIATION_MISMATCHES = Gauge(
    "bourse_reconciliation_mismatches",
    "Mismatches in the last reconciliation report, per connector.",
    ["connector"],
)
# Retry an event that came before the one it depends on, or a provider outage, for
# about an hour before giving up into the failed jobs (where operators retry it).
_BACKOFF = (1.0, 5.0, 15.0, 60.0, 300.0)


def _actor(ctx: JobContext, name: str) -> Actor:
    return Actor(f"job:{name}", ctx.request_id)


@job(inbox.PROCESS_DEPOSIT_EVENT, queue="deposits", tries=16, timeout=30, backoff=_BACKOFF)
def deposit_event(ctx: JobContext) -> None:
    inbox.process(ctx.session, int(ctx.payload["event"]), request_id=ctx.request_id)


@job(inbox.PROCESS_PAYOUT_EVENT, queue="withdrawals", tries=16, timeout=30, backoff=_BACKOFF)
def payout_event(ctx: JobContext) -> None:
    inbox.process(ctx.session, int(ctx.payload["event"]), request_id=ctx.request_id)


@job(withdrawals.PAYOUT_JOB, queue="withdrawals", tries=20, timeout=30, backoff=_BACKOFF)
def payout(ctx: JobContext) -> None:
    withdrawal = queries.get(ctx.session, Withdrawal, uuid.UUID(ctx.payload["withdrawal_id"]))
    connector = connector_named(ctx.settings_of(), withdrawal.connector, Capability.payouts)
    outcome = withdrawals.pay_out(
        ctx.session, withdrawal.id, connector=connector, actor=_actor(ctx, withdrawals.PAYOUT_JOB)
    )
    log.info("payout_attempted", withdrawal=str(withdrawal.id), outcome=outcome, attempt=ctx.attempt)


@job("payments.check_payout", queue="withdrawals", tries=5, timeout=30, backoff=_BACKOFF)
def check_payout(ctx: JobContext) -> None:
    withdrawal = queries.get(ctx.session, Withdrawal, uuid.UUID(ctx.payload["withdrawal_id"]))
    connector = connector_named(ctx.settings_of(), withdrawal.connector, Capability.status)
    outcome = withdrawals.check_payout(
        ctx.session, withdrawal.id, connector=connector, actor=_actor(ctx, "payments.check_payout")
    )
    log.info("payout_checked", withdrawal=str(withdrawal.id), outcome=outcome)


@job("payments.expire_deposits", queue="deposits", tries=1, timeout=30, unique=lambda _p: "expire_deposits")
def expire_deposits(ctx: JobContext) -> None:
    minutes = ctx.settings_of().deposit_expiry_minutes
    expired = deposits.expire_stale(ctx.session, older_than=timedelta(minutes=minutes))
    if expired:
        log.info("deposits_expired", count=expired)


@job("payments.reconcile", queue="default", tries=3, timeout=110, backoff=(60.0, 300.0))
def reconcile_day(ctx: JobContext) -> None:
    connector = connector_named(ctx.settings_of(), str(ctx.payload["connector"]), Capability.transactions)
    day = date.fromisoformat(str(ctx.payload["day"]))
    report = reconcile.reconcile(ctx.session, connector, day, actor=f"job:payments.reconcile:{ctx.job_id}")
    RECONCILIATION_MISMATCHES.labels(connector=connector.name).set(report.mismatch_count)
    level = log.warning if report.mismatch_count else log.info
    level(
        "reconciliation_finished",
        connector=connector.name,
        day=day.isoformat(),
        matched=report.matched,
        mismatches=report.mismatch_count,
        report=str(report.id),
    )
