"""The ledger API: wallets, transfers, statements, entries, holds, adjustments, assets."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.ledger.accounts import user_account
from bourse.ledger.holds import place_hold
from bourse.ledger.posting import Context
from bourse.settings import Settings
from tests.support.auth import TestUser, bearer, make_user
from tests.support.ledger import balance, fund


@pytest.fixture
def alice(database: Database) -> TestUser:
    return make_user(database)


@pytest.fixture
def bob(database: Database) -> TestUser:
    return make_user(database)


@pytest.fixture
def operator(database: Database) -> TestUser:
    return make_user(database, role=Role.operator)


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def send(
    client: TestClient, settings: Settings, user: TestUser, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Any:
    return client.post(
        "/api/v1/transfers",
        json=body,
        headers={**bearer(settings, user), **(headers if headers is not None else key())},
    )


def test_wallets_list_every_active_asset_with_exact_strings(
    client: TestClient, settings: Settings, database: Database, alice: TestUser
) -> None:
    fund(database, alice.id, "BTC", 12_345_678)
    response = client.get("/api/v1/wallets", headers=bearer(settings, alice))
    assert response.status_code == 200
    wallets = {w["asset"]: w for w in response.json()["wallets"]}
    assert {"USD", "EUR", "BTC", "ETH"} <= set(wallets)
    assert wallets["BTC"]["available"] == "0.12345678"
    assert wallets["BTC"]["held"] == "0.00000000"
    assert wallets["USD"]["available"] == "0.00"
    assert wallets["USD"]["available_account_id"] is None


def test_wallets_need_a_token(client: TestClient) -> None:
    response = client.get("/api/v1/wallets")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


def test_transfer_then_replay_then_reuse(
    client: TestClient, settings: Settings, database: Database, alice: TestUser, bob: TestUser
) -> None:
    fund(database, alice.id, "USD", 10_000)
    body = {"to_user_id": str(bob.id), "asset": "USD", "amount": "12.50"}
    headers = key()
    first = send(client, settings, alice, body, headers)
    assert first.status_code == 201, first.text
    assert first.headers["Idempotent-Replayed"] == "false"
    assert first.json()["amount"] == "12.50"
    again = send(client, settings, alice, body, headers)
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert balance(database, alice.id, "USD") == 10_000 - 1_250
    reused = send(client, settings, alice, {**body, "amount": "12.51"}, headers)
    assert reused.status_code == 422
    assert reused.json()["error"] == "idempotency_key_reused"
    # The key is scoped to the user: bob may use the same key for his own request.
    fund(database, bob.id, "USD", 100)
    own = send(client, settings, bob, {"to_user_id": str(alice.id), "asset": "USD", "amount": "1.00"}, headers)
    assert own.status_code == 201
    assert own.headers["Idempotent-Replayed"] == "false"


@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (12.5, "amount_must_be_string"),
        (12, "amount_must_be_string"),
        ("12.505", "amount_precision"),
        ("0", "amount_not_positive"),
        ("-5.00", "amount_not_positive"),
        ("92233720368547758.08", "amount_too_large"),
        ("1e3", "amount_invalid"),
        (None, "amount_invalid"),
    ],
)
def test_amount_errors_have_their_own_codes(
    client: TestClient, settings: Settings, alice: TestUser, bob: TestUser, amount: object, code: str
) -> None:
    response = send(client, settings, alice, {"to_user_id": str(bob.id), "asset": "USD", "amount": amount})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == code


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"asset": "XYZ"}, 422, "unknown_asset"),
        ({"asset": "usd"}, 422, "unknown_asset"),
        ({"to_user_id": str(uuid.uuid4())}, 422, "unknown_recipient"),
        ({"amount": "1000000.00"}, 409, "insufficient_funds"),
        ({"extra": "field"}, 422, "validation_error"),
    ],
)
def test_transfer_refusals_write_nothing(
    client: TestClient,
    settings: Settings,
    database: Database,
    alice: TestUser,
    bob: TestUser,
    change: dict[str, str],
    status: int,
    code: str,
) -> None:
    fund(database, alice.id, "USD", 100)
    headers = key()
    body = {"to_user_id": str(bob.id), "asset": "USD", "amount": "0.50", **change}
    response = send(client, settings, alice, body, headers)
    assert (response.status_code, response.json()["error"]) == (status, code)
    assert balance(database, alice.id, "USD") == 100
    # Nothing was stored under the key either: a corrected retry with it runs.
    if code in {"unknown_asset", "unknown_recipient", "insufficient_funds"}:
        fixed = send(client, settings, alice, {"to_user_id": str(bob.id), "asset": "USD", "amount": "0.50"}, headers)
        assert fixed.status_code == 201
        assert fixed.headers["Idempotent-Replayed"] == "false"


def test_transfer_to_self_is_refused(
    client: TestClient, settings: Settings, database: Database, alice: TestUser
) -> None:
    fund(database, alice.id, "USD", 100)
    response = send(client, settings, alice, {"to_user_id": str(alice.id), "asset": "USD", "amount": "0.50"})
    assert response.json()["error"] == "self_transfer"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "idempotency_key_required"),
        ({"Idempotency-Key": "has space"}, "idempotency_key_invalid"),
        ({"Idempotency-Key": "x" * 256}, "idempotency_key_invalid"),
    ],
)
def test_money_moving_calls_need_a_valid_key(
    client: TestClient, settings: Settings, alice: TestUser, bob: TestUser, headers: dict[str, str], code: str
) -> None:
    response = send(client, settings, alice, {"to_user_id": str(bob.id), "asset": "USD", "amount": "1.00"}, headers)
    assert response.status_code == 400
    assert response.json()["error"] == code


def test_statement_has_a_running_balance_and_pages_by_cursor(
    client: TestClient, settings: Settings, database: Database, alice: TestUser, bob: TestUser
) -> None:
    fund(database, alice.id, "EUR", 1_000)
    for cents in (100, 200, 300):
        assert (
            send(
                client, settings, alice, {"to_user_id": str(bob.id), "asset": "EUR", "amount": f"{cents / 100:.2f}"}
            ).status_code
            == 201
        )
    wallets = client.get("/api/v1/wallets", headers=bearer(settings, alice)).json()["wallets"]
    account_id = next(w["available_account_id"] for w in wallets if w["asset"] == "EUR")
    url = f"/api/v1/accounts/{account_id}/postings"
    page = client.get(url, params={"limit": 2}, headers=bearer(settings, alice)).json()
    assert page["balance"] == "4.00"
    assert [(p["amount"], p["balance_after"]) for p in page["postings"]] == [("-3.00", "4.00"), ("-2.00", "7.00")]
    rest = client.get(url, params={"limit": 2, "cursor": page["next_cursor"]}, headers=bearer(settings, alice)).json()
    assert [(p["amount"], p["balance_after"]) for p in rest["postings"]] == [("-1.00", "9.00"), ("10.00", "10.00")]
    assert rest["next_cursor"] is None
    bad = client.get(url, params={"cursor": "nonsense!"}, headers=bearer(settings, alice))
    assert (bad.status_code, bad.json()["error"]) == (422, "invalid_cursor")


def test_other_users_objects_are_404(
    client: TestClient, settings: Settings, database: Database, alice: TestUser, bob: TestUser, operator: TestUser
) -> None:
    """IDOR: every object endpoint answers 404 for another user's object, as for a missing one."""
    fund(database, alice.id, "USD", 1_000)
    transfer = send(client, settings, alice, {"to_user_id": str(bob.id), "asset": "USD", "amount": "1.00"}).json()
    with unit_of_work(database) as session:
        hold = place_hold(
            session,
            user_id=alice.id,
            asset="USD",
            amount=100,
            reference="order:x",
            context=Context(actor="test", idempotency_key=f"h:{uuid.uuid4()}"),
        )
        account_id = user_account(session, alice.id, "USD")
    mallory = make_user(database)
    paths = {
        f"/api/v1/accounts/{account_id}/postings": "account_not_found",
        f"/api/v1/entries/{transfer['entry_id']}": "entry_not_found",
        f"/api/v1/holds/{hold.id}": "hold_not_found",
    }
    for path, code in paths.items():
        assert client.get(path, headers=bearer(settings, alice)).status_code == 200, path
        denied = client.get(path, headers=bearer(settings, mallory))
        assert (denied.status_code, denied.json()["error"]) == (404, code), path
        missing = client.get(path.replace(path.split("/")[4], str(uuid.uuid4())), headers=bearer(settings, mallory))
        assert missing.json()["error"] == code
        assert client.get(path, headers=bearer(settings, operator)).status_code == 200, path
    assert client.get("/api/v1/holds", headers=bearer(settings, mallory)).json() == {"holds": []}
    listed = client.get("/api/v1/holds", headers=bearer(settings, alice)).json()["holds"]
    assert [(h["amount"], h["state"]) for h in listed] == [("1.00", "open")]


