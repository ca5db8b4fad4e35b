"""Accounts: opened on first use, found by their natural key, and locked in the ledger's one order.

An account is named by its natural key ``(kind, ref, asset)``: a user's
``available`` and ``held`` accounts have the user's id as their ``ref``; a system
account has the empty ``ref`` (``fees``, ``house``) or names what it is kept for
(a connector's ``psp_clearing``, a user's ``chargeback_receivable``).

Every account a transaction posts to is locked by :func:`lock_accounts`, in one
statement, in ascending id order, or by :func:`bourse.ledger.posting.post_entry`
in the same order. Nothing outside the ledger selects or locks account rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias, cast

from sqlalchemy import ColumnElement, Table, bindparam, func, select, tuple_
from sqlalchemy.orm import Session

from bourse.db import upsert
from bourse.ledger.models import GENESIS_HASH, USER_KINDS, Account, AccountKind
from bourse.ledger.posting import LockedRow
from bourse.sqltypes import utcnow

_ACCOUNTS = cast("Table", Account.__table__)


def _insert_ignoring_duplicates(session: Session, values: Mapping[str, Any]) -> None:
    statement = upsert(session, _ACCOUNTS).values(**values)
    session.execute(statement.on_conflict_do_nothing(index_elements=["kind", "ref", "asset"]))


def find_account(session: Session, kind: AccountKind, ref: str, asset: str) -> uuid.UUID | None:
    """The id of the account with this natural key, if it exists."""
    return session.scalar(select(Account.id).where(Account.kind == kind, Account.ref == ref, Account.asset == asset))


def open_account(
    session: Session, *, kind: AccountKind, asset: str, user_id: uuid.UUID | None = None, ref: str = ""
) -> uuid.UUID:
    """The id of the account, created on first use.

    Concurrent first uses are safe: the insert ignores the unique conflict and
    everyone reads the one row that won.
    """
    is_user = kind in USER_KINDS
    if is_user != (user_id is not None):
        raise ValueError(f"{kind} accounts {'need' if is_user else 'take no'} user")
    ref = str(user_id) if user_id is not None else ref
    found = find_account(session, kind, ref, asset)
    if found is not None:
        return found
    _insert_ignoring_duplicates(
        session,
        {
            "id": uuid.uuid4(),
            "kind": kind.value,
            "asset": asset,
            "user_id": user_id,
            "ref": ref,
            "balance": 0,
            "seq": 0,
            "last_hash": GENESIS_HASH,
            "created_at": utcnow(),
        },
    )
    created = find_account(session, kind, ref, asset)
    if created is None:
        raise RuntimeError("account vanished after insert")
    return created


AccountKey: TypeAlias = tuple[AccountKind, str, uuid.UUID | str | None]
"""An account by (kind, asset, owner).

