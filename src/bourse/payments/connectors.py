"""Which of the active payment connectors a deposit or a withdrawal goes through."""

from __future__ import annotations

from bourse.assets.amounts import AmountTooLarge, format_amount
from bourse.assets.service import AssetRef
from bourse.payments.errors import UnknownConnector
from bourse.psp.connectors.base import Capability, Connector
from bourse.psp.registry import connectors
from bourse.settings import Settings


def connector_named(settings: Settings, name: str | None, capability: Capability | None = None) -> Connector:
    """The active connector called ``name`` (the first configured one when None)."""
    active = connectors(settings)
    if name is None:
        name = (
            next(iter(active), None)
            if capability is None
            else next((n for n, c in active.items() if c.supports(capability)), None)
        )
    connector = active.get(name) if name is not None else None
    if connector is None:
        raise UnknownConnector(f"There is no active payment connector {name!r}")
    if capability is not None:
        connector.require(capability)
    return connector


def check_amount(connector: Connector, asset: AssetRef, amount: int, what: str) -> None:
    """Refuse (422 ``amount_too_large``) an amount the provider would refuse, before anything is kept."""
    if amount > connector.max_amount:
        most = format_amount(connector.max_amount, asset.scale)
        raise AmountTooLarge(f"The {connector.name} connector takes at most {most} {asset.code} in one {what}")
