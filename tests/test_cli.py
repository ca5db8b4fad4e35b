"""The `bourse` command: up, serve, migrate, healthcheck, version, --help."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

import bourse
from tests.support.processes import clean_env, free_port, run_bourse, start, stop, wait_for_output, wait_for_status

pytestmark = pytest.mark.process

SUBCOMMANDS = ["up", "serve", "migrate", "config", "config show", "healthcheck", "version"]


def test_version() -> None:
    result = run_bourse("version")
    assert result.returncode == 0
    assert result.stdout.strip() == bourse.__version__


@pytest.mark.parametrize("subcommand", SUBCOMMANDS)
def test_every_subcommand_has_help(subcommand: str) -> None:
    result = run_bourse(*subcommand.split(), "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout


@pytest.mark.parametrize(
    "args", [["serve", "--port", "abc"], ["serve", "--port", "70000"], ["up", "--port", "0"], ["nosuch"]]
)
def test_bad_arguments_exit_2_with_usage(args: list[str]) -> None:
    result = run_bourse(*args)
    assert result.returncode == 2
    assert "Usage:" in result.stderr or "Error" in result.stderr


def test_migrate_creates_the_sqlite_directory_and_upgrades(tmp_path: Path) -> None:
    db_path = tmp_path / "nested" / "dir" / "bourse.db"
    result = run_bourse("migrate", env=clean_env(BOURSE_DATABASE_URL=f"sqlite:///{db_path}"))
    assert result.returncode == 0, result.stderr
    assert db_path.exists()
    again = run_bourse("migrate", env=clean_env(BOURSE_DATABASE_URL=f"sqlite:///{db_path}"))
    assert again.returncode == 0


def test_migrate_postgres(empty_postgres_url: str) -> None:
    result = run_bourse("migrate", env=clean_env(BOURSE_DATABASE_URL=empty_postgres_url))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def up_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`bourse up` on its defaults (./var/bourse.db) in an empty directory."""
    port = free_port()
    env = clean_env(BOURSE_PSP_SIM_URL=f"http://127.0.0.1:{free_port()}")
    process = start(["-m", "bourse", "up", "--port", str(port)], env, cwd=tmp_path)
    try:
        yield process, port
    finally:
        stop(process)


def _child_pids(output: str, child: str | None = None) -> list[int]:
    return [
        entry["pid"]
        for entry in (json.loads(line) for line in output.splitlines() if '"child_started"' in line)
        if child is None or entry["child"] == child
    ]


def _runner_pids(output: str) -> list[int]:
    """The worker's job runner (a grandchild of `bourse up`)."""
    return [json.loads(line)["pid"] for line in output.splitlines() if '"runner_started"' in line]


def _read_until_all(process: subprocess.Popen[str], texts: list[str], timeout: float = 60) -> str:
    """Read the process's output until every one of ``texts`` has appeared, in any order."""
    seen = ""
    for text in texts:
        if text not in seen:
            seen += wait_for_output(process, text, timeout=timeout)
    return seen


def test_up_runs_on_sqlite_serves_ready_and_metrics_and_stops_on_ctrl_c(
    up_process: tuple[subprocess.Popen[str], int], tmp_path: Path
) -> None:
    process, port = up_process
    base = f"http://127.0.0.1:{port}"
    # The banner is printed only once /readyz answers 200; the worker (with its job
    # runner) and the scheduler run beside the API.
    output = _read_until_all(
        process,
        [
            f"Bourse is running at http://127.0.0.1:{port}",
            '"worker_started"',
            '"runner_started"',
            '"scheduler_started"',
        ],
    )
    wait_for_status(f"{base}/readyz", timeout=5)
    assert (tmp_path / "var" / "bourse.db").exists()
    metrics = httpx.get(f"{base}/metrics").text
    assert "bourse_http_requests_in_flight" in metrics
    assert all(_child_pids(output, child) for child in ("api", "worker", "scheduler", "psp-sim"))

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    output += stop(process)
    assert '"supervisor_stopped"' in output
    for pid in [*_child_pids(output), *_runner_pids(output)]:
        with pytest.raises(ProcessLookupError):
            _signal_0(pid)


def _signal_0(pid: int) -> None:
    os.kill(pid, 0)


def test_up_restarts_a_child_that_dies(up_process: tuple[subprocess.Popen[str], int]) -> None:
    process, port = up_process
    base = f"http://127.0.0.1:{port}"
    output = _read_until_all(process, ['"worker_started"', '"scheduler_started"'])
    wait_for_status(f"{base}/readyz", timeout=60)
    # The supervisor's own process table: the API, the worker, the scheduler and the PSP simulator.
    children = subprocess.run(
        ["pgrep", "-P", str(process.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) == 4
    [api] = _child_pids(output, "api")
    [worker] = _child_pids(output, "worker")
    assert {api, worker} <= {int(pid) for pid in children}

    # A killed worker comes back and starts working again.
    os.kill(worker, signal.SIGKILL)
    while output.count('"worker_started"') < 2:
        output += wait_for_output(process, '"worker_started"', timeout=30)
    [_, new_worker] = _child_pids(output, "worker")
    _signal_0(new_worker)
    # So does a killed API server.
    os.kill(api, signal.SIGKILL)
    wait_for_status(f"{base}/livez", status=200, timeout=30)
    wait_for_status(f"{base}/readyz", timeout=30)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0
    output += stop(process)
    assert output.count('"child_exited"') == 2
    assert len(_child_pids(output, "api")) == 2


def test_healthcheck_exits_0_when_alive_and_ready(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/bourse.db"
    assert run_bourse("migrate", env=clean_env(BOURSE_DATABASE_URL=url)).returncode == 0
    port = free_port()
    env = clean_env(BOURSE_DATABASE_URL=url, BOURSE_PORT=str(port), BOURSE_SHUTDOWN_DRAIN_SECONDS="0")
    server = start(["-m", "bourse", "serve"], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/readyz")
        assert run_bourse("healthcheck", env=env).returncode == 0
        assert run_bourse("healthcheck", "--ready", env=env).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=10) == 0
        stop(server)


def test_healthcheck_ready_fails_when_not_migrated(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        BOURSE_DATABASE_URL=f"sqlite:///{tmp_path}/unmigrated.db",
        BOURSE_PORT=str(port),
        BOURSE_SHUTDOWN_DRAIN_SECONDS="0",
    )
    server = start(["-m", "bourse", "serve"], env)
    try:
        wait_for_status(f"http://127.0.0.1:{port}/livez")
        assert run_bourse("healthcheck", env=env).returncode == 0
        assert run_bourse("healthcheck", "--ready", env=env).returncode == 1
    finally:
        stop(server)


def test_healthcheck_fails_fast_when_nothing_listens_or_nothing_answers(silent_port: int) -> None:
    closed = free_port()
    assert run_bourse("healthcheck", "--port", str(closed)).returncode == 1
    # The probe gives up on its own (its deadline is --timeout, 1.5 s by default and
    # at most 2 s); run_bourse would raise TimeoutExpired if it waited for an answer.
    result = run_bourse("healthcheck", "--ready", "--port", str(silent_port), timeout=60)
    assert result.returncode == 1


def test_serve_fails_when_the_port_is_taken(silent_port: int, tmp_path: Path) -> None:
    env = clean_env(BOURSE_DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    result = run_bourse("serve", "--port", str(silent_port), env=env)
    assert result.returncode != 0
    assert re.search(r"address already in use|error while attempting to bind", result.stderr, re.IGNORECASE)
