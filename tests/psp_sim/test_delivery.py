"""The simulator's webhook dispatcher, run in this process against a real receiver.

How long the simulator waits between attempts is ``backoff(failures)``: checked here
as a function, and the dispatcher is checked to ask it for each failure in turn. So
no test has to measure the gaps between deliveries on the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bourse.psp.sim import delivery
from bourse.psp.sim.delivery import BASE_DELAY_SECONDS, MAX_DELAY_SECONDS, WebhookDispatcher, backoff
from bourse.psp.sim.faults import FaultSwitchboard
from tests.support.psp_sim import SECRET, Receiver, unique
from tests.support.waiting import wait_until_async


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.mark.parametrize(("failures", "nominal"), [(1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (40, 30.0)])
def test_backoff_doubles_from_half_a_second_up_to_30_s_with_ten_percent_jitter(failures: int, nominal: float) -> None:
    assert (BASE_DELAY_SECONDS, MAX_DELAY_SECONDS) == (0.5, 30.0)
    delays = [backoff(failures) for _ in range(200)]
    assert all(nominal * 0.9 <= delay <= nominal * 1.1 for delay in delays)
    assert len(set(delays)) > 1, "jittered, so that retries from many events do not line up"


def test_each_failed_attempt_waits_the_backoff_for_that_many_failures(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def recorded(failures: int) -> float:
        asked.append(failures)
        return 0.0

    monkeypatch.setattr(delivery, "backoff", recorded)
    reference = unique()
    receiver.fail(reference, 2)

    async def scenario() -> delivery.EventRecord:
        dispatcher = WebhookDispatcher(receiver.url, SECRET, FaultSwitchboard())
        await dispatcher.start()
        try:
            record = dispatcher.emit("deposit.succeeded", {"id": unique("dep"), "reference": reference})
            await wait_until_async(lambda: record.delivered, "the third attempt to be answered 200")
            return record
        finally:
            await dispatcher.stop()

    record = asyncio.run(scenario())
    assert asked == [1, 2]
    assert (record.attempts, record.delivered, record.last_status, record.last_error) == (3, True, 200, None)
    deliveries = receiver.for_reference(reference, count=3)
    assert len({d.body for d in deliveries}) == 1
