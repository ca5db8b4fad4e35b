"""The per-process asset cache: scales served from memory, deactivation within a second."""

from __future__ import annotations

import uuid

import pytest

from bourse.assets import service as assets
from bourse.assets.errors import AssetInactive, UnknownAsset
from bourse.db import Database, unit_of_work


class _Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _code() -> str:
    return "T" + uuid.uuid4().hex[:8].upper()


def test_a_cached_asset_is_served_without_a_read_until_its_lifetime_ends(database: Database) -> None:
    clock = _Clock()
    cache = assets.AssetCache(lifetime=1.0, clock=clock)
    code = _code()
    with unit_of_work(database) as session:
        assets.create_asset(session, code=code, scale=4, name="Cached")
    with unit_of_work(database) as session:
        first = assets.lookup(session, code, for_new_money=True, cache=cache)
    assert (first.code, first.scale, first.active) == (code, 4, True)

    # Another process deactivates it (this cache is not told).
    with unit_of_work(database) as session:
        assets.get_asset(session, code).active = False

    clock.now += 0.999
    with unit_of_work(database) as session:
        assert assets.lookup(session, code, for_new_money=True, cache=cache) is first
    clock.now += 0.001
    with unit_of_work(database) as session, pytest.raises(AssetInactive):
        assets.lookup(session, code, for_new_money=True, cache=cache)
    # Money that is already there can still leave an inactive asset.
    with unit_of_work(database) as session:
        assert assets.lookup(session, code, cache=cache).active is False


def test_the_process_that_deactivates_an_asset_refuses_new_money_at_once(database: Database) -> None:
    code = _code()
    with unit_of_work(database) as session:
        assets.create_asset(session, code=code, scale=2, name="Local")
    with unit_of_work(database) as session:
        assert assets.lookup(session, code, for_new_money=True).active
        assets.set_asset_active(session, code, active=False)
    with unit_of_work(database) as session, pytest.raises(AssetInactive):
        assets.lookup(session, code, for_new_money=True)


def test_an_unknown_code_is_never_cached(database: Database) -> None:
    cache = assets.AssetCache(clock=_Clock())
    code = _code()
    for bad in (code, "lower", "", "X" * 40):
        with unit_of_work(database) as session, pytest.raises(UnknownAsset):
            assets.lookup(session, bad, cache=cache)
    # Created a moment later, it is found at once: the miss was not remembered.
    with unit_of_work(database) as session:
        assets.create_asset(session, code=code, scale=0, name="Late")
    with unit_of_work(database) as session:
        assert assets.lookup(session, code, cache=cache).scale == 0


def test_the_list_of_every_asset_is_cached_like_each_asset(database: Database) -> None:
    clock = _Clock()
    cache = assets.AssetCache(lifetime=1.0, clock=clock)
    with unit_of_work(database) as session:
        before = assets.every_asset(session, cache=cache)
    assert [ref.code for ref in before] == sorted(ref.code for ref in before)
    code = _code()
    with unit_of_work(database) as session:
        assets.create_asset(session, code=code, scale=3, name="Listed")
    # Created by another process: this cache serves its list until the lifetime ends ...
    with unit_of_work(database) as session:
        assert code not in {ref.code for ref in assets.every_asset(session, cache=cache)}
    clock.now += 1.0
    with unit_of_work(database) as session:
        listed = {ref.code: ref for ref in assets.every_asset(session, cache=cache)}
    assert listed[code] == assets.AssetRef(code=code, scale=3, active=True)
    # ... and reading the list filled the per-code entries too.
    with unit_of_work(database) as session:
        assert assets.lookup(session, code, cache=cache) is listed[code]
