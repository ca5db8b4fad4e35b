"""Busting a trade: an operator undoes a fill's money, and the commissions it earned.

A bust is one transaction, under the instrument lock (the instrument's one writer,
docs/decisions/0011-matching-single-writer.md), so it never interleaves with a fill
being settled on the same market:

1. every account the next two steps post to is locked in one statement (the parties'
   and the fee accounts), so a bust takes its account locks in the same order as an order does;
2. the trade's journal entry is reversed with :func:`bourse.ledger.reversals.reverse_entry`
   (idempotency key ``bust:{trade_id}``): a new mirror entry, the original is never edited;
3. the mirror credits the ``held`` accounts the fill captured from, but no hold reserves
   that money any more, so a second entry moves it on to the same users' ``available``
   accounts: each side gets back exactly what the fill took, where it came from before
   it was held, and every ``held`` balance still equals its open holds;
4. the trade is marked busted (who, when, why, the reversal entry);
5. its commissions are clawed back by the ``claw_back`` hook (:class:`ClawBack`): the
   commissions domain stands above trading (it reads trades), so trading never imports
   it; the composition root (:mod:`bourse.app`) passes
   :func:`bourse.commissions.service.claw_back` in.
   The accrual job may run after the bust: it skips a busted trade.

Orders are NOT re-opened: the fill's quantities on both orders stay as the history of
what traded, and a resting remainder keeps its hold as it was. Only the funds move back.

If a user already spent what the fill gave them (the reversal would take their
``available`` balance below zero), the bust is refused with 409
``bust_insufficient_funds`` and nothing changes: an operator then settles it by hand
(ledger adjustments, or a bust once the funds are back).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.ledger.accounts import lock_accounts, user_account
from bourse.ledger.errors import InsufficientFunds
from bourse.ledger.models import AccountKind
from bourse.ledger.posting import Context, Leg, post_entry
from bourse.ledger.reversals import held_credits, reverse_entry
from bourse.logging import get_logger
from bourse.sqltypes import utcnow
from bourse.trading.engine.vocabulary import Side
from bourse.trading.errors import BustInsufficientFunds, InvalidBustReason, TradeAlreadyBusted, TradeNotFound
from bourse.trading.instruments import get_instrument, lock_instrument
from bourse.trading.models import MAX_BUST_REASON, OPEN_STATUSES, Order, Trade

log = get_logger("bourse.trading.busts")


class ClawedBack(Protocol):
    @property
    def accruals(self) -> int:
        """How many commission accruals the claw-back reversed."""
        ...


class ClawBack(Protocol):
    """Reverse the commissions a busted trade earned, in the caller's transaction."""

    def __call__(self, session: Session, trade_id: int, reason: str, *, actor: str) -> ClawedBack: ...


@dataclass(frozen=True, slots=True)
class Busted:
    trade: Trade
    reversal_entry_id: uuid.UUID
    release_entry_id: uuid.UUID | None
    commissions_clawed_back: int  # accruals reversed


def _reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidBustReason("A bust needs a reason")
    text = reason.strip()
    if len(text) > MAX_BUST_REASON:
        raise InvalidBustReason(f"The reason is at most {MAX_BUST_REASON} characters")
    return text


def _locked_trade(session: Session, trade_id: int) -> Trade:
    trade = session.scalar(
        select(Trade).where(Trade.id == trade_id).with_for_update().execution_options(populate_existing=True)
    )
    if trade is None:
        raise TradeNotFound(f"There is no trade {trade_id}")
    return trade


def _unhold(session: Session, reversal_id: uuid.UUID, trade_id: int, actor: str) -> uuid.UUID | None:
    """Move what the reversal credited to ``held`` accounts on to the same users' ``available``."""
    credited = held_credits(session, reversal_id)
    if not credited:
        return None
    amounts: dict[uuid.UUID, int] = defaultdict(int)
    for credit in credited:
        amounts[credit.held_account_id] -= credit.amount
        amounts[user_account(session, credit.user_id, credit.asset)] += credit.amount
    posted = post_entry(
        session,
        kind="bust_release",
        legs=[Leg(account_id, amount) for account_id, amount in amounts.items()],
        idempotency_key=f"bust:{trade_id}:release",
        actor=actor,
        metadata={"trade_id": trade_id, "reversal": str(reversal_id)},
    )
    return posted.entry_id


