"""The hourly prune of expired refresh tokens and throttle windows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.identity.jobs import prune_expired
from bourse.identity.models import LoginAttemptWindow, RefreshToken
from bourse.identity.service import prune_expired_refresh_tokens
from bourse.identity.throttle import DatabaseLoginThrottle, ThrottleKey
from bourse.queue.registry import JobContext, load_jobs, load_tasks
from tests.identity.helpers import unique_ip
from tests.support.auth import make_user


def _token(user_id: uuid.UUID, expires_at: datetime) -> RefreshToken:
    return RefreshToken(
        id=uuid.uuid4(),
        user_id=user_id,
        family_id=uuid.uuid4(),
        token_hash=uuid.uuid4().hex + uuid.uuid4().hex,
        created_at=expires_at - timedelta(days=30),
        expires_at=expires_at,
    )


def test_the_job_deletes_only_what_has_expired(database: Database) -> None:
    user = make_user(database)
    now = datetime.now(UTC)
    expired, live = _token(user.id, now - timedelta(seconds=1)), _token(user.id, now + timedelta(days=1))
    with unit_of_work(database) as session:
        session.add_all([expired, live])
    old_key, new_key = ThrottleKey(f"ip:{unique_ip()}", 5), ThrottleKey(f"ip:{unique_ip()}", 5)
    throttle = DatabaseLoginThrottle(database, 60)
    throttle.record_failure([old_key], now - timedelta(hours=1))
    throttle.record_failure([new_key], now)

    for attempt in (1, 2):  # a retry is harmless
        with unit_of_work(database) as session:
            prune_expired.handler(
                JobContext(session, {}, job_id="job-1", attempt=attempt, queue="default", request_id=None)
            )

    with unit_of_work(database) as session:
        tokens = set(session.scalars(select(RefreshToken.id).where(RefreshToken.user_id == user.id)))
        windows = set(
            session.scalars(
                select(LoginAttemptWindow.key).where(LoginAttemptWindow.key.in_([old_key.key, new_key.key]))
            )
        )
        assert prune_expired_refresh_tokens(session, now) == 0
    assert tokens == {live.id}
    assert windows == {new_key.key}


def test_the_task_and_job_are_registered() -> None:
    assert load_jobs()["identity.prune_expired"].handler is prune_expired.handler
    task = load_tasks()["identity.prune_expired"]
    assert task.cron == "17 * * * *"
    assert task.on_one_server
