"""Graceful shutdown of a real server process."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx2 as httpx
import pytest

from bourse.migrations import upgrade
from tests.support.processes import clean_env, free_port, metric_value, start, stop, wait_for_status
from tests.support.services import make_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process


@pytest.fixture
def server_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/bourse.db"
    upgrade(make_settings(url))
    return clean_env(BOURSE_DATABASE_URL=url, BOURSE_SHUTDOWN_DRAIN_SECONDS="1.5", BOURSE_SHUTDOWN_TIMEOUT_SECONDS="10")


def test_sigterm_drains_then_finishes_in_flight_requests_and_exits_0(server_env: dict[str, str]) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start(["-m", "tests.support.slow_server", str(port)], server_env)
    try:
        wait_for_status(f"{base}/readyz")
        slow: dict[str, object] = {}

        def call_slow() -> None:
            response = httpx.get(f"{base}/api/v1/test/slow", timeout=15)
            slow["status"] = response.status_code
            slow["body"] = response.json()

        caller = threading.Thread(target=call_slow)
        caller.start()
        wait_until(
            lambda: metric_value(base, "bourse_http_requests_in_flight") == 1, "the slow request to be in flight"
        )
        process.send_signal(signal.SIGTERM)

        # During the drain the pod is unready, but still serves everything else.
        wait_for_status(f"{base}/readyz", status=503, timeout=1.0)
        draining = httpx.get(f"{base}/readyz", timeout=2)
        assert draining.json()["checks"]["server"] == "draining"
        assert httpx.get(f"{base}/livez", timeout=2).status_code == 200

        caller.join(timeout=15)
        assert slow == {"status": 200, "body": {"status": "finished"}}
        assert process.wait(timeout=15) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/livez", timeout=1)
    finally:
        output = stop(process)
    assert "shutdown_draining" in output
    assert "shutdown_stopping" in output


def test_a_second_signal_stops_at_once(server_env: dict[str, str]) -> None:
    port = free_port()
    env = {**server_env, "BOURSE_SHUTDOWN_DRAIN_SECONDS": "30"}
    process = start(["-m", "tests.support.slow_server", str(port)], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz")
        process.send_signal(signal.SIGTERM)
        wait_for_status(f"http://127.0.0.1:{port}/readyz", status=503, timeout=5)
        process.send_signal(signal.SIGTERM)
        # Far sooner than the 30 s drain.
        assert process.wait(timeout=10) == 0
    finally:
        output = stop(process)
    assert "shutdown_forced" in output


def test_metrics_port_serves_metrics_apart_from_the_api(server_env: dict[str, str]) -> None:
    port, metrics_port = free_port(), free_port()
    env = {**server_env, "BOURSE_METRICS_PORT": str(metrics_port), "BOURSE_SHUTDOWN_DRAIN_SECONDS": "0"}
    process = start(["-m", "tests.support.slow_server", str(port)], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz")
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).status_code == 404
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2).text
        assert "bourse_http_requests_in_flight" in metrics
        assert 'bourse_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        stop(process)
