"""A queue test's world: settings, database, driver and a scratch folder, and the
helpers to build, clean and tear it down (the fixtures are in tests/queue/conftest.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text

from bourse.db import Database
from bourse.queue.driver import Driver
from bourse.queue.drivers import make_driver
from bourse.queue.redis_driver import RedisDriver
from bourse.queue.registry import load_jobs
from bourse.queue.worker import Worker, WorkerOptions
from bourse.settings import Settings
from tests.queue.jobs_for_tests import RUNS_DDL
from tests.support.services import make_settings

TEST_JOBS = "tests.queue.jobs_for_tests"
QUEUE_TABLES = ("queue_jobs", "queue_failed_jobs", "queue_processes", "scheduler_claims", "scheduler_leases")


@dataclass
class QueueEnv:
    settings: Settings
    db: Database
    driver: Driver
    tmp: Path

    @property
    def backend(self) -> str:
        return self.settings.database.get_backend_name()

    def runs(self, marker: str | None = None) -> list[tuple[str, int]]:
        query = "SELECT job_id, attempt FROM queue_test_runs"
        params = {}
        if marker is not None:
            query += " WHERE marker = :m"
            params["m"] = marker
        with self.db.engine.connect() as conn:
            return [(row[0], row[1]) for row in conn.execute(text(query + " ORDER BY at"), params)]

    def runner_pids(self) -> set[int]:
        with self.db.engine.connect() as conn:
            return {row[0] for row in conn.execute(text("SELECT DISTINCT pid FROM queue_test_runs"))}

    def failed(self) -> list[dict[str, object]]:
        with self.db.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(text("SELECT * FROM queue_failed_jobs ORDER BY id"))]

    def worker(self, **options: object) -> tuple[int, Worker]:
        """Run a worker in this process (its runner is a real child process)."""
        # The in-process worker's RSS is pytest's, which grows over a whole suite run:
        # the memory limit is tested on a real worker process (test_worker_process.py).
        defaults: dict[str, object] = {
            "sleep": 0.05,
            "modules": (TEST_JOBS,),
            "queues": ("tests",),
            "timeout": 5.0,
            "memory_mib": 64 * 1024,
        }
        worker = Worker.create(self.settings, WorkerOptions(**{**defaults, **options}), self.db)  # type: ignore[arg-type]
        try:
            code = worker.run()
        finally:
            worker.driver.close()
        return code, worker

    def env(self) -> dict[str, str]:
        """Environment for a worker subprocess with these settings."""
        env = {
            "BOURSE_DATABASE_URL": self.settings.database_url,
            "BOURSE_QUEUE_DRIVER": self.settings.queue_driver,
            "BOURSE_QUEUE_REDIS_PREFIX": self.settings.queue_redis_prefix,
            "BOURSE_QUEUE_RETRY_AFTER_SECONDS": str(self.settings.queue_retry_after_seconds),
            "BOURSE_WORKER_HEARTBEAT_PATH": str(self.settings.worker_heartbeat_path),
            "BOURSE_SCHEDULER_HEARTBEAT_PATH": str(self.settings.scheduler_heartbeat_path),
        }
        if self.settings.redis_url:
            env["BOURSE_REDIS_URL"] = self.settings.redis_url
        return env


def clean_tables(db: Database, *, recreate: bool = True) -> None:
    """Empty the queue tables; (re)create the test-only runs table, or drop it for good.

    The runs table lives in the shared test databases only while a queue test runs:
    left behind, it would show up as drift in the migration check.
    """
    with db.engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS queue_test_runs"))
        if recreate:
            conn.execute(text(RUNS_DDL))
        for table in QUEUE_TABLES:
            conn.execute(text(f"DELETE FROM {table}"))  # noqa: S608 - fixed table names


def build_env(database_url: str, driver: str, tmp: Path, redis_url: str | None, **overrides: object) -> QueueEnv:
    load_jobs((TEST_JOBS,))
    extra: dict[str, object] = {
        "queue_driver": driver,
        "queue_retry_after_seconds": 10,
        "worker_heartbeat_path": tmp / "worker.heartbeat",
        "scheduler_heartbeat_path": tmp / "scheduler.heartbeat",
        "queue_redis_prefix": f"test-{uuid.uuid4().hex[:10]}:",
    }
    if redis_url is not None:
        extra["redis_url"] = redis_url
    settings = make_settings(database_url, **{**extra, **overrides})
    db = Database.from_settings(settings)
    clean_tables(db)
    return QueueEnv(settings, db, make_driver(settings, db), tmp)


def teardown_env(env: QueueEnv) -> None:
    if isinstance(env.driver, RedisDriver):
        env.driver.flush_keys()
    env.driver.close()
    clean_tables(env.db, recreate=False)
    env.db.dispose()
