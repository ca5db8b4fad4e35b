"""A real simulator process per test module, and a real webhook receiver in the test process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bourse.psp.connectors.simulator import SimulatorConnector
from tests.support.psp_sim import API_KEY, SECRET, Receiver, Simulator


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def sim(receiver: Receiver) -> Iterator[Simulator]:
    simulator = Simulator(receiver.url)
    yield simulator
    simulator.stop()


@pytest.fixture(autouse=True)
def _reset_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    """Faults are global to the simulator: no test leaves one behind for the next."""
    yield
    if "sim" in request.fixturenames:
        simulator: Simulator = request.getfixturevalue("sim")
        simulator.client.delete("/admin/faults")


@pytest.fixture(scope="module")
def connector(sim: Simulator) -> Iterator[SimulatorConnector]:
    client = SimulatorConnector(sim.url, API_KEY, SECRET, timeout=5.0)
    yield client
    client.close()