def _lock_parties(session: Session, base: str, quote: str, trade: Trade) -> None:
    """Lock, in one statement, every account the reversal and the release post to (as orders
    do, see :mod:`bourse.trading.sequencing`): the seller's held and available
    base and available quote, the buyer's held and available quote and available base, and
    the quote asset's fees (the instrument's account and the pool)."""
    if trade.taker_side == Side.BUY.value:
        buyer, seller = trade.taker_user_id, trade.maker_user_id
    else:
        buyer, seller = trade.maker_user_id, trade.taker_user_id
    available, held = AccountKind.available, AccountKind.held
    lock_accounts(
        session,
        [
            (held, base, seller),
            (available, base, seller),
            (available, quote, seller),
            (held, quote, buyer),
            (available, quote, buyer),
            (available, base, buyer),
            # The fees went to the instrument's account (to the asset's pool before per-instrument
            # accounts existed): the reversal takes them back from wherever the entry put them.
            (AccountKind.fees, quote, None),
            (AccountKind.fees, quote, trade.instrument),
        ],
    )


def bust_trade(session: Session, trade_id: int, *, reason: str, operator_id: uuid.UUID, claw_back: ClawBack) -> Busted:
    """Bust one trade: reverse its money, mark it, claw back its commissions with ``claw_back``.
    See the module docstring.

    404 ``trade_not_found``, 409 ``trade_already_busted``, 409 ``bust_insufficient_funds``.
    Services never commit: on any refusal the caller's transaction rolls back whole.
    """
    why = _reason(reason)
    symbol = session.scalar(select(Trade.instrument).where(Trade.id == trade_id)) if isinstance(trade_id, int) else None
    if symbol is None:
        raise TradeNotFound(f"There is no trade {trade_id}")
    instrument = lock_instrument(session, symbol)  # instrument first, as every command on this market
    trade = _locked_trade(session, trade_id)
    if trade.busted_at is not None:
        raise TradeAlreadyBusted(f"Trade {trade_id} was busted at {trade.busted_at.isoformat()}")
    _lock_parties(session, instrument.base_asset, instrument.quote_asset, trade)
    actor = f"user:{operator_id}"
    try:
        reversal = reverse_entry(
            session,
            entry_id=trade.entry_id,
            reason=f"bust: {why}"[:MAX_BUST_REASON],
            context=Context(actor=actor, idempotency_key=f"bust:{trade_id}"),
        )
    except InsufficientFunds as refused:
        raise BustInsufficientFunds(
            f"A party to trade {trade_id} no longer holds what the fill gave them ({refused.detail}); "
            "adjust the balances by hand"
        ) from None
    release = _unhold(session, reversal.entry_id, trade_id, actor)
    trade.busted_at = utcnow()
    trade.busted_by = operator_id
    trade.bust_reason = why
    trade.bust_entry_id = reversal.entry_id
    session.flush()
    clawed = claw_back(session, trade_id, f"bust: {why}", actor=actor)
    log.info(
        "trade_busted",
        trade_id=trade_id,
        symbol=symbol,
        operator=str(operator_id),
        reversal_entry_id=str(reversal.entry_id),
        commissions_clawed_back=clawed.accruals,
    )
    return Busted(trade, reversal.entry_id, release, clawed.accruals)


def operator_book(session: Session, symbol: str) -> list[Order]:
    """Every resting order of the instrument in priority order: bids best (highest) price
    first, then asks best (lowest) first, each price level oldest first.

    Time priority is the order's accepted sequence (docs/decisions/0027). One statement
    reads them, so the view is one committed moment of the book,
    without queueing behind (or blocking) the market's writer. 404 ``unknown_instrument``.
    """
    get_instrument(session, symbol)
    rows = list(
        session.scalars(
            select(Order).where(Order.instrument == symbol, Order.status.in_(OPEN_STATUSES)).order_by(Order.sequence)
        )
    )
    bids = sorted((o for o in rows if o.side == Side.BUY.value), key=lambda o: (-(o.price or 0), o.sequence or 0))
    asks = sorted((o for o in rows if o.side == Side.SELL.value), key=lambda o: (o.price or 0, o.sequence or 0))
    return bids + asks
