"""Queue settings are validated at start-up like every other setting."""

from __future__ import annotations

import pytest

from bourse.settings import SettingsError, load_settings


def test_the_redis_driver_needs_a_redis_url() -> None:
    with pytest.raises(SettingsError, match="BOURSE_QUEUE_DRIVER: the redis driver needs BOURSE_REDIS_URL"):
        load_settings(queue_driver="redis")
    assert load_settings(queue_driver="redis", redis_url="redis://127.0.0.1:6379/0").queue_driver == "redis"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("queue_driver", "rabbitmq"),
        ("queue_retry_after_seconds", 0),
        ("queue_redis_prefix", "has space"),
        ("queue_redis_prefix", ""),
        ("worker_metrics_port", 70000),
        ("heartbeat_max_age_seconds", -1),
    ],
)
def test_invalid_queue_settings_are_refused(field: str, value: object) -> None:
    with pytest.raises(SettingsError, match=f"BOURSE_{field.upper()}"):
        load_settings(**{field: value})
