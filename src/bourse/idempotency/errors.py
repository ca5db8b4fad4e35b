"""The refusals of an idempotent request, each with its own stable code (see :mod:`bourse.idempotency.service`)."""

from __future__ import annotations

from bourse.errors import BadRequest, Conflict, Unprocessable


class IdempotencyKeyRequired(BadRequest):
    code = "idempotency_key_required"


class IdempotencyKeyInvalid(BadRequest):
    code = "idempotency_key_invalid"


class IdempotencyKeyReused(Unprocessable):
    code = "idempotency_key_reused"


class IdempotencyInProgress(Conflict):
    code = "idempotency_in_progress"
