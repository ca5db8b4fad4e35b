"""Ledger endpoints: assets, wallets, statements, entries, holds, transfers, adjustments.

Clients see their own objects only; another user's account, entry or hold is a
404. Operators and admins see every object. Every endpoint that moves money
takes an ``Idempotency-Key``.
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from bourse.api.errors import request_id_of
from bourse.api.routing import DbSession, router
from bourse.assets import errors as asset_errors
from bourse.assets import service as assets
from bourse.assets.amounts import AmountError, AmountTooLarge, format_amount, parse_amount
from bourse.errors import Unprocessable, family, raises
from bourse.idempotency.dependencies import Idempotent
from bourse.identity.dependencies import CurrentPrincipal, Principal, require_roles
from bourse.identity.models import Role, User
from bourse.ledger import queries
from bourse.ledger.adjustments import adjust
from bourse.ledger.errors import (
    AccountNotFound,
    EntryAlreadyReversed,
    EntryNotFound,
    EntryNotReversible,
    HoldNotFound,
    InsufficientFunds,
    UnknownUser,
)
from bourse.ledger.models import Hold
from bourse.ledger.posting import Context, user_actor
from bourse.ledger.reversals import reverse_entry
from bourse.ledger.schemas import (
    AdjustmentIn,
    AdjustmentOut,
    AssetIn,
    AssetOut,
    AssetPatch,
    Direction,
    EntryOut,
    EntryPostingOut,
    HoldOut,
    HoldsOut,
    ReversalIn,
    ReversalOut,
    StatementLineOut,
    StatementOut,
    TransferIn,
    TransferOut,
    WalletOut,
    WalletsOut,
)
from bourse.ledger.transfers import transfer

STAFF = (Role.operator, Role.admin)

ledger = router(prefix="/api/v1", tags=["ledger"])
admin = router(prefix="/api/v1/admin", tags=["admin"])

Staff = Annotated[Principal, Depends(require_roles(*STAFF))]
Admin = Annotated[Principal, Depends(require_roles(Role.admin))]


class SelfTransfer(Unprocessable):
    code = "self_transfer"


def _viewer(principal: Principal) -> queries.Viewer:
    return queries.Viewer(user_id=principal.user_id, staff=principal.has_role(*STAFF))


def _context(request: Request, actor: str, key: str) -> Context:
    # The ledger key is scoped like the API key: per user and per operation.
    return Context(actor=actor, idempotency_key=key, request_id=request_id_of(request))


def _hold_out(hold: Hold, scale: int) -> HoldOut:
    return HoldOut(
        id=hold.id,
        asset=hold.asset,
        amount=format_amount(hold.amount, scale),
        captured=format_amount(hold.captured, scale),
        released=format_amount(hold.released, scale),
        remaining=format_amount(hold.remaining, scale),
        state=hold.state,
        reference=hold.reference,
        created_at=hold.created_at,
    )


def _scale(session: Session, code: str) -> int:
    return assets.scale_of(session, code)


# -- Assets ---------------------------------------------------------------------------


@ledger.get("/assets", summary="List assets")
def list_assets(session: DbSession) -> list[AssetOut]:
    return [AssetOut.model_validate(asset) for asset in assets.list_assets(session)]


@raises(asset_errors.InvalidAsset, asset_errors.AssetExists)
@admin.post("/assets", status_code=201, summary="Create an asset (admin)")
def create_asset(body: AssetIn, session: DbSession, _: Admin) -> AssetOut:
    return AssetOut.model_validate(assets.create_asset(session, code=body.code, scale=body.scale, name=body.name))


@raises(asset_errors.UnknownAsset)
@admin.patch("/assets/{code}", summary="Activate or deactivate an asset (admin)")
def update_asset(code: str, body: AssetPatch, session: DbSession, _: Admin) -> AssetOut:
    return AssetOut.model_validate(assets.set_asset_active(session, code, active=body.active))


# -- Reading --------------------------------------------------------------------------


@ledger.get("/wallets", summary="My balances per asset")
def wallets(session: DbSession, principal: CurrentPrincipal) -> WalletsOut:
    return WalletsOut(
        wallets=[
            WalletOut(
                asset=line.asset,
                available=format_amount(line.available, line.scale),
                held=format_amount(line.held, line.scale),
                available_account_id=line.available_account_id,
                held_account_id=line.held_account_id,
            )
            for line in queries.wallets(session, principal.user_id)
        ]
    )


@raises(AccountNotFound, queries.InvalidCursor)
@ledger.get("/accounts/{account_id}/postings", summary="An account statement, newest first")
def account_postings(
    account_id: uuid.UUID,
    session: DbSession,
    principal: CurrentPrincipal,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 50,
) -> StatementOut:
    found = queries.statement(session, account_id, _viewer(principal), cursor=cursor, limit=limit)
    scale = found.scale
    return StatementOut(
        account_id=found.account.id,
        asset=found.account.asset,
        kind=found.account.kind,
        balance=format_amount(found.account.balance, scale),
        postings=[
            StatementLineOut(
                seq=line.seq,
                entry_id=line.entry_id,
                kind=line.kind,
                amount=format_amount(line.amount, scale),
                balance_after=format_amount(line.balance_after, scale),
                created_at=line.created_at,
            )
            for line in found.lines
        ],
        next_cursor=found.next_cursor,
    )


@raises(EntryNotFound)
@ledger.get("/entries/{entry_id}", summary="A journal entry")
def entry(entry_id: uuid.UUID, session: DbSession, principal: CurrentPrincipal) -> EntryOut:
    detail = queries.entry_detail(session, entry_id, _viewer(principal))
    staff = principal.has_role(*STAFF)
    return EntryOut(
        id=detail.entry.id,
        kind=detail.entry.kind,
        created_at=detail.entry.created_at,
        reverses_id=detail.entry.reverses_id,
        # Metadata can name the counterparty; clients see only their own postings.
        metadata=queries.entry_metadata(detail.entry) if staff else {},
        postings=[
            EntryPostingOut(
                account_id=line.account_id,
                account_kind=line.account_kind,
                asset=line.asset,
                amount=format_amount(line.amount, line.scale),
                balance_after=format_amount(line.balance_after, line.scale),
            )
            for line in detail.lines
        ],
    )


@ledger.get("/holds", summary="My holds, newest first")
def list_holds(
    session: DbSession, principal: CurrentPrincipal, limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE)] = 100
) -> HoldsOut:
    found = queries.holds(session, principal.user_id, limit=limit)
    scales = {code: _scale(session, code) for code in {hold.asset for hold in found}}
    return HoldsOut(holds=[_hold_out(hold, scales[hold.asset]) for hold in found])


@raises(HoldNotFound)
@ledger.get("/holds/{hold_id}", summary="A hold")
def get_hold(hold_id: uuid.UUID, session: DbSession, principal: CurrentPrincipal) -> HoldOut:
    hold = queries.visible_hold(session, hold_id, _viewer(principal))
    return _hold_out(hold, _scale(session, hold.asset))


# -- Moving money ---------------------------------------------------------------------


@raises(
    asset_errors.UnknownAsset,
    asset_errors.AssetInactive,
    *family(AmountError),
    SelfTransfer,
    UnknownUser,
    InsufficientFunds,
)
@ledger.post("/transfers", status_code=201, summary="Send money to another user", response_model=TransferOut)
def create_transfer(
    body: TransferIn, request: Request, session: DbSession, principal: CurrentPrincipal, idempotent: Idempotent
) -> JSONResponse:
    def produce() -> TransferOut:
        asset = assets.lookup(session, body.asset, for_new_money=True)
        amount = parse_amount(body.amount, asset.scale)
        if body.to_user_id == principal.user_id:
            raise SelfTransfer("Transfers go to another user")
        posted = transfer(
            session,
            from_user=principal.user_id,
            to_user=body.to_user_id,
            asset=asset.code,
            amount=amount,
            context=_context(request, user_actor(principal.user_id), idempotent.ledger_key("transfer")),
        )
        return TransferOut(
            entry_id=posted.entry_id,
            from_user_id=principal.user_id,
            to_user_id=body.to_user_id,
            asset=asset.code,
            amount=format_amount(amount, asset.scale),
            created_at=posted.created_at,
        )

    return idempotent.run(body, produce, status_code=201)


@raises(asset_errors.UnknownAsset, asset_errors.AssetInactive, *family(AmountError), UnknownUser, InsufficientFunds)
@admin.post(
    "/adjustments",
    status_code=201,
    summary="Credit or debit a user against the house (operator, admin)",
    response_model=AdjustmentOut,
)
def create_adjustment(
    body: AdjustmentIn, request: Request, session: DbSession, operator: Staff, idempotent: Idempotent
) -> JSONResponse:
    def produce() -> AdjustmentOut:
        asset = assets.lookup(session, body.asset, for_new_money=body.direction is Direction.credit)
        amount = parse_amount(body.amount, asset.scale)
        if session.get(User, body.user_id) is None:
            raise UnknownUser("There is no such user")
        reason = body.reason.strip()
        posted = adjust(
            session,
            user_id=body.user_id,
            asset=asset.code,
            amount=amount,
            credit=body.direction is Direction.credit,
            reason=reason,
            context=_context(request, user_actor(operator.user_id), idempotent.ledger_key("adjustment")),
        )
        return AdjustmentOut(
            entry_id=posted.entry_id,
            user_id=body.user_id,
            asset=asset.code,
            amount=format_amount(amount, asset.scale),
            direction=body.direction,
            reason=reason,
            operator_id=operator.user_id,
            created_at=posted.created_at,
        )

    return idempotent.run(body, produce, status_code=201)


@raises(EntryNotFound, EntryNotReversible, EntryAlreadyReversed, InsufficientFunds, AmountTooLarge)
@admin.post(
    "/entries/{entry_id}/reversal",
    status_code=201,
    summary="Reverse an entry with a mirror entry (operator, admin)",
    response_model=ReversalOut,
)
def reverse(  # noqa: PLR0917 - FastAPI passes dependencies by name
    entry_id: uuid.UUID, body: ReversalIn, request: Request, session: DbSession, operator: Staff, idempotent: Idempotent
) -> JSONResponse:
    def produce() -> ReversalOut:
        posted = reverse_entry(
            session,
            entry_id=entry_id,
            reason=body.reason.strip(),
            context=_context(request, user_actor(operator.user_id), idempotent.ledger_key("reversal")),
        )
        return ReversalOut(entry_id=posted.entry_id, reverses_id=entry_id, created_at=posted.created_at)

    return idempotent.run(body, produce, status_code=201)
