"""The refusals of the commissions domain, each with its stable code."""

from __future__ import annotations

from bourse.errors import BourseError


class CommissionError(BourseError):
    """Base class of the commission refusals."""


class PayoutNotFound(CommissionError):
    """No such payout, or another IB's: both are reported as missing."""

    status_code = 404
    code = "payout_not_found"


class InvalidPeriod(CommissionError):
    """A report's ``from`` is after its ``to``."""

    status_code = 422
    code = "invalid_period"
