"""Waiting for the matcher's outcomes: marks, announcements from threads, timeouts, and
the PostgreSQL listener that turns ``bourse_order_results`` notifications into them."""

from __future__ import annotations

import asyncio
import threading

import psycopg
from sqlalchemy.engine import make_url

from bourse.trading.results import RESULTS_CHANNEL, Listener, OrderResults, parse_payload
from tests.support.waiting import wait_until


def test_a_wait_ends_when_every_id_is_announced_after_its_mark() -> None:
    results = OrderResults()

    async def scenario() -> bool:
        mark = results.mark()
        waiting = asyncio.ensure_future(results.wait([1, 2], after=mark, timeout=5))
        await asyncio.sleep(0)
        # From another thread, as the matcher and the listener announce.
        threading.Thread(target=results.announce, args=([1],)).start()
        await asyncio.sleep(0.05)
        assert not waiting.done()  # 2 is still outstanding
        threading.Thread(target=results.announce, args=([2, 3],)).start()
        return await waiting

    assert asyncio.run(scenario()) is True


def test_an_announcement_between_the_commit_and_the_wait_is_not_missed() -> None:
    results = OrderResults()

    async def scenario() -> bool:
        mark = results.mark()
        results.announce([7])  # the matcher was quicker than the request's return to the loop
        return await results.wait([7], after=mark, timeout=0.01)

    assert asyncio.run(scenario()) is True


def test_an_announcement_before_the_mark_does_not_count() -> None:
    results = OrderResults()
    results.announce([7])  # the order's placement; the request now waits for its cancel

    async def scenario() -> bool:
        return await results.wait([7], after=results.mark(), timeout=0.05)

    assert asyncio.run(scenario()) is False
    assert results._waiters == {}  # a wait that timed out leaves nothing behind


def test_the_payload_is_order_ids_and_junk_is_ignored() -> None:
    assert parse_payload("1,22,x,,333") == [1, 22, 333]


def test_the_listener_announces_what_is_notified_on_postgresql(postgres_url: str) -> None:
    url = make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False)
    results = OrderResults()
    listener = Listener(lambda: psycopg.connect(url, autocommit=True), results)
    listener.start()
    try:
        assert results.listening
        mark = results.mark()

        def notified() -> bool:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("SELECT pg_notify(%s, %s)", (RESULTS_CHANNEL, "41,42"))
            return results._announced.get(42, 0) > mark

        # The listener may not be listening yet when the first notification goes out.
        wait_until(notified, "the listener to announce a notification", timeout=20, interval=0.2)
        assert results._announced[41] > mark
    finally:
        listener.stop()
    assert not results.listening
