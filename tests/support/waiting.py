"""Waiting on state, the one way the tests do it.

A test that needs something to have happened (a row to change, a server to answer,
a process to print a line) polls for that state with :func:`wait_until`, up to a
generous timeout, and fails naming what it waited for. It never sleeps a fixed time
and hopes: on a busy machine a fixed sleep is too short, on an idle one too long.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.05


def wait_until(
    probe: Callable[[], T],
    what: str | Callable[[], str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = DEFAULT_INTERVAL,
) -> T:
    """Call ``probe`` until it returns something truthy, and return that.

    ``what`` names the awaited state in the failure; a callable is asked only then,
    so it can describe what was last seen. The probe runs at least once, even with a
    zero timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {description}")
        time.sleep(interval)


async def wait_until_async(
    probe: Callable[[], T],
    what: str,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.01,
) -> T:
    """:func:`wait_until` inside an event loop: the loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
