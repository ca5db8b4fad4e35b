"""Posting money: the one code path that changes balances.

Every movement is a journal entry whose postings sum to zero per asset. An
entry is written by :func:`post_entry`, which

1. returns the existing entry if its idempotency key was seen before (so a
   retried job or request never posts twice);
2. locks the affected account rows in one statement, **in ascending id order**
   (``SELECT ... FOR UPDATE ... ORDER BY id``), so two entries touching the
   same accounts always queue behind each other instead of deadlocking;
3. checks, before writing anything, that no user account would go negative
   (refusing with 409 ``insufficient_funds``, and nothing is written);
4. writes the entry, its postings (each with its balance-after and its link in
   the account's hash chain), and moves the balances with
   ``balance = balance + :amount`` guarded by the ``seq`` it read under the
   lock.

On SQLite every transaction is ``BEGIN IMMEDIATE``, which serialises writers,
so the same code is safe there. See docs/decisions/0009-ledger-locking.md.

Services never commit: the request or job boundary does.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, cast

from sqlalchemy import ColumnElement, Row, Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from bourse.assets.amounts import INT64_MAX, AmountTooLarge
from bourse.db import upsert
from bourse.errors import BourseError
from bourse.ledger.errors import AccountNotFound, EntryKeyConflict, InsufficientFunds
from bourse.ledger.models import USER_KINDS, Account, AccountKind, JournalEntry, Posting
from bourse.sqltypes import utcnow

_ACCOUNTS = cast("Table", Account.__table__)
_ENTRIES = cast("Table", JournalEntry.__table__)
_POSTINGS = cast("Table", Posting.__table__)
_ENTRY_KIND = re.compile(r"[a-z][a-z0-9_.]{0,31}")
_MAX_KEY = 255


@dataclass(frozen=True, slots=True)
class Leg:
    """One side of an entry: ``amount`` minor units into (+) or out of (-) an account."""

    account_id: uuid.UUID
    amount: int


@dataclass(frozen=True, slots=True)
class Posted:
    entry_id: uuid.UUID
    created_at: datetime
    # True when the idempotency key had already been posted: nothing new was written.
    replayed: bool


@dataclass(frozen=True, slots=True)
class Context:
    """Who asked, for the journal: the actor, the request id and the idempotency key."""

    actor: str
    idempotency_key: str
    request_id: str | None = None


def user_actor(user_id: uuid.UUID) -> str:
    return f"user:{user_id}"


def posting_hash(
    *,
    prev_hash: str,
    account_id: uuid.UUID,
    seq: int,
    entry_id: uuid.UUID,
    asset: str,
    amount: int,
    balance_after: int,
) -> str:
    """The link of a posting in its account's chain.

    Covers everything that gives a posting its meaning, plus the previous link,
    so changing, removing or reordering any posting breaks every later link.
    """
    material = f"{prev_hash}|{account_id}|{seq}|{entry_id}|{asset}|{amount}|{balance_after}"
    return hashlib.sha256(material.encode()).hexdigest()


def validate_entry(kind: str, amounts: Sequence[int], idempotency_key: str) -> None:
    """The shape of an entry, one amount per account. Breaking it is a programming error,
    never user input: it fails loudly."""
    if not _ENTRY_KIND.fullmatch(kind):
        raise ValueError(f"invalid entry kind {kind!r}")
    if not idempotency_key or len(idempotency_key) > _MAX_KEY:
        raise ValueError("an entry needs an idempotency key of 1 to 255 characters")
    if len(amounts) < 2:  # noqa: PLR2004 - double entry: two sides at least
        raise ValueError("an entry has at least two postings")
    for amount in amounts:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
            raise ValueError(f"a posting amount is a non-zero int, not {amount!r}")


def _validate(kind: str, legs: Sequence[Leg], idempotency_key: str) -> None:
    validate_entry(kind, [leg.amount for leg in legs], idempotency_key)
    if len({leg.account_id for leg in legs}) != len(legs):
        raise ValueError("an entry posts to each account at most once")


def replay(session: Session, kind: str, legs: Sequence[Leg], idempotency_key: str) -> Posted:
    """The entry already posted under ``idempotency_key``, if it is the same movement."""
    row = session.execute(
        select(JournalEntry.id, JournalEntry.kind, JournalEntry.created_at).where(
            JournalEntry.idempotency_key == idempotency_key
        )
    ).one()
    posted = sorted(
        (str(account_id), amount)
        for account_id, amount in session.execute(
            select(Posting.account_id, Posting.amount).where(Posting.entry_id == row.id)
        )
    )
    if row.kind != kind or posted != sorted((str(leg.account_id), leg.amount) for leg in legs):
        raise EntryKeyConflict(f"The key {idempotency_key!r} was already used for a different movement")
    return Posted(entry_id=row.id, created_at=row.created_at, replayed=True)


def key_taken(session: Session, idempotency_key: str) -> bool:
    found = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == idempotency_key))
    return found is not None


@dataclass(frozen=True, slots=True)
class _Entry:
    """An entry about to be written: its row and its postings, all checked."""

    id: uuid.UUID
    created_at: datetime
    row: dict[str, Any]
    postings: list[dict[str, Any]]


# The columns a posting reads from its locked accounts.
LOCK_COLUMNS = (Account.id, Account.kind, Account.asset, Account.ref, Account.balance, Account.seq, Account.last_hash)


LockedRow: TypeAlias = "Row[uuid.UUID, AccountKind, str, str, int, int, str]"


def _lock_rows(session: Session, condition: ColumnElement[bool]) -> Sequence[LockedRow]:
    """Lock the matching account rows, always in ascending id order (no deadlocks)."""
    return session.execute(select(*LOCK_COLUMNS).where(condition).order_by(Account.id).with_for_update()).all()


def _plan(
    accounts: Sequence[LockedRow],
    amounts: Mapping[uuid.UUID, int],
    *,
    kind: str,
    context: Context,
    metadata: Mapping[str, Any] | None,
    reverses_id: uuid.UUID | None,
) -> _Entry:
    """Check an entry against its locked accounts and compute its postings. Writes nothing."""
    per_asset: dict[str, int] = defaultdict(int)
    for account in accounts:
        per_asset[account.asset] += amounts[account.id]
    if any(per_asset.values()):
        raise ValueError(f"unbalanced entry: {dict(per_asset)}")
    entry_id, now = uuid.uuid4(), utcnow()
    postings: list[dict[str, Any]] = []
    for account in accounts:
        amount = amounts[account.id]
        balance_after = account.balance + amount
        if account.kind in USER_KINDS and balance_after < 0:
            raise InsufficientFunds(f"Not enough {account.asset} available")
        if not -INT64_MAX <= balance_after <= INT64_MAX:
            raise AmountTooLarge("The resulting balance would be beyond what Bourse can hold")
        seq = account.seq + 1
        link = posting_hash(
            prev_hash=account.last_hash,
            account_id=account.id,
            seq=seq,
            entry_id=entry_id,
            asset=account.asset,
            amount=amount,
            balance_after=balance_after,
        )
        postings.append(
            {
                "entry_id": entry_id,
                "account_id": account.id,
                "asset": account.asset,
                "amount": amount,
                "seq": seq,
                "balance_after": balance_after,
                "prev_hash": account.last_hash,
                "hash": link,
            }
        )
    row = {
        "id": entry_id,
        "kind": kind,
        "idempotency_key": context.idempotency_key,
        "metadata": dict(metadata or {}),
        "actor": context.actor,
        "request_id": context.request_id,
        "reverses_id": reverses_id,
        "created_at": now,
    }
    return _Entry(id=entry_id, created_at=now, row=row, postings=postings)


_MOVE_BALANCE = (
    update(_ACCOUNTS)
    .where(_ACCOUNTS.c.id == bindparam("b_id"), _ACCOUNTS.c.seq == bindparam("b_prev_seq"))
    .values(balance=_ACCOUNTS.c.balance + bindparam("b_amount"), seq=bindparam("b_seq"), last_hash=bindparam("b_hash"))
)


# PostgreSQL writes a whole entry in one round trip: the entry row (claiming its
# key), its postings and the balance moves, as one statement of data-modifying
# CTEs. Postings are inserted only if the entry was (the join with ``e``), and
# the foreign keys are checked at the end of the statement, when all rows exist.
_PG_WRITE = text(
    """
    WITH e AS (
        INSERT INTO journal_entries (id, kind, idempotency_key, metadata, actor, request_id, reverses_id, created_at)
        VALUES (:id, :kind, :idempotency_key, CAST(:metadata AS json), :actor, :request_id, :reverses_id, :created_at)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    ), p AS (
        INSERT INTO postings (entry_id, account_id, asset, amount, seq, balance_after, prev_hash, hash)
        SELECT e.id, v.account_id, v.asset, v.amount, v.seq, v.balance_after, v.prev_hash, v.hash
        FROM e, unnest(
            CAST(:account_ids AS uuid[]), CAST(:assets AS varchar[]), CAST(:amounts AS bigint[]),
            CAST(:seqs AS bigint[]), CAST(:balances AS bigint[]), CAST(:prev_hashes AS varchar[]),
            CAST(:hashes AS varchar[])
        ) AS v(account_id, asset, amount, seq, balance_after, prev_hash, hash)
        RETURNING account_id, amount, seq, hash
    ), u AS (
        UPDATE accounts SET balance = accounts.balance + p.amount, seq = p.seq, last_hash = p.hash
        FROM p
        WHERE accounts.id = p.account_id AND accounts.seq = p.seq - 1
        RETURNING accounts.id
    )
    SELECT (SELECT count(*) FROM e) AS entries, (SELECT count(*) FROM u) AS moved
    """
)


def _write_postgresql(session: Session, entry: _Entry) -> tuple[int, int]:
    postings = entry.postings
    # Core, on the session's connection: the statement is plain text, nothing for the ORM to do.
    row = (
        session.connection()
        .execute(
            _PG_WRITE,
            {
                **entry.row,
                "metadata": json.dumps(entry.row["metadata"]),
                "account_ids": [p["account_id"] for p in postings],
                "assets": [p["asset"] for p in postings],
                "amounts": [p["amount"] for p in postings],
                "seqs": [p["seq"] for p in postings],
                "balances": [p["balance_after"] for p in postings],
                "prev_hashes": [p["prev_hash"] for p in postings],
                "hashes": [p["hash"] for p in postings],
            },
        )
        .one()
    )
    return int(row.entries), int(row.moved)


def _write_portable(session: Session, entry: _Entry) -> tuple[int, int]:
    claim = (
        upsert(session, _ENTRIES)
        .values(**entry.row)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(_ENTRIES.c.id)
    )
    if session.execute(claim).first() is None:
        return 0, 0
    session.execute(insert(_POSTINGS), entry.postings)
    moved = session.execute(
        _MOVE_BALANCE,
        [
            {
                "b_id": p["account_id"],
                "b_prev_seq": p["seq"] - 1,
                "b_amount": p["amount"],
                "b_seq": p["seq"],
                "b_hash": p["hash"],
            }
            for p in entry.postings
        ],
    )
    return 1, int(moved.rowcount)  # type: ignore[attr-defined]


def _write(session: Session, entry: _Entry) -> bool:
    """Write a planned entry; False (and nothing written) if its key was already posted.

    The entry row goes first, with ``ON CONFLICT (idempotency_key) DO NOTHING``,
    so one statement both claims the key and inserts. A concurrent duplicate has
    already queued behind our account locks, so it finds the key taken. The
    ``seq`` guard on each balance move makes a lost lock visible instead of
    forking the account's chain.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    entries, moved = _write_postgresql(session, entry) if postgres else _write_portable(session, entry)
    if entries == 0:
        return False
    if moved != len(entry.postings):
        raise RuntimeError(f"entry {entry.id}: an account changed under its lock")
    return True


