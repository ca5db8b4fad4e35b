"""``bourse serve --workers N``: several server processes on one port, as one server.

Requests are held in flight for real by a PostgreSQL lock that the test takes on
the ``users`` table (every authenticated request reads it), so the processes are
busy at the same time without any test-only endpoint.

How each process stopped is read from the log they share with their parent: what
each logged of its shutdown (under its pid) and the exit code its supervisor
logged for it (``child_stopped``), so a failure names the process that did not
drain, was forced or killed, or died of the signal.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psutil  # type: ignore[import-untyped]
import psycopg
import pytest
from sqlalchemy.engine import make_url

from bourse.db import Database
from tests.support.auth import bearer, make_user
from tests.support.processes import clean_env, free_port, stop, wait_for_status
from tests.support.services import make_settings
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

WORKERS = 3
# How every process of a pod stopped by SIGTERM ends, in this order: it drains, stops
# accepting when the drain is over, finishes (uvicorn's "Finished server process"),
# and its supervisor sees it exit 0. Neither forced by a second signal nor killed.
DRAINED_AND_EXITED_0 = ["shutdown_draining", "shutdown_stopping", "finished", "exit_code=0"]


@dataclass(frozen=True)
class PodOptions:
    drain_seconds: float = 2
    shutdown_timeout_seconds: float = 10
    # Wait for the pod to answer /readyz 200 (one of its processes serves; the others
    # may still be starting), or only for the parent to have started its processes.
    wait_ready: bool = True


# For a test that probes the pod during its drain: every probe must be answered before
# the drain ends and the processes stop accepting (then a new connection waits in the
# listening socket's backlog until the parent exits). On a loaded 2-core machine a
# dozen probes from one client took up to 0.5 s, but up to 9 s with a client each.
PROBING = PodOptions(drain_seconds=10)
# SIGTERM while the processes are still starting: the parent's stop budget (drain +
# shutdown timeout + a margin) must also cover their start, which on a loaded
# machine can take longer than the default budget of 15 s.
STILL_STARTING = PodOptions(shutdown_timeout_seconds=120, wait_ready=False)


@dataclass
class Pod:
    process: subprocess.Popen[str]
    base: str
    metrics: str
    headers: dict[str, str]
    psql_url: str
    metrics_dir: Path
    log_path: Path
    # Killed outright, its processes stop however they can: their log is not checked.
    parent_killed: bool = False

    def children(self) -> list[psutil.Process]:
        children: list[psutil.Process] = psutil.Process(self.process.pid).children()
        return children

    def metric(self, name: str) -> float:
        body = httpx.get(f"{self.metrics}/metrics", timeout=5).text
        match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", body, re.MULTILINE)
        assert match, f"{name} not in the metrics"
        return float(match.group(1))


@pytest.fixture
def pod_options() -> PodOptions:
    """The pod's settings; a test may parametrize this fixture with its own."""
    return PodOptions()


@pytest.fixture
def pod(postgres_url: str, tmp_path: Path, pod_options: PodOptions) -> Iterator[Pod]:
    settings = make_settings(postgres_url)
    database = Database.from_settings(settings)
    try:
        user = make_user(database)
    finally:
        database.dispose()
    port, metrics_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    env = clean_env(
        BOURSE_DATABASE_URL=postgres_url,
        BOURSE_METRICS_PORT=str(metrics_port),
        BOURSE_SHUTDOWN_DRAIN_SECONDS=str(pod_options.drain_seconds),
        BOURSE_SHUTDOWN_TIMEOUT_SECONDS=str(pod_options.shutdown_timeout_seconds),
        BOURSE_DATABASE_LOCK_TIMEOUT_MS="30000",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
    )
    # Output to a file, not a pipe: server processes whose parent was killed would
    # block on a full pipe that nobody reads any more.
    log_path = tmp_path / "serve.log"
    log_file = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "bourse", "serve", "--port", str(port), "--workers", str(WORKERS)],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    started: list[psutil.Process] = []
    pod: Pod | None = None
    try:
        if pod_options.wait_ready:
            wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=180)
        else:
            wait_until(
                lambda: len(psutil.Process(process.pid).children()) == WORKERS,
                "the parent to start its server processes",
                timeout=60,
            )
        started = psutil.Process(process.pid).children()
        pod = Pod(
            process=process,
            base=f"http://127.0.0.1:{port}",
            metrics=f"http://127.0.0.1:{metrics_port}",
            headers=bearer(settings, user),
            psql_url=make_url(postgres_url).set(drivername="postgresql").render_as_string(hide_password=False),
            metrics_dir=metrics_dir,
            log_path=log_path,
        )
        yield pod
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
        alive = _survivors(started, timeout=30)
        for orphan in alive:
            orphan.kill()
        stop(process)
        log_file.close()
        output = log_path.read_text()
        assert not alive, "a server process outlived its parent"
        if not (pod is not None and pod.parent_killed):
            assert "Traceback" not in output, output[-4000:]


