"""The refusals of the commissions domain, each with its stable code."""

from __future__ import annotations

from bourse.errors import BourseError, NotFound, Unprocessable


class CommissionError(BourseError):
    """Base class of the commission refusals."""


class PayoutNotFound(NotFound, CommissionError):
    """No such payout, or another IB's: both are reported as missing."""

    code = "payout_not_found"


class InvalidPeriod(Unprocessable, CommissionError):
    """A report's ``from`` is after its ``to``."""

    code = "invalid_period"
