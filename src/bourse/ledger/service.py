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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias, cast

from sqlalchemy import ColumnElement, Row, Table, and_, bindparam, func, insert, select, text, tuple_, update
from sqlalchemy.orm import Session

from bourse.assets.amounts import INT64_MAX, AmountTooLarge
from bourse.db import upsert
from bourse.errors import BourseError
from bourse.identity.models import User
from bourse.ledger.errors import (
    AccountNotFound,
    AssetMismatch,
    CaptureExceedsHold,
    EntryAlreadyReversed,
    EntryKeyConflict,
    EntryNotFound,
    EntryNotReversible,
    HoldAlreadyCaptured,
    HoldNotFound,
    HoldReleased,
    InsufficientFunds,
    UnknownUser,
)
from bourse.ledger.models import GENESIS_HASH, USER_KINDS, Account, AccountKind, Hold, HoldState, JournalEntry, Posting
from bourse.sqltypes import utcnow

_ACCOUNTS = cast("Table", Account.__table__)
_ENTRIES = cast("Table", JournalEntry.__table__)
_POSTINGS = cast("Table", Posting.__table__)
_ENTRY_KIND = re.compile(r"[a-z][a-z0-9_.]{0,31}")
_MAX_KEY = 255
# Entries that move money between a user's own available and held accounts;
# reversing one would break the hold it belongs to, so holds are undone by
# release, not by reversal.
HOLD_ENTRY_KINDS = frozenset({"hold", "hold_release", "hold_capture"})


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


def _validate(kind: str, legs: Sequence[Leg], idempotency_key: str) -> None:
    # These are programming errors, never user input: they fail loudly.
    if not _ENTRY_KIND.fullmatch(kind):
        raise ValueError(f"invalid entry kind {kind!r}")
    if not idempotency_key or len(idempotency_key) > _MAX_KEY:
        raise ValueError("an entry needs an idempotency key of 1 to 255 characters")
    if len(legs) < 2:  # noqa: PLR2004 - double entry: two sides at least
        raise ValueError("an entry has at least two postings")
    if len({leg.account_id for leg in legs}) != len(legs):
        raise ValueError("an entry posts to each account at most once")
    for leg in legs:
        if isinstance(leg.amount, bool) or not isinstance(leg.amount, int) or leg.amount == 0:
            raise ValueError(f"a posting amount is a non-zero int, not {leg.amount!r}")


def _replay(session: Session, kind: str, legs: Sequence[Leg], idempotency_key: str) -> Posted:
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


def _key_taken(session: Session, idempotency_key: str) -> bool:
    found = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == idempotency_key))
    return found is not None


@dataclass(frozen=True, slots=True)
class _Entry:
    """An entry about to be written: its row and its postings, all checked."""

    id: uuid.UUID
    created_at: datetime
    row: dict[str, Any]
    postings: list[dict[str, Any]]


_LOCK_COLUMNS = (Account.id, Account.kind, Account.asset, Account.ref, Account.balance, Account.seq, Account.last_hash)


_Locked: TypeAlias = "Row[uuid.UUID, AccountKind, str, str, int, int, str]"


def _lock_accounts(session: Session, condition: ColumnElement[bool]) -> Sequence[_Locked]:
    """Lock the matching account rows, always in ascending id order (no deadlocks)."""
    return session.execute(select(*_LOCK_COLUMNS).where(condition).order_by(Account.id).with_for_update()).all()


