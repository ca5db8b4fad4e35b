"""The ledger's and the idempotency store's scheduled jobs.

Both jobs are delivered at least once, so each is run twice here and must give
the same outcome.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bourse.db import Database, unit_of_work
from bourse.idempotency import service as idempotency
from bourse.idempotency.jobs import prune_job
from bourse.idempotency.models import IdempotencyRecord
from bourse.ledger.jobs import DISCREPANCIES, VERIFIED_AT, verify_job
from bourse.migrations import upgrade
from bourse.queue.models import QueueJob
from bourse.queue.registry import JobContext, load_tasks
from tests.support.auth import register_user
from tests.support.ledger import fund
from tests.support.services import make_settings


@pytest.fixture
def private_db(tmp_path: Path) -> Iterator[tuple[Database, Path]]:
    """A database of its own: these tests tamper with it and count its queued jobs."""
    path = tmp_path / "bourse.db"
    settings = make_settings(f"sqlite:///{path}")
    upgrade(settings)
    database = Database.from_settings(settings)
    yield database, path
    database.dispose()


def _run(database: Database, handler: object) -> None:
    with unit_of_work(database) as session:
        context = JobContext(session=session, payload={}, job_id="j1", attempt=1, queue="default", request_id=None)
        handler(context)  # type: ignore[operator]


def test_verify_job_reports_discrepancies_as_metrics(private_db: tuple[Database, Path]) -> None:
    database, path = private_db
    user, _ = register_user(database)
    fund(database, user, "USD", 1_000)
    for _ in range(2):
        before = VERIFIED_AT._value.get()
        _run(database, verify_job.handler)
        assert DISCREPANCIES._value.get() == 0
        assert VERIFIED_AT._value.get() >= before
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE accounts SET balance = balance + 5 WHERE user_id IS NOT NULL")
    _run(database, verify_job.handler)
    assert DISCREPANCIES._value.get() == 1


def test_prune_job_deletes_only_expired_records_and_is_idempotent(private_db: tuple[Database, Path]) -> None:
    database, _ = private_db
    user, _ = register_user(database)
    with unit_of_work(database) as session:
        for key, ttl in (("old", timedelta(seconds=-1)), ("fresh", timedelta(hours=24))):
            idempotency.complete(
                session, user_id=user, key=key, request_fingerprint="f" * 64, status=201, body={}, ttl=ttl
            )
    _run(database, prune_job.handler)
    _run(database, prune_job.handler)
    with unit_of_work(database) as session:
        keys = list(session.scalars(select(IdempotencyRecord.key)))
    assert keys == ["fresh"]


def test_hourly_tasks_enqueue_one_job_each(private_db: tuple[Database, Path]) -> None:
    database, _ = private_db
    tasks = load_tasks()
    assert tasks["ledger.verify"].cron == "7 * * * *"
    assert tasks["ledger.verify"].on_one_server
    assert tasks["idempotency.prune"].on_one_server
    for _ in range(2):  # the jobs are unique: a second enqueue while one is pending adds nothing
        with unit_of_work(database) as session:
            tasks["ledger.verify"].func(session)
            tasks["idempotency.prune"].func(session)
    with unit_of_work(database) as session:
        queued = dict(session.execute(select(QueueJob.job, func.count()).group_by(QueueJob.job)).all())
    assert queued == {"ledger.verify": 1, "idempotency.prune": 1}
