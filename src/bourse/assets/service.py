"""Looking up and managing assets."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from bourse.assets.amounts import MAX_SCALE
from bourse.assets.errors import AssetExists, AssetInactive, InvalidAsset, UnknownAsset
from bourse.assets.models import ASSET_CODE_PATTERN, Asset

_CODE = re.compile(ASSET_CODE_PATTERN)
MAX_NAME = 64


def get_asset(session: Session, code: str, *, for_new_money: bool = False) -> Asset:
    """The asset named ``code``; refuses unknown codes, and inactive ones for new money."""
    asset = session.get(Asset, code) if isinstance(code, str) and _CODE.fullmatch(code) else None
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
    return asset


def set_asset_active(session: Session, code: str, *, active: bool) -> Asset:
    asset = get_asset(session, code)
    asset.active = active
    session.flush()
    return asset
