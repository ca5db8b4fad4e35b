"""The refusals of the identity domain, each with its stable code."""

from __future__ import annotations

from typing import ClassVar

from bourse.errors import BourseError


class IdentityError(BourseError):
    """A refusal of the identity domain (it may carry ``WWW-Authenticate`` or ``Retry-After``)."""


class InvalidEmail(IdentityError):
    status_code = 422
    code = "invalid_email"


class EmailTaken(IdentityError):
    status_code = 409
    code = "email_taken"


class PasswordTooShort(IdentityError):
    status_code = 422
    code = "password_too_short"


class PasswordTooLong(IdentityError):
    status_code = 422
    code = "password_too_long"


class PasswordContainsEmail(IdentityError):
    status_code = 422
    code = "password_contains_email"


class InvalidToken(IdentityError):
    """Any access or refresh token that is not valid, whatever the reason.

    The reason is logged, never returned: telling an attacker which check failed
    helps nobody else.
    """

    status_code = 401
    code = "invalid_token"
    default_headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": 'Bearer error="invalid_token"'}

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(
            detail or "The token is missing, malformed, expired or not valid", headers=self.default_headers
        )


class InvalidCredentials(IdentityError):
    status_code = 401
    code = "invalid_credentials"

    def __init__(self) -> None:
        super().__init__("The email or password is wrong")


class TotpRequired(IdentityError):
    status_code = 401
    code = "totp_required"

    def __init__(self) -> None:
        super().__init__("This account has two-factor authentication: send totp_code")


class InvalidTotpCode(IdentityError):
    status_code = 401
    code = "invalid_totp_code"

    def __init__(self) -> None:
        super().__init__("The two-factor code is wrong, expired or already used")


class TotpAlreadyEnabled(IdentityError):
    status_code = 409
    code = "totp_already_enabled"


class TotpNotEnrolled(IdentityError):
    status_code = 409
    code = "totp_not_enrolled"


class AccountLocked(IdentityError):
    """A locked user: refused at login, at refresh and for every access token."""

    status_code = 403
    code = "account_locked"

    def __init__(self) -> None:
        super().__init__("This account is locked; contact support")


class Forbidden(IdentityError):
    status_code = 403
    code = "forbidden"


class TooManyAttempts(IdentityError):
    status_code = 429
    code = "too_many_attempts"

    def __init__(self, retry_after: int) -> None:
        self.retry_after = max(1, retry_after)
        super().__init__(
            f"Too many failed sign-in attempts; try again in {self.retry_after} s",
            headers={"Retry-After": str(self.retry_after)},
        )


class ThrottleUnavailable(IdentityError):
    """The throttle store (Redis) did not answer: sign-in fails closed rather than unthrottled."""

    status_code = 503
    code = "throttle_unavailable"

    def __init__(self) -> None:
        super().__init__("Sign-in is temporarily unavailable; try again shortly", headers={"Retry-After": "5"})


class UserNotFound(IdentityError):
    status_code = 404
    code = "user_not_found"
