"""Request and response bodies of the auth API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from bourse.identity.models import Role, UserStatus

# Generous bounds: the service applies the real policy with its own error codes.
_EMAIL = Field(min_length=1, max_length=320)
_PASSWORD = Field(min_length=1, max_length=4096)
REFRESH_TOKEN_MAX = 512
_TOKEN = Field(min_length=1, max_length=REFRESH_TOKEN_MAX)
_CODE = Field(min_length=1, max_length=16)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class RegisterRequest(_Body):
    email: str = _EMAIL
    password: str = _PASSWORD
    # An introducing broker's code: the new user is linked to that IB.
    referral_code: str | None = Field(default=None, min_length=1, max_length=64)


class LoginRequest(_Body):
    email: str = _EMAIL
    password: str = _PASSWORD
    totp_code: str | None = Field(default=None, min_length=1, max_length=16)


class RefreshRequest(_Body):
    refresh_token: str = _TOKEN


class TotpCodeRequest(_Body):
    code: str = _CODE


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    role: Role
    status: UserStatus
    totp_enabled: bool
    created_at: datetime


class TokenResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    access_token: str
    refresh_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class SessionTokenResponse(BaseModel):
    """A browser sign-in's answer: the access token only; the refresh token is in the cookie."""

    access_token: str
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret
    expires_in: int


class TotpEnrolmentResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    secret: str
    provisioning_uri: str
