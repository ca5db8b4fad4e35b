"""The refusals of the referrals domain, each with its stable code."""

from __future__ import annotations

from bourse.errors import BourseError, Conflict


class ReferralError(BourseError):
    """Base class of the referral and commission-plan refusals."""


class InvalidReferralCode(ReferralError):
    """A code chosen by an IB that does not have the shape of a referral code."""

    status_code = 422
    code = "invalid_referral_code"


class ReferralCodeTaken(Conflict, ReferralError):
    code = "referral_code_taken"


class TooManyReferralCodes(Conflict, ReferralError):
    code = "too_many_referral_codes"


class ReferralCodeNotFound(ReferralError):
    """No such code, or another IB's: both are reported as missing."""

    status_code = 404
    code = "referral_code_not_found"


class UnknownReferralCode(ReferralError):
    """Given at registration: no such code, or it was deactivated."""

    status_code = 422
    code = "unknown_referral_code"


class AlreadyReferred(Conflict, ReferralError):
    code = "already_referred"


class SelfReferral(ReferralError):
    status_code = 422
    code = "self_referral"


class IbNotFound(ReferralError):
    status_code = 404
    code = "ib_not_found"


class NotAnIb(ReferralError):
    status_code = 422
    code = "not_an_ib"


class PlanNotFound(ReferralError):
    status_code = 404
    code = "plan_not_found"


class PlanInvalid(ReferralError):
    """A plan whose terms are malformed (a level outside 0 to 10000, a bad symbol or amount)."""

    status_code = 422
    code = "plan_invalid"


class PlanExceedsFee(ReferralError):
    """The levels of a percent-of-fee plan would pay out more than the whole fee."""

    status_code = 422
    code = "plan_exceeds_fee"


class PlanTooDeep(ReferralError):
    """More levels than ``BOURSE_IB_MAX_DEPTH``: the extra levels could never be paid."""

    status_code = 422
    code = "plan_too_deep"
