"""The commissions jobs: accrue a trade's commissions, pay one IB out in one asset.

Both are safe to run twice (delivery is at least once): accrual is guarded by its
rows (unique per trade, side and level) and its ledger key, a payout by the accruals
it marks paid.
"""

from __future__ import annotations

import uuid
from datetime import date

from bourse.commissions import service
from bourse.logging import get_logger
from bourse.queue.registry import JobContext, job

log = get_logger("bourse.commissions.jobs")

# A trade's accrual waits on nothing but the database: retry a busy or restarting
# database for about half an hour, then park it in the failed jobs for operators.
_BACKOFF = (1.0, 5.0, 15.0, 60.0, 300.0)


@job(service.ACCRUE_JOB, queue="commissions", tries=10, timeout=30, backoff=_BACKOFF)
def accrue(ctx: JobContext) -> None:
    service.accrue(
        ctx.session,
        int(ctx.payload["trade_id"]),
        max_depth=ctx.settings_of().ib_max_depth,
        actor=f"job:{service.ACCRUE_JOB}",
    )


@job(service.PAYOUT_JOB, queue="commissions", tries=10, timeout=60, backoff=_BACKOFF)
def payout(ctx: JobContext) -> None:
    paid = service.pay_out(
        ctx.session,
        uuid.UUID(str(ctx.payload["ib_user_id"])),
        str(ctx.payload["asset"]),
        through=date.fromisoformat(str(ctx.payload["through"])),
        actor=f"job:{service.PAYOUT_JOB}",
    )
    if paid is None:
        log.info("commission_payout_nothing_due", ib_user_id=ctx.payload["ib_user_id"], asset=ctx.payload["asset"])
