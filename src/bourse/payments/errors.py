"""The payments domain's refusals, each with its own stable code."""

from __future__ import annotations

from bourse.errors import Conflict, Forbidden, NotFound


class UnknownConnector(NotFound):
    code = "unknown_connector"


class DepositNotFound(NotFound):
    code = "deposit_not_found"


class WithdrawalNotFound(NotFound):
    code = "withdrawal_not_found"


class ReportNotFound(NotFound):
    code = "report_not_found"


class WithdrawalsBlocked(Conflict):
    """A refund or chargeback left the user owing money; settle it first."""

    code = "withdrawals_blocked"


class CoolingOff(Conflict):
    code = "withdrawal_cooling_off"


class DailyLimitExceeded(Conflict):
    code = "daily_limit_exceeded"


class InvalidState(Conflict):
    """The deposit or withdrawal is not in a state that allows this."""

    code = "invalid_state"


class SelfApproval(Forbidden):
    code = "self_approval_forbidden"


class AlreadyApproved(Conflict):
    code = "already_approved"


class EventNotReady(Exception):
    """An event arrived before the one it depends on (a refund before its success).

    Not an API error: the processing job fails with it and the queue retries later.
    """


class DepositCurrencyMismatch(Conflict):
    """Under review because another currency arrived: Bourse credits no currency but the deposit's own.

    Reject it and return the money through the provider.
    """

    code = "deposit_currency_mismatch"


class ReceivedAmountUnknown(Conflict):
    """Under review, but the provider named no amount that arrived: there is nothing to credit."""

    code = "received_amount_unknown"
