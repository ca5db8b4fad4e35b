"""``/api/v1/auth``: register, login, refresh, logout, me, TOTP enrolment, and browser sessions.

Registration may carry a referral code, which the referrals domain (above this one:
it stores users' referrers) checks and records. Identity never imports it: the
composition root passes :func:`bourse.referrals.service.referral_at_signup` in as the
hook (:class:`ReferralAtSignup`, see :func:`include_identity`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Annotated, Protocol
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session

from bourse.api.routing import DbSession, LeasedDatabase, router
from bourse.db import Database, unit_of_work
from bourse.errors import declared_refusals, raises
from bourse.identity import service
from bourse.identity.dependencies import CurrentPrincipal
from bourse.identity.errors import (
    AccountLocked,
    CsrfRefused,
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
    REFRESH_TOKEN_MAX,
    LoginRequest,
    RefreshRequest,
    RegisterRequest,
    SessionTokenResponse,
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
    return TokenResponse.model_validate(_rotate(database, _settings(request), body.refresh_token))


def _rotate(database: Database, settings: Settings, token: str) -> service.TokenPair:
    """Rotate a refresh token in a transaction of its own: when a reused token is detected
    the family's revocation must be committed although the request is refused."""
    if not token or len(token) > REFRESH_TOKEN_MAX:
        raise InvalidToken
    reused: service.RefreshTokenReused | None = None
    pair: service.TokenPair | None = None
    with unit_of_work(database) as session:
        try:
            pair = service.refresh(session, settings, token)
        except service.RefreshTokenReused as exc:
            reused = exc
    if reused is not None:
        raise reused
    assert pair is not None  # noqa: S101 - one of the two branches above ran
    return pair


# --- Browser sessions (docs/decisions/0029-browser-sessions.md) ----------------------------
#
# The refresh token lives in an HttpOnly, Secure, SameSite=Strict cookie scoped to this
# path, never in a body; the access token is answered and kept in the page's memory.
# The cookie-authenticated operations take X-Bourse-CSRF: 1 and, when the browser names
# an Origin, only their own.

SESSION_PATH = "/api/v1/auth/session"
SESSION_COOKIE = "bourse_refresh"
CSRF_HEADER = "X-Bourse-CSRF"
_DEFAULT_PORTS = {"http": 80, "https": 443}
_NO_STORE = {"Cache-Control": "no-store"}


def _split_origin(origin: str) -> tuple[str, str, int | None] | None:
    """``scheme://host[:port]`` as (scheme, host, port as written), or None if it is not one."""
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in {"", "/"} or parts.query:
        return None
    return scheme, parts.hostname.lower(), port


def _is_own_origin(origin: str, request: Request) -> bool:
    """Whether the browser's ``Origin`` is the origin this request was sent to.

    The host and port are the ``Host`` header's (a missing port is the default of the
    Origin's scheme). The scheme is compared where the server knows it: a request it
    sees as https (directly, or through ``X-Forwarded-Proto`` from a proxy in
    BOURSE_FORWARDED_ALLOW_IPS) refuses an http Origin. A request it sees as http may
    have come through a TLS-terminating proxy it does not trust, so an https Origin
    for the same host is taken.
    """
    theirs = _split_origin(origin)
    ours = _split_origin(f"{request.url.scheme}://{request.headers.get('host', '')}")
    if theirs is None or ours is None:
        return False
    scheme, host, port = theirs
    own_scheme, own_host, own_port = ours
    if host != own_host or (own_scheme == "https" and scheme != "https"):
        return False
    return (port or _DEFAULT_PORTS[scheme]) == (own_port or _DEFAULT_PORTS[scheme])


