"""Many entries at once: posted in memory against rows locked once, written in a few statements.

:func:`bourse.ledger.posting.post_entry` writes one entry in one round trip, but a
caller that settles hundreds of movements in one transaction (the matcher settling a
batch of fills, docs/decisions/0027-matcher-per-instrument-shard.md) would still pay a
lock, a read and a write per entry. :class:`EntryBatch` does the same work with the
same guarantees in a fixed number of statements:

1. :meth:`EntryBatch.lock_accounts` locks every account the batch may post to, in ONE
   statement in ascending id order (the ledger's one lock order, as ``post_entry``),
   and reads what a posting needs: balance, ``seq`` and the head of the hash chain;
   :meth:`EntryBatch.lock_holds` then locks the holds it captures from or releases, in
   id order (accounts first, then holds, as every batch does);
2. each :meth:`capture` and :meth:`release` is checked and planned **in memory**: the
   same refusals as :mod:`bourse.ledger.holds` (a released or fully captured hold,
   over-capture, an asset mismatch) and :mod:`bourse.ledger.posting` (a user balance
   below zero, a balance beyond int64, an unbalanced entry), each posting chained to
   the account's previous link as computed so far in this batch;
3. :meth:`write` writes every entry, every posting, each account's final balance,
   ``seq`` and chain head, and each hold's new state: on PostgreSQL in ONE statement of
   data-modifying CTEs fed by arrays, elsewhere in one multi-row statement per table.
   Each account's update is guarded by the ``seq`` it was locked at, so a lost lock is
   an error, never a forked chain.

A refusal raises before anything is written (nothing is written before :meth:`write`),
and the caller's transaction then rolls back whole. The entries are exactly those
``post_entry`` would have written one by one: ``bourse ledger verify`` cannot tell them
apart. There is no replay of an idempotency key here: a batch's keys are new by
construction (its caller is the single, fenced writer of what they name), and a key
seen before breaks the unique constraint and fails the whole transaction.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session

from bourse.assets.amounts import INT64_MAX, AmountTooLarge
from bourse.ledger.accounts import AccountKey, lock_to_post, open_account
from bourse.ledger.errors import (
    AccountNotFound,
    AssetMismatch,
    CaptureExceedsHold,
    HoldAlreadyCaptured,
    HoldNotFound,
    HoldReleased,
    InsufficientFunds,
)
from bourse.ledger.models import USER_KINDS, Account, AccountKind, Hold, HoldState, JournalEntry, Posting
from bourse.ledger.posting import LockedRow, posting_hash, validate_entry
from bourse.sqltypes import utcnow

_ACCOUNTS = cast("Table", Account.__table__)
_ENTRIES = cast("Table", JournalEntry.__table__)
_POSTINGS = cast("Table", Posting.__table__)
_HOLDS = cast("Table", Hold.__table__)


@dataclass(slots=True)
class _Account:
    id: uuid.UUID
    kind: AccountKind
    asset: str
    balance: int
    seq: int
    last_hash: str
    locked_seq: int  # the seq read under the lock: the guard of the final update


@dataclass(slots=True)
class _Hold:
    id: uuid.UUID
    asset: str
    available_account_id: uuid.UUID
    held_account_id: uuid.UUID
    amount: int
    captured: int
    released: int
    state: HoldState
    changed: bool = False

    @property
    def remaining(self) -> int:
        return self.amount - self.captured - self.released


@dataclass(slots=True)
class EntryBatch:
    """Entries posted in memory against locked accounts and holds; see the module docstring."""

    session: Session
    actor: str
    request_id: str | None = None
    _accounts: dict[uuid.UUID, _Account] = field(default_factory=dict)
    _ids: dict[AccountKey, uuid.UUID] = field(default_factory=dict)
    _holds: dict[uuid.UUID, _Hold] = field(default_factory=dict)
    _entries: list[dict[str, Any]] = field(default_factory=list)
    _postings: list[dict[str, Any]] = field(default_factory=list)

    # -- Locking -------------------------------------------------------------------------------

    def lock_accounts(self, keys: Iterable[AccountKey]) -> dict[AccountKey, uuid.UUID]:
        """Lock (opening any missing) every account the batch may post to; their ids by key.

        Call once, before :meth:`lock_holds`: a second call would take locks out of order.
        """
        if self._accounts:
            raise RuntimeError("an entry batch locks its accounts once")
        wanted = sorted(set(keys), key=lambda key: (key[0].value, key[1], str(key[2] or "")))
        if not wanted:
            return {}
        if self.session.get_bind().dialect.name == "postgresql":
            locked = self._lock_postgresql(wanted)
        else:
            locked = lock_to_post(self.session, wanted, required=len(wanted))
        for key, row in locked.items():
            self._accounts[row.id] = _Account(
                row.id, AccountKind(row.kind), row.asset, row.balance, row.seq, row.last_hash, row.seq
            )
            self._ids[key] = row.id
        return dict(self._ids)

    def _lock_postgresql(self, wanted: Sequence[AccountKey]) -> dict[AccountKey, LockedRow]:
        """:func:`~bourse.ledger.accounts.lock_to_post` with the keys as arrays: one statement
        text whatever their number, so PostgreSQL plans it once, not once per batch size."""
        by_natural = {
            (kind.value, "" if owner is None else str(owner), asset): (kind, asset, owner)
            for kind, asset, owner in wanted
        }
        params = {
            "k_kinds": [natural[0] for natural in by_natural],
            "k_refs": [natural[1] for natural in by_natural],
            "k_assets": [natural[2] for natural in by_natural],
            "k_count": len(by_natural),
        }
        connection = self.session.connection()
        rows = connection.execute(_PG_LOCK_IF_ALL_EXIST, params).all()
        if len(rows) < len(by_natural):
            # Nothing is locked: open what is missing (an insert can wait for a concurrent
            # insert of the same account, and must not while holding locks), then lock all.
            found = {(row.kind, row.ref, row.asset) for row in rows}
            for natural, (kind, asset, owner) in by_natural.items():
                if natural in found:
                    continue
                if kind in USER_KINDS:
                    open_account(self.session, kind=kind, asset=asset, user_id=cast("uuid.UUID", owner))
                else:
                    open_account(self.session, kind=kind, asset=asset, ref=natural[1])
            rows = connection.execute(_PG_LOCK, params).all()
        return {by_natural[(row.kind, row.ref, row.asset)]: cast("LockedRow", row) for row in rows}

    def account(self, key: AccountKey) -> uuid.UUID:
        """The id of a locked account."""
        try:
            return self._ids[key]
        except KeyError:
            raise RuntimeError(f"account {key} was not locked by this batch") from None

    def lock_holds(self, hold_ids: Iterable[uuid.UUID]) -> None:
        """Lock the holds the batch captures from or releases, in ONE statement, in id order."""
        wanted = sorted(set(hold_ids) - self._holds.keys())
        if not wanted:
            return
        columns = _HOLDS.c
        if self.session.get_bind().dialect.name == "postgresql":
            rows = self.session.connection().execute(_PG_LOCK_HOLDS, {"h_ids": wanted}).all()
        else:
            rows = self.session.execute(
                select(
                    columns.id,
                    columns.asset,
                    columns.available_account_id,
                    columns.held_account_id,
                    columns.amount,
                    columns.captured,
                    columns.released,
                    columns.state,
                )
                .where(columns.id.in_(wanted))
                .order_by(columns.id)
                .with_for_update()
            ).all()
        if len(rows) != len(wanted):
            raise HoldNotFound("A batch names a hold that does not exist")
        for row in rows:
            self._holds[row.id] = _Hold(
                row.id,
                row.asset,
                row.available_account_id,
                row.held_account_id,
                row.amount,
                row.captured,
                row.released,
                HoldState(row.state),
            )

    def remaining(self, hold_id: uuid.UUID) -> int:
        """What a locked hold still reserves, after what this batch did to it so far."""
        hold = self._hold(hold_id)
        return hold.remaining if hold.state is HoldState.open else 0

    # -- Posting (in memory) -------------------------------------------------------------------

    def capture(
        self,
        *,
        captures: Sequence[tuple[uuid.UUID, int, uuid.UUID]],
        kind: str,
        idempotency_key: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> uuid.UUID:
        """Capture from holds into destinations, in ONE balanced entry (as
        :func:`bourse.ledger.holds.capture_holds`); each capture is (hold id, amount, destination)."""
        if not captures:
            raise ValueError("a capture entry needs at least one capture")
        wanted: dict[uuid.UUID, int] = defaultdict(int)
        amounts: dict[uuid.UUID, int] = defaultdict(int)
        for hold_id, amount, destination in captures:
            if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
                raise ValueError(f"a capture amount is a positive int, not {amount!r}")
            hold = self._hold(hold_id)
            target = self._accounts.get(destination)
            if target is None:
                raise AccountNotFound("The capture destination was not locked by this batch")
            if target.asset != hold.asset:
                raise AssetMismatch(f"The hold is in {hold.asset}; the destination holds {target.asset}")
            wanted[hold_id] += amount
            amounts[hold.held_account_id] -= amount
            amounts[destination] += amount
        for hold_id, amount in wanted.items():
            hold = self._holds[hold_id]
            if hold.state is HoldState.released:
                raise HoldReleased("The hold was released; nothing is left to capture")
            if hold.state is HoldState.captured:
                raise HoldAlreadyCaptured("The hold has already been captured in full")
            if amount > hold.remaining:
                raise CaptureExceedsHold(f"Only {hold.remaining} minor units remain on hold {hold.id}")
        entry_id = self._post(
            kind,
            idempotency_key,
            {account_id: amount for account_id, amount in amounts.items() if amount},
            {**(metadata or {}), "hold_ids": [str(hold_id) for hold_id in sorted(wanted)]},
        )
        for hold_id, amount in wanted.items():
            hold = self._holds[hold_id]
            hold.captured += amount
            hold.changed = True
            if hold.remaining == 0:
                hold.state = HoldState.captured
        return entry_id

    def release(self, hold_id: uuid.UUID, *, idempotency_key: str) -> uuid.UUID | None:
        """Give what the hold still reserves back to its owner (as :func:`bourse.ledger.holds.release_hold`).

        None, and nothing posted, when the hold reserves nothing any more.
        """
        hold = self._hold(hold_id)
        if hold.state is not HoldState.open or hold.remaining == 0:
            return None
        remaining = hold.remaining
        for account_id in (hold.held_account_id, hold.available_account_id):
            if account_id not in self._accounts:
                raise AccountNotFound(f"Account {account_id} of hold {hold_id} was not locked by this batch")
        entry_id = self._post(
            "hold_release",
            idempotency_key,
            {hold.held_account_id: -remaining, hold.available_account_id: remaining},
            {"hold_id": str(hold.id)},
        )
        hold.released += remaining
        hold.state = HoldState.released
        hold.changed = True
        return entry_id

    def _hold(self, hold_id: uuid.UUID) -> _Hold:
        hold = self._holds.get(hold_id)
        if hold is None:
            raise RuntimeError(f"hold {hold_id} was not locked by this batch")
        return hold

    def _post(
        self, kind: str, idempotency_key: str, amounts: Mapping[uuid.UUID, int], metadata: Mapping[str, Any]
    ) -> uuid.UUID:
        """Check one entry against the accounts as this batch left them, and chain its postings."""
        validate_entry(kind, list(amounts.values()), idempotency_key)
        accounts = [self._accounts[account_id] for account_id in sorted(amounts)]
        per_asset: dict[str, int] = defaultdict(int)
        for account in accounts:
            per_asset[account.asset] += amounts[account.id]
            after = account.balance + amounts[account.id]
            if account.kind in USER_KINDS and after < 0:
                raise InsufficientFunds(f"Not enough {account.asset} available")
            if not -INT64_MAX <= after <= INT64_MAX:
                raise AmountTooLarge("The resulting balance would be beyond what Bourse can hold")
        if any(per_asset.values()):
            raise ValueError(f"unbalanced entry: {dict(per_asset)}")
        entry_id = uuid.uuid4()
        for account in accounts:
            amount = amounts[account.id]
            account.balance += amount
            account.seq += 1
            link = posting_hash(
                prev_hash=account.last_hash,
                account_id=account.id,
                seq=account.seq,
                entry_id=entry_id,
                asset=account.asset,
                amount=amount,
                balance_after=account.balance,
            )
            self._postings.append(
                {
                    "entry_id": entry_id,
                    "account_id": account.id,
                    "asset": account.asset,
                    "amount": amount,
                    "seq": account.seq,
                    "balance_after": account.balance,
                    "prev_hash": account.last_hash,
                    "hash": link,
                }
            )
            account.last_hash = link
        self._entries.append(
            {
                "id": entry_id,
                "kind": kind,
                "idempotency_key": idempotency_key,
                "metadata": dict(metadata),
                "actor": self.actor,
                "request_id": self.request_id,
            }
        )
        return entry_id

    # -- Writing -------------------------------------------------------------------------------

    @property
    def entries(self) -> int:
        """How many entries the batch holds (written or not)."""
        return len(self._entries)

    def write(self) -> None:
        """Write every entry, posting, balance and hold the batch planned (see the module docstring)."""
        accounts = [account for account in self._accounts.values() if account.seq != account.locked_seq]
        holds = [hold for hold in self._holds.values() if hold.changed]
        if not self._entries and not holds:
            return
        now = utcnow()
        if self.session.get_bind().dialect.name == "postgresql":
            counts = self._write_postgresql(accounts, holds, now)
        else:
            counts = self._write_portable(accounts, holds, now)
        expected = (len(self._entries), len(self._postings), len(accounts), len(holds))
        if counts != expected:
            raise RuntimeError(f"an entry batch wrote {counts} rows where it planned {expected}")
        self._entries.clear()
        self._postings.clear()
        for account in accounts:
            account.locked_seq = account.seq
        for hold in holds:
            hold.changed = False

    def _write_postgresql(
        self, accounts: Sequence[_Account], holds: Sequence[_Hold], now: Any
    ) -> tuple[int, int, int, int]:
        entries, postings = self._entries, self._postings
        row = (
            self.session.connection()
            .execute(
                _PG_WRITE_BATCH,
                {
                    "now": now,
                    "e_ids": [e["id"] for e in entries],
                    "e_kinds": [e["kind"] for e in entries],
                    "e_keys": [e["idempotency_key"] for e in entries],
                    "e_metadata": [json.dumps(e["metadata"]) for e in entries],
                    "e_actors": [e["actor"] for e in entries],
                    "e_request_ids": [e["request_id"] for e in entries],
                    "p_entry_ids": [p["entry_id"] for p in postings],
                    "p_account_ids": [p["account_id"] for p in postings],
                    "p_assets": [p["asset"] for p in postings],
                    "p_amounts": [p["amount"] for p in postings],
                    "p_seqs": [p["seq"] for p in postings],
                    "p_balances": [p["balance_after"] for p in postings],
                    "p_prev_hashes": [p["prev_hash"] for p in postings],
                    "p_hashes": [p["hash"] for p in postings],
                    "a_ids": [a.id for a in accounts],
                    "a_locked_seqs": [a.locked_seq for a in accounts],
                    "a_balances": [a.balance for a in accounts],
                    "a_seqs": [a.seq for a in accounts],
                    "a_hashes": [a.last_hash for a in accounts],
                    "h_ids": [h.id for h in holds],
                    "h_captured": [h.captured for h in holds],
                    "h_released": [h.released for h in holds],
                    "h_states": [h.state.value for h in holds],
                },
            )
            .one()
        )
        return int(row.entries), int(row.postings), int(row.accounts), int(row.holds)

    def _write_portable(
        self, accounts: Sequence[_Account], holds: Sequence[_Hold], now: Any
    ) -> tuple[int, int, int, int]:
        session = self.session
        if self._entries:
            session.execute(insert(_ENTRIES), [{**entry, "created_at": now} for entry in self._entries])
            session.execute(insert(_POSTINGS), self._postings)
        moved = 0
        if accounts:
            result = session.execute(
                _MOVE_ACCOUNT,
                [
                    {
                        "a_id": a.id,
                        "a_locked_seq": a.locked_seq,
                        "a_balance": a.balance,
                        "a_seq": a.seq,
                        "a_hash": a.last_hash,
                    }
                    for a in accounts
                ],
            )
            moved = int(result.rowcount)  # type: ignore[attr-defined]
        changed = 0
        if holds:
            result = session.execute(
                _MOVE_HOLD,
                [
                    {
                        "h_id": h.id,
                        "h_captured": h.captured,
                        "h_released": h.released,
                        "h_state": h.state.value,
                        "h_now": now,
                    }
                    for h in holds
                ],
            )
            changed = int(result.rowcount)  # type: ignore[attr-defined]
        return len(self._entries), len(self._postings), moved, changed


# Locking by arrays on PostgreSQL: one statement text whatever the batch's size. The
# accounts named by (k_kinds, k_refs, k_assets) are locked in id order, only if all of
# them exist (the count is evaluated once, before any row is locked).
_PG_KEYS = """
    FROM accounts a
    JOIN unnest(CAST(:k_kinds AS varchar[]), CAST(:k_refs AS varchar[]), CAST(:k_assets AS varchar[]))
        AS k(kind, ref, asset) ON a.kind = k.kind AND a.ref = k.ref AND a.asset = k.asset
