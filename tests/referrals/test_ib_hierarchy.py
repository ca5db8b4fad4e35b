"""The IB hierarchy: a client's upline of IBs, an IB's downline, depth limits and cycles.

The structure built by :func:`network`, through the real API::

    master (IB)
      └─ sub (registered with master's code, promoted to IB)
           ├─ client (registered with sub's code)
           └─ subsub (registered with sub's code, promoted to IB)
                └─ leaf (registered with subsub's code)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role
from bourse.referrals import service
from bourse.referrals.models import Referral, ReferralCode
from tests.referrals.helpers import Headers, create_code, register, set_role, unique_code
from tests.support.auth import TestUser, make_user
from tests.support.clients import AppFactory


@dataclass(frozen=True)
class Network:
    master: TestUser
    sub: TestUser
    client: TestUser
    subsub: TestUser
    leaf: TestUser


def _promote(database: Database, user: TestUser) -> TestUser:
    set_role(database, user.id, Role.ib)
    return TestUser(id=user.id, email=user.email, role=Role.ib, password=user.password)


@pytest.fixture
def network(client: TestClient, database: Database, ib: TestUser, headers: Headers) -> Network:
    sub = _promote(database, register(client, create_code(client, headers(ib))))
    sub_code = create_code(client, headers(sub))
    referred_client = register(client, sub_code)
    subsub = _promote(database, register(client, sub_code))
    leaf = register(client, create_code(client, headers(subsub)))
    return Network(master=ib, sub=sub, client=referred_client, subsub=subsub, leaf=leaf)


def _upline(database: Database, user: TestUser, depth: int) -> list[uuid.UUID]:
    with unit_of_work(database) as session:
        return list(service.upline(session, user.id, depth))


def test_the_upline_lists_ibs_level_1_first(database: Database, network: Network) -> None:
    n = network
    assert _upline(database, n.client, 2) == [n.sub.id, n.master.id]
    assert _upline(database, n.leaf, 3) == [n.subsub.id, n.sub.id, n.master.id]
    assert _upline(database, n.subsub, 2) == [n.sub.id, n.master.id]
    assert _upline(database, n.master, 5) == []


def test_the_upline_stops_at_the_depth(database: Database, network: Network) -> None:
    n = network
    assert _upline(database, n.leaf, 0) == []
    assert _upline(database, n.leaf, 1) == [n.subsub.id]
    assert _upline(database, n.leaf, 2) == [n.subsub.id, n.sub.id]
    # Deeper than the chain: it ends at the master, whom nobody referred.
    assert _upline(database, n.leaf, 5) == [n.subsub.id, n.sub.id, n.master.id]
    with unit_of_work(database) as session, pytest.raises(ValueError, match="negative"):
        service.upline(session, n.leaf.id, -1)


def test_the_upline_stops_at_a_referrer_who_is_no_longer_an_ib(database: Database, network: Network) -> None:
    n = network
    set_role(database, n.subsub.id, Role.client)
    # Nobody above a demoted IB is moved up to a level (and a rate) they do not hold.
    assert _upline(database, n.leaf, 3) == []
    assert _upline(database, n.client, 2) == [n.sub.id, n.master.id]


def test_the_upline_survives_a_cycle(database: Database) -> None:
    """Registration cannot create a cycle (a user is referred once, before they exist
    as anybody's referrer); rows written by hand can, and the walk must still end."""
    a, b = make_user(database, role=Role.ib), make_user(database, role=Role.ib)
    session = database.sessions()
    try:
        for owner in (a, b):
            session.add(ReferralCode(code=f"CYCLE-{owner.id.hex[:12].upper()}", ib_user_id=owner.id))
        session.flush()
        session.add(Referral(user_id=a.id, ib_user_id=b.id, code=f"CYCLE-{b.id.hex[:12].upper()}"))
        session.add(Referral(user_id=b.id, ib_user_id=a.id, code=f"CYCLE-{a.id.hex[:12].upper()}"))
        session.flush()
        assert service.upline(session, a.id, 5) == [b.id]
        assert service.upline(session, b.id, 5) == [a.id]
        assert [(m.user_id, m.level) for m in service.downline(session, a.id, 5)] == [(b.id, 1)]
    finally:
        session.rollback()
        session.close()


def test_my_referrals_are_level_1_only(client: TestClient, network: Network, headers: Headers) -> None:
    n = network
    listed = client.get("/api/v1/ib/referrals", headers=headers(n.master)).json()["referrals"]
    assert [r["user_id"] for r in listed] == [str(n.sub.id)]
    listed = client.get("/api/v1/ib/referrals", headers=headers(n.sub)).json()["referrals"]
    assert {r["user_id"] for r in listed} == {str(n.client.id), str(n.subsub.id)}
    page = client.get("/api/v1/ib/referrals", params={"limit": 1, "offset": 1}, headers=headers(n.sub)).json()
    assert [r["user_id"] for r in page["referrals"]] == [listed[1]["user_id"]]
    response = client.get("/api/v1/ib/referrals", params={"limit": 0}, headers=headers(n.sub))
    assert (response.status_code, response.json()["error"]) == (422, "validation_error")


def _tree(client: TestClient, user: TestUser, headers: Headers) -> tuple[int, set[tuple[str, int, str]]]:
    response = client.get("/api/v1/ib/referrals/tree", headers=headers(user))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["max_depth"], {(m["user_id"], m["level"], m["referred_by"]) for m in body["members"]}


def test_the_tree_goes_to_the_configured_depth(
    client: TestClient, make_client: AppFactory, network: Network, headers: Headers
) -> None:
    n = network
    level_2 = {
        (str(n.sub.id), 1, str(n.master.id)),
        (str(n.client.id), 2, str(n.sub.id)),
        (str(n.subsub.id), 2, str(n.sub.id)),
    }
    assert _tree(client, n.master, headers) == (2, level_2)
    deeper = make_client(ib_max_depth=3)
    assert _tree(deeper, n.master, headers) == (3, level_2 | {(str(n.leaf.id), 3, str(n.subsub.id))})
    shallow = make_client(ib_max_depth=1)
    assert _tree(shallow, n.master, headers) == (1, {(str(n.sub.id), 1, str(n.master.id))})
    assert _tree(client, n.sub, headers) == (
        2,
        {
            (str(n.client.id), 1, str(n.sub.id)),
            (str(n.subsub.id), 1, str(n.sub.id)),
            (str(n.leaf.id), 2, str(n.subsub.id)),
        },
    )


def test_the_tree_mirrors_the_upline(database: Database, network: Network) -> None:
    """Whoever the tree puts at level n has this IB at level n of their upline."""
    n = network
    with unit_of_work(database) as session:
        for depth in range(1, 5):
            for member in service.downline(session, n.master.id, depth):
                chain = service.upline(session, member.user_id, depth)
                assert chain[member.level - 1] == n.master.id
    set_role(database, n.subsub.id, Role.client)
    with unit_of_work(database) as session:
        members = service.downline(session, n.master.id, 5)
        assert n.leaf.id not in {m.user_id for m in members}
        assert (n.subsub.id, Role.client) in {(m.user_id, m.role) for m in members}


def test_an_ib_without_referrals_has_an_empty_tree(client: TestClient, ib: TestUser, headers: Headers) -> None:
    assert _tree(client, ib, headers) == (2, set())
    create_code(client, headers(ib), unique_code())
    assert _tree(client, ib, headers) == (2, set())
