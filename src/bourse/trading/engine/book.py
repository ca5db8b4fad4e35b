"""A price-time priority limit order book for one instrument: pure, deterministic, fast.

The book does no I/O and reads no clock or randomness: the same commands always
produce the same events, so the service layer can log commands, replay them,
and settle the fills the book returns. It never raises on a bad command; it
answers with a ``Rejected`` or ``CancelRejected`` event instead.

Rules:

- Best price first, FIFO within a price; a fill is always at the maker's price.
- Every valid order gets ``Accepted``, then its fills (and any resting orders
  that self-trade prevention cancels, in the order met), then at most one of
  ``Rested`` (GTC limit remainder) or ``Cancelled`` (any other remainder).
- IOC and market orders never rest. FOK is decided before anything changes: if
  the order cannot fill completely, the only event after ``Accepted`` is
  ``Cancelled(fok_unfilled)``, and no resting order is touched.
- Self-trade prevention uses the incoming order's mode. For FOK it changes what
  is fillable: ``cancel_oldest`` skips the owner's resting orders (they would be
  cancelled, so they provide nothing); ``cancel_newest`` and ``cancel_both``
  stop the walk at the first such order, so only the liquidity ahead of it
  counts. Own orders are cancelled only if the FOK then fills.
- A market buy with a ``quote_budget`` takes, at each maker, the largest
  quantity whose ``notional(price, quantity)`` fits the budget left; the budget
  is charged per fill, as settlement charges it. A FOK with a budget must fill
  its whole quantity within the budget.
- ``notional`` must be non-decreasing in both price and quantity.
- Order ids must increase (the caller assigns them in arrival order). A
  rejected command changes nothing but ``sequence``, which counts every event,
  rejections included, so market-data clients can detect gaps.

Data structures: one ``SortedDict`` per side mapping a key to a level (asks by
price, bids by negated price, so the best level of either side is the first
key); each level is a ``deque`` of entries in arrival order. A cancel removes
the entry from the order index and marks it dead (``remaining == 0``) in O(1);
matching drops dead entries when it reaches them, and a level full of dead
entries is compacted, so memory stays proportional to the live orders.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import islice

from sortedcontainers import SortedDict  # type: ignore[import-untyped]

from bourse.trading.engine.vocabulary import (
    Accepted,
    BookSnapshot,
    Cancelled,
    CancelReason,
    CancelRejected,
    Event,
    Fill,
    NewOrder,
    OrderKind,
    Rejected,
    RejectReason,
    Rested,
    RestingOrder,
    SelfTradePrevention,
    Side,
    TimeInForce,
)

Notional = Callable[[int, int], int]
DepthLevel = tuple[int, int, int]  # (price, total quantity, order count)

# Module-level aliases: the hot path compares enum members by identity.
_BUY = Side.BUY
_SELL = Side.SELL
_LIMIT = OrderKind.LIMIT
_MARKET = OrderKind.MARKET
_GTC = TimeInForce.GTC
_IOC = TimeInForce.IOC
_FOK = TimeInForce.FOK
_STP_NONE = SelfTradePrevention.NONE
_CANCEL_NEWEST = SelfTradePrevention.CANCEL_NEWEST
_CANCEL_OLDEST = SelfTradePrevention.CANCEL_OLDEST
_CANCEL_BOTH = SelfTradePrevention.CANCEL_BOTH
_STP_MODES = frozenset(SelfTradePrevention)
_TIFS = frozenset(TimeInForce)
# Leave dead entries in a level until they outnumber the live ones by this much.
_COMPACT_SLACK = 16


def price_times_quantity(price: int, quantity: int) -> int:
    """The default notional: one tick times one lot is one minor unit of the quote asset."""
    return price * quantity


class _Entry:
    """A resting order; mutable so a partial fill costs one attribute write."""

    __slots__ = ("level", "order_id", "owner", "quantity", "remaining", "side")

    def __init__(  # noqa: PLR0917 - built on the hot path, where positional arguments are cheaper
        self, order_id: int, owner: str, side: Side, quantity: int, remaining: int, level: _Level
    ) -> None:
        self.order_id = order_id
        self.owner = owner
        self.side = side
        self.quantity = quantity
        self.remaining = remaining  # 0 once filled or cancelled: the entry is dead
        self.level = level

    def view(self) -> RestingOrder:
        return RestingOrder(self.order_id, self.owner, self.side, self.level.price, self.quantity, self.remaining)


class _Level:
    """The orders resting at one price, in arrival order, with running totals for depth."""

    __slots__ = ("count", "key", "price", "quantity", "queue")

    def __init__(self, price: int, key: int) -> None:
        self.price = price
        self.key = key
        self.queue: deque[_Entry] = deque()
        self.quantity = 0  # live remaining quantity
        self.count = 0  # live orders

    def live(self) -> Iterator[_Entry]:
        return (entry for entry in self.queue if entry.remaining)


class Book:
    """The order book of one instrument. Not thread-safe: feed it from one thread, in order."""

    __slots__ = (
        "_asks",
        "_bids",
        "_default_notional",
        "_default_stp",
        "_index",
        "_last_order_id",
        "_notional",
        "sequence",
    )

    def __init__(
        self,
        *,
        notional: Notional = price_times_quantity,
        default_stp: SelfTradePrevention = SelfTradePrevention.CANCEL_NEWEST,
    ) -> None:
        """``default_stp`` applies to orders that do not choose a mode. It defaults to
        ``cancel_newest``: a wash trade inflates volume and costs fees, and refusing
        the new order leaves the owner's resting orders where they were."""
        if default_stp not in _STP_MODES:
            raise ValueError(f"unknown self-trade prevention mode {default_stp!r}")
        self._notional = notional
        self._default_notional = notional is price_times_quantity
        self._default_stp = default_stp
        self._bids: SortedDict = SortedDict()  # -price -> _Level
        self._asks: SortedDict = SortedDict()  # price -> _Level
        self._index: dict[int, _Entry] = {}
        self._last_order_id: int | None = None
        self.sequence = 0  # the number of events emitted so far; the last event's sequence

    # --- Commands ----------------------------------------------------------------------------

    def place(self, order: NewOrder) -> list[Event]:  # noqa: PLR0912, PLR0915 - one hot loop, kept flat for speed
        """Match ``order`` against the book; rest what a GTC limit order leaves."""
        order_id = order.order_id
        reason = self._invalid(order)
        if reason is not None:
            self.sequence += 1
            return [Rejected(order_id, reason, self.sequence)]
        self._last_order_id = order_id
        side = order.side
        owner = order.owner
        price = order.price
        kind = order.kind
        tif = order.tif
        if tif is None:
            tif = _GTC if kind is _LIMIT else _IOC
        stp = order.stp
        if stp is None:
            stp = self._default_stp
        budget = order.quote_budget
        buy = side is _BUY
        opposite = self._asks if buy else self._bids
        # Levels are keyed so that the best is smallest: a key above ``limit`` is too expensive.
        limit = None if price is None else (price if buy else -price)
        seq = self.sequence + 1
        events: list[Event] = [Accepted(order_id, seq)]
        remaining = order.quantity
        if tif is _FOK and not self._fillable(opposite, limit, owner, remaining, stp, budget):
            seq += 1
            events.append(Cancelled(order_id, remaining, CancelReason.FOK_UNFILLED, seq))
            self.sequence = seq
            return events

        index = self._index
        stop: CancelReason | None = None
        notional = None if self._default_notional else self._notional
        while opposite:
            key, level = opposite.peekitem(0)
            if limit is not None and key > limit:
                break
            level_price = level.price
            queue = level.queue
            while queue:
                maker = queue[0]
                available = maker.remaining
                if not available:  # cancelled earlier: drop it now
                    queue.popleft()
                    continue
                if stp is not _STP_NONE and maker.owner == owner:
                    if stp is _CANCEL_NEWEST:
                        stop = CancelReason.SELF_TRADE
                        break
                    queue.popleft()
                    del index[maker.order_id]
                    maker.remaining = 0
                    level.count -= 1
                    level.quantity -= available
                    seq += 1
                    events.append(Cancelled(maker.order_id, available, CancelReason.SELF_TRADE, seq))
                    if stp is _CANCEL_BOTH:
                        stop = CancelReason.SELF_TRADE
                        break
                    continue
                quantity = remaining if remaining < available else available
                if budget is not None:
                    if notional is None:
                        affordable = budget // level_price
                        quantity = min(quantity, affordable)
                        budget -= level_price * quantity
                    else:
                        quantity = _affordable(notional, level_price, quantity, budget)
                        budget -= notional(level_price, quantity)
                    if not quantity:
                        stop = CancelReason.BUDGET_EXHAUSTED
                        break
                seq += 1
                events.append(Fill(maker.order_id, order_id, maker.owner, owner, level_price, quantity, side, seq))
                remaining -= quantity
                level.quantity -= quantity
                if quantity == available:
                    queue.popleft()
                    del index[maker.order_id]
                    maker.remaining = 0
                    level.count -= 1
                else:
                    maker.remaining = available - quantity
                if not remaining:
                    break
            if not level.count:
                del opposite[key]
            if stop is not None or not remaining:
                break

        if remaining:
            seq += 1
            if stop is not None:
                events.append(Cancelled(order_id, remaining, stop, seq))
            elif kind is _MARKET:
                events.append(Cancelled(order_id, remaining, CancelReason.NO_LIQUIDITY, seq))
            elif tif is _GTC:
                # Only a limit order gets here (market orders are IOC or FOK), so price is set.
                self._rest(order_id, owner, side, price, order.quantity, remaining)  # type: ignore[arg-type]
                events.append(Rested(order_id, remaining, seq))
            else:  # IOC (a FOK that passed the check above always fills)
                events.append(Cancelled(order_id, remaining, CancelReason.IOC_REMAINDER, seq))
        self.sequence = seq
        return events

    def cancel(self, order_id: int) -> list[Event]:
        """Cancel a resting order; a ``CancelRejected`` if it is not resting."""
        self.sequence += 1
        entry = self._index.pop(order_id, None)
        if entry is None:
            return [CancelRejected(order_id, RejectReason.UNKNOWN_ORDER, self.sequence)]
        remaining = entry.remaining
        entry.remaining = 0
        level = entry.level
        level.count -= 1
        level.quantity -= remaining
        if not level.count:
            del (self._bids if entry.side is _BUY else self._asks)[level.key]
        elif len(level.queue) > 2 * level.count + _COMPACT_SLACK:
            level.queue = deque(level.live())
        return [Cancelled(order_id, remaining, CancelReason.USER, self.sequence)]

    def restore(self, orders: Iterable[RestingOrder], *, sequence: int = 0) -> None:
        """Load resting orders into this empty book without matching, e.g. after a restart.

        Time priority is the order id, so ``orders`` may come in any order (from
        the database or from :meth:`orders`). ``sequence`` continues the event
        numbering. Inconsistent input (a crossed book, a duplicate id, a bad
        quantity) is corrupt state, not a command, so it raises ``ValueError``
        and leaves the book untouched.
        """
        if self._index or self.sequence:
            raise ValueError("restore needs an empty, unused book")
        ordered = sorted(orders, key=lambda resting: resting.order_id)
        _check_restorable(ordered)
        for resting in ordered:
            self._rest(
                resting.order_id, resting.owner, resting.side, resting.price, resting.quantity, resting.remaining
            )
        if ordered:
            self._last_order_id = ordered[-1].order_id
        self.sequence = sequence

    # --- Queries -----------------------------------------------------------------------------

    def counterparties(self, order: NewOrder) -> tuple[set[str], bool]:  # noqa: PLR0912 - the matching loop's branches
        """Whom :meth:`place` would fill ``order`` against, and whether it would cancel
        resting orders of the order's own owner (self-trade prevention), mutating nothing.

        Returns the owners of the resting orders it would trade with, and True if it
        would cancel any of the owner's own resting orders. The order's id is not
        checked. It walks the book exactly as :meth:`place` would (limit, FOK, self-trade
        prevention, budget), so a caller can lock what the fills will touch before
        placing; ``tests/trading/test_book_properties.py`` holds the two to the same answer.
        """
        if self._invalid_terms(order) is not None:
            return set(), False
        side, owner, price, kind = order.side, order.owner, order.price, order.kind
        tif = order.tif if order.tif is not None else (_GTC if kind is _LIMIT else _IOC)
        stp = order.stp if order.stp is not None else self._default_stp
        budget = order.quote_budget
        buy = side is _BUY
        opposite = self._asks if buy else self._bids
        limit = None if price is None else (price if buy else -price)
        remaining = order.quantity
        if tif is _FOK and not self._fillable(opposite, limit, owner, remaining, stp, budget):
            return set(), False
        makers: set[str] = set()
        cancels_own = False
        for key, level in opposite.items():
            if limit is not None and key > limit:
                break
            stopped = False
            for maker in level.queue:
                available = maker.remaining
                if not available:
                    continue
                if stp is not _STP_NONE and maker.owner == owner:
                    if stp is _CANCEL_NEWEST:
                        stopped = True
                        break
                    cancels_own = True
                    if stp is _CANCEL_BOTH:
                        stopped = True
                        break
                    continue
                # As in place(): a maker only partly taken is met again, until it is
                # used up, the order is filled, or the budget cannot pay for a lot.
                while available and not stopped:
                    quantity = remaining if remaining < available else available
                    if budget is not None:
                        quantity = _affordable(self._notional, level.price, quantity, budget)
                        budget -= self._notional(level.price, quantity)
                        if not quantity:
                            stopped = True
                            break
                    makers.add(maker.owner)
                    remaining -= quantity
                    available -= quantity
                    stopped = not remaining
                if stopped:
                    break
            if stopped:
                break
        return makers, cancels_own

    def best_bid(self) -> int | None:
        return self._bids.peekitem(0)[1].price if self._bids else None

    def best_ask(self) -> int | None:
        return self._asks.peekitem(0)[1].price if self._asks else None

    def depth(self, levels: int) -> tuple[list[DepthLevel], list[DepthLevel]]:
        """The best ``levels`` prices of each side as (price, total quantity, order count)."""
        return _depth(self._bids, levels), _depth(self._asks, levels)

    def open_order(self, order_id: int) -> RestingOrder | None:
        entry = self._index.get(order_id)
        return None if entry is None else entry.view()

    def orders(self) -> list[RestingOrder]:
        """Every resting order: bids best first, then asks best first; FIFO within a price."""
        return [entry.view() for side in (self._bids, self._asks) for level in side.values() for entry in level.live()]

    def snapshot(self) -> BookSnapshot:
        """The resting state, comparable with ``==`` (for replay and restore checks)."""
        bids = tuple(entry.view() for level in self._bids.values() for entry in level.live())
        asks = tuple(entry.view() for level in self._asks.values() for entry in level.live())
        return BookSnapshot(bids, asks)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._index

    # --- Internals ---------------------------------------------------------------------------

    def _invalid(self, order: NewOrder) -> RejectReason | None:
        """Why ``order`` cannot be placed, or None."""
        order_id = order.order_id
        last = self._last_order_id
        if last is not None and order_id <= last:
            if order_id in self._index:
                return RejectReason.DUPLICATE_ORDER_ID
            return RejectReason.ORDER_ID_NOT_INCREASING
        return self._invalid_terms(order)

    def _invalid_terms(self, order: NewOrder) -> RejectReason | None:  # noqa: PLR0911, PLR0912 - one check per rule
        """Why ``order``'s terms (everything but its id) cannot be placed, or None."""
        side = order.side
        if side is not _BUY and side is not _SELL:
            return RejectReason.INVALID_SIDE
        if not _positive_int(order.quantity):
            return RejectReason.INVALID_QUANTITY
        if order.stp is not None and order.stp not in _STP_MODES:
            return RejectReason.INVALID_SELF_TRADE_PREVENTION
        tif = order.tif
        if tif is not None and tif not in _TIFS:
            return RejectReason.INVALID_TIME_IN_FORCE
        kind = order.kind
        if kind is _LIMIT:
            if order.price is None:
                return RejectReason.MISSING_PRICE
            if not _positive_int(order.price):
                return RejectReason.INVALID_PRICE
            if order.quote_budget is not None:
                return RejectReason.QUOTE_BUDGET_NOT_ALLOWED
            return None
        if kind is not _MARKET:
            return RejectReason.INVALID_KIND
        if order.price is not None:
            return RejectReason.PRICE_ON_MARKET_ORDER
        if tif is _GTC:
            return RejectReason.INVALID_TIME_IN_FORCE
        if order.quote_budget is not None:
            if side is not _BUY:
                return RejectReason.QUOTE_BUDGET_NOT_ALLOWED
            if not _positive_int(order.quote_budget):
                return RejectReason.INVALID_QUOTE_BUDGET
        return None

    def _rest(  # noqa: PLR0917 - on the hot path, where positional arguments are cheaper
        self, order_id: int, owner: str, side: Side, price: int, quantity: int, remaining: int
    ) -> None:
        if side is _BUY:
            book, key = self._bids, -price
        else:
            book, key = self._asks, price
        level = book.get(key)
        if level is None:
            level = book[key] = _Level(price, key)
        entry = _Entry(order_id, owner, side, quantity, remaining, level)
        level.queue.append(entry)
        level.quantity += remaining
        level.count += 1
        self._index[order_id] = entry

    def _fillable(  # noqa: PLR0917 - the matching loop's state, passed as is
        self,
        opposite: SortedDict,
        limit: int | None,
        owner: str,
        quantity: int,
        stp: SelfTradePrevention,
        budget: int | None,
    ) -> bool:
        """Whether matching would fill ``quantity`` completely: the FOK check, mutating nothing.

        It walks the book exactly as :meth:`place` would, including self-trade
        prevention and the budget, so its answer and the real match cannot differ.
        """
        needed = quantity
        for key, level in opposite.items():
            if limit is not None and key > limit:
                return False
            for maker in level.queue:
                available = maker.remaining
                if not available:
                    continue
                if stp is not _STP_NONE and maker.owner == owner:
                    if stp is _CANCEL_OLDEST:
                        continue
                    return False
                take = needed if needed < available else available
                if budget is not None:
                    affordable = _affordable(self._notional, level.price, take, budget)
                    if affordable < take:
                        return False
                    budget -= self._notional(level.price, take)
                needed -= take
                if not needed:
                    return True
        return False