def test_entry_detail_shows_a_client_only_their_own_postings(
    client: TestClient, settings: Settings, database: Database, alice: TestUser, bob: TestUser, operator: TestUser
) -> None:
    fund(database, alice.id, "USD", 1_000)
    entry_id = send(client, settings, alice, {"to_user_id": str(bob.id), "asset": "USD", "amount": "2.00"}).json()[
        "entry_id"
    ]
    mine = client.get(f"/api/v1/entries/{entry_id}", headers=bearer(settings, alice)).json()
    assert [p["amount"] for p in mine["postings"]] == ["-2.00"]
    assert mine["metadata"] == {}
    theirs = client.get(f"/api/v1/entries/{entry_id}", headers=bearer(settings, bob)).json()
    assert [p["amount"] for p in theirs["postings"]] == ["2.00"]
    full = client.get(f"/api/v1/entries/{entry_id}", headers=bearer(settings, operator)).json()
    assert sorted(p["amount"] for p in full["postings"]) == ["-2.00", "2.00"]
    assert full["metadata"]["to_user"] == str(bob.id)


def test_adjustments_by_staff_record_the_operator_and_reason(
    client: TestClient, settings: Settings, database: Database, alice: TestUser, operator: TestUser
) -> None:
    body = {"user_id": str(alice.id), "asset": "USD", "amount": "25.00", "direction": "credit", "reason": "goodwill"}
    denied = client.post("/api/v1/admin/adjustments", json=body, headers={**bearer(settings, alice), **key()})
    assert (denied.status_code, denied.json()["error"]) == (403, "forbidden")
    credit = client.post("/api/v1/admin/adjustments", json=body, headers={**bearer(settings, operator), **key()})
    assert credit.status_code == 201, credit.text
    assert credit.json()["operator_id"] == str(operator.id)
    assert balance(database, alice.id, "USD") == 2_500
    entry = client.get(f"/api/v1/entries/{credit.json()['entry_id']}", headers=bearer(settings, operator)).json()
    assert entry["metadata"]["reason"] == "goodwill"
    debit = client.post(
        "/api/v1/admin/adjustments",
        json={**body, "direction": "debit", "amount": "25.01"},
        headers={**bearer(settings, operator), **key()},
    )
    assert (debit.status_code, debit.json()["error"]) == (409, "insufficient_funds")
    no_reason = client.post(
        "/api/v1/admin/adjustments", json={**body, "reason": ""}, headers={**bearer(settings, operator), **key()}
    )
    assert no_reason.status_code == 422


