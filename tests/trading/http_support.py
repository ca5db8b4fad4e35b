"""What the tests that drive a real ``bourse serve`` with many order clients share.

:class:`Clients` runs client threads, each stepping an :class:`OrderFlow` on one
instrument with its own share of the traders, and counts what came back. The
checks then read the database: the book rebuilt from it is not crossed, every
order's filled quantity is its trades', holds cover what open orders can still
trade, every fill is in the ledger, and no unit of any asset was created or lost.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping, Sequence

import httpx2 as httpx
from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import aliased

from bourse.bench.orders_http import Market, OrderFlow, Traders
from bourse.db import Database, unit_of_work
from bourse.ledger.models import JournalEntry
from bourse.trading.instruments import format_price, format_quantity, get_instrument
from bourse.trading.matcher import rebuild_book
from bourse.trading.models import OPEN_STATUSES, PENDING_COMMANDS_SQL, Order, OrderStatus, Trade
from tests.support.ledger import verify
from tests.support.waiting import wait_until
from tests.trading.orders_support import asset_total, check_consistent, user_total

# What one client thread sends: on this market, as these traders (id -> token).
Share = tuple[Market, dict[str, str]]
Book = dict[str, list[list[str | int]]]


def split(traders: Traders, threads: int, symbols: Sequence[str] | None = None) -> list[Share]:
    """Each thread's market and traders: thread ``i`` trades ``symbols[i % len(symbols)]``.

    The threads of one round (one per symbol) share their traders, so the same users'
    accounts are in play on every market at once. With one symbol each thread has a
    trader share of its own.
    """
    markets = [traders.markets[symbol] for symbol in symbols] if symbols else [traders.market]
    assert threads % len(markets) == 0, "as many threads on each market"
    rounds = threads // len(markets)
    return [
        (
            markets[i % len(markets)],
            {trader: traders.tokens[trader] for trader in traders.user_ids[i // len(markets) :: rounds]},
        )
        for i in range(threads)
    ]


class Clients:
    """A thread per share, each stepping an OrderFlow (seeded with its index) until stopped.

    A thread whose request got no answer (the server is down) sends nothing more until
    the test gives it another server's address, or stops it.
    """

    def __init__(self, shares: Sequence[Share], url: str, *, timeout: float) -> None:
        self._url = url
        self._halted = False
        self._changed = threading.Condition()  # guards the address and the halt
        self.symbols = sorted({market.symbol for market, _ in shares})
        self._outcomes: Counter[tuple[str, str, int, str | None]] = Counter()
        self._fills: Counter[str] = Counter()
        self._guard = threading.Lock()
        self._timeout = timeout
        self._threads = [
            threading.Thread(target=self._run, args=(market, tokens, i), daemon=True)
            for i, (market, tokens) in enumerate(shares)
        ]

    @property
    def url(self) -> str:
        with self._changed:
            return self._url

    @url.setter
    def url(self, url: str) -> None:
        """Send to the server at ``url`` from now on (a restarted server answers at a new address)."""
        with self._changed:
            self._url = url
            self._changed.notify_all()

    def _next_address(self, unanswered: str | None) -> str | None:
        """The address to send to, once it is not ``unanswered``; None once stopped."""
        with self._changed:
            self._changed.wait_for(lambda: self._halted or self._url != unanswered)
            return None if self._halted else self._url

    def _run(self, market: Market, tokens: dict[str, str], index: int) -> None:
        flow = OrderFlow(self.url, market, tokens, seed=index, timeout=self._timeout)
        unanswered: str | None = None
        while (url := self._next_address(unanswered)) is not None:
            flow.url = url
            outcome = flow.step()
            with self._guard:
                self._outcomes[market.symbol, outcome.action, outcome.status, outcome.error] += 1
                self._fills[market.symbol] += outcome.fills
            unanswered = url if outcome.status == 0 else None
        flow.close()

    def __enter__(self) -> Clients:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the clients and wait until every request they sent is answered."""
        with self._changed:
            self._halted = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join(timeout=self._timeout)
            assert not thread.is_alive()

    @property
    def outcomes(self) -> Counter[tuple[str, int, str | None]]:
        """(action, status, error) -> how many, on every market."""
        with self._guard:
            merged: Counter[tuple[str, int, str | None]] = Counter()
            for (_, action, status, error), n in self._outcomes.items():
                merged[action, status, error] += n
            return merged

    @property
    def fills(self) -> int:
        with self._guard:
            return sum(self._fills.values())

    def count(self, action: str | None = None, status: int | None = None, symbol: str | None = None) -> int:
        with self._guard:
            return sum(
                n
                for (market, act, code, _), n in self._outcomes.items()
                if (action is None or act == action)
                and (status is None or code == status)
                and (symbol is None or market == symbol)
            )

    def tally(self, symbol: str | None = None) -> dict[str, int]:
        """Accepted limit and market orders, cancels, all accepted orders, and fills, so far (on ``symbol``)."""
        with self._guard:
            fills = sum(n for market, n in self._fills.items() if symbol is None or market == symbol)
        return {
            "limit": self.count("limit", 201, symbol),
            "market": self.count("market", 201, symbol),
            "cancel": self.count("cancel", 200, symbol),
            "accepted": self.count(status=201, symbol=symbol),
            "fills": fills,
        }

    def wait_for_traffic(self, accepted: int, timeout: float = 120) -> None:
        """Until, on every market, ``accepted`` orders were accepted, and limits, markets,
        cancels and fills have happened."""
        last: dict[str, dict[str, int]] = {}

        def enough() -> bool:
            last.update({symbol: self.tally(symbol) for symbol in self.symbols})
            return all(all(seen.values()) and seen["accepted"] >= accepted for seen in last.values())

        def described() -> str:
            if len(last) == 1:
                return f"{accepted} accepted orders of every kind, and fills (so far {next(iter(last.values()))})"
            return f"{accepted} accepted orders of every kind, and fills, on each market (so far {last})"

        wait_until(enough, described, timeout=timeout)

    def failures(self, symbol: str | None = None) -> dict[tuple[str, int, str | None], int]:
        """Outcomes that are neither a success nor a refusal with a code (on ``symbol``)."""
        with self._guard:
            failed: Counter[tuple[str, int, str | None]] = Counter()
            for (market, action, status, error), n in self._outcomes.items():
                if (status == 0 or status >= 500) and (symbol is None or market == symbol):
                    failed[action, status, error] += n
            return dict(failed)


