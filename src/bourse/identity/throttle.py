"""Login throttling per account and per client IP, in Redis or in the database.

Failed sign-ins are counted per key in fixed windows of
``login_throttle_window_seconds``. Once a key has reached its limit in the current
window, further attempts are refused with 429 ``too_many_attempts`` and a
``Retry-After`` until the window ends, *before* the password is checked (so the
refusal also spares the argon2 work). A successful sign-in clears the account's
counter, not the IP's.

The account key is a hash of the normalised email whether or not such an account
exists, and unknown and known emails are counted alike, so the throttle cannot be
used to find out which emails have accounts.

With ``BOURSE_REDIS_URL`` configured the counters live in Redis (``INCR`` and
``EXPIRE``: shared by every API process, and nothing to clean up). Otherwise they
live in the ``login_attempt_windows`` table, written in their own short
transactions so that a failed attempt is counted even though the request that
made it is refused (and rolled back).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from redis import Redis, RedisError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from bourse.db import Database, unit_of_work, upsert
from bourse.identity.errors import ThrottleUnavailable, TooManyAttempts
from bourse.identity.models import LoginAttemptWindow
from bourse.logging import get_logger
from bourse.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class ThrottleKey:
    key: str
    limit: int


def login_keys(settings: Settings, email: str, client_ip: str | None) -> list[ThrottleKey]:
    """The throttle keys for one sign-in attempt: its account and its client IP."""
    digest = hashlib.sha256(email.encode("utf-8")).hexdigest()
    keys = [ThrottleKey(f"account:{digest}", settings.login_max_failures_per_account)]
    if client_ip:
        keys.append(ThrottleKey(f"ip:{client_ip[:80]}", settings.login_max_failures_per_ip))
    return keys


def _window(now: datetime, window_seconds: int) -> tuple[int, int]:
    """The current window's start (Unix seconds) and the whole seconds until it ends."""
    timestamp = now.timestamp()
    start = int(timestamp // window_seconds) * window_seconds
    return start, max(1, math.ceil(start + window_seconds - timestamp))


class LoginThrottle(Protocol):
    def check(self, keys: list[ThrottleKey], now: datetime) -> None:
        """Raise :class:`TooManyAttempts` if any key is at its limit."""

    def record_failure(self, keys: list[ThrottleKey], now: datetime) -> None:
        """Count one failed attempt against every key."""

    def clear(self, key: ThrottleKey, now: datetime) -> None:
        """Forget a key's failures in the current window (after a success)."""


class RedisLoginThrottle:
    """Counters in Redis: one key per throttle key and window, expiring with it.

    If Redis does not answer, sign-in fails closed with 503 ``throttle_unavailable``:
    an outage must not switch off brute-force protection.
    """

    def __init__(self, redis: Redis, window_seconds: int, prefix: str = "bourse:login-throttle:") -> None:
        self.redis = redis
        self.window_seconds = window_seconds
        self.prefix = prefix

    def _name(self, key: ThrottleKey, start: int) -> str:
        return f"{self.prefix}{key.key}:{start}"

    def check(self, keys: list[ThrottleKey], now: datetime) -> None:
        start, retry_after = _window(now, self.window_seconds)
        try:
            counts = self.redis.mget([self._name(key, start) for key in keys])
        except RedisError as exc:
            raise ThrottleUnavailable from exc
        for key, count in zip(keys, counts, strict=True):
            if count is not None and int(count) >= key.limit:
                raise TooManyAttempts(retry_after)

    def record_failure(self, keys: list[ThrottleKey], now: datetime) -> None:
        start, _ = _window(now, self.window_seconds)
        pipe = self.redis.pipeline(transaction=True)
        for key in keys:
            name = self._name(key, start)
            pipe.incr(name)
            pipe.expire(name, self.window_seconds + 1)
        try:
            pipe.execute()
        except RedisError as exc:
            raise ThrottleUnavailable from exc

    def clear(self, key: ThrottleKey, now: datetime) -> None:
        start, _ = _window(now, self.window_seconds)
        try:
            self.redis.delete(self._name(key, start))
        except RedisError:
            # The sign-in already succeeded; the counter simply expires with its window.
            log.warning("login_throttle_clear_failed", key_kind=key.key.split(":", 1)[0])


class DatabaseLoginThrottle:
    """Counters in ``login_attempt_windows``, each change in its own transaction."""

    def __init__(self, db: Database, window_seconds: int) -> None:
        self.db = db
        self.window_seconds = window_seconds

    def check(self, keys: list[ThrottleKey], now: datetime) -> None:
        start, retry_after = _window(now, self.window_seconds)
        limits = {key.key: key.limit for key in keys}
        with unit_of_work(self.db) as session:
            rows = session.execute(
                select(LoginAttemptWindow.key, LoginAttemptWindow.failures).where(
                    LoginAttemptWindow.key.in_(limits), LoginAttemptWindow.window_start == start
                )
            ).all()
        for key, failures in rows:
            if failures >= limits[key]:
                raise TooManyAttempts(retry_after)

    def record_failure(self, keys: list[ThrottleKey], now: datetime) -> None:
        start, _ = _window(now, self.window_seconds)
        expires_at = datetime.fromtimestamp(start + self.window_seconds, UTC)
        with unit_of_work(self.db) as session:
            for key in keys:
                # One atomic upsert: concurrent failures never lose a count.
                statement = upsert(session, LoginAttemptWindow).values(
                    key=key.key, window_start=start, failures=1, expires_at=expires_at
                )
                session.execute(
                    statement.on_conflict_do_update(
                        index_elements=[LoginAttemptWindow.key, LoginAttemptWindow.window_start],
                        set_={"failures": LoginAttemptWindow.failures + 1},
                    )
                )

    def clear(self, key: ThrottleKey, now: datetime) -> None:
        start, _ = _window(now, self.window_seconds)
        with unit_of_work(self.db) as session:
            session.execute(
                delete(LoginAttemptWindow).where(
                    LoginAttemptWindow.key == key.key, LoginAttemptWindow.window_start == start
                )
            )


def create_login_throttle(settings: Settings, db: Database, redis: Redis | None) -> LoginThrottle:
    """Redis when configured, the database otherwise."""
    if redis is not None:
        return RedisLoginThrottle(redis, settings.login_throttle_window_seconds)
    return DatabaseLoginThrottle(db, settings.login_throttle_window_seconds)


def prune_login_attempts(session: Session, now: datetime, *, grace: timedelta = timedelta(minutes=1)) -> int:
    """Delete database throttle windows that have ended. Returns how many."""
    result = session.execute(delete(LoginAttemptWindow).where(LoginAttemptWindow.expires_at < now - grace))
    return int(getattr(result, "rowcount", 0) or 0)
