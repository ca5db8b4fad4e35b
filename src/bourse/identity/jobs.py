"""Identity's background job: delete refresh tokens and throttle windows that have expired.

Idempotent: it deletes by expiry only, so running it twice (a retry) deletes
nothing more the second time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bourse.identity.service import prune_expired_refresh_tokens
from bourse.identity.throttle import prune_login_attempts
from bourse.logging import get_logger
from bourse.queue.registry import JobContext, job

log = get_logger(__name__)


@job("identity.prune_expired", tries=3, timeout=120, unique=lambda _payload: "identity.prune_expired")
def prune_expired(ctx: JobContext) -> None:
    now = datetime.now(UTC)
    tokens = prune_expired_refresh_tokens(ctx.session, now)
    windows = prune_login_attempts(ctx.session, now)
    log.info("identity_pruned", refresh_tokens=tokens, login_attempt_windows=windows)
