"""The ledger's refusals, each with its own stable code."""

from __future__ import annotations

from bourse.errors import Conflict, NotFound, Unprocessable


class InsufficientFunds(Conflict):
    code = "insufficient_funds"


class HoldNotFound(NotFound):
    code = "hold_not_found"


class HoldAlreadyCaptured(Conflict):
    code = "hold_already_captured"


class HoldReleased(Conflict):
    code = "hold_released"


class CaptureExceedsHold(Conflict):
    code = "capture_exceeds_hold"


class AccountNotFound(NotFound):
    code = "account_not_found"


class EntryNotFound(NotFound):
    code = "entry_not_found"


class EntryNotReversible(Conflict):
    code = "entry_not_reversible"


class EntryAlreadyReversed(Conflict):
    code = "entry_already_reversed"


class EntryKeyConflict(Conflict):
    """An entry idempotency key was reused for a different movement."""

    code = "entry_key_conflict"


class AssetMismatch(Unprocessable):
    code = "asset_mismatch"


class UnknownUser(Unprocessable):
    code = "unknown_recipient"
