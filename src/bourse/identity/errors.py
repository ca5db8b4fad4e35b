"""The refusals of the identity domain, each with its stable code."""

from __future__ import annotations

from typing import ClassVar

from bourse import errors


class IdentityError(errors.BourseError):
    """A refusal of the identity domain (it may carry ``WWW-Authenticate`` or ``Retry-After``)."""


class InvalidEmail(errors.Unprocessable, IdentityError):
    code = "invalid_email"


class EmailTaken(errors.Conflict, IdentityError):
    code = "email_taken"


class PasswordTooShort(errors.Unprocessable, IdentityError):
    code = "password_too_short"


class PasswordTooLong(errors.Unprocessable, IdentityError):
    code = "password_too_long"


class PasswordContainsEmail(errors.Unprocessable, IdentityError):
    code = "password_contains_email"


class InvalidToken(errors.Unauthorized, IdentityError):
    """Any access or refresh token that is not valid, whatever the reason.

    The reason is logged, never returned: telling an attacker which check failed
    helps nobody else.
    """

    code = "invalid_token"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer error="invalid_token"'}

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            detail or "The token is missing, malformed, expired or not valid", headers=self.default_headers
        )


class InvalidCredentials(errors.Unauthorized, IdentityError):
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("The email or password is wrong")


class TotpRequired(errors.Unauthorized, IdentityError):
    code = "totp_required"

    def __init__(self) -> None:
        super().__init__("This account has two-factor authentication: send totp_code")


class InvalidTotpCode(errors.Unauthorized, IdentityError):
    code = "invalid_totp_code"

    def __init__(self) -> None:
        super().__init__("The two-factor code is wrong, expired or already used")


class TotpAlreadyEnabled(errors.Conflict, IdentityError):
    code = "totp_already_enabled"


class TotpNotEnrolled(errors.Conflict, IdentityError):
    code = "totp_not_enrolled"


class AccountLocked(errors.Forbidden, IdentityError):
    """A locked user: refused at login, at refresh and for every access token."""

    code = "account_locked"

    def __init__(self) -> None:
        super().__init__("This account is locked; contact support")


class Forbidden(errors.Forbidden, IdentityError):
    """A principal whose role may not do this."""


class TooManyAttempts(errors.TooManyRequests, IdentityError):
    code = "too_many_attempts"

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(
            f"Too many failed sign-in attempts; try again in {self.retry_after} s",
            headers={"Retry-After": str(self.retry_after)},
        )


class ThrottleUnavailable(errors.TemporarilyUnavailable, IdentityError):
    """The throttle store (Redis) did not answer: sign-in fails closed rather than unthrottled."""

    code = "throttle_unavailable"

    def __init__(self) -> None:
        super().__init__("Sign-in is temporarily unavailable; try again shortly", retry_after=5)


class UserNotFound(errors.NotFound, IdentityError):
    code = "user_not_found"


class CsrfRefused(errors.Forbidden, IdentityError):
    """A cookie-authenticated request without ``X-Bourse-CSRF: 1``, or from another origin.

    See docs/decisions/0029-browser-sessions.md.
    """

    code = "csrf_refused"
