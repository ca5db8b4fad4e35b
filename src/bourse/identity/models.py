"""Identity tables: users, refresh tokens and the database login-throttle store.

Other domains refer to a user by ``users.id`` (a UUID); the ledger's
``accounts.user_id`` is a foreign key to it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from bourse.db import Base
from bourse.sqltypes import StrEnumType, UTCDateTime, enum_values, utcnow


class Role(StrEnum):
    """What a user may do. Authorisation checks these through ``require_roles``."""

    client = "client"
    ib = "ib"
    operator = "operator"
    admin = "admin"


class UserStatus(StrEnum):
    active = "active"
    locked = "locked"


_ROLE_VALUES = enum_values(Role)
_STATUS_VALUES = enum_values(UserStatus)


class User(Base):
    """A person who can sign in: a client, an introducing broker, or staff."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(f"role IN ({_ROLE_VALUES})", name="role"),
        CheckConstraint(f"status IN ({_STATUS_VALUES})", name="status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    # Normalised (trimmed, NFKC, lower case) by the service before it gets here.
    email: Mapped[str] = mapped_column(String(254), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(StrEnumType(Role), default=Role.client)
    status: Mapped[UserStatus] = mapped_column(StrEnumType(UserStatus), default=UserStatus.active)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    # The TOTP secret, encrypted (see bourse.identity.totp). Set at enrolment; the
    # second factor is only in force once ``totp_confirmed_at`` is set too.
    totp_secret_encrypted: Mapped[str | None] = mapped_column(String(255), default=None)
    totp_confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # The last accepted TOTP time step: a code is accepted at most once.
    totp_last_step: Mapped[int | None] = mapped_column(Integer, default=None)

    @property
    def totp_enabled(self) -> bool:
        return self.totp_confirmed_at is not None

    @property
    def is_active(self) -> bool:
        return self.status == UserStatus.active


class RefreshToken(Base):
    """One opaque refresh token, stored only as its SHA-256 hash.

    Every use rotates it: the used row gets ``used_at`` and a successor in the same
    ``family_id``. Presenting a token that was already used means it was copied, so
    the whole family is revoked.
    """

    __tablename__ = "refresh_tokens"
    __table_args__ = (Index("ix_refresh_tokens_family_id", "family_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("users.id", ondelete="CASCADE"), index=True)
    family_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # Why the token was revoked: "logout", "reuse_detected", "user_locked".
    revoked_reason: Mapped[str | None] = mapped_column(String(32), default=None)


class LoginAttemptWindow(Base):
    """Failed logins for one throttle key in one fixed time window (database store).

    The key is ``account:<sha256 of the normalised email>`` or ``ip:<address>``; it
    exists whether or not an account does, so throttling reveals nothing.
    """

    __tablename__ = "login_attempt_windows"

    key: Mapped[str] = mapped_column(String(96), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True)  # Unix seconds
    failures: Mapped[int] = mapped_column(Integer, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
