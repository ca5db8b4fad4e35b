"""Process lifecycle state shared by the server and the readiness probe."""

from __future__ import annotations

import threading

_draining = threading.Event()


def start_draining() -> None:
    """Mark this process as shutting down: readiness turns 503 from now on."""
    _draining.set()


def is_draining() -> bool:
    return _draining.is_set()


def reset() -> None:
    """Forget a previous drain (a fresh server in the same process, e.g. in tests)."""
    _draining.clear()
