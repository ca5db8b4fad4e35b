"""A worker rollout with a real ``bourse worker`` running the manifest's command.

SIGTERM arrives during a 20 s job, as it does when a rollout or a scale-down deletes
the pod. With the manifest's grace period the job completes, is not retried, and the
worker exits 0. The control gives the pod a grace period shorter than the job (the
article's default 30 s against its 120 s jobs; seed review, flaw 2): the job is
killed and retried by the next worker, and its effect still lands exactly once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from bourse.db import Database, unit_of_work
from bourse.migrations import upgrade
from bourse.queue import enqueue
from tests.deploy.jobs_for_k8s import EFFECTS_DDL, slow_effect, slow_effect_control
from tests.support.k8s import config_env, container, one, pod_spec, rendered
from tests.support.processes import clean_env
from tests.support.services import make_settings
from tests.support.waiting import wait_until

JOB_SECONDS = 20
JOBS_MODULE = "tests.deploy.jobs_for_k8s"


@dataclass
class WorkerPod:
    """The worker Deployment's pod template, read from the rendered manifest."""

    args: list[str]
    grace: float
    retry_after: str

    @classmethod
    def from_manifests(cls) -> WorkerPod:
        docs = rendered()
        worker = one(docs, "Deployment", "bourse-worker")
        return cls(
            args=list(container(worker)["args"]),
            grace=float(pod_spec(worker)["terminationGracePeriodSeconds"]),
            retry_after=config_env(docs, worker)["BOURSE_QUEUE_RETRY_AFTER_SECONDS"],
        )


@pytest.fixture
def database(empty_postgres_url: str) -> Iterator[Database]:
    settings = make_settings(empty_postgres_url)
    upgrade(settings)
    db = Database.from_settings(settings)
    with db.engine.begin() as conn:
        conn.execute(text(EFFECTS_DDL))
    yield db
    db.dispose()


def _start(pod: WorkerPod, url: str, work: Path, name: str, **overrides: str) -> subprocess.Popen[bytes]:
    env = clean_env(
        BOURSE_DATABASE_URL=url,
        BOURSE_QUEUE_RETRY_AFTER_SECONDS=pod.retry_after,
        BOURSE_WORKER_HEARTBEAT_PATH=str(work / f"{name}.heartbeat"),
        **overrides,
    )
    with (work / f"{name}.log").open("w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bourse", *pod.args, "--import", JOBS_MODULE], env=env, stdout=log, stderr=log
        )


def _wait_for_start(started: Path, process: subprocess.Popen[bytes], attempts: int = 1, timeout: float = 120) -> None:
    def running() -> bool:
        if started.exists() and len(started.read_text().split()) >= attempts:
            return True
        assert process.poll() is None, f"the worker exited with {process.returncode} before the job started"
        return False

    wait_until(running, f"the job's attempt {attempts} to start", timeout=timeout, interval=0.1)


def _terminate(process: subprocess.Popen[bytes], grace: float) -> tuple[int, bool]:
    """SIGTERM, then SIGKILL when the grace period runs out, as the kubelet does."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=grace), False
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(), True


def _effects(database: Database, job_id: str) -> list[int]:
    with database.engine.connect() as conn:
        rows = conn.execute(text("SELECT attempt FROM k8s_job_effects WHERE job_id = :j"), {"j": job_id})
        return [row[0] for row in rows]


def _events(log: str) -> list[dict[str, Any]]:
    """The worker's JSON log records, in order."""
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def _queue_state(database: Database) -> tuple[int, int]:
    with database.engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM queue_jobs WHERE job LIKE 'k8s.%'")).scalar_one()
        failed = conn.execute(text("SELECT count(*) FROM queue_failed_jobs")).scalar_one()
    return jobs, failed


def test_sigterm_during_a_job_lets_it_finish_within_the_grace_period(
    database: Database, empty_postgres_url: str, tmp_path: Path
) -> None:
    pod = WorkerPod.from_manifests()
    assert pod.grace > JOB_SECONDS
    started = tmp_path / "started"
    with unit_of_work(database) as session:
        job_id = enqueue(session, slow_effect, {"seconds": JOB_SECONDS, "started_file": str(started)})
        assert job_id is not None
    worker = _start(pod, empty_postgres_url, tmp_path, "worker")
    try:
        _wait_for_start(started, worker)
        code, killed = _terminate(worker, pod.grace)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    log = (tmp_path / "worker.log").read_text()
    assert (code, killed) == (0, False), log[-3000:]
    assert _effects(database, job_id) == [1], "the job completed once, on its first attempt"
    assert started.read_text().split() == ["1"], "and was never retried"
    assert _queue_state(database) == (0, 0)
    # The SIGTERM came while the job ran, and the worker finished that job before it
    # stopped: not killed at the grace period (above), nor stopped before the job.
    events = [e for e in _events(log) if e["event"] in {"worker_stopping", "job_done", "worker_stopped"}]
    assert [e["event"] for e in events] == ["worker_stopping", "job_done", "worker_stopped"], log[-3000:]
    assert events[0]["running_job"] == slow_effect.name
    assert (events[2]["exit_code"], events[2]["processed"]) == (0, 1)


def test_control_a_grace_period_shorter_than_the_job_kills_it_and_it_is_retried_exactly_once(
    database: Database, empty_postgres_url: str, tmp_path: Path
) -> None:
    pod = WorkerPod.from_manifests()
    short_grace = 5.0
    # The reservation outlives a killed worker for BOURSE_QUEUE_RETRY_AFTER_SECONDS; the
    # control shortens it (and --timeout below it, as the worker requires) so that the
    # retry comes within the test's time.
    # Its worker serves only the control job's queue: the domain jobs' own timeouts
    # (up to 120 s) would not fit under that shortened expiry.
    args = list(pod.args)
    args[args.index("--timeout") + 1] = "25"
    args[args.index("--queue") + 1] = "k8s-control"
    pod = WorkerPod(args=args, grace=short_grace, retry_after="30")
    started = tmp_path / "started"
    with unit_of_work(database) as session:
        job_id = enqueue(session, slow_effect_control, {"seconds": JOB_SECONDS, "started_file": str(started)})
        assert job_id is not None
    first = _start(pod, empty_postgres_url, tmp_path, "first")
    try:
        _wait_for_start(started, first)
        code, killed = _terminate(first, short_grace)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert killed, (code, (tmp_path / "first.log").read_text()[-2000:])
    assert _effects(database, job_id) == [], "the killed attempt committed nothing"

    second = _start(pod, empty_postgres_url, tmp_path, "second")
    try:
        _wait_for_start(started, second, attempts=2, timeout=120)
        # The effect commits with the deletion of the job's row (one transaction), so
        # once it is there no further attempt can come.
        wait_until(
            lambda: _effects(database, job_id),
            "the retried job's effect to commit",
            timeout=JOB_SECONDS + 60,
            interval=0.5,
        )
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert started.read_text().split() == ["1", "2"], "killed on the first attempt, retried on the second"
    assert _effects(database, job_id) == [2], "the effect landed exactly once"
    assert _queue_state(database) == (0, 0)
