"""``idempotency.prune``: delete stored responses past their expiry.

Idempotent: deleting what has expired twice deletes nothing the second time.
"""

from __future__ import annotations

from bourse.idempotency.service import prune_expired
from bourse.logging import get_logger
from bourse.queue.registry import JobContext, job

log = get_logger("bourse.idempotency.jobs")


@job("idempotency.prune", queue="default", tries=3, timeout=60, unique=lambda _payload: "idempotency.prune")
def prune_job(ctx: JobContext) -> None:
    deleted = prune_expired(ctx.session)
    log.info("idempotency_keys_pruned", deleted=deleted)
