"""The commissions jobs: accrue the commissions of a batch of trades, pay one IB out in one asset.

Both are safe to run twice (delivery is at least once): accrual is guarded by its
rows (unique per trade, side and level) and its ledger key, a payout by the accruals
it marks paid.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date
from typing import Any

from bourse.commissions import service
from bourse.logging import get_logger
from bourse.queue.registry import JobContext, job

log = get_logger("bourse.commissions.jobs")

# A trade's accrual waits on nothing but the database: retry a busy or restarting
# database for about half an hour, then park it in the failed jobs for operators.
_BACKOFF = (1.0, 5.0, 15.0, 60.0, 300.0)


def _trade_ids(payload: Mapping[str, Any]) -> list[int]:
    """The trades a job names: ``trade_ids`` (one matcher batch) or ``trade_id`` (jobs queued before batches)."""
    if "trade_ids" in payload:
        return [int(trade_id) for trade_id in payload["trade_ids"]]
    return [int(payload["trade_id"])]


@job(service.ACCRUE_JOB, queue="commissions", tries=10, timeout=60, backoff=_BACKOFF)
def accrue(ctx: JobContext) -> None:
    """Accrue the commissions on every trade of one matcher batch, in one transaction."""
    max_depth = ctx.settings_of().ib_max_depth
    for trade_id in _trade_ids(ctx.payload):
        service.accrue(ctx.session, trade_id, max_depth=max_depth, actor=f"job:{service.ACCRUE_JOB}")


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
