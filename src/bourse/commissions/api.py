"""``/api/v1/ib/commissions`` and ``/api/v1/ib/payouts``: an IB's own commissions (role ``ib``).

Another IB's payout is a 404, like one that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query
from sqlalchemy.orm import Session

from bourse.api.routing import DbSession, router
from bourse.assets.amounts import format_amount
from bourse.assets.models import Asset
from bourse.commissions import service
from bourse.commissions.errors import InvalidPeriod, PayoutNotFound
from bourse.commissions.models import CommissionPayout
from bourse.commissions.schemas import (
    CommissionLineOut,
    CommissionsOut,
    GroupBy,
    PayoutDetailOut,
    PayoutOut,
    PayoutsOut,
)
from bourse.errors import raises
from bourse.identity.dependencies import Principal, require_roles
from bourse.identity.models import Role
from bourse.inputs import Day, Offset

ib_commissions = router(prefix="/api/v1/ib", tags=["ib"])

Ib = Annotated[Principal, Depends(require_roles(Role.ib))]
MAX_PAGE = 500


def _payout_out(session: Session, payout: CommissionPayout) -> PayoutOut:
    scale = session.get_one(Asset, payout.asset).scale
    return PayoutOut(
        id=payout.id,
        asset=payout.asset,
        amount=format_amount(payout.amount, scale),
        accruals=payout.accruals,
        entry_id=payout.entry_id,
        created_at=payout.created_at,
    )


@raises(InvalidPeriod)
@ib_commissions.get("/commissions", summary="My commissions summed per day, client or instrument (IB)")
def commissions(
    session: DbSession,
    principal: Ib,
    group_by: GroupBy = "day",
    start: Annotated[Day | None, Query(alias="from", description="First UTC trading day, inclusive")] = None,
    end: Annotated[Day | None, Query(alias="to", description="Last UTC trading day, inclusive")] = None,
) -> CommissionsOut:
    if start is not None and end is not None and start > end:
        raise InvalidPeriod("'from' is after 'to'")
    lines = service.report(session, principal.user_id, group_by=group_by, start=start, end=end)
    return CommissionsOut(
        group_by=group_by,
        start=start,
        end=end,
        lines=[CommissionLineOut.model_validate(line) for line in lines],
    )


@ib_commissions.get("/payouts", summary="My commission payouts, newest first (IB)")
def payouts(
    session: DbSession,
    principal: Ib,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Offset = 0,
) -> PayoutsOut:
    found = service.list_payouts(session, principal.user_id, limit=limit, offset=offset)
    return PayoutsOut(payouts=[_payout_out(session, payout) for payout in found])


@raises(PayoutNotFound)
@ib_commissions.get("/payouts/{payout_id}", summary="One of my commission payouts, with its statement (IB)")
def payout(payout_id: uuid.UUID, session: DbSession, principal: Ib) -> PayoutDetailOut:
    found = service.get_payout(session, payout_id, ib_user_id=principal.user_id)
    return PayoutDetailOut(**_payout_out(session, found).model_dump(), statement=found.statement)
