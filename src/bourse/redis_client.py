"""Redis clients built from the settings: the one the API, the login throttle and the
queue share, and the market-data subscriber's.

Infrastructure: it knows the settings and nothing of the domains or the web framework.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bourse.settings import Settings


def _redis_address(url: str, settings: Settings) -> tuple[str, str | None]:
    password = None
    if settings.redis_password is not None:
        # The secret wins over a password in the URL, as BOURSE_DATABASE_PASSWORD does.
        password = settings.redis_password.get_secret_value()
        parts = urlsplit(url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        user = parts.username
        url = urlunsplit(parts._replace(netloc=f"{user}@{netloc}" if user else netloc))
    return url, password


def create_redis(settings: Settings) -> Redis | None:
    """The client for ``BOURSE_REDIS_URL``, or None when Redis is not configured."""
    if settings.redis_url is None:
        return None
    url, password = _redis_address(settings.redis_url, settings)
    client: Redis = Redis.from_url(
        url,
        password=password,
        socket_timeout=settings.readiness_timeout_seconds,
        socket_connect_timeout=settings.readiness_timeout_seconds,
        health_check_interval=30,
    )
    return client


def create_async_redis(settings: Settings, redis_url: str) -> AsyncRedis:
    """A client for the market data subscriber: no socket timeout (it waits for
    messages) and no retries of its own, so the subscriber sees every drop and resyncs."""
    url, password = _redis_address(redis_url, settings)
    client: AsyncRedis = AsyncRedis.from_url(
        url,
        password=password,
        socket_connect_timeout=settings.readiness_timeout_seconds,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return client
