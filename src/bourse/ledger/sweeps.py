"""Sweeping collection accounts into their pool: fees kept per instrument move to the asset's ``fees``.

Every fill pays its fees into its instrument's own ``fees`` account (``ref`` = the
symbol), so that matchers of different instruments never queue on one hot row
(docs/decisions/0027-matcher-per-instrument-shard.md). Those accounts are collection
points only: :func:`sweep_fees` moves each one's balance into the asset's ``fees``
pool (``ref`` ""), which pays commissions and which reports read.

Every minute the scheduler queues one ``ledger.sweep_fees`` job per account holding a
balance (``bourse.ledger.schedules``); each job sweeps its account in one entry, in a
short transaction of its own (a sweep must not hold a matcher's fee account for
longer than one entry), keyed by the account and the ``seq`` it was swept at, so a
job that runs twice for the same state posts once. The pool may dip below zero between sweeps when commissions accrue
before the fees that pay them are swept; it is a system account, and the sum of an
asset's fee accounts is what the brokerage earned.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.ledger.accounts import system_account
from bourse.ledger.models import Account, AccountKind
from bourse.ledger.posting import Leg, post_entry

SWEEP_ACTOR = "job:ledger.sweep_fees"


@dataclass(frozen=True, slots=True)
class Swept:
    account_id: uuid.UUID
    asset: str
    ref: str
    amount: int
    entry_id: uuid.UUID


def fee_accounts_to_sweep(session: Session) -> list[tuple[uuid.UUID, str, str]]:
    """(id, asset, ref) of every per-instrument fee account holding a balance (read without locks: a hint)."""
    rows = session.execute(
        select(Account.id, Account.asset, Account.ref)
        .where(Account.kind == AccountKind.fees, Account.ref != "", Account.balance != 0)
        .order_by(Account.asset, Account.ref)
    )
    return [(row.id, row.asset, row.ref) for row in rows]


def sweep_account(session: Session, account_id: uuid.UUID) -> Swept | None:
    """Move one fee account's whole balance (as read under its lock) into its asset's pool."""
    source = session.scalar(
        select(Account).where(Account.id == account_id).with_for_update().execution_options(populate_existing=True)
    )
    if source is None or source.kind is not AccountKind.fees or not source.ref or source.balance == 0:
        return None
    amount, seq = source.balance, source.seq
    pool = system_account(session, AccountKind.fees, source.asset)
    posted = post_entry(
        session,
        kind="fee_sweep",
        legs=[Leg(source.id, -amount), Leg(pool, amount)],
        idempotency_key=f"fee_sweep:{source.id}:{seq}",
        actor=SWEEP_ACTOR,
        metadata={"from": source.ref},
    )
    return Swept(source.id, source.asset, source.ref, amount, posted.entry_id)