def test_operator_reversal(
    client: TestClient, settings: Settings, database: Database, alice: TestUser, bob: TestUser, operator: TestUser
) -> None:
    fund(database, alice.id, "USD", 1_000)
    entry_id = send(client, settings, alice, {"to_user_id": str(bob.id), "asset": "USD", "amount": "3.00"}).json()[
        "entry_id"
    ]
    url = f"/api/v1/admin/entries/{entry_id}/reversal"
    reversed_ = client.post(url, json={"reason": "fraud"}, headers={**bearer(settings, operator), **key()})
    assert reversed_.status_code == 201, reversed_.text
    assert balance(database, bob.id, "USD") == 0
    again = client.post(url, json={"reason": "fraud"}, headers={**bearer(settings, operator), **key()})
    assert (again.status_code, again.json()["error"]) == (409, "entry_already_reversed")


def test_assets_are_listed_and_managed_by_admins(
    client: TestClient, settings: Settings, database: Database, operator: TestUser
) -> None:
    listed = {a["code"]: a["scale"] for a in client.get("/api/v1/assets").json()}
    assert listed["USD"] == 2
    assert listed["BTC"] == 8
    admin = make_user(database, role=Role.admin)
    code = f"T{uuid.uuid4().hex[:6].upper()}"
    body = {"code": code, "scale": 6, "name": "Test token"}
    assert client.post("/api/v1/admin/assets", json=body, headers=bearer(settings, operator)).status_code == 403
    created = client.post("/api/v1/admin/assets", json=body, headers=bearer(settings, admin))
    assert created.status_code == 201, created.text
    duplicate = client.post("/api/v1/admin/assets", json=body, headers=bearer(settings, admin))
    assert (duplicate.status_code, duplicate.json()["error"]) == (409, "asset_exists")
    for bad in ({**body, "code": "lower"}, {**body, "code": "Z" + code, "scale": 9}):
        refused = client.post("/api/v1/admin/assets", json=bad, headers=bearer(settings, admin))
        assert (refused.status_code, refused.json()["error"]) == (422, "invalid_asset")
    off = client.patch(f"/api/v1/admin/assets/{code}", json={"active": False}, headers=bearer(settings, admin))
    assert off.json()["active"] is False