"""
_PG_LOCK = text(
    "SELECT a.id, a.kind, a.asset, a.ref, a.balance, a.seq, a.last_hash" + _PG_KEYS + "ORDER BY a.id FOR UPDATE OF a"
)
_PG_LOCK_IF_ALL_EXIST = text(
    "SELECT a.id, a.kind, a.asset, a.ref, a.balance, a.seq, a.last_hash"
    + _PG_KEYS
    + "WHERE (SELECT count(*)"
    + _PG_KEYS
    + ") = :k_count ORDER BY a.id FOR UPDATE OF a"
)
_PG_LOCK_HOLDS = text(
    "SELECT id, asset, available_account_id, held_account_id, amount, captured, released, state"
    " FROM holds WHERE id = ANY(CAST(:h_ids AS uuid[])) ORDER BY id FOR UPDATE"
)
_ACCOUNT_COLUMNS = _ACCOUNTS.c
_MOVE_ACCOUNT = (
    update(_ACCOUNTS)
    .where(_ACCOUNT_COLUMNS.id == bindparam("a_id"), _ACCOUNT_COLUMNS.seq == bindparam("a_locked_seq"))
    .values(balance=bindparam("a_balance"), seq=bindparam("a_seq"), last_hash=bindparam("a_hash"))
)
_MOVE_HOLD = (
    update(_HOLDS)
    .where(_HOLDS.c.id == bindparam("h_id"))
    .values(
        captured=bindparam("h_captured"),
        released=bindparam("h_released"),
        state=bindparam("h_state"),
        updated_at=bindparam("h_now"),
    )
)

# The whole batch in ONE statement on PostgreSQL: the entries, their postings, each
# account's final state (guarded by the seq it was locked at) and each hold's, from
# arrays. Foreign keys are checked at the end of the statement, when every row exists.
_PG_WRITE_BATCH = text(
    """
    WITH e AS (
        INSERT INTO journal_entries (id, kind, idempotency_key, metadata, actor, request_id, created_at)
        SELECT v.id, v.kind, v.key, CAST(v.metadata AS json), v.actor, v.request_id, :now
        FROM unnest(
            CAST(:e_ids AS uuid[]), CAST(:e_kinds AS varchar[]), CAST(:e_keys AS varchar[]),
            CAST(:e_metadata AS text[]), CAST(:e_actors AS varchar[]), CAST(:e_request_ids AS varchar[])
        ) AS v(id, kind, key, metadata, actor, request_id)
        RETURNING 1
    ), p AS (
        INSERT INTO postings (entry_id, account_id, asset, amount, seq, balance_after, prev_hash, hash)
        SELECT * FROM unnest(
            CAST(:p_entry_ids AS uuid[]), CAST(:p_account_ids AS uuid[]), CAST(:p_assets AS varchar[]),
            CAST(:p_amounts AS bigint[]), CAST(:p_seqs AS bigint[]), CAST(:p_balances AS bigint[]),
            CAST(:p_prev_hashes AS varchar[]), CAST(:p_hashes AS varchar[])
        )
        RETURNING 1
    ), a AS (
        UPDATE accounts SET balance = v.balance, seq = v.seq, last_hash = v.hash
        FROM unnest(
            CAST(:a_ids AS uuid[]), CAST(:a_locked_seqs AS bigint[]), CAST(:a_balances AS bigint[]),
            CAST(:a_seqs AS bigint[]), CAST(:a_hashes AS varchar[])
        ) AS v(id, locked_seq, balance, seq, hash)
        WHERE accounts.id = v.id AND accounts.seq = v.locked_seq
        RETURNING 1
    ), h AS (
        UPDATE holds SET captured = v.captured, released = v.released, state = v.state, updated_at = :now
        FROM unnest(
            CAST(:h_ids AS uuid[]), CAST(:h_captured AS bigint[]), CAST(:h_released AS bigint[]),
            CAST(:h_states AS varchar[])
        ) AS v(id, captured, released, state)
        WHERE holds.id = v.id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM e) AS entries, (SELECT count(*) FROM p) AS postings,
           (SELECT count(*) FROM a) AS accounts, (SELECT count(*) FROM h) AS holds
    """
)
