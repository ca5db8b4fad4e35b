"""``bourse serve --workers N``: several server processes on one port, as one server.

Requests are held in flight for real by a PostgreSQL lock that the test takes on
the ``users`` table (every authenticated request reads it), so the processes are
busy at the same time without any test-only endpoint.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

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
DRAIN_SECONDS = 2


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
def pod(postgres_url: str, tmp_path: Path) -> Iterator[Pod]:
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
        BOURSE_SHUTDOWN_DRAIN_SECONDS=str(DRAIN_SECONDS),
        BOURSE_SHUTDOWN_TIMEOUT_SECONDS="10",
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
        wait_for_status(f"http://127.0.0.1:{port}/readyz", timeout=180)
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


def test_sigterm_drains_every_process_finishes_what_is_in_flight_and_exits_0(pod: Pod) -> None:
    children = pod.children()
    held = _Held(pod, 4)
    try:
        _wait_for(lambda: pod.metric("bourse_http_requests_in_flight") == 4)
        pod.process.send_signal(signal.SIGTERM)
        # Every process is draining: readiness fails whichever answers, liveness holds.
        _wait_for(lambda: httpx.get(f"{pod.base}/readyz", timeout=5).status_code == 503, timeout=5)
        for _ in range(2 * WORKERS):
            assert httpx.get(f"{pod.base}/readyz", timeout=5).status_code == 503
            assert httpx.get(f"{pod.base}/livez", timeout=5).status_code == 200
    finally:
        statuses = held.release()
    assert statuses == [200] * 4
    assert pod.process.wait(timeout=60) == 0
    log = pod.log_path.read_text()
    # Each process drained, then stopped accepting and finished on its own: none was
    # forced by a second signal, or killed for outliving drain + shutdown timeout.
    assert log.count('"shutdown_draining"') == WORKERS, log[-4000:]
    assert log.count('"shutdown_stopping"') == WORKERS, log[-4000:]
    assert '"shutdown_forced"' not in log, log[-4000:]
    assert '"child_killed"' not in log, log[-4000:]
    assert not _alive(children)
