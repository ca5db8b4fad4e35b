"""The active connectors, built once per configuration from ``BOURSE_PSP_CONNECTORS``.

Connectors hold an HTTP connection pool each, so they are built once per process
for a given configuration and shared by every request and job.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from bourse.psp.connectors.base import Connector
from bourse.settings import Settings

_lock = threading.Lock()
_built: dict[tuple[object, ...], dict[str, Connector]] = {}


def _key(settings: Settings) -> tuple[object, ...]:
    stripe_key = settings.stripe_api_key.get_secret_value() if settings.stripe_api_key else None
    stripe_hook = settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else None
    return (
        settings.psp_connectors,
        settings.psp_sim_url,
        settings.psp_api_key.get_secret_value(),
        settings.psp_secret.get_secret_value(),
        settings.psp_timeout_seconds,
        stripe_key,
        stripe_hook,
        settings.stripe_api_base,
        settings.public_url,
    )


def _build(settings: Settings, name: str) -> Connector:
    if name == "simulator":
        from bourse.psp.connectors.simulator import SimulatorConnector  # noqa: PLC0415 - only when configured

        return SimulatorConnector(
            settings.psp_sim_url,
            settings.psp_api_key.get_secret_value(),
            settings.psp_secret.get_secret_value(),
            timeout=settings.psp_timeout_seconds,
        )
    if name == "stripe":
        from bourse.psp.connectors.stripe import StripeConnector  # noqa: PLC0415 - only when configured

        if settings.stripe_api_key is None or settings.stripe_webhook_secret is None:
            raise ValueError("the stripe connector needs BOURSE_STRIPE_API_KEY and BOURSE_STRIPE_WEBHOOK_SECRET")
        return StripeConnector(
            settings.stripe_api_key.get_secret_value(),
            settings.stripe_webhook_secret.get_secret_value(),
            public_url=settings.public_url,
            timeout=settings.psp_timeout_seconds,
            api_base=settings.stripe_api_base,
        )
    raise ValueError(f"unknown connector {name!r}")


def connectors(settings: Settings) -> Mapping[str, Connector]:
    """Every active connector by name, in the configured order."""
    key = _key(settings)
    with _lock:
        built = _built.get(key)
        if built is None:
            built = {name: _build(settings, name) for name in settings.psp_connectors}
            _built[key] = built
        return built


def close_all() -> None:
    """Close every connector built so far (their connection pools); for shutdown."""
    with _lock:
        built = list(_built.values())
        _built.clear()
    for by_name in built:
        for connector in by_name.values():
            close = getattr(connector, "close", None)
            if callable(close):
                close()
