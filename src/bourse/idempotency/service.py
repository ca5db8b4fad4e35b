"""Idempotency for money-moving requests.

A client that retries a request (a timeout, a dropped connection) must not move
money twice. Every money-moving endpoint takes an ``Idempotency-Key`` header,
scoped to the authenticated user and kept for at least 24 hours:

- the first request under a key runs, and its response is stored **in the same
  transaction** as its effect, so a stored response exists if and only if the
  effect was committed (a refusal rolls back and stores nothing, so a retry
  after, say, funding the wallet runs again);
- the same key with the same request replays the stored status and body;
- the same key with a different request is 422 ``idempotency_key_reused``;
- the same key while the first request is still running is 409
  ``idempotency_in_progress``.

On PostgreSQL the in-flight check is a transaction-scoped advisory lock on the
(user, key) pair, taken with ``pg_try_advisory_xact_lock`` so the duplicate is
refused at once rather than queued; it is released by the commit or rollback
that ends the first request. SQLite runs one writer at a time, so there a
duplicate waits for the first request and then replays its response.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, func, insert, select
from sqlalchemy.orm import Session

from bourse.idempotency.errors import (
    IdempotencyInProgress,
    IdempotencyKeyInvalid,
    IdempotencyKeyRequired,
    IdempotencyKeyReused,
)
from bourse.idempotency.models import IdempotencyRecord
from bourse.sqltypes import utcnow

# Printable ASCII without spaces, as Stripe and the IETF draft allow; 255 at most.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: Any


def check_key(key: str | None) -> str:
    if key is None or key == "":
        raise IdempotencyKeyRequired("This request moves money: send an Idempotency-Key header")
    if not _KEY.fullmatch(key):
        raise IdempotencyKeyInvalid("An Idempotency-Key is 1 to 255 printable ASCII characters without spaces")
    return key


def fingerprint(method: str, path: str, body: Any) -> str:
    """What makes two requests "the same": method, path and the JSON body, canonically."""
    canonical = json.dumps([method.upper(), path, body], sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lock_id(user_id: uuid.UUID, key: str) -> int:
    digest = hashlib.sha256(f"idempotency:{user_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


_RECORD = (IdempotencyRecord.user_id == bindparam("user_id")) & (IdempotencyRecord.key == bindparam("key"))
_STORED = select(
    IdempotencyRecord.fingerprint,
    IdempotencyRecord.response_status,
    IdempotencyRecord.response_body,
    IdempotencyRecord.expires_at,
).where(_RECORD)
_FORGET = delete(IdempotencyRecord).where(_RECORD)
_CLAIM = select(func.pg_try_advisory_xact_lock(bindparam("lock_id")))
_STORE = insert(IdempotencyRecord)


def begin(session: Session, *, user_id: uuid.UUID, key: str, request_fingerprint: str) -> StoredResponse | None:
    """Claim the key for this transaction, or return the response to replay."""
    # Core on the session's connection, not the ORM: this runs on every money-moving request.
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        claimed = conn.execute(_CLAIM, {"lock_id": _lock_id(user_id, key)}).scalar()
        if not claimed:
            raise IdempotencyInProgress("A request with this Idempotency-Key is still being processed")
    record = conn.execute(_STORED, {"user_id": user_id, "key": key}).first()
    if record is None:
        return None
    if record.expires_at <= utcnow():
        conn.execute(_FORGET, {"user_id": user_id, "key": key})
        return None
    if record.fingerprint != request_fingerprint:
        raise IdempotencyKeyReused("This Idempotency-Key was already used for a different request")
    return StoredResponse(status=record.response_status, body=json.loads(record.response_body))


def complete(
    session: Session,
    *,
    user_id: uuid.UUID,
    key: str,
    request_fingerprint: str,
    status: int,
    body: Any,
    ttl: timedelta,
) -> None:
    now = utcnow()
    # A Core insert on the session's connection, built once: this runs on every
    # money-moving request, and the ORM's unit of work would cost more than the statement.
    session.connection().execute(
        _STORE,
        {
            "user_id": user_id,
            "key": key,
            "fingerprint": request_fingerprint,
            "response_status": status,
            "response_body": json.dumps(body, separators=(",", ":")),
            "created_at": now,
            "expires_at": now + ttl,
        },
    )


def prune_expired(session: Session, now: datetime | None = None) -> int:
    """Delete the records past their expiry; the number deleted."""
    result = session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= (now or utcnow())))
    return int(result.rowcount)  # type: ignore[attr-defined]
