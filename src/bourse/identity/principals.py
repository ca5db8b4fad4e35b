"""Who a user is right now, as the database last said: a per-process cache of at most a second.

Every authenticated request needs the caller's role, status and email. Reading the
``users`` row each time cost a database round trip (and a connection lease) per
request, so each process keeps what it read for ``BOURSE_AUTH_CACHE_SECONDS`` (at
most 1 s; 0 turns the cache off). See docs/decisions/0023-principal-cache.md.

What that means for a change to a user (locked, demoted, deleted):

- **every process** sees it within the cache lifetime: an entry is never served once
  that long has passed since the read that filled it began;
- **the process that made the change** sees it at once: a session that changed a
  user through the ORM (an object flushed or deleted, or a bulk ``update(User)`` /
  ``delete(User)``) forgets that user here *after its transaction commits*. Not
  before: a request reading in between would cache the old state again. A read that
  was under way when a user was forgotten does not store what it read.

A change made with raw SQL, or on a bare ``Connection``, is seen within the lifetime.

The listeners that do the forgetting are registered on :class:`sqlalchemy.orm.Session`
when this module is imported; whatever fills the cache imports it first.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import event, select
from sqlalchemy.orm import ORMExecuteState, Session

from bourse.identity.models import Role, User, UserStatus

# Enough for every user active on one process within a second, many times over;
# beyond it the least recently used entry goes.
DEFAULT_MAX_ENTRIES: Final = 10_000


@dataclass(frozen=True, slots=True)
class UserState:
    """What an access token's user is, as the ``users`` row says."""

    role: Role
    status: UserStatus
    email: str


@dataclass(frozen=True, slots=True)
class Ticket:
    """Taken before a read: when it began, and how many users had been forgotten by then."""

    read_at: float
    generation: int


class PrincipalCache:
    """User id -> :class:`UserState`, each entry served for at most ``lifetime`` seconds.

    Thread-safe (the event loop and worker threads share it); least recently used
    entries are dropped beyond ``max_entries``. ``clock`` is monotonic seconds; tests
    pass one they move by hand. The lifetime is given on each call, from the settings
    of the caller: 0 (or less) neither serves nor stores anything.
    """

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[uuid.UUID, tuple[UserState, float]] = OrderedDict()
        # Bumped by every forget: a read that began before one does not store its result.
        self._generation = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def get(self, user_id: uuid.UUID, lifetime: float) -> UserState | None:
        """The user's state if it was read less than ``lifetime`` seconds ago, else None."""
        if lifetime <= 0:
            return None
        now = self._clock()
        with self._lock:
            entry = self._entries.get(user_id)
            if entry is None:
                return None
            state, read_at = entry
            if now - read_at >= lifetime:
                del self._entries[user_id]
                return None
            self._entries.move_to_end(user_id)
            return state

    def ticket(self) -> Ticket:
        """Take this before reading a user; hand it to :meth:`put` with what was read."""
        now = self._clock()
        with self._lock:
            return Ticket(read_at=now, generation=self._generation)

    def put(self, user_id: uuid.UUID, state: UserState, ticket: Ticket, lifetime: float) -> bool:
        """Remember what a read begun at ``ticket`` found; not if any user was forgotten since."""
        if lifetime <= 0:
            return False
        with self._lock:
            if ticket.generation != self._generation:
                return False
            self._entries[user_id] = (state, ticket.read_at)
            self._entries.move_to_end(user_id)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return True

    def forget(self, user_ids: set[uuid.UUID] | None) -> None:
        """Drop these users (None: everybody), and void every read still under way."""
        with self._lock:
            self._generation += 1
            if user_ids is None:
                self._entries.clear()
            else:
                for user_id in user_ids:
                    self._entries.pop(user_id, None)


_cache = PrincipalCache()


def process_cache() -> PrincipalCache:
    """This process's cache."""
    return _cache


def use_cache(cache: PrincipalCache) -> PrincipalCache:
    """Make ``cache`` this process's cache (tests pass one with a manual clock); returns the previous one."""
    global _cache
    previous, _cache = _cache, cache
    return previous


_USERS = User.__table__
_READ = select(_USERS.c.role, _USERS.c.status, _USERS.c.email)


def read_user(session: Session, user_id: uuid.UUID) -> UserState | None:
    """The user's row, in the session's transaction: one Core ``SELECT`` by primary key."""
    row = session.connection().execute(_READ.where(_USERS.c.id == user_id)).one_or_none()
    if row is None:
        return None
    return UserState(role=Role(row.role), status=UserStatus(row.status), email=str(row.email))


# --- forgetting a user this process changed, once the change has committed ---------------

_CHANGED = "bourse.identity.principals.changed"
_EVERYBODY = "everybody"


def _note(session: Session, user_ids: set[uuid.UUID] | None) -> None:
    noted: set[uuid.UUID] | str | None = session.info.get(_CHANGED)
    if noted == _EVERYBODY:
        return
    if user_ids is None:
        session.info[_CHANGED] = _EVERYBODY
    elif isinstance(noted, set):
        noted.update(user_ids)
    else:
        session.info[_CHANGED] = set(user_ids)


@event.listens_for(Session, "after_flush")
def _users_flushed(session: Session, _flush_context: Any) -> None:
    # Still the pre-flush state here: what this flush updated or deleted.
    changed = {obj.id for obj in (*session.dirty, *session.deleted) if isinstance(obj, User)}
    if changed:
        _note(session, changed)


@event.listens_for(Session, "do_orm_execute")
def _bulk_change(state: ORMExecuteState) -> None:
    if (state.is_update or state.is_delete) and any(mapper.class_ is User for mapper in state.all_mappers):
        _note(state.session, None)  # which rows is not known: forget everybody


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: the transaction around it has not committed yet
    noted = session.info.pop(_CHANGED, None)
    if noted is not None:
        _cache.forget(None if noted == _EVERYBODY else noted)


@event.listens_for(Session, "after_rollback")
def _rolled_back(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint rolled back: changes flushed before it may still commit
    session.info.pop(_CHANGED, None)
