"""Transfers: a user moves funds from their available account to another user's.

The hot path of the ledger, so it takes the fewest round trips: both accounts
are locked by their natural key in one statement, then the entry is written.
"""

from __future__ import annotations

import uuid

from sqlalchemy import and_, bindparam, func, select
from sqlalchemy.orm import Session

from bourse.identity.models import User
from bourse.ledger.accounts import user_account
from bourse.ledger.errors import InsufficientFunds, UnknownUser
from bourse.ledger.models import Account, AccountKind
from bourse.ledger.posting import LOCK_COLUMNS, Context, Leg, Posted, post_locked

# The transfer's statements are built once; only their parameters change.
_PAIR = and_(
    Account.kind == AccountKind.available,
    Account.asset == bindparam("t_asset"),
    Account.ref.in_(bindparam("t_refs", expanding=True)),
)
_LOCK_PAIR = select(*LOCK_COLUMNS).where(_PAIR).order_by(Account.id).with_for_update()
# Lock both rows only if both exist (the count is evaluated once, before any row
# is locked). Locking the source alone and then a newly created target would take
# the two locks out of id order, and deadlock against a transfer that saw both
# rows and locked them in order.
_LOCK_PAIR_IF_BOTH_EXIST = (
    select(*LOCK_COLUMNS)
    .where(_PAIR, select(func.count()).select_from(Account).where(_PAIR).scalar_subquery() == 2)  # noqa: PLR2004
    .order_by(Account.id)
    .with_for_update()
)


def transfer(
    session: Session, *, from_user: uuid.UUID, to_user: uuid.UUID, asset: str, amount: int, context: Context
) -> Posted:
    """Move ``amount`` from one user's available account to another's.

    The hot path of the ledger, so it takes the fewest round trips: lock both
    accounts by their natural key in one statement, then write the entry (which
    claims the key), the postings, and both balances.
    """
    if from_user == to_user or amount <= 0:
        raise ValueError("a transfer moves a positive amount between two different users")
    params = {"t_asset": asset, "t_refs": [str(from_user), str(to_user)]}
    # On the session's connection: Core, with nothing of the ORM's to flush first.
    accounts = session.connection().execute(_LOCK_PAIR_IF_BOTH_EXIST, params).all()
    if len(accounts) != 2:  # noqa: PLR2004 - a pair
        existing = set(session.scalars(select(Account.ref).where(_PAIR), params))
        if str(from_user) not in existing:
            raise InsufficientFunds(f"Not enough {asset} available")
        if session.get(User, to_user) is None:
            raise UnknownUser("There is no such recipient")
        user_account(session, to_user, asset)
        accounts = session.execute(_LOCK_PAIR, params).all()
    refs = {account.ref: account.id for account in accounts}
    legs = [Leg(refs[str(from_user)], -amount), Leg(refs[str(to_user)], amount)]
    metadata = {"from_user": str(from_user), "to_user": str(to_user)}
    return post_locked(session, accounts, legs, kind="transfer", context=context, metadata=metadata)