def _alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    """Those of ``processes`` still running (an exited process whose new parent has
    not reaped it yet counts as gone)."""
    alive = []
    for candidate in processes:
        try:
            if candidate.status() != psutil.STATUS_ZOMBIE:
                alive.append(candidate)
        except psutil.NoSuchProcess:
            pass
    return alive


def _wait_until_gone(processes: list[psutil.Process], what: str, timeout: float = 60.0) -> None:
    wait_until(
        lambda: not _alive(processes),
        lambda: f"{what} (still running: {[p.pid for p in _alive(processes)]})",
        timeout=timeout,
        interval=0.2,
    )


def _survivors(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of ``processes`` still running after waiting up to ``timeout`` for them to stop."""
    try:
        _wait_until_gone(processes, "the server processes to stop", timeout)
    except AssertionError:
        return _alive(processes)
    return []


class _Held:
    """``count`` requests to GET /api/v1/wallets, stuck behind a lock on ``users``."""

    def __init__(self, pod: Pod, count: int) -> None:
        self.pod = pod
        self.statuses: list[int] = []
        self.lock = psycopg.connect(pod.psql_url)
        self.lock.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        self.threads = [threading.Thread(target=self._call) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _call(self) -> None:
        response = httpx.get(f"{self.pod.base}/api/v1/wallets", headers=self.pod.headers, timeout=60)
        self.statuses.append(response.status_code)

    def release(self) -> list[int]:
        self.lock.rollback()
        self.lock.close()
        for thread in self.threads:
            thread.join(timeout=60)
        return sorted(self.statuses)


def _shutdowns(log_path: Path) -> dict[int, list[str]]:
    """By pid, in order: what each process logged of its shutdown, and how its
    supervisor saw it end (``exit_code=N`` from ``child_stopped``, or ``killed``)."""
    seen: dict[int, list[str]] = {}
    for line in log_path.read_text().splitlines():
        try:
            entry: dict[str, Any] = json.loads(line)
        except ValueError:
            continue
        event = str(entry.get("event"))
        finished = re.fullmatch(r"Finished server process \[(\d+)\]", event)
        if event in {"shutdown_draining", "shutdown_stopping", "shutdown_forced"}:
            seen.setdefault(entry["pid"], []).append(event)
        elif finished:
            seen.setdefault(int(finished.group(1)), []).append("finished")
        elif event == "child_killed":
            seen.setdefault(entry["pid"], []).append("killed")
        elif event == "child_stopped":
            seen.setdefault(entry["pid"], []).append(f"exit_code={entry['exit_code']}")
    return seen


def _assert_each_drained_and_exited_0(pod: Pod, children: list[psutil.Process]) -> None:
    """Every one of ``children`` drained, then stopped accepting and finished on its
    own, and exited 0; and no other process (a restarted one) was stopped."""
    expected = {child.pid: DRAINED_AND_EXITED_0 for child in children}
    shutdowns = _shutdowns(pod.log_path)
    assert shutdowns == expected, pod.log_path.read_text()[-6000:]


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    wait_until(predicate, "the condition to hold", timeout=timeout, interval=0.1)


def test_several_processes_serve_one_port_and_metrics_are_summed_over_them(pod: Pod) -> None:
    children = pod.children()
    assert len(children) == WORKERS
    assert all("--fd" in child.cmdline() for child in children)

    held = _Held(pod, 6)
    try:
        # In flight across the processes, summed: exactly the six held requests.
        _wait_for(lambda: pod.metric("bourse_http_requests_in_flight") == 6)
        assert pod.metric("bourse_db_leases_in_use") == 6
        # Every process writes its values where the sum is taken from.
        writers = {path.stem.rsplit("_", 1)[-1] for path in pod.metrics_dir.glob("gauge_livesum_*.db")}
        assert writers >= {str(child.pid) for child in children}
    finally:
        statuses = held.release()
    assert statuses == [200] * 6
    _wait_for(lambda: pod.metric("bourse_http_requests_in_flight") == 0)
    assert pod.metric("bourse_db_leases_in_use") == 0
    total = httpx.get(f"{pod.metrics}/metrics", timeout=5).text
    assert 'bourse_http_requests_total{method="GET",route="/api/v1/wallets",status="200"} 6.0' in total


def test_server_processes_stop_when_their_parent_is_killed(pod: Pod) -> None:
    children = pod.children()
    pod.parent_killed = True
    pod.process.kill()
    # Each gets SIGTERM and stops as a server does: drain, then finish what is in flight.
    _wait_until_gone(children, "the server processes to stop without their parent")


def test_a_server_process_that_dies_is_replaced(pod: Pod) -> None:
    victim = pod.children()[0]
    victim.kill()
    _wait_for(lambda: len(pod.children()) == WORKERS and victim.pid not in {c.pid for c in pod.children()})
    # The pod keeps answering throughout and after.
    for _ in range(10):
        assert httpx.get(f"{pod.base}/api/v1/wallets", headers=pod.headers, timeout=10).status_code == 200


@pytest.mark.parametrize("pod_options", [PROBING], ids=["probing"])
def test_sigterm_drains_every_process_finishes_what_is_in_flight_and_exits_0(pod: Pod) -> None:
    children = pod.children()
    assert len(children) == WORKERS
    # A new connection for each probe (no keep-alive), so that any process may answer
    # it, from one client: making a client per probe is slow on a loaded machine.
    probe = httpx.Client(base_url=pod.base, limits=httpx.Limits(max_keepalive_connections=0), timeout=5)
    held = _Held(pod, 4)
    try:
        _wait_for(lambda: pod.metric("bourse_http_requests_in_flight") == 4)
        pod.process.send_signal(signal.SIGTERM)
        # Every process is draining: readiness fails whichever answers, liveness holds.
        _wait_for(lambda: probe.get("/readyz").status_code == 503, timeout=5)
        for _ in range(2 * WORKERS):
            assert probe.get("/readyz").status_code == 503
            assert probe.get("/livez").status_code == 200
    finally:
        probe.close()
        statuses = held.release()
    assert statuses == [200] * 4
    assert pod.process.wait(timeout=60) == 0
    # Each process drained, then stopped accepting and finished on its own: none was
    # forced by a second signal, killed for outliving drain + shutdown timeout, or
    # ended by the signal itself.
    _assert_each_drained_and_exited_0(pod, children)
    assert not _alive(children)


@pytest.mark.parametrize("pod_options", [STILL_STARTING], ids=["still-starting"])
def test_sigterm_while_the_processes_are_starting_drains_each_once_it_serves_and_exits_0(pod: Pod) -> None:
    # SIGTERM as soon as the processes exist: they take seconds to import the app, so
    # the signal comes before their servers handle signals (before this was handled,
    # it killed each of them outright, exit code -15). It waits for each process (it
    # was started with the signal blocked), which then drains as if it came then.
    children = pod.children()
    assert len(children) == WORKERS
    pod.process.send_signal(signal.SIGTERM)
    assert pod.process.wait(timeout=200) == 0
    _assert_each_drained_and_exited_0(pod, children)
    assert not _alive(children)
