"""Waking the matcher when a command is committed.

After the transaction that placed an order or asked for a cancel commits, the shard's
matcher is woken: on PostgreSQL by ``NOTIFY bourse_orders`` on the process's
announcing connection (:class:`bourse.queue.wake.Announcer`, outside the business
transaction, for the reason given there), and in this process through
:data:`LOCAL_WAKE` (a matcher running in the API process on SQLite, which has no
notifications). A wake-up lost (a crash between the commit and the announcement) costs
the matcher's poll interval, never the command: the command is a committed row.
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session

from bourse.queue.wake import announcer
from bourse.trading.results import COMMANDS_CHANNEL

_ANNOUNCED = "bourse.trading.commands_announced"


class LocalWake:
    """Wake-ups for matchers in this process: each commit of a command wakes every waiter."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._generation = 0

    def set(self) -> None:
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    def waiter(self) -> LocalWaiter:
        with self._changed:
            return LocalWaiter(self, self._generation)

    def wait_past(self, seen: int, seconds: float) -> tuple[bool, int]:
        """Wait up to ``seconds`` for a wake-up after generation ``seen``: (woken, generation now)."""
        with self._changed:
            woken = self._changed.wait_for(lambda: self._generation != seen, timeout=max(seconds, 0.0))
            return woken, self._generation


class LocalWaiter:
    """One matcher's view of :class:`LocalWake`: a wake-up it has not seen yet ends its wait."""

    listening = True

    def __init__(self, wake: LocalWake, seen: int) -> None:
        self._wake = wake
        self._seen = seen

    def wait(self, seconds: float) -> bool:
        woken, self._seen = self._wake.wait_past(self._seen, seconds)
        return woken

    def drain(self) -> None:
        """Nothing to read: the wait catches up with every wake-up at once."""

    def close(self) -> None:
        """Nothing to close."""


LOCAL_WAKE = LocalWake()


def announce_commands(session: Session) -> None:
    """Wake the matcher once the session's transaction commits (once per transaction)."""
    transaction = session.get_transaction()
    if transaction is None or session.info.get(_ANNOUNCED) is transaction:
        return
    session.info[_ANNOUNCED] = transaction
    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    postgresql = engine.dialect.name == "postgresql"

    def after_commit(_session: Session) -> None:
        LOCAL_WAKE.set()
        if postgresql:
            announcer().announce(engine, COMMANDS_CHANNEL)

    event.listen(session, "after_commit", after_commit, once=True)
