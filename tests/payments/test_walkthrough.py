"""The README's deposit and withdrawal walkthrough, on `bourse up` with the embedded defaults.

A person registers, deposits through the simulator's checkout page and sees the
balance; withdraws above the review threshold; an operator (made with `bourse
users create`) approves it; the withdrawal is paid. Everything is real HTTP
against the processes `bourse up` starts, on SQLite.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import httpx2 as httpx

from tests.support.embedded import PASSWORD, create_user, embedded, login

__all__ = ["embedded"]  # the fixture, used by name


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
        me = login(client, base, client_email)

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
        create_user(env, cwd, operator_email, "operator")
        ops = login(client, base, operator_email)
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