def _affordable(notional: Notional, price: int, quantity: int, budget: int) -> int:
    """The largest q <= ``quantity`` with notional(price, q) <= ``budget`` (binary search)."""
    if notional(price, quantity) <= budget:
        return quantity
    low, high = 0, quantity - 1  # notional(price, high + 1) > budget
    while low < high:
        middle = (low + high + 1) // 2
        if notional(price, middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _check_restorable(ordered: list[RestingOrder]) -> None:
    """Refuse resting orders that no sequence of commands could have left in a book."""
    seen: set[int] = set()
    best_bid: int | None = None
    best_ask: int | None = None
    for resting in ordered:
        if resting.order_id in seen:
            raise ValueError(f"duplicate order id {resting.order_id}")
        seen.add(resting.order_id)
        if resting.side is not _BUY and resting.side is not _SELL:
            raise ValueError(f"order {resting.order_id}: unknown side {resting.side!r}")
        if not _positive_int(resting.price):
            raise ValueError(f"order {resting.order_id}: the price must be a positive integer")
        if not _positive_int(resting.remaining) or not _positive_int(resting.quantity):
            raise ValueError(f"order {resting.order_id}: quantities must be positive integers")
        if resting.remaining > resting.quantity:
            raise ValueError(f"order {resting.order_id}: more remaining than placed")
        if resting.side is _BUY:
            best_bid = resting.price if best_bid is None else max(best_bid, resting.price)
        else:
            best_ask = resting.price if best_ask is None else min(best_ask, resting.price)
    if best_bid is not None and best_ask is not None and best_bid >= best_ask:
        raise ValueError(f"the orders cross: best bid {best_bid} >= best ask {best_ask}")


def _positive_int(value: object) -> bool:
    """A positive int (a bool or a float is refused: the engine is integers only)."""
    return type(value) is int and value > 0


def _depth(side: SortedDict, levels: int) -> list[DepthLevel]:
    return [(level.price, level.quantity, level.count) for level in islice(side.values(), max(levels, 0))]
