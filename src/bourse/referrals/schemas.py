"""Request and response bodies of the IB and commission-plan APIs.

Request bodies check shape and size only; the service checks the values, so its
refusals (``plan_exceeds_fee``, ``invalid_referral_code``, ...) are the same
whether a plan arrives over HTTP or from code.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from bourse.assets.amounts import AmountText
from bourse.identity.models import Role
from bourse.inputs import StrictJsonInt
from bourse.referrals.models import PlanKind


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReferralCodeIn(_In):
    code: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="The code to use (6 to 32 of A-Z, 0-9 and -); a random one when omitted",
        examples=["ALICE-2027"],
    )


class ReferralCodeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str
    active: bool
    created_at: datetime
    referred_users: int


class ReferralCodesOut(BaseModel):
    codes: list[ReferralCodeOut]


class ReferredUserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: uuid.UUID
    email: str
    joined: datetime
    code: str


class ReferredUsersOut(BaseModel):
    referrals: list[ReferredUserOut]


class DownlineMemberOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    user_id: uuid.UUID
    email: str
    role: Role
    level: int
    referred_by: uuid.UUID
    joined: datetime


class DownlineOut(BaseModel):
    max_depth: int
    members: list[DownlineMemberOut]


class PercentOfFeePlanIn(_In):
    kind: Literal["percent_of_fee"]
    levels: list[StrictJsonInt] = Field(
        max_length=64,
        description="Basis points of the client's fee per level, level 1 first; at most 10000 in all",
        examples=[[3000, 1000]],
    )


class PerLotPlanIn(_In):
    kind: Literal["per_lot"]
    amounts: dict[str, AmountText] = Field(
        max_length=1000,
        description="Per instrument symbol, the amount per lot traded in the quote asset (level 1 only)",
        examples=[{"BTC-USD": "2.50"}],
    )


PlanIn = Annotated[PercentOfFeePlanIn | PerLotPlanIn, Field(discriminator="kind")]


class PlanOut(BaseModel):
    id: uuid.UUID
    ib_user_id: uuid.UUID
    kind: PlanKind
    levels: list[int] | None
    amounts: dict[str, str] | None
    valid_from: datetime
    valid_to: datetime | None
    created_by: uuid.UUID | None


class PlansOut(BaseModel):
    plans: list[PlanOut]
