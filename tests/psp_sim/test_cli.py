"""``bourse psp-sim`` as a process: options, logs, secrets, clean shutdown."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from tests.support.processes import clean_env, run_bourse
from tests.support.psp_sim import API_KEY, SECRET, Simulator

pytestmark = pytest.mark.process


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--port"),
        (["--port", "65536"], "--port"),
        (["--port", "http"], "--port"),
        (["--webhook-url", "ftp://example.com/hook"], "--webhook-url"),
        (["--public-url", "localhost:8100"], "--public-url"),
        (["--host", ""], "--host"),
    ],
)
def test_invalid_options_are_usage_errors(args: list[str], message: str) -> None:
    result = run_bourse("psp-sim", *args, timeout=30)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Invalid value" in result.stderr


def test_runs_logs_json_and_stops_cleanly_on_sigterm() -> None:
    public = "https://pay.example.test"
    simulator = Simulator("http://127.0.0.1:9/hook", "--public-url", public)
    try:
        created = simulator.deposit()
        assert created["checkout_url"] == f"{public}/checkout/{created['id']}"
        simulator.process.send_signal(signal.SIGTERM)
        assert simulator.process.wait(timeout=10) == 0
    finally:
        output = simulator.stop()
    assert f"psp-sim listening on http://127.0.0.1:{simulator.port}" in output
    logs = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    assert any(entry["event"] == "psp_sim_started" for entry in logs)
    assert any(entry["event"] == "psp_sim_stopping" for entry in logs)
    assert API_KEY not in output
    assert SECRET not in output


def test_a_taken_port_fails_to_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        env = clean_env(BOURSE_PSP_API_KEY=API_KEY, BOURSE_PSP_SECRET=SECRET)
        result = run_bourse("psp-sim", "--port", str(port), env=env, timeout=30)
    assert result.returncode == 1
    assert "psp-sim listening" not in result.stdout
