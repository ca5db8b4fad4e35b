"""``/api/v1/admin/jobs``: operators and admins only; failed jobs and stats on every driver."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient

from bourse.app import create_app
from bourse.db import unit_of_work
from bourse.identity.models import Role
from bourse.identity.service import create_user
from bourse.identity.tokens import issue_access_token
from bourse.queue import enqueue
from tests.queue.jobs_for_tests import record_job
from tests.queue.test_drivers import PRIORITY, relay_all
from tests.support.queue_env import QueueEnv

CHEAP = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


@pytest.fixture
def api(queue: QueueEnv) -> Iterator[TestClient]:
    app = create_app(queue.settings, database=queue.db)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def token_for(queue: QueueEnv, role: Role) -> dict[str, str]:
    with unit_of_work(queue.db) as session:
        user = create_user(
            session,
            email=f"{role.value}-{uuid.uuid4().hex[:10]}@example.com",
            password="x" * 16,
            role=role,
            hasher=CHEAP,
        )
        session.flush()
        token = issue_access_token(queue.settings, user)
    return {"Authorization": f"Bearer {token}"}


def make_failed(queue: QueueEnv, marker: str) -> str:
    with unit_of_work(queue.db) as session:
        job_id = enqueue(session, record_job, {"marker": marker})
    relay_all(queue)
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    assert job.id == job_id
    queue.driver.fail(job, f"RuntimeError: {marker}", "Traceback (most recent call last): ...")
    return job_id


def test_only_operators_and_admins_may_use_it(api: TestClient, queue: QueueEnv) -> None:
    anonymous = api.get("/api/v1/admin/jobs/stats")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "invalid_token"
    client = api.get("/api/v1/admin/jobs/failed", headers=token_for(queue, Role.client))
    assert client.status_code == 403
    assert client.json()["error"] == "forbidden"
    for role in (Role.operator, Role.admin):
        assert api.get("/api/v1/admin/jobs/stats", headers=token_for(queue, role)).status_code == 200


def test_list_retry_forget_and_flush_failed_jobs(api: TestClient, queue: QueueEnv) -> None:
    headers = token_for(queue, Role.operator)
    first = make_failed(queue, "first")
    second = make_failed(queue, "second")
    listed = api.get("/api/v1/admin/jobs/failed", headers=headers)
    assert listed.status_code == 200
    rows = listed.json()
    assert [row["uuid"] for row in rows] == [second, first]
    assert rows[0]["exception"] == "RuntimeError: second"
    assert rows[0]["traceback"].startswith("Traceback")
    assert rows[0]["job"] == "tests.record"
    assert rows[0]["failed_at"] is not None

    retried = api.post(f"/api/v1/admin/jobs/failed/{rows[1]['id']}/retry", headers=headers)
    assert retried.status_code == 200
    [new_id] = retried.json()["requeued"]
    relay_all(queue)
    job = queue.driver.reserve(PRIORITY)
    assert job is not None
    assert (job.id, job.payload, job.attempts) == (new_id, '{"marker":"first"}', 1)

    assert api.delete(f"/api/v1/admin/jobs/failed/{second}", headers=headers).status_code == 204
    assert api.get("/api/v1/admin/jobs/failed", headers=headers).json() == []
    missing = api.delete(f"/api/v1/admin/jobs/failed/{second}", headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"] == "failed_job_not_found"

    make_failed(queue, "third")
    make_failed(queue, "fourth")
    flushed = api.delete("/api/v1/admin/jobs/failed", headers=headers)
    assert flushed.json() == {"flushed": 2}
    make_failed(queue, "fifth")
    assert len(api.post("/api/v1/admin/jobs/failed/all/retry", headers=headers).json()["requeued"]) == 1


def test_stats_report_depth_age_failed_jobs_and_workers(api: TestClient, queue: QueueEnv) -> None:
    headers = token_for(queue, Role.admin)
    make_failed(queue, "broken")
    with unit_of_work(queue.db) as session:
        for _ in range(3):
            enqueue(session, record_job, {"marker": "waiting"})
        enqueue(session, record_job, {"marker": "later"}, delay=600)
    relay_all(queue)
    body = api.get("/api/v1/admin/jobs/stats", headers=headers).json()
    queues = {q["queue"]: q for q in body["queues"]}
    assert {"deposits", "withdrawals", "commissions", "default", "tests"} <= set(queues)
    assert (queues["tests"]["ready"], queues["tests"]["delayed"]) == (3, 1)
    assert queues["tests"]["oldest_job_age_seconds"] >= 0
    assert queues["deposits"]["ready"] == 0
    assert body["failed"] == 1
    assert body["workers"] == 0


def test_the_driver_the_admin_api_opened_is_closed_at_shutdown(queue: QueueEnv) -> None:
    app = create_app(queue.settings, database=queue.db)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/api/v1/admin/jobs/stats", headers=token_for(queue, Role.admin)).status_code == 200
        driver = app.state.queue_driver
        assert driver is not None
    assert app.state.queue_driver is None
