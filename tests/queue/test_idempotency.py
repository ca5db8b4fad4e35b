"""The handler idempotency contract, for the jobs that exist: running twice equals running once.

Delivery is at least once (docs/decisions/0006-queue.md), so each job's handler is run
twice with the same job id and payload, as a redelivery would, and the state after the
second run must equal the state after the first.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

from prometheus_client import REGISTRY
from sqlalchemy import select

from bourse.db import Database, unit_of_work
from bourse.idempotency.models import IdempotencyRecord
from bourse.identity.models import RefreshToken, Role, User
from bourse.queue.models import QueueProcess
from bourse.queue.operations import PIPELINE_HEARTBEAT_ID
from bourse.queue.registry import JobContext, JobSpec, load_jobs


def run_twice(database: Database, spec: JobSpec, payload: dict[str, object]) -> None:
    job_id = uuid.uuid4().hex
    for attempt in (1, 2):
        with unit_of_work(database) as session:
            spec.handler(JobContext(session, payload, job_id, attempt, spec.queue, None))


def test_queue_heartbeat_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["queue.heartbeat"]
    with unit_of_work(database) as session:
        row = session.get(QueueProcess, PIPELINE_HEARTBEAT_ID)
        if row is not None:
            session.delete(row)
    run_twice(database, spec, {})
    with database.sessions() as session:
        rows = session.scalars(select(QueueProcess).where(QueueProcess.id == PIPELINE_HEARTBEAT_ID)).all()
        assert len(rows) == 1
        first = rows[0].heartbeat_at
    # A late duplicate never moves the stamp backwards.
    with unit_of_work(database) as session:
        session.get(QueueProcess, PIPELINE_HEARTBEAT_ID).heartbeat_at = first + 3600  # type: ignore[union-attr]
    run_twice(database, spec, {})
    with database.sessions() as session:
        assert session.get(QueueProcess, PIPELINE_HEARTBEAT_ID).heartbeat_at == first + 3600  # type: ignore[union-attr]


def test_identity_prune_expired_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["identity.prune_expired"]
    now = datetime.now(UTC)
    with unit_of_work(database) as session:
        user = User(email=f"prune-{uuid.uuid4().hex[:10]}@example.com", password_hash="x", role=Role.client.value)
        session.add(user)
        session.flush()
        family = uuid.uuid4()
        tokens = {}
        for name, expires in (("expired", now - timedelta(days=1)), ("valid", now + timedelta(days=1))):
            token = RefreshToken(
                user_id=user.id,
                family_id=family,
                token_hash=hashlib.sha256(uuid.uuid4().bytes).hexdigest(),
                expires_at=expires,
            )
            session.add(token)
            session.flush()
            tokens[name] = token.id
    run_twice(database, spec, {})
    with database.sessions() as session:
        assert session.get(RefreshToken, tokens["expired"]) is None
        assert session.get(RefreshToken, tokens["valid"]) is not None


def test_idempotency_prune_runs_twice_like_once(database: Database) -> None:
    spec = load_jobs()["idempotency.prune"]
    now = datetime.now(UTC)
    with unit_of_work(database) as session:
        user = User(email=f"idem-{uuid.uuid4().hex[:10]}@example.com", password_hash="x", role=Role.client.value)
        session.add(user)
        session.flush()
        records = {}
        for name, expires in (("expired", now - timedelta(hours=1)), ("valid", now + timedelta(hours=1))):
            record = IdempotencyRecord(
                user_id=user.id,
                key=f"{name}-{uuid.uuid4().hex}",
                fingerprint="0" * 64,
                response_status=200,
                response_body="{}",
                expires_at=expires,
            )
            session.add(record)
            session.flush()
            records[name] = record.id
    run_twice(database, spec, {})
    with database.sessions() as session:
        assert session.get(IdempotencyRecord, records["expired"]) is None
        assert session.get(IdempotencyRecord, records["valid"]) is not None


def test_ledger_verify_runs_twice_like_once(database: Database) -> None:
    """It only reads the ledger: the second run reports what the first did."""
    spec = load_jobs()["ledger.verify"]
    answers = []
    job_id = uuid.uuid4().hex
    for attempt in (1, 2):
        with unit_of_work(database) as session:
            spec.handler(JobContext(session, {}, job_id, attempt, spec.queue, None))
            assert not session.new
            assert not session.dirty
            assert not session.deleted
        answers.append(REGISTRY.get_sample_value("bourse_ledger_discrepancies"))
    assert answers[0] is not None
    assert answers[0] == answers[1]