def post_locked(
    session: Session,
    accounts: Sequence[LockedRow],
    legs: Sequence[Leg],
    *,
    kind: str,
    context: Context,
    metadata: Mapping[str, Any] | None = None,
    reverses_id: uuid.UUID | None = None,
) -> Posted:
    """Post ``legs`` against their already locked ``accounts``, or replay the key's entry.

    Every check runs before the first write, so a refusal leaves nothing behind
    even if the caller catches it and commits. A refusal on a key that was
    already posted is a replay instead: a retried transfer must not fail for
    lack of the funds it already moved.
    """
    _validate(kind, legs, context.idempotency_key)
    amounts = {leg.account_id: leg.amount for leg in legs}
    try:
        entry = _plan(accounts, amounts, kind=kind, context=context, metadata=metadata, reverses_id=reverses_id)
    except BourseError:
        if key_taken(session, context.idempotency_key):
            return replay(session, kind, legs, context.idempotency_key)
        raise
    if not _write(session, entry):
        return replay(session, kind, legs, context.idempotency_key)
    return Posted(entry_id=entry.id, created_at=entry.created_at, replayed=False)


def post_entry(
    session: Session,
    *,
    kind: str,
    legs: Sequence[Leg],
    idempotency_key: str,
    actor: str,
    request_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    reverses_id: uuid.UUID | None = None,
) -> Posted:
    """Write one balanced entry, or return the one already posted under its key."""
    _validate(kind, legs, idempotency_key)
    accounts = _lock_rows(session, Account.id.in_(sorted({leg.account_id for leg in legs})))
    if len(accounts) != len(legs):
        raise AccountNotFound("An entry names an account that does not exist")
    context = Context(actor=actor, idempotency_key=idempotency_key, request_id=request_id)
    return post_locked(session, accounts, legs, kind=kind, context=context, metadata=metadata, reverses_id=reverses_id)
