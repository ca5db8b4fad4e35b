"""A whole payments stack of real processes: the PSP simulator, ``bourse serve`` and a
worker on one PostgreSQL database with the Redis queue driver, and the calls a test
makes on it (the fixture that starts it is in tests/payments/conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx2 as httpx
from sqlalchemy import select

from bourse.db import Database
from bourse.identity.models import Role
from bourse.payments.models import Deposit, DepositState, PspEvent, Withdrawal
from bourse.psp import signing
from bourse.settings import Settings
from tests.support.auth import TestUser, bearer, make_user
from tests.support.processes import ROOT, clean_env, free_port
from tests.support.services import make_settings
from tests.support.waiting import wait_until

PSP_KEY = "test-psp-api-key-0123456789"
PSP_SECRET = "test-psp-webhook-secret-0123456789"
RETRY_AFTER = 32  # seconds: a SIGKILLed worker's job runs again after this


class Stack:
    def __init__(self, tmp: Path, database_url: str, redis_url: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.api_port = free_port()
        self.sim_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.sim_url = f"http://127.0.0.1:{self.sim_port}"
        self.env = clean_env(
            BOURSE_ENV="test",
            BOURSE_DATABASE_URL=database_url,
            BOURSE_REDIS_URL=redis_url,
            BOURSE_QUEUE_DRIVER="redis",
            BOURSE_QUEUE_REDIS_PREFIX=f"test-pay-{uuid.uuid4().hex[:8]}:",
            BOURSE_QUEUE_RETRY_AFTER_SECONDS=str(RETRY_AFTER),
            BOURSE_PSP_SIM_URL=self.sim_url,
            BOURSE_PSP_API_KEY=PSP_KEY,
            BOURSE_PSP_SECRET=PSP_SECRET,
            BOURSE_PSP_TIMEOUT_SECONDS="10",
            BOURSE_WITHDRAWAL_REVIEW_ABOVE='{"USD": "100"}',
            BOURSE_WITHDRAWAL_TWO_APPROVALS_ABOVE='{"USD": "1000"}',
            BOURSE_WITHDRAWAL_DAILY_LIMITS='{"USD": "100000"}',
            BOURSE_WORKER_HEARTBEAT_PATH=str(tmp / "worker.heartbeat"),
            BOURSE_LOG_LEVEL="warning",
        )
        self.settings: Settings = make_settings(
            database_url, psp_api_key=PSP_KEY, psp_secret=PSP_SECRET, psp_sim_url=self.sim_url
        )
        self.db = Database.from_settings(self.settings)
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.http = httpx.Client(timeout=30)

    # --- processes ------------------------------------------------------------------

    def start(self, name: str, *args: str) -> None:
        with (self.tmp / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "bourse", *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_worker(self) -> None:
        self.start("worker", "worker", "--queue", "deposits,withdrawals", "--sleep", "0.05", "--timeout", "30")

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (the worker's job runner)."""
        process = self.processes.pop(name)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self.http.close()
        self.db.dispose()

    # --- people ---------------------------------------------------------------------

    def user(self, role: Role = Role.client) -> TestUser:
        return make_user(self.db, role=role)

    def headers(self, user: TestUser, key: str | None = None) -> dict[str, str]:
        headers = bearer(self.settings, user)
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def api(self, method: str, path: str, user: TestUser | None = None, **kwargs: Any) -> httpx.Response:
        headers = kwargs.pop("headers", {})
        if user is not None:
            headers = {**self.headers(user), **headers}
        return self.http.request(method, self.api_url + path, headers=headers, **kwargs)

    def sim(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {PSP_KEY}", **kwargs.pop("headers", {})}
        return self.http.request(method, self.sim_url + path, headers=headers, **kwargs)

    def faults(self, **faults: Any) -> None:
        response = self.sim("PUT", "/admin/faults", json=faults)
        assert response.status_code == 200, response.text

    # --- flows ----------------------------------------------------------------------

    def deposit(self, user: TestUser, amount: str, asset: str = "USD") -> dict[str, Any]:
        response = self.api(
            "POST",
            "/api/v1/deposits",
            user,
            json={"asset": asset, "amount": amount},
            headers={"Idempotency-Key": uuid.uuid4().hex},
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def pay(self, deposit: dict[str, Any], decision: str = "approve") -> None:
        """The payer's browser submits the checkout form."""
        response = self.http.post(f"{deposit['checkout_url']}/{decision}", follow_redirects=False)
        assert response.status_code in (200, 303), response.text

    def funded(self, amount: str, asset: str = "USD", role: Role = Role.client) -> TestUser:
        """A user whose deposit of ``amount`` went all the way through the simulator."""
        user = self.user(role)
        deposit = self.deposit(user, amount, asset)
        self.pay(deposit)
        self.wait_deposit(deposit["id"], DepositState.succeeded)
        return user

    def deposit_row(self, deposit_id: str) -> Deposit:
        with self.db.sessions() as session:
            row = session.get(Deposit, uuid.UUID(deposit_id))
            assert row is not None
            session.expunge(row)
            return row

    def withdrawal_row(self, withdrawal_id: str) -> Withdrawal:
        with self.db.sessions() as session:
            row = session.get(Withdrawal, uuid.UUID(withdrawal_id))
            assert row is not None
            session.expunge(row)
            return row

    def wait_deposit(self, deposit_id: str, state: DepositState, timeout: float = 20) -> Deposit:
        wait_until(
            lambda: self.deposit_row(deposit_id).state is state, f"deposit {deposit_id} -> {state}", timeout=timeout
        )
        return self.deposit_row(deposit_id)

    def wait_withdrawal(self, withdrawal_id: str, state: str, timeout: float = 20) -> Withdrawal:
        wait_until(
            lambda: self.withdrawal_row(withdrawal_id).state.value == state,
            lambda: f"withdrawal {withdrawal_id} -> {state} (now {self.withdrawal_row(withdrawal_id).state})",
            timeout=timeout,
        )
        return self.withdrawal_row(withdrawal_id)

    def events_for(self, connector: str, **where: Any) -> list[PspEvent]:
        with self.db.sessions() as session:
            query = select(PspEvent).where(PspEvent.connector == connector)
            for column, value in where.items():
                query = query.where(getattr(PspEvent, column) == value)
            rows = list(session.scalars(query))
            session.expunge_all()
            return rows

    def wallet(self, user: TestUser, asset: str = "USD") -> dict[str, str]:
        response = self.api("GET", "/api/v1/wallets", user)
        assert response.status_code == 200, response.text
        return next(w for w in response.json()["wallets"] if w["asset"] == asset)

    def signed_webhook(self, event: dict[str, Any], *, timestamp: int | None = None) -> httpx.Response:
        """Deliver an event signed like the simulator signs, as a late or odd delivery would arrive."""
        body = json.dumps(event).encode()
        header = signing.sign(PSP_SECRET, body, timestamp)
        return self.http.post(
            f"{self.api_url}/api/v1/psp/simulator/webhook",
            content=body,
            headers={"Content-Type": "application/json", signing.SIGNATURE_HEADER: header},
        )
