"""Reading the ledger: wallets, statements, entries and holds.

Every query that takes a ``viewer`` returns only what that user may see; an
object that exists but belongs to someone else is reported exactly like one
that does not exist (404), so ids cannot be probed.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from bourse.assets.models import Asset
from bourse.assets.service import every_asset
from bourse.errors import Unprocessable
from bourse.inputs import INT64_MAX
from bourse.ledger.errors import AccountNotFound, EntryNotFound, HoldNotFound
from bourse.ledger.models import USER_KINDS, Account, AccountKind, Hold, HoldState, JournalEntry, Posting

MAX_PAGE = 200
_SEQ = re.compile(r"[0-9]{1,19}")  # a posting's seq: a BIGINT (ASCII digits only)


class InvalidCursor(Unprocessable):
    code = "invalid_cursor"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is reading: their own objects only, unless they are staff."""

    user_id: uuid.UUID
    staff: bool = False

    def may_see(self, owner: uuid.UUID | None) -> bool:
        return self.staff or owner == self.user_id


@dataclass(frozen=True, slots=True)
class WalletLine:
    asset: str
    scale: int
    available: int
    held: int
    available_account_id: uuid.UUID | None
    held_account_id: uuid.UUID | None


_WALLET_ACCOUNTS = select(Account.id, Account.asset, Account.kind, Account.balance).where(
    Account.user_id == bindparam("user_id"), Account.kind.in_(USER_KINDS)
)


def wallets(session: Session, user_id: uuid.UUID) -> list[WalletLine]:
    """Available and held balances for every active asset and every asset the user holds.

    One Core read of the user's accounts; the assets come from the process's cache.
    """
    accounts: dict[tuple[str, AccountKind], tuple[uuid.UUID, int]] = {
        (asset, kind): (account_id, balance)
        for account_id, asset, kind, balance in session.connection().execute(_WALLET_ACCOUNTS, {"user_id": user_id})
    }
    held_assets = {asset for asset, _ in accounts}
    lines = []
    for asset in every_asset(session):
        if not asset.active and asset.code not in held_assets:
            continue
        available = accounts.get((asset.code, AccountKind.available))
        held = accounts.get((asset.code, AccountKind.held))
        lines.append(
            WalletLine(
                asset=asset.code,
                scale=asset.scale,
                available=available[1] if available else 0,
                held=held[1] if held else 0,
                available_account_id=available[0] if available else None,
                held_account_id=held[0] if held else None,
            )
        )
    return lines


def visible_account(session: Session, account_id: uuid.UUID, viewer: Viewer) -> Account:
    account = session.get(Account, account_id)
    if account is None or not viewer.may_see(account.user_id):
        raise AccountNotFound(f"There is no account {account_id}")
    return account


@dataclass(frozen=True, slots=True)
class StatementLine:
    seq: int
    entry_id: uuid.UUID
    kind: str
    amount: int
    balance_after: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Statement:
    account: Account
    scale: int
    lines: list[StatementLine]
    next_cursor: str | None


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidCursor("The cursor is not one this API returned") from None
    prefix, _, number = raw.partition(":")
    if prefix != "seq" or not _SEQ.fullmatch(number) or int(number) > INT64_MAX:
        raise InvalidCursor("The cursor is not one this API returned")
    return int(number)


def statement(
    session: Session, account_id: uuid.UUID, viewer: Viewer, *, cursor: str | None = None, limit: int = 50
) -> Statement:
    """The account's postings, newest first, each with the balance after it.

    The cursor is the position in the account's own sequence, so pages stay
    stable while new postings arrive.
    """
    account = visible_account(session, account_id, viewer)
    limit = max(1, min(limit, MAX_PAGE))
    query = (
        select(
            Posting.seq,
            Posting.entry_id,
            JournalEntry.kind,
            Posting.amount,
            Posting.balance_after,
            JournalEntry.created_at,
        )
        .join(JournalEntry, JournalEntry.id == Posting.entry_id)
        .where(Posting.account_id == account.id)
        .order_by(Posting.seq.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        query = query.where(Posting.seq < decode_cursor(cursor))
    rows = session.execute(query).all()
    lines = [StatementLine(*row) for row in rows[:limit]]
    next_cursor = encode_cursor(lines[-1].seq) if len(rows) > limit else None
    scale = session.scalar(select(Asset.scale).where(Asset.code == account.asset))
    return Statement(account=account, scale=int(scale or 0), lines=lines, next_cursor=next_cursor)


@dataclass(frozen=True, slots=True)
class EntryLine:
    account_id: uuid.UUID
    account_kind: AccountKind
    asset: str
    scale: int
    amount: int
    balance_after: int


@dataclass(frozen=True, slots=True)
class EntryDetail:
    entry: JournalEntry
    lines: list[EntryLine]


def entry_detail(session: Session, entry_id: uuid.UUID, viewer: Viewer) -> EntryDetail:
    """An entry and its postings. A client sees it only if it touches one of their
    accounts, and then only the postings on their own accounts (not the
    counterparty's account ids); staff see every posting."""
    entry = session.get(JournalEntry, entry_id)
    if entry is None:
        raise EntryNotFound(f"There is no entry {entry_id}")
    rows = session.execute(
        select(
            Posting.account_id,
            Account.kind,
            Account.user_id,
            Posting.asset,
            Asset.scale,
            Posting.amount,
            Posting.balance_after,
        )
        .join(Account, Account.id == Posting.account_id)
        .join(Asset, Asset.code == Posting.asset)
        .where(Posting.entry_id == entry_id)
        .order_by(Posting.id)
    ).all()
    lines = [
        EntryLine(account_id, kind, asset, scale, amount, balance_after)
        for account_id, kind, owner, asset, scale, amount, balance_after in rows
        if viewer.may_see(owner)
    ]
    if not lines:
        raise EntryNotFound(f"There is no entry {entry_id}")
    return EntryDetail(entry=entry, lines=lines)


def visible_hold(session: Session, hold_id: uuid.UUID, viewer: Viewer) -> Hold:
    hold = session.get(Hold, hold_id)
    if hold is None or not viewer.may_see(hold.user_id):
        raise HoldNotFound(f"There is no hold {hold_id}")
    return hold


def holds(session: Session, user_id: uuid.UUID, *, state: HoldState | None = None, limit: int = 100) -> list[Hold]:
    query = (
        select(Hold)
        .where(Hold.user_id == user_id)
        .order_by(Hold.created_at.desc(), Hold.id)
        .limit(max(1, min(limit, MAX_PAGE)))
    )
    if state is not None:
        query = query.where(Hold.state == state)
    return list(session.scalars(query))


def entry_metadata(entry: JournalEntry) -> dict[str, Any]:
    return dict(entry.meta or {})