The owner is the user's id for a user's account (``available``, ``held``) and for a
system account kept per user (``chargeback_receivable``, ``commissions_payable``); a
name for one kept per something else (a connector's ``psp_clearing``); None for the
one system account of its kind in an asset (``fees``, ``house``).
"""


@dataclass(frozen=True, slots=True)
class AccountBalance:
    id: uuid.UUID
    balance: int


def _natural_key(key: AccountKey) -> tuple[AccountKind, str, str]:
    kind, asset, owner = key
    return kind, "" if owner is None else str(owner), asset


def _natural(keys: Iterable[tuple[AccountKind, str, str]]) -> ColumnElement[bool]:
    return tuple_(Account.kind, Account.ref, Account.asset).in_(
        [(kind, ref, asset) for kind, ref, asset in sorted(keys)]
    )


_BALANCE_COLUMNS = (Account.id, Account.kind, Account.ref, Account.asset, Account.balance)


def _by_key(
    rows: Iterable[Any], wanted: Mapping[tuple[AccountKind, str, str], AccountKey]
) -> dict[AccountKey, AccountBalance]:
    return {wanted[(AccountKind(row.kind), row.ref, row.asset)]: AccountBalance(row.id, row.balance) for row in rows}


def _open_missing(
    session: Session,
    wanted: Mapping[tuple[AccountKind, str, str], AccountKey],
    missing: Iterable[tuple[AccountKind, str, str]],
) -> None:
    """Open each missing account (by natural key): a user's by its owner, a system one by its ref."""
    for natural_key in missing:
        kind, asset, owner = wanted[natural_key]
        if kind in USER_KINDS:
            if not isinstance(owner, uuid.UUID):
                raise ValueError(f"{kind} accounts are owned by a user id, not {owner!r}")
            open_account(session, kind=kind, asset=asset, user_id=owner)
        else:
            open_account(session, kind=kind, asset=asset, ref=natural_key[1])


def account_balances(session: Session, keys: Iterable[AccountKey]) -> dict[AccountKey, AccountBalance]:
    """The id and balance of each of these accounts that exists, in one read, without locks.

    A balance read without its lock is a hint (which accounts exist, whether a debt
    is likely), never a figure to post against: for that, lock the accounts with
    :func:`lock_accounts`, which reads them again under the lock.
    """
    wanted = {_natural_key(key): key for key in keys}
    if not wanted:
        return {}
    return _by_key(session.execute(select(*_BALANCE_COLUMNS).where(_natural(wanted))), wanted)


def lock_accounts(session: Session, keys: Iterable[AccountKey]) -> dict[AccountKey, AccountBalance]:
    """Lock every account a transaction will post to, in ONE statement, in ascending id order.

    :func:`~bourse.ledger.posting.post_entry` locks each entry's accounts in id
    order, but a transaction that posts several entries (an order: its hold, its
    fills, its releases), or that reads a balance before it posts, would take its
    locks in several rounds, and two such transactions can wait for each other
    across rounds: a deadlock. Calling this first, with every account the
    transaction may touch, makes every later ``FOR UPDATE`` one it already holds,
    so all its account locks are taken in the one global order. Accounts that do
    not exist yet are created *before* any lock is taken (an insert can wait for a
    concurrent insert of the same account, and must not do so while holding locks).

    Returns each account's id and its balance as read under the lock.
    """
    wanted = {_natural_key(key): key for key in keys}
    if not wanted:
        return {}
    natural = _natural(wanted)
    # Lock all of them only if all of them exist (the count is evaluated once, before any
    # row is locked); otherwise lock nothing, create what is missing, and lock them all.
    exist = select(func.count()).select_from(Account).where(natural).scalar_subquery() == len(wanted)
    lock = select(*_BALANCE_COLUMNS).where(natural).order_by(Account.id).with_for_update()
    locked = session.execute(lock.where(exist)).all()
    if len(locked) == len(wanted):
        return _by_key(locked, wanted)
    found = {
        (AccountKind(row.kind), row.ref, row.asset)
        for row in session.execute(select(Account.kind, Account.ref, Account.asset).where(natural))
    }
    _open_missing(session, wanted, sorted(wanted.keys() - found))
    return _by_key(session.execute(lock).all(), wanted)


# Locking for a posting, in Core (no ORM entities): the statement is built once; only
# its parameters change. The accounts named by ``lp_keys`` are locked, in id order,
# only if every one named by ``lp_required`` exists (the count is evaluated once,
# before any row is locked), with the columns an entry needs
# (:data:`bourse.ledger.posting.LOCK_COLUMNS`).
_C = _ACCOUNTS.c
_LOCK_COLUMNS_CORE = (_C.id, _C.kind, _C.asset, _C.ref, _C.balance, _C.seq, _C.last_hash)
_NATURAL_CORE = tuple_(_C.kind, _C.ref, _C.asset)
_LOCK_TO_POST = (
    select(*_LOCK_COLUMNS_CORE)
    .where(_NATURAL_CORE.in_(bindparam("lp_keys", expanding=True)))
    .order_by(_C.id)
    .with_for_update()
)
_LOCK_TO_POST_IF_REQUIRED_EXIST = _LOCK_TO_POST.where(
    select(func.count())
    .select_from(_ACCOUNTS)
    .where(_NATURAL_CORE.in_(bindparam("lp_required", expanding=True)))
    .scalar_subquery()
    == bindparam("lp_required_count")
)


def lock_to_post(session: Session, keys: Sequence[AccountKey], *, required: int) -> dict[AccountKey, LockedRow]:
    """Lock the accounts of an entry about to be posted with :func:`~bourse.ledger.posting.post_locked`.

    The first ``required`` of ``keys`` are opened if they do not exist yet; the
    others are locked only if they exist (a debt account, say, that a credit
    repays if there is one). In the usual case, when the required accounts exist,
    this is ONE statement that locks every existing account of ``keys`` in
    ascending id order and reads what an entry needs (balance, ``seq``, the last
    link of the chain), so the entry is then written without locking again.
    Otherwise nothing is locked, the missing accounts are opened (an insert can
    wait for a concurrent insert of the same account, and must not do so while
    holding locks), and then every existing one is locked in the same order.
    """
    if not 0 < required <= len(keys):
        raise ValueError("lock_to_post needs 1 to len(keys) required accounts")
    wanted = {_natural_key(key): key for key in keys}
    if len(wanted) != len(keys):
        raise ValueError("lock_to_post names each account once")
    natural = sorted(wanted)
    needed = sorted(_natural_key(key) for key in keys[:required])
    connection = session.connection()
    rows = connection.execute(
        _LOCK_TO_POST_IF_REQUIRED_EXIST,
        {"lp_keys": natural, "lp_required": needed, "lp_required_count": required},
    ).all()
    if len(rows) < required:
        found = {(AccountKind(row.kind), row.ref, row.asset) for row in rows}
        _open_missing(session, wanted, [key for key in needed if key not in found])
        rows = connection.execute(_LOCK_TO_POST, {"lp_keys": natural}).all()
    return {wanted[(AccountKind(row.kind), row.ref, row.asset)]: cast("LockedRow", row) for row in rows}


def owes_money(session: Session, user_id: uuid.UUID) -> bool:
    """Whether the user has a debt (a negative ``chargeback_receivable``) in any asset."""
    query = select(Account.id).where(
        Account.kind == AccountKind.chargeback_receivable, Account.ref == str(user_id), Account.balance < 0
    )
    return session.scalar(query.limit(1)) is not None


def user_account(
    session: Session, user_id: uuid.UUID, asset: str, kind: AccountKind = AccountKind.available
) -> uuid.UUID:
    return open_account(session, kind=kind, asset=asset, user_id=user_id)


def system_account(session: Session, kind: AccountKind, asset: str, ref: str = "") -> uuid.UUID:
    return open_account(session, kind=kind, asset=asset, ref=ref)
