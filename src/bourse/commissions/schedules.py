"""The commissions schedule: pay every IB yesterday's (and older) commissions at 00:45 UTC."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from bourse.commissions import service
from bourse.commissions.jobs import payout
from bourse.queue.producer import enqueue
from bourse.queue.registry import task


@task("45 0 * * *", name="commissions.payout", on_one_server=True)
def enqueue_payouts(session: Session) -> None:
    """One job per IB and asset, so one IB's failure does not hold back the others."""
    through = (datetime.now(UTC) - timedelta(days=1)).date()
    for ib_user_id, asset in service.due_payouts(session, through):
        enqueue(
            session,
            payout,
            {"ib_user_id": str(ib_user_id), "asset": asset, "through": through.isoformat()},
            unique_key=f"commission-payout:{ib_user_id}:{asset}:{through.isoformat()}",
        )
