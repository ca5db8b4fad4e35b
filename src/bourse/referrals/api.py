"""``/api/v1/ib`` (introducing brokers) and ``/api/v1/admin/ib`` (their commission plans).

IB endpoints admit only the ``ib`` role, plan endpoints only ``admin``; other
roles get 403 ``forbidden``. An IB sees only their own codes and downline:
another IB's code is a 404, like one that does not exist.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Request, Response

from bourse.api.routing import DbSession, router
from bourse.errors import raises
from bourse.identity.dependencies import Principal, require_roles
from bourse.identity.models import Role
from bourse.inputs import Offset
from bourse.referrals import service
from bourse.referrals.errors import (
    IbNotFound,
    InvalidReferralCode,
    NotAnIb,
    PlanExceedsFee,
    PlanInvalid,
    PlanNotFound,
    PlanTooDeep,
    ReferralCodeNotFound,
    ReferralCodeTaken,
    TooManyReferralCodes,
)
from bourse.referrals.models import PlanKind
from bourse.referrals.schemas import (
    DownlineMemberOut,
    DownlineOut,
    PercentOfFeePlanIn,
    PlanIn,
    PlanOut,
    PlansOut,
    ReferralCodeIn,
    ReferralCodeOut,
    ReferralCodesOut,
    ReferredUserOut,
    ReferredUsersOut,
)
from bourse.settings import Settings

ib = router(prefix="/api/v1/ib", tags=["ib"])
ib_admin = router(prefix="/api/v1/admin/ib", tags=["admin"])

Ib = Annotated[Principal, Depends(require_roles(Role.ib))]
Admin = Annotated[Principal, Depends(require_roles(Role.admin))]

MAX_PAGE = 500


def _max_depth(request: Request) -> int:
    settings: Settings = request.app.state.settings
    return settings.ib_max_depth


def _plan_out(plan: service.Plan) -> PlanOut:
    percent = plan.kind is PlanKind.percent_of_fee
    return PlanOut(
        id=plan.id,
        ib_user_id=plan.ib_user_id,
        kind=plan.kind,
        levels=list(plan.levels) if percent else None,
        amounts=None if percent else dict(plan.amounts),
        valid_from=plan.valid_from,
        valid_to=plan.valid_to,
        created_by=plan.created_by,
    )


# -- Referral codes -------------------------------------------------------------------


@raises(InvalidReferralCode, ReferralCodeTaken, TooManyReferralCodes)
@ib.post("/referral-codes", status_code=201, summary="Create a referral code (IB)")
def create_referral_code(session: DbSession, principal: Ib, body: ReferralCodeIn | None = None) -> ReferralCodeOut:
    row = service.create_code(session, principal.user_id, body.code if body is not None else None)
    return ReferralCodeOut(code=row.code, active=row.active, created_at=row.created_at, referred_users=0)


@ib.get("/referral-codes", summary="My referral codes, newest first (IB)")
def list_referral_codes(session: DbSession, principal: Ib) -> ReferralCodesOut:
    return ReferralCodesOut(
        codes=[ReferralCodeOut.model_validate(code) for code in service.list_codes(session, principal.user_id)]
    )


@raises(ReferralCodeNotFound)
@ib.delete("/referral-codes/{code}", status_code=204, summary="Deactivate one of my referral codes (IB)")
def deactivate_referral_code(code: str, session: DbSession, principal: Ib) -> Response:
    service.deactivate_code(session, principal.user_id, code)
    return Response(status_code=204)


# -- Referred users -------------------------------------------------------------------


@ib.get("/referrals", summary="Users I referred directly, newest first (IB)")
def list_referrals(
    session: DbSession,
    principal: Ib,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
    offset: Offset = 0,
) -> ReferredUsersOut:
    return ReferredUsersOut(
        referrals=[
            ReferredUserOut.model_validate(user)
            for user in service.referred_users(session, principal.user_id, limit=limit, offset=offset)
        ]
    )


@ib.get("/referrals/tree", summary="My downline to BOURSE_IB_MAX_DEPTH levels (IB)")
def referral_tree(request: Request, session: DbSession, principal: Ib) -> DownlineOut:
    depth = _max_depth(request)
    return DownlineOut(
        max_depth=depth,
        members=[
            DownlineMemberOut.model_validate(member) for member in service.downline(session, principal.user_id, depth)
        ],
    )


# -- Commission plans (admin) ---------------------------------------------------------


@raises(PlanInvalid, PlanTooDeep, PlanExceedsFee, IbNotFound, NotAnIb)
@ib_admin.put("/{ib_user_id}/plan", summary="Replace an IB's commission plan (admin)")
def put_plan(ib_user_id: uuid.UUID, body: PlanIn, request: Request, session: DbSession, admin: Admin) -> PlanOut:
    if isinstance(body, PercentOfFeePlanIn):
        plan = service.set_plan(
            session,
            ib_user_id,
            kind=PlanKind.percent_of_fee,
            levels=body.levels,
            max_depth=_max_depth(request),
            actor=admin.user_id,
        )
    else:
        plan = service.set_plan(
            session,
            ib_user_id,
            kind=PlanKind.per_lot,
            amounts=body.amounts,
            max_depth=_max_depth(request),
            actor=admin.user_id,
        )
    return _plan_out(plan)


@raises(PlanNotFound)
@ib_admin.get("/{ib_user_id}/plan", summary="An IB's current commission plan (admin)")
def get_plan(ib_user_id: uuid.UUID, session: DbSession, _: Admin) -> PlanOut:
    plan = service.current_plan(session, ib_user_id)
    if plan is None:
        raise PlanNotFound("This IB has no commission plan")
    return _plan_out(plan)


@ib_admin.get("/{ib_user_id}/plans", summary="Every version of an IB's commission plan, newest first (admin)")
def get_plan_history(ib_user_id: uuid.UUID, session: DbSession, _: Admin) -> PlansOut:
    return PlansOut(plans=[_plan_out(plan) for plan in service.plan_history(session, ib_user_id)])