def _check_origin(request: Request) -> None:
    """A browser names the page's origin on every cross-origin POST and DELETE: it must be ours."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # not a browser, or a same-origin GET-like request: the header is the guard
    if not _is_own_origin(origin, request):
        raise CsrfRefused("The request comes from another origin")


@raises(CsrfRefused)
def _csrf_guard(
    request: Request,
    x_bourse_csrf: Annotated[
        str | None,
        Header(
            alias=CSRF_HEADER,
            description="Required, `1`: a cross-site form cannot send a custom header, and a cross-origin "
            "script would need a CORS preflight Bourse never grants.",
            json_schema_extra={"enum": ["1"]},
        ),
    ] = None,
) -> None:
    if x_bourse_csrf != "1":
        raise CsrfRefused(f"Send the header {CSRF_HEADER}: 1")
    _check_origin(request)


CsrfChecked = Annotated[None, Depends(_csrf_guard)]


def _cookie_header(value: str, max_age: int) -> str:
    """The ``Set-Cookie`` value: HttpOnly, Secure, SameSite=Strict, on the session path only."""
    carrier = Response()
    carrier.set_cookie(
        SESSION_COOKIE,
        value,
        max_age=max_age,
        path=SESSION_PATH,
        secure=True,
        httponly=True,
        samesite="strict",
    )
    return carrier.headers["set-cookie"]


def _session_answer(pair: service.TokenPair, settings: Settings) -> JSONResponse:
    body = SessionTokenResponse(access_token=pair.access_token, token_type=pair.token_type, expires_in=pair.expires_in)
    return JSONResponse(
        body.model_dump(mode="json"),
        headers={**_NO_STORE, "Set-Cookie": _cookie_header(pair.refresh_token, settings.refresh_token_ttl_seconds)},
    )


_SETS_COOKIE = {
    200: {
        "description": "Signed in: the access token; the refresh token is in the cookie",
        "headers": {
            "Set-Cookie": {
                "description": f"`{SESSION_COOKIE}`: the refresh token; HttpOnly; Secure; SameSite=Strict; "
                f"Path={SESSION_PATH}; Max-Age the refresh token's lifetime",
                "required": True,
                "schema": {"type": "string"},
            }
        },
    }
}
_SESSION_COOKIE_DOC = (
    f"Reads the `{SESSION_COOKIE}` cookie set by `POST {SESSION_PATH}`. Requires the header "
    f"`{CSRF_HEADER}: 1`, and an `Origin`, when sent, that is this server's (`csrf_refused`)."
)


@raises(
    InvalidCredentials, TotpRequired, InvalidTotpCode, AccountLocked, TooManyAttempts, ThrottleUnavailable, CsrfRefused
)
@auth.post(
    "/session",
    summary="Sign in from a browser: the refresh token is set as an HttpOnly cookie, never in the body",
    response_model=SessionTokenResponse,
    responses=_SETS_COOKIE,  # type: ignore[arg-type]
)
def create_session(body: LoginRequest, request: Request, database: LeasedDatabase) -> JSONResponse:
    """As ``/login``; the answer carries the access token, and sets the ``bourse_refresh`` cookie.

    An ``Origin`` naming another site is refused (``csrf_refused``), so a foreign page
    cannot sign a browser into somebody else's account.
    """
    _check_origin(request)
    settings = _settings(request)
    throttle: LoginThrottle = request.app.state.login_throttle
    pair = service.login(
        database,
        settings,
        throttle,
        email=body.email,
        password=body.password,
        totp_code=body.totp_code,
        client_ip=request.client.host if request.client else None,
    )
    return _session_answer(pair, settings)


@raises(InvalidToken, AccountLocked, CsrfRefused)
@auth.post(
    "/session/refresh",
    summary="Rotate the browser session's refresh cookie and answer a new access token",
    response_model=SessionTokenResponse,
    responses=_SETS_COOKIE,  # type: ignore[arg-type]
    description=_SESSION_COOKIE_DOC
    + " A missing, unknown, expired or reused cookie is `invalid_token` and the cookie is cleared; a reused "
    "one also revokes every token of its sign-in, as `/refresh` does.",
)
def refresh_session(request: Request, database: LeasedDatabase, _csrf: CsrfChecked) -> JSONResponse:
    settings = _settings(request)
    token = request.cookies.get(SESSION_COOKIE, "")
    try:
        pair = _rotate(database, settings, token)
    except (InvalidToken, AccountLocked) as exc:
        exc.headers["Set-Cookie"] = _cookie_header("", 0)
        raise
    return _session_answer(pair, settings)


@raises(CsrfRefused)
@auth.delete(
    "/session",
    status_code=204,
    summary="Sign the browser out: revoke its sign-in's refresh tokens and clear the cookie",
    description=_SESSION_COOKIE_DOC + " Answers 204 with or without a cookie.",
)
def delete_session(request: Request, session: DbSession, _csrf: CsrfChecked) -> Response:
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        service.logout(session, token)
    return Response(status_code=204, headers={**_NO_STORE, "Set-Cookie": _cookie_header("", 0)})


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
