"""The assets domain's refusals, each with its own stable code.

The refusals of an amount that does not parse are with the parser, in
:mod:`bourse.assets.amounts` (``amount_invalid``, ``amount_precision``, ...).
"""

from __future__ import annotations

from bourse.errors import Conflict, Unprocessable


class UnknownAsset(Unprocessable):
    code = "unknown_asset"


class AssetInactive(Unprocessable):
    code = "asset_inactive"


class InvalidAsset(Unprocessable):
    code = "invalid_asset"


class AssetExists(Conflict):
    code = "asset_exists"
