"""Funded client users with access tokens: the set-up the HTTP benchmarks share.

``bench ledger``, ``bench ledger-http`` and ``bench orders-http`` (and the tests
that drive a real server the same way) act as many clients at once. The users
are inserted in one statement, funded through the ledger, and act only through
tokens minted with the server's key: nobody knows their password.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bourse.settings import Settings


@dataclass(frozen=True)
class _Subject:
    id: uuid.UUID
    role: str
    email: str


def funded_bench_users(
    settings: Settings,
    count: int,
    funding: Mapping[str, int],
    *,
    prefix: str = "bench",
    analyze: Sequence[str] = ("users", "accounts", "journal_entries", "postings"),
) -> tuple[list[str], dict[str, str]]:
    """Create ``count`` client users, credit each ``funding`` (minor units per asset)
    against the house, and mint their access tokens: their ids and tokens."""
    from argon2 import PasswordHasher
    from sqlalchemy import insert, text

    from bourse.db import Database, unit_of_work
    from bourse.identity.models import Role, User, UserStatus
    from bourse.identity.tokens import issue_access_token
    from bourse.ledger.adjustments import adjust
    from bourse.ledger.posting import Context
    from bourse.sqltypes import utcnow

    database = Database.from_settings(settings)
    run = uuid.uuid4().hex[:8]
    password_hash = PasswordHasher().hash(uuid.uuid4().hex + uuid.uuid4().hex)
    now = utcnow()
    users = [_Subject(uuid.uuid4(), Role.client.value, f"{prefix}-{run}-{i}@bench.invalid") for i in range(count)]
    rows = [
        {
            "id": user.id,
            "email": user.email,
            "password_hash": password_hash,
            "role": Role.client,
            "status": UserStatus.active,
            "created_at": now,
            "updated_at": now,
        }
        for user in users
    ]
    try:
        with unit_of_work(database) as session:
            session.execute(insert(User), rows)
        for start in range(0, count, 200):
            with unit_of_work(database) as session:
                for user in users[start : start + 200]:
                    for asset, amount in funding.items():
                        adjust(
                            session,
                            user_id=user.id,
                            asset=asset,
                            amount=amount,
                            credit=True,
                            reason="benchmark funding",
                            context=Context(actor="bench", idempotency_key=f"bench-fund:{user.id}:{asset}"),
                        )
        if database.engine.dialect.name == "postgresql":
            # Fresh planner statistics for the tables the run just filled, as
            # autovacuum would soon give them; without, PostgreSQL may scan.
            with database.engine.connect() as conn:
                conn.execute(text(f"ANALYZE {', '.join(analyze)}"))
                conn.commit()
        tokens = {str(user.id): issue_access_token(settings, user) for user in users}
    finally:
        database.dispose()
    return [str(user.id) for user in users], tokens
