"""Each instrument's book in this process, and the writer's turn that guards it.

One writer per instrument (docs/decisions/0011-matching-single-writer.md): across
processes the instrument's row lock (:func:`bourse.trading.instruments.lock_instrument`)
makes it so; within a process, :func:`take_turn` also takes the instrument's mutex
first, and keeps it until the transaction has ended.

The process keeps each instrument's :class:`~bourse.trading.engine.book.Book` between
commands. A command takes its instrument's book out of the cache under its turn
(:func:`checkout_book`), current with the locked row: the instrument's ``sequence``
(and the tick and lot the book's notional reads) says whether another process wrote
since, and then the book is rebuilt from the resting orders in the database. The
command hands the book back with :func:`checkin_book`, and it goes back into the
cache only when the transaction commits, so a rolled-back command never leaves the
cache ahead of the database.
"""

from __future__ import annotations

import threading

from sqlalchemy import event, select
from sqlalchemy.orm import Session

from bourse.db import LOCK_WAIT_SECONDS
from bourse.logging import get_logger
from bourse.trading.engine.book import Book
from bourse.trading.engine.vocabulary import RestingOrder, Side
from bourse.trading.errors import InstrumentBusy
from bourse.trading.instruments import book_notional, lock_instrument, price_to_ticks, quantity_to_lots
from bourse.trading.models import OPEN_STATUSES, Instrument, Order

# Log lines keep the name they were always written under: searches select on it.
log = get_logger("bourse.trading.book_cache")

# -- The cached books ---------------------------------------------------------------------
#
# symbol -> (book, (sequence, tick_size, lot_size)). A command takes its instrument's
# entry out of the shared cache (under the instrument lock, so nobody else is using
# it), keeps it in the session until the transaction ends, and puts it back only on
# commit. Tick and lot are part of the key: the book's notional reads them.

_CacheKey = tuple[int, int, int]
_BOOKS: dict[str, tuple[Book, _CacheKey]] = {}
_BOOKS_GUARD = threading.Lock()
_PENDING = "bourse.trading.books"


def _key(instrument: Instrument) -> _CacheKey:
    return (instrument.sequence, instrument.tick_size, instrument.lot_size)


def _publish(session: Session) -> None:
    pending: dict[str, tuple[Book, _CacheKey]] = session.info.pop(_PENDING, {})
    with _BOOKS_GUARD:
        _BOOKS.update(pending)
    _release_writers(session)


def _discard(session: Session) -> None:
    session.info.pop(_PENDING, None)
    _release_writers(session)


# -- The writer's turn in this process ------------------------------------------------------
#
# The instrument row lock makes one writer per instrument across processes. Within a
# process, threads also take the instrument's mutex, before the row lock, and keep it
# until their transaction has ended and its book is back in the cache: without it, the
# next thread gets the row lock the moment the commit releases it, before the book is
# published, finds the cache empty, and rebuilds the book from the database on every
# contended command.

_WRITERS: dict[str, threading.Lock] = {}
_HELD = "bourse.trading.writers"


def _writer(symbol: str) -> threading.Lock:
    with _BOOKS_GUARD:
        return _WRITERS.setdefault(symbol, threading.Lock())


def _release_writers(session: Session) -> None:
    for mutex in session.info.pop(_HELD, {}).values():
        mutex.release()


def take_turn(session: Session, symbol: str) -> Instrument:
    """Take this process's turn on ``symbol``, then its row lock (``lock_instrument``).

    The turn ends when the session's transaction does; 503 ``instrument_busy`` if it
    cannot be had within the session's lock wait.
    """
    _pending(session)  # the hooks that end the turn at commit or rollback
    if not session.in_transaction():
        # Those hooks fire only when a transaction ends. A session that has run no
        # statement yet (the caller's principal came from the cache) has none, and a
        # refusal before the first statement (an invalid symbol) would leave the turn
        # held for good: begin the transaction the turn belongs to.
        session.begin()
    held: dict[str, threading.Lock] = session.info.setdefault(_HELD, {})
    if symbol not in held:
        mutex = _writer(symbol)
        wait: float = session.info.get(LOCK_WAIT_SECONDS, -1)
        if not mutex.acquire(timeout=wait):
            log.warning("instrument_turn_timeout", instrument=symbol, waited_seconds=wait)
            raise InstrumentBusy(f"{symbol} is busy; retry shortly")
        held[symbol] = mutex
    return lock_instrument(session, symbol)


def _pending(session: Session) -> dict[str, tuple[Book, _CacheKey]]:
    if _PENDING not in session.info:
        if not session.info.get("bourse.trading.hooked"):
            event.listen(session, "after_commit", _publish)
            event.listen(session, "after_rollback", _discard)
            # Also when no database transaction had begun: the writer's turn must end.
            event.listen(session, "after_soft_rollback", lambda session, _previous: _discard(session))
            session.info["bourse.trading.hooked"] = True
        session.info[_PENDING] = {}
    pending: dict[str, tuple[Book, _CacheKey]] = session.info[_PENDING]
    return pending


# -- The books ------------------------------------------------------------------------------


def resting_orders(session: Session, instrument: Instrument) -> list[RestingOrder]:
    """The instrument's resting orders from the database, as the book holds them (in id order)."""
    rows = session.scalars(
        select(Order).where(Order.instrument == instrument.symbol, Order.status.in_(OPEN_STATUSES)).order_by(Order.id)
    )
    return [
        RestingOrder(
            order.id,
            str(order.user_id),
            Side(order.side),
            price_to_ticks(instrument, order.price or 0),
            quantity_to_lots(instrument, order.quantity),
            quantity_to_lots(instrument, order.remaining),
        )
        for order in rows
    ]


def rebuild_book(session: Session, instrument: Instrument) -> Book:
    """A book rebuilt from the database, without matching (``Book.restore``)."""
    book = Book(notional=book_notional(instrument))
    book.restore(resting_orders(session, instrument), sequence=instrument.sequence)
    return book


def checkout_book(session: Session, instrument: Instrument) -> Book:
    """The instrument's book, current with the locked row; the caller holds the turn (:func:`take_turn`)."""
    symbol = instrument.symbol
    cached = _pending(session).pop(symbol, None)
    if cached is None:
        with _BOOKS_GUARD:
            cached = _BOOKS.pop(symbol, None)
    if cached is not None and cached[1] == _key(instrument):
        return cached[0]
    log.info("book_rebuilt", symbol=symbol, sequence=instrument.sequence)
    return rebuild_book(session, instrument)


def checkin_book(session: Session, instrument: Instrument, book: Book) -> None:
    """Hand the book back: it returns to the cache if, and when, the transaction commits."""
    _pending(session)[instrument.symbol] = (book, _key(instrument))


def cached_book(symbol: str) -> Book | None:
    """The committed cached book of ``symbol`` in this process, if any (for checks and tests)."""
    with _BOOKS_GUARD:
        cached = _BOOKS.get(symbol)
    return None if cached is None else cached[0]
