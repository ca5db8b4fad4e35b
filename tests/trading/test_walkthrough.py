"""The README's trading walkthrough, on `bourse up` with the embedded defaults.

An admin (made with `bourse users create`) gives an IB a plan; the IB hands out a
referral code; client A registers with it, client B without. Both fund through the
simulator's checkout: A in USD, B in EUR. A WebSocket watches EUR-USD while B sells
EUR and A buys it; A's taker fee earns the IB a commission, which the worker accrues
and `bourse commissions payout` pays into the IB's wallet. Everything is real HTTP
against the processes `bourse up` starts, on SQLite.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
from websockets.sync.client import ClientConnection, connect

from tests.support.embedded import PASSWORD, create_user, embedded, login
from tests.support.processes import run_bourse

__all__ = ["embedded"]  # the fixture, used by name

SYMBOL = "EUR-USD"


def _payout(env: dict[str, str], cwd: Path, day: str) -> dict[str, Any]:
    done = run_bourse("commissions", "payout", "--date", day, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _eventually(probe: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} never happened; last {last!r}")


def _available(client: httpx.Client, base: str, headers: dict[str, str], asset: str) -> str | None:
    wallets = client.get(f"{base}/api/v1/wallets", headers=headers).json()["wallets"]
    return next((w["available"] for w in wallets if w["asset"] == asset), None)


def _deposit(client: httpx.Client, base: str, headers: dict[str, str], asset: str, amount: str) -> None:
    """Deposit through the simulator's checkout page, approving it as a browser would."""
    deposit = client.post(
        f"{base}/api/v1/deposits",
        json={"asset": asset, "amount": amount},
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert deposit.status_code == 201, deposit.text
    checkout_url = deposit.json()["checkout_url"]
    page = client.get(checkout_url)
    assert page.status_code == 200
    action = re.search(r'<form[^>]*action="([^"]*approve[^"]*)"', page.text)
    assert action is not None, page.text
    target = action.group(1)
    paid = client.post(target if target.startswith("http") else checkout_url.split("/checkout/")[0] + target)
    assert paid.status_code in (200, 303)
    url = f"{base}/api/v1/deposits/{deposit.json()['id']}"
    _eventually(lambda: client.get(url, headers=headers).json()["state"] == "succeeded", f"{asset} deposit")


def _order(client: httpx.Client, base: str, headers: dict[str, str], side: str) -> dict[str, Any]:
    placed = client.post(
        f"{base}/api/v1/orders",
        json={"instrument": SYMBOL, "side": side, "type": "limit", "price": "1.10000", "quantity": "1000.00"},
        headers={**headers, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert placed.status_code == 201, placed.text
    body: dict[str, Any] = placed.json()
    return body


def _receive(ws: ClientConnection, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    """The next message ``wanted`` accepts; anything else before it is skipped."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        message: dict[str, Any] = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if wanted(message):
            return message
    raise AssertionError(f"no {what} on the WebSocket")


def _trade_and_watch(client: httpx.Client, base: str, a: dict[str, str], b: dict[str, str]) -> None:
    """B rests an offer, A's bid crosses it; the WebSocket shows both commands in sequence."""
    # 4. Watch EUR-USD's book and trades over the WebSocket.
    ws_url = base.replace("http://", "ws://") + "/api/v1/ws"
    with connect(ws_url, open_timeout=10) as ws:
        for channel in ("book", "trades"):
            ws.send(json.dumps({"op": "subscribe", "channel": channel, "instrument": SYMBOL}))
        book = _receive(ws, lambda m: m["type"] == "snapshot" and m["channel"] == "book", "book snapshot")
        _receive(ws, lambda m: m["type"] == "snapshot" and m["channel"] == "trades", "trades snapshot")
        assert (book["bids"], book["asks"]) == ([], [])

        # 5. B offers 1000 EUR at 1.10000 USD; A's bid at that price crosses it.
        sell = _order(client, base, b, "sell")
        assert sell["status"] == "open", sell
        rested = _receive(ws, lambda m: m["type"] == "delta", "delta of the sell")
        assert rested["prev_sequence"] == book["sequence"]
        assert rested["sequence"] > book["sequence"]
        assert rested["changes"] == [["sell", "1.10000", "1000.00", 1]]

        buy = _order(client, base, a, "buy")
        assert buy["status"] == "filled", buy
        # The cross publishes the trade and the book delta that empties the level.
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < 2:
            message = _receive(ws, lambda m: m["type"] in {"delta", "trade"}, "trade and delta of the cross")
            seen[message["type"]] = message
        crossed, emptied = seen["trade"], seen["delta"]
        assert (crossed["price"], crossed["quantity"], crossed["side"]) == ("1.10000", "1000.00", "buy")
        assert crossed["prev_sequence"] is None
        assert rested["sequence"] < crossed["sequence"] <= emptied["sequence"]
        assert emptied["prev_sequence"] == rested["sequence"]
        assert emptied["sequence"] > rested["sequence"]
        # Levels are absolute: the filled bid's price is named too, at zero.
        assert ["sell", "1.10000", "0.00", 0] in emptied["changes"]
        assert all(change[2:] == ["0.00", 0] for change in emptied["changes"])


def test_fund_trade_watch_accrue_and_pay_out(embedded: tuple[str, dict[str, str], Path]) -> None:
    base, env, cwd = embedded
    suffix = uuid.uuid4().hex[:6]
    with httpx.Client(timeout=30) as client:
        # 1. An IB and an admin, created on the command line; the admin gives the IB
        #    30% of their direct clients' fees.
        ib_id = create_user(env, cwd, f"ib-{suffix}@example.com", "ib")
        create_user(env, cwd, f"admin-{suffix}@example.com", "admin")
        ib = login(client, base, f"ib-{suffix}@example.com")
        admin = login(client, base, f"admin-{suffix}@example.com")
        plan = client.put(
            f"{base}/api/v1/admin/ib/{ib_id}/plan", json={"kind": "percent_of_fee", "levels": [3000]}, headers=admin
        )
        assert plan.status_code == 200, plan.text

        # 2. The IB creates a referral code; A registers with it, B without.
        code = client.post(f"{base}/api/v1/ib/referral-codes", json={"code": f"IB-{suffix.upper()}"}, headers=ib)
        assert code.status_code == 201, code.text
        a_email, b_email = f"ada-{suffix}@example.com", f"bob-{suffix}@example.com"
        registered = client.post(
            f"{base}/api/v1/auth/register",
            json={"email": a_email, "password": PASSWORD, "referral_code": code.json()["code"]},
        )
        assert registered.status_code == 201, registered.text
        registered = client.post(f"{base}/api/v1/auth/register", json={"email": b_email, "password": PASSWORD})
        assert registered.status_code == 201, registered.text
        referrals = client.get(f"{base}/api/v1/ib/referrals", headers=ib).json()["referrals"]
        assert [r["email"] for r in referrals] == [a_email]
        a, b = login(client, base, a_email), login(client, base, b_email)

        # 3. Both fund through the simulator's checkout: A 1500 USD, B 1000 EUR.
        _deposit(client, base, a, "USD", "1500.00")
        _deposit(client, base, b, "EUR", "1000.00")
        assert _available(client, base, a, "USD") == "1500.00"
        assert _available(client, base, b, "EUR") == "1000.00"

        # 4-5. Watch EUR-USD on the WebSocket while B sells EUR and A buys it.
        _trade_and_watch(client, base, a, b)

        # A paid 1100.00 USD and the 0.20% taker fee (2.20); B got 1100.00 less 0.10% (1.10).
        assert _available(client, base, a, "EUR") == "1000.00"
        assert _available(client, base, a, "USD") == "397.80"
        assert _available(client, base, b, "USD") == "1098.90"
        trade = client.get(f"{base}/api/v1/trades", headers=a).json()["data"][0]
        trade_day = trade["created_at"][:10]

        # 6. The worker accrues the IB's 30% of A's fee: 0.66 USD (B has no IB).
        lines = _eventually(
            lambda: client.get(f"{base}/api/v1/ib/commissions", headers=ib).json()["lines"],
            "commission accrual",
        )
        assert [(line["key"], line["asset"], line["amount"]) for line in lines] == [(trade_day, "USD", "0.66")]
        assert client.get(f"{base}/api/v1/ib/payouts", headers=ib).json()["payouts"] == []

        # 7. Pay commissions on trades up to the end of the trade's UTC day.
        out = _payout(env, cwd, trade_day)
        assert [(p["ib_user_id"], p["asset"], p["amount_minor"]) for p in out["payouts"]] == [(ib_id, "USD", 66)]
        assert _available(client, base, ib, "USD") == "0.66"
        payouts = client.get(f"{base}/api/v1/ib/payouts", headers=ib).json()["payouts"]
        assert [(p["asset"], p["amount"], p["accruals"]) for p in payouts] == [("USD", "0.66", 1)]
        again = _payout(env, cwd, trade_day)
        assert again["payouts"] == []
