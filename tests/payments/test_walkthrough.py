"""The README's deposit and withdrawal walkthrough, on `bourse up` with the embedded defaults.

A person registers, deposits through the simulator's checkout page and sees the
balance; withdraws above the review threshold; an operator (made with `bourse
users create`) approves it; the withdrawal is paid. Everything is real HTTP
against the processes `bourse up` starts, on SQLite.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from tests.support.processes import clean_env, free_port, start, stop, wait_for_output

PASSWORD = "correct horse battery staple"


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], Path]]:
    port = free_port()
    env = clean_env(BOURSE_PORT=str(port), BOURSE_PSP_SIM_URL=f"http://127.0.0.1:{free_port()}")
    process = start(["-m", "bourse", "up"], env, cwd=tmp_path)
    try:
        wait_for_output(process, "Bourse is running at", timeout=90)
        yield f"http://127.0.0.1:{port}", env, tmp_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        finally:
            stop(process)


def _login(client: httpx.Client, base: str, email: str) -> dict[str, str]:
    response = client.post(f"{base}/api/v1/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _wait_for(client: httpx.Client, url: str, headers: dict[str, str], field: str, value: str) -> dict[str, object]:
    deadline = time.monotonic() + 30
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        body = client.get(url, headers=headers).json()
        if body.get(field) == value:
            return body
        time.sleep(0.3)
    raise AssertionError(f"{url}: {field} never became {value!r}; last {body}")


def test_register_deposit_withdraw_approve_and_pay(embedded: tuple[str, dict[str, str], Path]) -> None:
    base, env, cwd = embedded
    client_email = f"ada-{uuid.uuid4().hex[:6]}@example.com"
    with httpx.Client(timeout=30) as client:
        # 1. Register and sign in.
        registered = client.post(f"{base}/api/v1/auth/register", json={"email": client_email, "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        me = _login(client, base, client_email)

        # 2. Deposit 1500.00 USD: Bourse answers with the simulator's checkout page.
        deposit = client.post(
            f"{base}/api/v1/deposits",
            json={"asset": "USD", "amount": "1500.00"},
            headers={**me, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert deposit.status_code == 201, deposit.text
        checkout_url = deposit.json()["checkout_url"]
        page = client.get(checkout_url)
        assert page.status_code == 200
        # The page's own form, as the browser would submit it.
        action = re.search(r'<form[^>]*action="([^"]*approve[^"]*)"', page.text)
        assert action is not None, page.text
        target = action.group(1)
        paid = client.post(target if target.startswith("http") else checkout_url.split("/checkout/")[0] + target)
        assert paid.status_code in (200, 303)

        # 3. The balance shows the deposit once the worker has credited it.
        _wait_for(client, f"{base}/api/v1/deposits/{deposit.json()['id']}", me, "state", "succeeded")
        wallets = client.get(f"{base}/api/v1/wallets", headers=me).json()["wallets"]
        assert next(w for w in wallets if w["asset"] == "USD")["available"] == "1500.00"

        # 4. Withdraw 1200.00: above the USD review threshold, so it waits for an operator.
        withdrawal = client.post(
            f"{base}/api/v1/withdrawals",
            json={"asset": "USD", "amount": "1200.00", "destination": "GB33BUKB20201555555555"},
            headers={**me, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert withdrawal.status_code == 201, withdrawal.text
        assert withdrawal.json()["state"] == "pending_review"
        withdrawal_id = withdrawal.json()["id"]

        # 5. An operator, created on the command line, approves it.
        operator_email = f"ops-{uuid.uuid4().hex[:6]}@example.com"
        created = subprocess.run(
            [sys.executable, "-m", "bourse", "users", "create", "--email", operator_email, "--role", "operator"],
            input=f"{PASSWORD}\n",
            env=env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert created.returncode == 0, created.stderr
        ops = _login(client, base, operator_email)
        queue = client.get(f"{base}/api/v1/admin/withdrawals", params={"state": "pending_review"}, headers=ops)
        assert withdrawal_id in {w["id"] for w in queue.json()["data"]}
        approved = client.post(
            f"{base}/api/v1/admin/withdrawals/{withdrawal_id}/approve", json={"reason": "verified"}, headers=ops
        )
        assert approved.status_code == 200, approved.text

        # 6. The payout job pays it through the simulator; the hold is captured.
        _wait_for(client, f"{base}/api/v1/withdrawals/{withdrawal_id}", me, "state", "succeeded")
        wallets = client.get(f"{base}/api/v1/wallets", headers=me).json()["wallets"]
        usd = next(w for w in wallets if w["asset"] == "USD")
        assert (usd["available"], usd["held"]) == ("300.00", "0.00")