def _plan(
    accounts: Sequence[_Locked],
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
    row = session.execute(
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
    ).one()
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


def _post_locked(
    session: Session,
    accounts: Sequence[_Locked],
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
    amounts = {leg.account_id: leg.amount for leg in legs}
    try:
        entry = _plan(accounts, amounts, kind=kind, context=context, metadata=metadata, reverses_id=reverses_id)
    except BourseError:
        if _key_taken(session, context.idempotency_key):
            return _replay(session, kind, legs, context.idempotency_key)
        raise
    if not _write(session, entry):
        return _replay(session, kind, legs, context.idempotency_key)
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
    accounts = _lock_accounts(session, Account.id.in_(sorted({leg.account_id for leg in legs})))
    if len(accounts) != len(legs):
        raise AccountNotFound("An entry names an account that does not exist")
    context = Context(actor=actor, idempotency_key=idempotency_key, request_id=request_id)
    return _post_locked(session, accounts, legs, kind=kind, context=context, metadata=metadata, reverses_id=reverses_id)


# -- Accounts -------------------------------------------------------------------------


def _insert_ignoring_duplicates(session: Session, values: Mapping[str, Any]) -> None:
    statement = upsert(session, _ACCOUNTS).values(**values)
    session.execute(statement.on_conflict_do_nothing(index_elements=["kind", "ref", "asset"]))


def _account_id(session: Session, kind: AccountKind, ref: str, asset: str) -> uuid.UUID | None:
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
    found = _account_id(session, kind, ref, asset)
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
    created = _account_id(session, kind, ref, asset)
    if created is None:
        raise RuntimeError("account vanished after insert")
    return created


AccountKey: TypeAlias = tuple[AccountKind, str, uuid.UUID | None]
"""An account by its natural key: (kind, asset, user id), the user id None for a system account."""


def _natural(keys: Iterable[tuple[AccountKind, str, str]]) -> ColumnElement[bool]:
    return tuple_(Account.kind, Account.ref, Account.asset).in_(
        [(kind, ref, asset) for kind, ref, asset in sorted(keys)]
    )


def lock_accounts(session: Session, keys: Iterable[AccountKey]) -> None:
    """Lock every account a transaction will post to, in ONE statement, in ascending id order.

    :func:`post_entry` locks each entry's accounts in id order, but a transaction
    that posts several entries (an order: its hold, its fills, its releases) would
    take its locks in several rounds, and two such transactions can wait for each
    other across rounds: a deadlock. Calling this first, with every account the
    transaction may touch, makes every later ``FOR UPDATE`` one it already holds,
    so all its account locks are taken in the one global order. Accounts that do
    not exist yet are created *before* any lock is taken (an insert can wait for a
    concurrent insert of the same account, and must not do so while holding locks).
    System accounts are those with the empty ``ref`` (``fees``, ``house``).
    """
    keys = list(keys)
    wanted = {(kind, str(user_id) if user_id is not None else "", asset) for kind, asset, user_id in keys}
    if not wanted:
        return
    users = {str(user_id): user_id for _, _, user_id in keys if user_id is not None}
    natural = _natural(wanted)
    # Lock all of them only if all of them exist (the count is evaluated once, before any
    # row is locked); otherwise lock nothing, create what is missing, and lock them all.
    exist = select(func.count()).select_from(Account).where(natural).scalar_subquery() == len(wanted)
    locked = session.execute(select(Account.id).where(natural, exist).order_by(Account.id).with_for_update()).all()
    if len(locked) == len(wanted):
        return
    found = {
        (AccountKind(row.kind), row.ref, row.asset)
        for row in session.execute(select(Account.kind, Account.ref, Account.asset).where(natural))
    }
    for kind, ref, asset in sorted(wanted - found):
        user_id = users[ref] if kind in USER_KINDS else None
        open_account(session, kind=kind, asset=asset, user_id=user_id, ref="" if user_id is not None else ref)
    session.execute(select(Account.id).where(natural).order_by(Account.id).with_for_update()).all()


def user_account(
    session: Session, user_id: uuid.UUID, asset: str, kind: AccountKind = AccountKind.available
) -> uuid.UUID:
    return open_account(session, kind=kind, asset=asset, user_id=user_id)


def system_account(session: Session, kind: AccountKind, asset: str, ref: str = "") -> uuid.UUID:
    return open_account(session, kind=kind, asset=asset, ref=ref)


# -- Movements ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """Who asked, for the journal: the actor, the request id and the idempotency key."""

    actor: str
    idempotency_key: str
    request_id: str | None = None


# The transfer's statements are built once; only their parameters change.
_PAIR = and_(
    Account.kind == AccountKind.available,
    Account.asset == bindparam("t_asset"),
    Account.ref.in_(bindparam("t_refs", expanding=True)),
)
_LOCK_PAIR = select(*_LOCK_COLUMNS).where(_PAIR).order_by(Account.id).with_for_update()
# Lock both rows only if both exist (the count is evaluated once, before any row
# is locked). Locking the source alone and then a newly created target would take
# the two locks out of id order, and deadlock against a transfer that saw both
# rows and locked them in order.
_LOCK_PAIR_IF_BOTH_EXIST = (
    select(*_LOCK_COLUMNS)
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
    accounts = session.execute(_LOCK_PAIR_IF_BOTH_EXIST, params).all()
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
    return _post_locked(session, accounts, legs, kind="transfer", context=context, metadata=metadata)


def adjust(
    session: Session,
    *,
    user_id: uuid.UUID,
    asset: str,
    amount: int,
    credit: bool,
    reason: str,
    context: Context,
) -> Posted:
    """Credit (or debit) a user's available account against the house."""
    user = user_account(session, user_id, asset)
    house = system_account(session, AccountKind.house, asset)
    sign = 1 if credit else -1
    return post_entry(
        session,
        kind="adjustment",
        legs=[Leg(user, sign * amount), Leg(house, -sign * amount)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"user_id": str(user_id), "direction": "credit" if credit else "debit", "reason": reason},
    )


def reverse_entry(session: Session, *, entry_id: uuid.UUID, reason: str, context: Context) -> Posted:
    """Undo an entry with a new one that mirrors it. The original is never edited."""
    original = session.get(JournalEntry, entry_id)
    if original is None:
        raise EntryNotFound(f"There is no entry {entry_id}")
    if original.kind in HOLD_ENTRY_KINDS or original.reverses_id is not None:
        raise EntryNotReversible(f"A {original.kind} entry cannot be reversed")
    legs = [
        Leg(account_id, -amount)
        for account_id, amount in session.execute(
            select(Posting.account_id, Posting.amount).where(Posting.entry_id == entry_id)
        )
    ]
    already = session.scalar(select(JournalEntry.idempotency_key).where(JournalEntry.reverses_id == entry_id))
    if already is not None and already != context.idempotency_key:
        raise EntryAlreadyReversed(f"The entry {entry_id} has already been reversed")
    return post_entry(
        session,
        kind="reversal",
        legs=legs,
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"reason": reason, "reverses": str(entry_id)},
        reverses_id=entry_id,
    )


# -- Holds ----------------------------------------------------------------------------


def place_hold(
    session: Session,
    *,
    user_id: uuid.UUID,
    asset: str,
    amount: int,
    reference: str | None,
    context: Context,
) -> Hold:
    """Reserve ``amount`` of the user's available funds; refused if they are not there."""
    available = _account_id(session, AccountKind.available, str(user_id), asset)
    if available is None:
        raise InsufficientFunds(f"Not enough {asset} available")
    held = user_account(session, user_id, asset, AccountKind.held)
    posted = post_entry(
        session,
        kind="hold",
        legs=[Leg(available, -amount), Leg(held, amount)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"reference": reference} if reference else None,
    )
    if posted.replayed:
        existing = session.scalar(select(Hold).where(Hold.entry_id == posted.entry_id))
        if existing is None:
            raise RuntimeError(f"hold entry {posted.entry_id} has no hold")
        return existing
    hold = Hold(
        user_id=user_id,
        asset=asset,
        available_account_id=available,
        held_account_id=held,
        amount=amount,
        captured=0,
        released=0,
        state=HoldState.open,
        reference=reference,
        entry_id=posted.entry_id,
    )
    session.add(hold)
    session.flush()
    return hold


def _locked_hold(session: Session, hold_id: uuid.UUID, user_id: uuid.UUID | None) -> Hold:
    query = select(Hold).where(Hold.id == hold_id).with_for_update().execution_options(populate_existing=True)
    hold = session.scalar(query)
    if hold is None or (user_id is not None and hold.user_id != user_id):
        raise HoldNotFound(f"There is no hold {hold_id}")
    return hold


def capture_hold(
    session: Session,
    *,
    hold_id: uuid.UUID,
    amount: int,
    destination: uuid.UUID,
    context: Context,
    user_id: uuid.UUID | None = None,
) -> Hold:
    """Move ``amount`` of the held funds to ``destination``; the rest stays held.

    The hold row is locked first, then (inside :func:`post_entry`) the accounts.
    Every hold operation takes the locks in that order.
    """
    hold = _locked_hold(session, hold_id, user_id)
    if _key_taken(session, context.idempotency_key):
        # A retry: it must be this very capture, or it is a misused key.
        legs = [Leg(hold.held_account_id, -amount), Leg(destination, amount)]
        _replay(session, "hold_capture", legs, context.idempotency_key)
        return hold
    if hold.state is HoldState.released:
        raise HoldReleased("The hold was released; nothing is left to capture")
    if hold.state is HoldState.captured:
        raise HoldAlreadyCaptured("The hold has already been captured in full")
    if amount > hold.remaining:
        raise CaptureExceedsHold(f"Only {hold.remaining} minor units remain on the hold")
    target_asset = session.scalar(select(Account.asset).where(Account.id == destination))
    if target_asset is None:
        raise AccountNotFound("The capture destination does not exist")
    if target_asset != hold.asset:
        raise AssetMismatch(f"The hold is in {hold.asset}; the destination holds {target_asset}")
    post_entry(
        session,
        kind="hold_capture",
        legs=[Leg(hold.held_account_id, -amount), Leg(destination, amount)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"hold_id": str(hold.id)},
    )
    hold.captured += amount
    if hold.remaining == 0:
        hold.state = HoldState.captured
    session.flush()
    return hold


def release_hold(session: Session, *, hold_id: uuid.UUID, context: Context, user_id: uuid.UUID | None = None) -> Hold:
    """Give what remains of the hold back to the user's available account."""
    hold = _locked_hold(session, hold_id, user_id)
    if _key_taken(session, context.idempotency_key):
        entry_kind = session.scalar(
            select(JournalEntry.kind).where(JournalEntry.idempotency_key == context.idempotency_key)
        )
        if entry_kind != "hold_release":
            raise EntryKeyConflict(f"The key {context.idempotency_key!r} was already used for a different movement")
        return hold
    if hold.state is HoldState.released:
        raise HoldReleased("The hold was already released")
    if hold.state is HoldState.captured:
        raise HoldAlreadyCaptured("The hold has been captured in full; nothing is left to release")
    remaining = hold.remaining
    post_entry(
        session,
        kind="hold_release",
        legs=[Leg(hold.held_account_id, -remaining), Leg(hold.available_account_id, remaining)],
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={"hold_id": str(hold.id)},
    )
    hold.released += remaining
    hold.state = HoldState.released
    session.flush()
    return hold


def capture_holds(
    session: Session,
    *,
    captures: Sequence[tuple[uuid.UUID, int, uuid.UUID]],
    legs: Sequence[Leg],
    kind: str,
    context: Context,
    metadata: Mapping[str, Any] | None = None,
) -> Posted:
    """Capture from several holds, plus any extra ``legs``, in ONE balanced entry.

    Each capture is (hold id, amount, destination account id). A trade moves
    both sides' held funds at once, and one entry keeps it atomic in the journal
    too. The hold rows are locked first, in id order, then (inside
    :func:`post_entry`) the accounts: the same order as :func:`capture_hold`, so
    the two never deadlock. Over-capture is refused with the errors of
    :func:`capture_hold`; a retried key replays without touching the holds.
    Legs naming the same account are merged, so two captures may share a
    destination.
    """
    if not captures:
        raise ValueError("capture_holds needs at least one capture")
    wanted: dict[uuid.UUID, int] = defaultdict(int)
    for hold_id, amount, _ in captures:
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise ValueError(f"a capture amount is a positive int, not {amount!r}")
        wanted[hold_id] += amount
    query = (
        select(Hold)
        .where(Hold.id.in_(sorted(wanted)))
        .order_by(Hold.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    holds = {hold.id: hold for hold in session.scalars(query)}
    if len(holds) != len(wanted):
        raise HoldNotFound("A capture names a hold that does not exist")
    amounts: dict[uuid.UUID, int] = defaultdict(int)
    for hold_id, amount, destination in captures:
        amounts[holds[hold_id].held_account_id] -= amount
        amounts[destination] += amount
    for leg in legs:
        amounts[leg.account_id] += leg.amount
    merged = [Leg(account_id, amount) for account_id, amount in amounts.items() if amount]
    if _key_taken(session, context.idempotency_key):
        _replay(session, kind, merged, context.idempotency_key)
        return Posted(entry_id=_entry_id(session, context.idempotency_key), created_at=utcnow(), replayed=True)
    _check_captures(session, holds, wanted, captures)
    posted = post_entry(
        session,
        kind=kind,
        legs=merged,
        idempotency_key=context.idempotency_key,
        actor=context.actor,
        request_id=context.request_id,
        metadata={**(metadata or {}), "hold_ids": [str(hold_id) for hold_id in sorted(wanted)]},
    )
    for hold_id, amount in wanted.items():
        hold = holds[hold_id]
        hold.captured += amount
        if hold.remaining == 0:
            hold.state = HoldState.captured
    session.flush()
    return posted


def _check_captures(
    session: Session,
    holds: Mapping[uuid.UUID, Hold],
    wanted: Mapping[uuid.UUID, int],
    captures: Sequence[tuple[uuid.UUID, int, uuid.UUID]],
) -> None:
    """The refusals of :func:`capture_hold`, for every hold and destination of :func:`capture_holds`."""
    destinations = {destination for _, _, destination in captures}
    for hold_id, amount in wanted.items():
        hold = holds[hold_id]
        if hold.state is HoldState.released:
            raise HoldReleased("The hold was released; nothing is left to capture")
        if hold.state is HoldState.captured:
            raise HoldAlreadyCaptured("The hold has already been captured in full")
        if amount > hold.remaining:
            raise CaptureExceedsHold(f"Only {hold.remaining} minor units remain on hold {hold.id}")
    assets = {
        row.id: row.asset
        for row in session.execute(select(Account.id, Account.asset).where(Account.id.in_(destinations)))
    }
    for hold_id, _, destination in captures:
        if destination not in assets:
            raise AccountNotFound("The capture destination does not exist")
        if assets[destination] != holds[hold_id].asset:
            raise AssetMismatch(f"The hold is in {holds[hold_id].asset}; the destination holds {assets[destination]}")


def _entry_id(session: Session, idempotency_key: str) -> uuid.UUID:
    found = session.scalar(select(JournalEntry.id).where(JournalEntry.idempotency_key == idempotency_key))
    if found is None:
        raise RuntimeError(f"no entry under {idempotency_key!r}")
    return found
