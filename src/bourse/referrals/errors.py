"""The refusals of the referrals domain, each with its stable code."""

from __future__ import annotations

from bourse.errors import BourseError, Conflict, NotFound, Unprocessable


class ReferralError(BourseError):
    """Base class of the referral and commission-plan refusals."""


class InvalidReferralCode(Unprocessable, ReferralError):
    """A code chosen by an IB that does not have the shape of a referral code."""

    code = "invalid_referral_code"


class ReferralCodeTaken(Conflict, ReferralError):
    code = "referral_code_taken"


class TooManyReferralCodes(Conflict, ReferralError):
    code = "too_many_referral_codes"


class ReferralCodeNotFound(NotFound, ReferralError):
    """No such code, or another IB's: both are reported as missing."""

    code = "referral_code_not_found"


class UnknownReferralCode(Unprocessable, ReferralError):
    """Given at registration: no such code, or it was deactivated."""

    code = "unknown_referral_code"


class AlreadyReferred(Conflict, ReferralError):
    code = "already_referred"


class SelfReferral(Unprocessable, ReferralError):
    code = "self_referral"


class IbNotFound(NotFound, ReferralError):
    code = "ib_not_found"


class NotAnIb(Unprocessable, ReferralError):
    code = "not_an_ib"


class PlanNotFound(NotFound, ReferralError):
    code = "plan_not_found"


class PlanInvalid(Unprocessable, ReferralError):
    """A plan whose terms are malformed (a level outside 0 to 10000, a bad symbol or amount)."""

    code = "plan_invalid"


class PlanExceedsFee(Unprocessable, ReferralError):
    """The levels of a percent-of-fee plan would pay out more than the whole fee."""

    code = "plan_exceeds_fee"


class PlanTooDeep(Unprocessable, ReferralError):
    """More levels than ``BOURSE_IB_MAX_DEPTH``: the extra levels could never be paid."""

    code = "plan_too_deep"
