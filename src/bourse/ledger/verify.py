"""``bourse ledger verify``: prove the books are consistent, or say where they are not.

Checks, each over the whole ledger:

1. every entry has at least two postings and balances to zero per asset;
2. every account's balance equals the sum of its postings, its ``seq`` equals
   their count, and its ``last_hash`` is the head of its chain;
3. no user account is negative;
4. holds are consistent: each hold's amounts add up and agree with its state,
   and each ``held`` account's balance equals what its open holds still hold;
5. every account's hash chain is intact: each posting's ``prev_hash`` is the
   previous posting's ``hash``, its ``seq`` follows on, its ``balance_after`` is
   the running sum, and its ``hash`` is the hash of its own content.

The chain walk streams postings in account order, so memory stays flat however
large the journal is.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from bourse.ledger.models import GENESIS_HASH, USER_KINDS, Account, AccountKind, Hold, HoldState, JournalEntry, Posting
from bourse.ledger.posting import posting_hash


@dataclass(frozen=True, slots=True)
class Discrepancy:
    check: str
    detail: str
    account_id: uuid.UUID | None = None
    entry_id: uuid.UUID | None = None

    def describe(self) -> str:
        where = []
        if self.account_id is not None:
            where.append(f"account={self.account_id}")
        if self.entry_id is not None:
            where.append(f"entry={self.entry_id}")
        return f"{self.check}: {' '.join(where)} {self.detail}".replace("  ", " ").strip()


@dataclass
class Report:
    entries: int = 0
    postings: int = 0
    accounts: int = 0
    holds: int = 0
    discrepancies: list[Discrepancy] = field(default_factory=list)
    # How many were found in all, even beyond the ones kept.
    total_discrepancies: int = 0

    @property
    def ok(self) -> bool:
        return self.total_discrepancies == 0


class _Collector:
    def __init__(self, report: Report, limit: int) -> None:
        self.report = report
        self.limit = limit

    def add(self, discrepancy: Discrepancy) -> None:
        self.report.total_discrepancies += 1
        if len(self.report.discrepancies) < self.limit:
            self.report.discrepancies.append(discrepancy)


def _entries(session: Session, found: _Collector) -> None:
    unbalanced = (
        select(Posting.entry_id, Posting.asset, func.sum(Posting.amount).label("total"))
        .group_by(Posting.entry_id, Posting.asset)
        .having(func.sum(Posting.amount) != 0)
        .order_by(Posting.entry_id)
    )
    for entry_id, asset, total in session.execute(unbalanced):
        found.add(Discrepancy("unbalanced_entry", f"asset={asset} sum={total}", entry_id=entry_id))
    counts = select(Posting.entry_id, func.count().label("n")).group_by(Posting.entry_id).subquery()
    short = (
        select(JournalEntry.id, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.entry_id == JournalEntry.id)
        .where(func.coalesce(counts.c.n, 0) < 2)  # noqa: PLR2004 - double entry
        .order_by(JournalEntry.id)
    )
    for entry_id, n in session.execute(short):
        found.add(Discrepancy("too_few_postings", f"postings={n}", entry_id=entry_id))


def _balances(session: Session, found: _Collector) -> None:
    sums = (
        select(Posting.account_id, func.sum(Posting.amount).label("total"), func.count().label("n"))
        .group_by(Posting.account_id)
        .subquery()
    )
    rows = session.execute(
        select(
            Account.id,
            Account.kind,
            Account.balance,
            Account.seq,
            func.coalesce(sums.c.total, 0),
            func.coalesce(sums.c.n, 0),
        )
        .outerjoin(sums, sums.c.account_id == Account.id)
        .order_by(Account.id)
    )
    for account_id, kind, balance, seq, total, count in rows:
        if balance != total:
            found.add(Discrepancy("balance_mismatch", f"balance={balance} postings_sum={total}", account_id=account_id))
        if seq != count:
            found.add(Discrepancy("posting_count_mismatch", f"seq={seq} postings={count}", account_id=account_id))
        if kind in USER_KINDS and balance < 0:
            found.add(Discrepancy("negative_user_balance", f"balance={balance}", account_id=account_id))


def _holds(session: Session, found: _Collector) -> None:
    for hold in session.scalars(select(Hold).order_by(Hold.id).execution_options(yield_per=2000)):
        problem = None
        if hold.captured + hold.released > hold.amount or min(hold.captured, hold.released) < 0:
            problem = f"amount={hold.amount} captured={hold.captured} released={hold.released}"
        elif hold.state is HoldState.open and hold.remaining == 0:
            problem = "open with nothing remaining"
        elif hold.state is not HoldState.open and hold.remaining != 0:
            problem = f"{hold.state} with {hold.remaining} remaining"
        if problem:
            found.add(Discrepancy("hold_inconsistent", f"hold={hold.id} {problem}", account_id=hold.held_account_id))
    open_sums = (
        select(Hold.held_account_id, func.sum(Hold.amount - Hold.captured - Hold.released).label("total"))
        .where(Hold.state == HoldState.open)
        .group_by(Hold.held_account_id)
        .subquery()
    )
    rows = session.execute(
        select(Account.id, Account.balance, func.coalesce(open_sums.c.total, 0))
        .outerjoin(open_sums, open_sums.c.held_account_id == Account.id)
        .where(Account.kind == AccountKind.held)
        .order_by(Account.id)
    )
    for account_id, balance, total in rows:
        if balance != total:
            found.add(
                Discrepancy("held_balance_mismatch", f"balance={balance} open_holds={total}", account_id=account_id)
            )


def _stream_postings(session: Session) -> Iterator[Posting]:
    query = select(Posting).order_by(Posting.account_id, Posting.seq).execution_options(yield_per=2000)
    yield from session.scalars(query)


def _chains(session: Session, found: _Collector) -> None:
    heads: dict[uuid.UUID, str] = dict(session.execute(select(Account.id, Account.last_hash)).all())
    current: uuid.UUID | None = None
    prev_hash, expected_seq, running = GENESIS_HASH, 1, 0
    broken: set[uuid.UUID] = set()
    seen: set[uuid.UUID] = set()

    def finish(account_id: uuid.UUID | None) -> None:
        if account_id is not None and account_id not in broken and heads.get(account_id) != prev_hash:
            found.add(
                Discrepancy("chain_head_mismatch", "last_hash is not the head of the chain", account_id=account_id)
            )

    for posting in _stream_postings(session):
        if posting.account_id != current:
            finish(current)
            current, prev_hash, expected_seq, running = posting.account_id, GENESIS_HASH, 1, 0
            seen.add(current)
        if posting.account_id in broken:
            continue
        running += posting.amount
        recomputed = posting_hash(
            prev_hash=posting.prev_hash,
            account_id=posting.account_id,
            seq=posting.seq,
            entry_id=posting.entry_id,
            asset=posting.asset,
            amount=posting.amount,
            balance_after=posting.balance_after,
        )
        problem = None
        if posting.seq != expected_seq:
            problem = f"seq={posting.seq} expected {expected_seq}"
        elif posting.prev_hash != prev_hash:
            problem = f"seq={posting.seq} prev_hash does not link to the previous posting"
        elif posting.hash != recomputed:
            problem = f"seq={posting.seq} hash does not match the posting's content"
        elif posting.balance_after != running:
            problem = f"seq={posting.seq} balance_after={posting.balance_after} running sum={running}"
        if problem:
            # The first break is what matters; later links of the account all follow from it.
            broken.add(posting.account_id)
            found.add(Discrepancy("chain_broken", problem, account_id=posting.account_id, entry_id=posting.entry_id))
            continue
        prev_hash = posting.hash
        expected_seq += 1
    finish(current)
    for account_id, head in heads.items():
        if account_id not in seen and head != GENESIS_HASH:
            found.add(Discrepancy("chain_head_mismatch", "last_hash set but no postings", account_id=account_id))


def verify_ledger(session: Session, *, limit: int = 20) -> Report:
    """Run every check; keep the first ``limit`` discrepancies."""
    report = Report(
        entries=session.scalar(select(func.count()).select_from(JournalEntry)) or 0,
        postings=session.scalar(select(func.count()).select_from(Posting)) or 0,
        accounts=session.scalar(select(func.count()).select_from(Account)) or 0,
        holds=session.scalar(select(func.count()).select_from(Hold)) or 0,
    )
    found = _Collector(report, limit)
    _entries(session, found)
    _balances(session, found)
    _holds(session, found)
    _chains(session, found)
    return report
