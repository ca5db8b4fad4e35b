"""``/api/v1/auth``: register, login, refresh, logout, me, and TOTP enrolment.

Registration may carry a referral code, which the referrals domain (above this one:
it stores users' referrers) checks and records. Identity never imports it: the
composition root passes :func:`bourse.referrals.service.referral_at_signup` in as the
hook (:class:`ReferralAtSignup`, see :func:`include_identity`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Protocol

from fastapi import APIRouter, FastAPI, Request, Response
from sqlalchemy.orm import Session

from bourse.api.routing import DbSession, LeasedDatabase, router
from bourse.db import unit_of_work
from bourse.errors import declared_refusals, raises
from bourse.identity import service
from bourse.identity.dependencies import CurrentPrincipal
from bourse.identity.errors import (
    AccountLocked,
    EmailTaken,
    InvalidCredentials,
    InvalidEmail,
    InvalidToken,
    InvalidTotpCode,
    PasswordContainsEmail,
    PasswordTooLong,
    PasswordTooShort,
    ThrottleUnavailable,
    TooManyAttempts,
    TotpAlreadyEnabled,
    TotpNotEnrolled,
    TotpRequired,
)
from bourse.identity.models import Role
from bourse.identity.passwords import hasher_for
from bourse.identity.schemas import (
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    TokenResponse,
    TotpCodeRequest,
    TotpEnrolmentResponse,
    UserOut,
)
from bourse.identity.throttle import LoginThrottle, create_login_throttle
from bourse.settings import Settings

auth = router(prefix="/api/v1/auth", tags=["auth"])


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


class ReferralAtSignup(Protocol):
    """The hook registration calls with a ``referral_code``, passed in by the composition root.

    Called with the request's session before the user exists, it checks the code (a
    refusal it declares with :func:`bourse.errors.raises` creates no user) and returns
    what links the new user to the code's IB, in the same transaction.
    """

    def __call__(self, session: Session, code: str, /) -> Callable[[uuid.UUID], None]: ...


def _registration(referral_at_signup: ReferralAtSignup) -> APIRouter:
    registration = router(prefix="/api/v1/auth", tags=["auth"])

    @raises(
        *declared_refusals(referral_at_signup),
        InvalidEmail,
        EmailTaken,
        PasswordTooShort,
        PasswordTooLong,
        PasswordContainsEmail,
    )
    @registration.post("/register", status_code=201, summary="Create a client account")
    def register(body: RegisterRequest, request: Request, session: DbSession) -> UserOut:
        """Self-registration always creates a ``client``; staff are created with ``bourse users create``.

        With a ``referral_code`` the user is linked to its IB in the same transaction:
        an unknown or inactive code (``unknown_referral_code``) creates no user.
        """
        # Checked first: a bad code is refused before the password is hashed.
        link = referral_at_signup(session, body.referral_code) if body.referral_code is not None else None
        user = service.create_user(
            session,
            email=body.email,
            password=body.password,
            role=Role.client,
            hasher=hasher_for(_settings(request)),
        )
        if link is not None:
            link(user.id)
        return UserOut.model_validate(user)

    return registration


@raises(InvalidCredentials, TotpRequired, InvalidTotpCode, AccountLocked, TooManyAttempts, ThrottleUnavailable)
@auth.post("/login", summary="Sign in with email and password (and TOTP code if enrolled)")
def login(body: LoginRequest, request: Request, database: LeasedDatabase) -> TokenResponse:
    # No DbSession: login runs its own short transactions (see service.login).
    throttle: LoginThrottle = request.app.state.login_throttle
    pair = service.login(
        database,
        _settings(request),
        throttle,
        email=body.email,
        password=body.password,
        totp_code=body.totp_code,
        client_ip=request.client.host if request.client else None,
    )
    return TokenResponse.model_validate(pair)


@raises(InvalidToken, AccountLocked)
@auth.post("/refresh", summary="Exchange a refresh token for new tokens (the old one is used up)")
def refresh(body: RefreshRequest, request: Request, database: LeasedDatabase) -> TokenResponse:
    reused: service.RefreshTokenReused | None = None
    pair: service.TokenPair | None = None
    # Its own transaction rather than the request's: when a reused token is detected
    # the family's revocation must be committed although the request is refused.
    with unit_of_work(database) as session:
        try:
            pair = service.refresh(session, _settings(request), body.refresh_token)
        except service.RefreshTokenReused as exc:
            reused = exc
    if reused is not None:
        raise reused
    assert pair is not None  # noqa: S101 - one of the two branches above ran
    return TokenResponse.model_validate(pair)


@auth.post("/logout", status_code=204, summary="Revoke this sign-in's refresh tokens")
def logout(body: RefreshRequest, session: DbSession) -> Response:
    service.logout(session, body.refresh_token)
    return Response(status_code=204)


@auth.get("/me", summary="The signed-in user")
def me(principal: CurrentPrincipal, session: DbSession) -> UserOut:
    return UserOut.model_validate(service.get_user(session, principal.user_id))


@raises(TotpAlreadyEnabled)
@auth.post("/totp/enrol", summary="Start two-factor enrolment: returns the secret to load into an app")
def totp_enrol(principal: CurrentPrincipal, request: Request, session: DbSession) -> TotpEnrolmentResponse:
    enrolment = service.start_totp_enrolment(session, _settings(request), principal.user_id)
    return TotpEnrolmentResponse.model_validate(enrolment)


@raises(TotpAlreadyEnabled, TotpNotEnrolled, InvalidTotpCode)
@auth.post("/totp/confirm", summary="Turn two-factor on with a code from the app")
def totp_confirm(body: TotpCodeRequest, principal: CurrentPrincipal, request: Request, session: DbSession) -> UserOut:
    service.confirm_totp(session, _settings(request), principal.user_id, body.code)
    return UserOut.model_validate(service.get_user(session, principal.user_id))


@raises(TotpNotEnrolled, InvalidTotpCode)
@auth.post("/totp/disable", summary="Turn two-factor off with a current code")
def totp_disable(body: TotpCodeRequest, principal: CurrentPrincipal, request: Request, session: DbSession) -> UserOut:
    service.disable_totp(session, _settings(request), principal.user_id, body.code)
    return UserOut.model_validate(service.get_user(session, principal.user_id))


def include_identity(app: FastAPI, *, referral_at_signup: ReferralAtSignup) -> None:
    """Mount ``/api/v1/auth`` and the login throttle; registration calls ``referral_at_signup``."""
    app.state.login_throttle = create_login_throttle(app.state.settings, app.state.db, app.state.redis)
    app.include_router(_registration(referral_at_signup))
    app.include_router(auth)
