"""Looking up and managing assets.

Money-moving requests look their asset up on every call, so :func:`lookup` serves
it from a per-process cache (:class:`AssetCache`). An asset's scale never changes
(see :class:`~bourse.assets.models.Asset`), and assets are never deleted, so the
only thing that can go stale is whether it is active: an entry is served for at
most :data:`ASSET_CACHE_SECONDS`, so an operator's deactivation stops new money in
every process within that time (in the process that made it, at its next read). An
unknown code is never cached, so a new asset is usable as soon as it is committed.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from bourse.assets.amounts import MAX_SCALE
from bourse.assets.errors import AssetExists, AssetInactive, InvalidAsset, UnknownAsset
from bourse.assets.models import ASSET_CODE_PATTERN, Asset

_CODE = re.compile(ASSET_CODE_PATTERN)
MAX_NAME = 64
# How long a process may serve an asset's active flag without reading it again.
ASSET_CACHE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class AssetRef:
    """What a money-moving request needs of an asset."""

    code: str
    scale: int
    active: bool


class AssetCache:
    """Asset code -> :class:`AssetRef`, each served for ``lifetime`` seconds after its read.

    Thread-safe (worker threads share it). ``clock`` is monotonic seconds; tests pass
    one they move by hand. There are a handful of assets, so nothing is ever evicted
    for space.
    """

    def __init__(self, *, lifetime: float = ASSET_CACHE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[AssetRef, float]] = {}
        self._every: tuple[tuple[AssetRef, ...], float] | None = None

    def get(self, code: str) -> AssetRef | None:
        with self._lock:
            entry = self._entries.get(code)
        if entry is None or self._clock() - entry[1] >= self.lifetime:
            return None
        return entry[0]

    def put(self, ref: AssetRef, read_at: float) -> None:
        with self._lock:
            self._entries[ref.code] = (ref, read_at)

    def get_all(self) -> list[AssetRef] | None:
        """Every asset, if the whole list was read less than ``lifetime`` seconds ago."""
        with self._lock:
            every = self._every
        if every is None or self._clock() - every[1] >= self.lifetime:
            return None
        return list(every[0])

    def put_all(self, refs: list[AssetRef], read_at: float) -> None:
        with self._lock:
            self._every = (tuple(refs), read_at)
            for ref in refs:
                self._entries[ref.code] = (ref, read_at)

    def now(self) -> float:
        return self._clock()

    def forget(self, code: str) -> None:
        with self._lock:
            self._entries.pop(code, None)
            self._every = None


_PROCESS_ASSETS = AssetCache()


def process_assets() -> AssetCache:
    """This process's asset cache."""
    return _PROCESS_ASSETS


_BY_CODE = select(Asset.code, Asset.scale, Asset.active).where(Asset.code == bindparam("code"))


def lookup(session: Session, code: str, *, for_new_money: bool = False, cache: AssetCache | None = None) -> AssetRef:
    """The asset named ``code``, from the cache or one Core read; the refusals of :func:`get_asset`."""
    assets = _PROCESS_ASSETS if cache is None else cache
    ref = assets.get(code) if isinstance(code, str) else None
    if ref is None:
        read_at = assets.now()
        row = session.connection().execute(_BY_CODE, {"code": code}).first() if _valid(code) else None
        if row is None:
            raise UnknownAsset(f"There is no asset {code!r}")
        ref = AssetRef(code=row.code, scale=int(row.scale), active=bool(row.active))
        assets.put(ref, read_at)
    if for_new_money and not ref.active:
        raise AssetInactive(f"{code} is not active")
    return ref


_ALL = select(Asset.code, Asset.scale, Asset.active).order_by(Asset.code)


def every_asset(session: Session, *, cache: AssetCache | None = None) -> list[AssetRef]:
    """Every asset, active or not, by code: from the cache (as :func:`lookup`) or one Core read."""
    assets = _PROCESS_ASSETS if cache is None else cache
    known = assets.get_all()
    if known is not None:
        return known
    read_at = assets.now()
    refs = [
        AssetRef(code=row.code, scale=int(row.scale), active=bool(row.active))
        for row in session.connection().execute(_ALL)
    ]
    assets.put_all(refs, read_at)
    return refs


def scale_of(session: Session, code: str) -> int:
    """An existing asset's scale (which never changes)."""
    return lookup(session, code).scale


def _valid(code: object) -> bool:
    return isinstance(code, str) and _CODE.fullmatch(code) is not None


def get_asset(session: Session, code: str, *, for_new_money: bool = False) -> Asset:
    """The asset named ``code``; refuses unknown codes, and inactive ones for new money."""
    asset = session.get(Asset, code) if _valid(code) else None
    if asset is None:
        raise UnknownAsset(f"There is no asset {code!r}")
    if for_new_money and not asset.active:
        raise AssetInactive(f"{code} is not active")
    return asset


def list_assets(session: Session, *, include_inactive: bool = True) -> list[Asset]:
    query = select(Asset).order_by(Asset.code)
    if not include_inactive:
        query = query.where(Asset.active.is_(True))
    return list(session.scalars(query))


def create_asset(session: Session, *, code: str, scale: int, name: str) -> Asset:
    if not _CODE.fullmatch(code):
        raise InvalidAsset(
            f"An asset code is 2 to 12 upper-case letters and digits, starting with a letter; not {code!r}"
        )
    if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
        raise InvalidAsset(f"An asset's scale is a whole number from 0 to {MAX_SCALE}")
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise InvalidAsset("An asset's name is 1 to 64 characters")
    if session.get(Asset, code) is not None:
        raise AssetExists(f"The asset {code} already exists")
    asset = Asset(code=code, scale=scale, name=name, active=True)
    session.add(asset)
    session.flush()
    # The list of every asset is read again here next time; elsewhere within ASSET_CACHE_SECONDS.
    _PROCESS_ASSETS.forget(code)
    return asset


def set_asset_active(session: Session, code: str, *, active: bool) -> Asset:
    asset = get_asset(session, code)
    asset.active = active
    session.flush()
    # This process reads the asset again next time; the others within ASSET_CACHE_SECONDS.
    _PROCESS_ASSETS.forget(code)
    return asset
