"""Picking a queue driver from the settings (``BOURSE_QUEUE_DRIVER``).

The drivers import their shared types from :mod:`bourse.queue.driver`; this module
imports the drivers, so nothing imports it back.
"""

from __future__ import annotations

from bourse.db import Database
from bourse.queue.driver import Driver
from bourse.settings import Settings


def make_driver(settings: Settings, db: Database) -> Driver:
    if settings.queue_driver == "redis":
        from bourse.queue.redis_driver import RedisDriver  # noqa: PLC0415 - redis only when configured

        return RedisDriver.from_settings(settings, db)
    from bourse.queue.database_driver import DatabaseDriver  # noqa: PLC0415

    return DatabaseDriver(db, retry_after=settings.queue_retry_after_seconds)
