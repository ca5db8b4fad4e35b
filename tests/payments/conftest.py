"""A whole payments stack of real processes: the PSP simulator, ``bourse serve`` and a
worker, on a fresh PostgreSQL database with the Redis queue driver.

The tests talk to all three over HTTP, as a client, an operator and the PSP's admin
would. Each test ends by running the real ``bourse ledger verify`` on the stack's
database.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bourse.migrations import upgrade
from tests.support.payments import Stack
from tests.support.processes import clean_env, run_bourse, wait_for_status
from tests.support.services import create_postgres_database, drop_postgres_database, make_settings


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Stack]:
    database_url = create_postgres_database("bourse_pay")
    stack = None
    try:
        upgrade(make_settings(database_url))
        stack = Stack(tmp_path_factory.mktemp("payments"), database_url, redis_url)
        stack.start(
            "psp-sim",
            "psp-sim",
            "--port",
            str(stack.sim_port),
            "--webhook-url",
            f"{stack.api_url}/api/v1/psp/simulator/webhook",
        )
        stack.start("api", "serve", "--port", str(stack.api_port))
        stack.start_worker()
        wait_for_status(f"{stack.sim_url}/healthz")
        wait_for_status(f"{stack.api_url}/readyz")
        yield stack
    finally:
        if stack is not None:
            stack.close()
        drop_postgres_database(database_url)


@pytest.fixture(autouse=True)
def _books_balance(stack: Stack) -> Iterator[None]:
    """After every scenario, the real ``bourse ledger verify`` passes."""
    response = stack.sim("DELETE", "/admin/faults")
    assert response.status_code == 200, response.text
    yield
    result = run_bourse("ledger", "verify", env=clean_env(BOURSE_DATABASE_URL=stack.database_url), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