def check_instrument(database: Database, symbol: str) -> None:
    """The book rebuilt from the database is not crossed, every order's filled quantity is
    its trades', and holds cover what open orders can still trade."""
    with unit_of_work(database) as session:
        instrument = get_instrument(session, symbol)
        book = rebuild_book(session, instrument)  # raises on a crossed or corrupt book
        bid, ask = book.best_bid(), book.best_ask()
        assert bid is None or ask is None or bid < ask, (symbol, bid, ask)
        traded = {
            order_id: int(total)
            for order_id, total in session.execute(
                select(Order.id, func.coalesce(func.sum(Trade.quantity), 0))
                .outerjoin(Trade, or_(Trade.maker_order_id == Order.id, Trade.taker_order_id == Order.id))
                .where(Order.instrument == symbol)
                .group_by(Order.id)
            )
        }
        for order in session.scalars(select(Order).where(Order.instrument == symbol)):
            assert order.filled_quantity == traded[order.id], order.id
            assert 0 <= order.filled_quantity <= order.quantity, order.id
            if order.status in OPEN_STATUSES:
                assert order.filled_quantity < order.quantity, order.id
            if order.status is OrderStatus.filled:
                assert order.filled_quantity == order.quantity, order.id
    check_consistent(database, symbol)  # holds cover remainders, none negative, finished ones empty


def check_ledger(database: Database, funded: Mapping[str, int]) -> None:
    """Every fill has its journal entry, each asset's accounts sum to zero, users hold
    (with the fees collected) exactly what was funded, and the ledger verifies."""
    with unit_of_work(database) as session:
        orphans = session.scalar(
            select(func.count())
            .select_from(Trade)
            .outerjoin(JournalEntry, JournalEntry.id == Trade.entry_id)
            .where(JournalEntry.id.is_(None))
        )
        assert orphans == 0
    for asset, amount in funded.items():
        assert asset_total(database, asset) == 0
        assert user_total(database, asset) == amount, asset
    report = verify(database)
    assert report.ok, report.discrepancies


def check_database(database: Database, symbols: Sequence[str], funded: Mapping[str, int]) -> None:
    """:func:`check_instrument` for each of ``symbols``, then :func:`check_ledger`."""
    for symbol in symbols:
        check_instrument(database, symbol)
    check_ledger(database, funded)


def check_fills_once(database: Database, symbol: str) -> None:
    """Each fill settled once, between two orders of its own instrument: its journal entry
    belongs to no other trade, and its trade sequence and its orders' sequences are unique."""
    maker, taker = aliased(Order), aliased(Order)
    with unit_of_work(database) as session:
        trades, entries, sequences = session.execute(
            select(func.count(), func.count(func.distinct(Trade.entry_id)), func.count(func.distinct(Trade.sequence)))
            .select_from(Trade)
            .where(Trade.instrument == symbol)
        ).one()
        assert trades == entries == sequences, (symbol, trades, entries, sequences)
        strays = session.scalar(
            select(func.count())
            .select_from(Trade)
            .join(maker, maker.id == Trade.maker_order_id)
            .join(taker, taker.id == Trade.taker_order_id)
            .where(Trade.instrument == symbol, or_(maker.instrument != symbol, taker.instrument != symbol))
        )
        assert strays == 0, symbol
        sequenced, distinct = session.execute(
            select(func.count(Order.sequence), func.count(func.distinct(Order.sequence))).where(
                Order.instrument == symbol
            )
        ).one()
        assert sequenced == distinct, (symbol, sequenced, distinct)


def pending_commands(database: Database) -> int:
    """Orders not yet sequenced, and cancels not yet carried out, on every instrument."""
    with unit_of_work(database) as session:
        return int(
            session.scalar(select(func.count()).select_from(Order).where(text(f"({PENDING_COMMANDS_SQL})"))) or 0
        )


def book_from_database(database: Database, symbol: str, depth: int = 200) -> Book:
    """The book rebuilt from the resting orders, as the book endpoint writes it."""
    with unit_of_work(database) as session:
        instrument = get_instrument(session, symbol)
        bids, asks = rebuild_book(session, instrument).depth(depth)
        return {
            side: [
                [
                    format_price(instrument, price * instrument.tick_size),
                    format_quantity(instrument, quantity * instrument.lot_size),
                    count,
                ]
                for price, quantity, count in levels
            ]
            for side, levels in (("bids", bids), ("asks", asks))
        }


def served_book(url: str, symbol: str, depth: int = 200) -> Book:
    """The book ``GET /api/v1/instruments/{symbol}/book`` answers, bids and asks only."""
    served = httpx.get(f"{url}/api/v1/instruments/{symbol}/book", params={"depth": depth}, timeout=30).json()
    return {"bids": served["bids"], "asks": served["asks"]}
