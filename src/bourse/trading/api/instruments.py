"""Instrument endpoints: public market listings, and their administration.

Anyone may read the instruments (a market's rules are public, like a venue's
contract specifications). Admins list and change them; operators and admins
halt and resume trading, and every halt or resume is logged with who and why.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from bourse.api.routing import DbSession, router
from bourse.assets.amounts import AmountError
from bourse.assets.errors import AssetInactive, UnknownAsset
from bourse.errors import family, raises
from bourse.identity.dependencies import Principal, require_roles
from bourse.identity.models import Role
from bourse.trading import instruments as service
from bourse.trading.errors import (
    InstrumentExists,
    InstrumentImmutableField,
    InvalidInstrument,
    InvalidPriceBand,
    InvalidQuantityLimits,
    ReasonRequired,
    UnknownInstrument,
)
from bourse.trading.models import Instrument
from bourse.trading.schemas import InstrumentIn, InstrumentOut, InstrumentPatch, StatusChangeIn, StatusChangeOut

instruments = router(prefix="/api/v1", tags=["instruments"])
instruments_admin = router(prefix="/api/v1/admin", tags=["instruments admin"])

Staff = Annotated[Principal, Depends(require_roles(Role.operator, Role.admin))]
Admin = Annotated[Principal, Depends(require_roles(Role.admin))]


def instrument_out(instrument: Instrument) -> InstrumentOut:
    """The wire form of an instrument: every price and quantity as a decimal string."""
    return InstrumentOut(
        symbol=instrument.symbol,
        base_asset=instrument.base_asset,
        quote_asset=instrument.quote_asset,
        price_scale=instrument.price_scale,
        tick_size=service.format_price(instrument, instrument.tick_size),
        lot_size=service.format_quantity(instrument, instrument.lot_size),
        min_quantity=service.format_quantity(instrument, instrument.min_quantity),
        max_quantity=service.format_quantity(instrument, instrument.max_quantity),
        price_band_bps=instrument.price_band_bps,
        status=instrument.status,
        last_price=None if instrument.last_price is None else service.format_price(instrument, instrument.last_price),
        sequence=instrument.sequence,
        created_at=instrument.created_at,
        updated_at=instrument.updated_at,
    )


def _actor(principal: Principal) -> str:
    return f"user:{principal.user_id}"


@instruments.get("/instruments", summary="List the instruments (public)")
def list_instruments(session: DbSession) -> list[InstrumentOut]:
    return [instrument_out(instrument) for instrument in service.list_instruments(session)]


@raises(UnknownInstrument)
@instruments.get("/instruments/{symbol}", summary="An instrument (public)")
def get_instrument(symbol: str, session: DbSession) -> InstrumentOut:
    return instrument_out(service.get_instrument(session, symbol))


@raises(*family(InvalidInstrument), UnknownAsset, AssetInactive, *family(AmountError), InstrumentExists)
@instruments_admin.post("/instruments", status_code=201, summary="List a new instrument (admin)")
def create_instrument(body: InstrumentIn, session: DbSession, _: Admin) -> InstrumentOut:
    return instrument_out(
        service.create_instrument(
            session,
            symbol=body.symbol,
            base_asset=body.base_asset,
            quote_asset=body.quote_asset,
            price_scale=body.price_scale,
            tick_size=body.tick_size,
            lot_size=body.lot_size,
            min_quantity=body.min_quantity,
            max_quantity=body.max_quantity,
            price_band_bps=body.price_band_bps,
        )
    )


@raises(UnknownInstrument, InstrumentImmutableField, *family(AmountError), InvalidQuantityLimits, InvalidPriceBand)
@instruments_admin.patch(
    "/instruments/{symbol}", summary="Change an instrument's tick, lot, quantity limits or price band (admin)"
)
def update_instrument(symbol: str, body: InstrumentPatch, session: DbSession, _: Admin) -> InstrumentOut:
    return instrument_out(
        service.update_instrument(
            session,
            symbol,
            tick_size=body.tick_size,
            lot_size=body.lot_size,
            min_quantity=body.min_quantity,
            max_quantity=body.max_quantity,
            price_band_bps=body.price_band_bps,
            price_scale=body.price_scale,
            base_asset=body.base_asset,
            quote_asset=body.quote_asset,
        )
    )


@raises(UnknownInstrument, ReasonRequired)
@instruments_admin.post("/instruments/{symbol}/halt", summary="Halt trading on an instrument (operator, admin)")
def halt_instrument(symbol: str, body: StatusChangeIn, session: DbSession, operator: Staff) -> StatusChangeOut:
    actor = _actor(operator)
    instrument = service.halt(session, symbol, body.reason, actor)
    return StatusChangeOut(instrument=instrument_out(instrument), reason=body.reason.strip(), actor=actor)


@raises(UnknownInstrument, ReasonRequired)
@instruments_admin.post("/instruments/{symbol}/resume", summary="Resume trading on an instrument (operator, admin)")
def resume_instrument(symbol: str, body: StatusChangeIn, session: DbSession, operator: Staff) -> StatusChangeOut:
    actor = _actor(operator)
    instrument = service.resume(session, symbol, body.reason, actor)
    return StatusChangeOut(instrument=instrument_out(instrument), reason=body.reason.strip(), actor=actor)
