"""The ledger's refusals, each with its own stable code."""

from __future__ import annotations

from bourse.errors import BourseError, Conflict


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class HoldNotFound(BourseError):
    status_code = 404
    code = "hold_not_found"


class HoldAlreadyCaptured(Conflict):
    code = "hold_already_captured"


class HoldReleased(Conflict):
    code = "hold_released"


class CaptureExceedsHold(Conflict):
    code = "capture_exceeds_hold"


class AccountNotFound(BourseError):
    status_code = 404
    code = "account_not_found"


class EntryNotFound(BourseError):
    status_code = 404
    code = "entry_not_found"


class EntryNotReversible(Conflict):
    code = "entry_not_reversible"


class EntryAlreadyReversed(Conflict):
    code = "entry_already_reversed"


class EntryKeyConflict(Conflict):
    """An entry idempotency key was reused for a different movement."""

    code = "entry_key_conflict"


class AssetMismatch(BourseError):
    status_code = 422
    code = "asset_mismatch"


class UnknownUser(BourseError):
    status_code = 422
    code = "unknown_recipient"
