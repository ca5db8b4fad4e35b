"""Identity services: users, sign-in, refresh-token rotation, logout and TOTP.

Functions that take a ``Session`` follow the rule of the codebase: they add and
flush, and the caller's boundary commits. :func:`login` is the exception, on
purpose: it takes the ``Database`` and runs its steps in short transactions of its
own, so that the argon2 check holds no lock and a failed attempt is counted (and
committed) even though the request that made it is refused. See
docs/decisions/0007-identity-and-tokens.md.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bourse.db import Database, unit_of_work
from bourse.identity import passwords, totp
from bourse.identity.errors import (
    AccountLocked,
    EmailTaken,
    InvalidCredentials,
    InvalidEmail,
    InvalidToken,
    InvalidTotpCode,
    TotpAlreadyEnabled,
    TotpNotEnrolled,
    TotpRequired,
    UserNotFound,
)
from bourse.identity.models import RefreshToken, Role, User, UserStatus
from bourse.identity.throttle import LoginThrottle, login_keys
from bourse.identity.tokens import hash_refresh_token, issue_access_token, new_refresh_token
from bourse.logging import get_logger
from bourse.settings import Settings

log = get_logger(__name__)

MAX_EMAIL_LENGTH = 254
# Deliberately simple: one "@", no spaces, a dot in the domain. Deliverability is
# proven by sending mail, not by a regular expression.
_EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]+$")


def _now() -> datetime:
    return datetime.now(UTC)


# --- users --------------------------------------------------------------------------------


def normalise_email(raw: str) -> str:
    """Trim, apply NFKC and lower-case an email, then check its shape (``invalid_email``)."""
    email = unicodedata.normalize("NFKC", raw).strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL_RE.match(email) or ".." in email.split("@", 1)[1]:
        raise InvalidEmail("That is not a valid email address")
    return email


def get_user_by_email(session: Session, email: str) -> User | None:
    try:
        normalised = normalise_email(email)
    except InvalidEmail:
        return None
    return session.scalars(select(User).where(User.email == normalised)).one_or_none()


def create_user(
    session: Session,
    *,
    email: str,
    password: str,
    role: Role = Role.client,
    hasher: PasswordHasher | None = None,
) -> User:
    """Create a user after validating the email and the password policy.

    Refusals: ``invalid_email``, ``email_taken``, ``password_too_short``,
    ``password_too_long``, ``password_contains_email``. Nothing is written on a
    refusal. ``hasher`` defaults to argon2-cffi's parameters; the API passes the
    configured one.
    """
    normalised = normalise_email(email)
    passwords.check_password_policy(password, normalised)
    role = Role(role)
    if session.scalars(select(User.id).where(User.email == normalised)).first() is not None:
        raise EmailTaken("An account with this email already exists")
    user = User(
        id=uuid.uuid4(),
        email=normalised,
        password_hash=passwords.hash_password(password, passwords.hasher_for(None) if hasher is None else hasher),
        role=role,
        status=UserStatus.active,
    )
    try:
        # A savepoint, so that losing a race for the same email leaves the caller's
        # transaction usable and reports the conflict, not a 500.
        with session.begin_nested():
            session.add(user)
    except IntegrityError:
        raise EmailTaken("An account with this email already exists") from None
    log.info("user_created", user_id=str(user.id), role=role.value)
    return user


def get_user(session: Session, user_id: uuid.UUID) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise UserNotFound("No such user")
    return user


def set_user_status(session: Session, user_id: uuid.UUID, status: UserStatus, *, now: datetime | None = None) -> User:
    """Lock or unlock a user. Locking also revokes every refresh token they hold."""
    user = get_user(session, user_id)
    user.status = UserStatus(status)
    if user.status == UserStatus.locked:
        _revoke(session, RefreshToken.user_id == user.id, reason="user_locked", now=now or _now())
    session.flush()
    log.info("user_status_changed", user_id=str(user.id), status=user.status.value)
    return user


def authenticate(session: Session, settings: Settings, email: str, password: str) -> User | None:
    """The user whose email and password these are, or None. Rehashes an outdated hash.

    An unknown email costs the same argon2 work as a wrong password, so response
    times do not reveal which emails have accounts.
    """
    hasher = passwords.hasher_for(settings)
    user = get_user_by_email(session, email)
    if user is None:
        passwords.verify_password(passwords.dummy_hash(hasher), password, hasher)
        return None
    if not passwords.verify_password(user.password_hash, password, hasher):
        return None
    if passwords.needs_rehash(user.password_hash, hasher):
        user.password_hash = passwords.hash_password(password, hasher)
        session.flush()
    return user


# --- tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    token_type: str = "bearer"  # noqa: S105 - the OAuth token type, not a secret


def issue_tokens(
    session: Session, settings: Settings, user: User, *, family_id: uuid.UUID | None = None, now: datetime | None = None
) -> TokenPair:
    """An access token and a new refresh token (a new family unless one is given)."""
    issued = now or _now()
    token = new_refresh_token()
    session.add(
        RefreshToken(
            id=uuid.uuid4(),
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=hash_refresh_token(token),
            created_at=issued,
            expires_at=issued + timedelta(seconds=settings.refresh_token_ttl_seconds),
        )
    )
    session.flush()
    return TokenPair(
        access_token=issue_access_token(settings, user, now=issued),
        refresh_token=token,
        expires_in=settings.access_token_ttl_seconds,
    )


def login(
    db: Database,
    settings: Settings,
    throttle: LoginThrottle,
    *,
    email: str,
    password: str,
    totp_code: str | None = None,
    client_ip: str | None = None,
    now: datetime | None = None,
) -> TokenPair:
    """Sign in: throttle check, password, second factor, then a new token family.

    Runs its own transactions (see the module docstring). Refusals:
    ``too_many_attempts`` (429), ``invalid_credentials``, ``totp_required``,
    ``invalid_totp_code`` (401), ``account_locked`` (403, only after a correct
    password, so it reveals nothing to somebody who does not know it).
    """
    now = now or _now()
    try:
        normalised = normalise_email(email)
    except InvalidEmail:
        normalised = unicodedata.normalize("NFKC", email).strip().lower()
    keys = login_keys(settings, normalised, client_ip)
    throttle.check(keys, now)
    hasher = passwords.hasher_for(settings)
    # Read the hash in one short transaction and verify it outside any: the argon2
    # work (tens of milliseconds) must not hold a lock (on SQLite, the write lock).
    with unit_of_work(db) as session:
        found = session.execute(select(User.id, User.password_hash).where(User.email == normalised)).one_or_none()
    if found is None:
        passwords.verify_password(passwords.dummy_hash(hasher), password, hasher)
        user_id = None
    else:
        user_id = found.id if passwords.verify_password(found.password_hash, password, hasher) else None
    if user_id is None:
        throttle.record_failure(keys, now)
        log.info("login_failed", reason="credentials", client_ip=client_ip)
        raise InvalidCredentials
    try:
        with unit_of_work(db) as session:
            user = get_user(session, user_id)
            if user.status != UserStatus.active:
                raise AccountLocked
            if passwords.needs_rehash(user.password_hash, hasher):
                user.password_hash = passwords.hash_password(password, hasher)
            if user.totp_enabled:
                _accept_totp_code(session, settings, user, totp_code, now)
            pair = issue_tokens(session, settings, user, now=now)
    except (InvalidTotpCode, TotpRequired) as exc:
        if isinstance(exc, InvalidTotpCode):
            throttle.record_failure(keys, now)
        log.info("login_failed", reason=exc.code, user_id=str(user_id), client_ip=client_ip)
        raise
    throttle.clear(keys[0], now)
    log.info("login_succeeded", user_id=str(user_id), client_ip=client_ip)
    return pair


class RefreshTokenReused(InvalidToken):
    """An already-rotated refresh token came back: its family has been revoked.

    The revocation must survive the refusal, so the caller commits before
    re-raising this (the API does; see ``bourse.identity.api``).
    """


def refresh(session: Session, settings: Settings, token: str, *, now: datetime | None = None) -> TokenPair:
    """Rotate a refresh token: mark it used and issue its successor in the same family.

    The rotation is one conditional UPDATE, so two concurrent uses of one token
    cannot both succeed: the loser sees a used token and is treated as a reuse.
    """
    now = now or _now()
    token_hash = hash_refresh_token(token)
    claimed = session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == token_hash,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(RefreshToken.user_id, RefreshToken.family_id)
    ).one_or_none()
    if claimed is None:
        row = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == token_hash)).one_or_none()
        if row is not None and row.used_at is not None and row.revoked_at is None:
            revoked = _revoke(session, RefreshToken.family_id == row.family_id, reason="reuse_detected", now=now)
            log.warning(
                "refresh_token_reuse_detected",
                user_id=str(row.user_id),
                family_id=str(row.family_id),
                revoked_tokens=revoked,
            )
            raise RefreshTokenReused("This refresh token was already used; the session has been revoked")
        raise InvalidToken
    user_id, family_id = claimed
    user = get_user(session, user_id)
    if user.status != UserStatus.active:
        raise AccountLocked
    return issue_tokens(session, settings, user, family_id=family_id, now=now)


def logout(session: Session, token: str, *, now: datetime | None = None) -> bool:
    """Revoke the refresh token's whole family (this sign-in, on this device).

    Returns whether anything was revoked; unknown tokens are not an error, so that
    logging out twice is harmless and reveals nothing.
    """
    row = session.scalars(select(RefreshToken).where(RefreshToken.token_hash == hash_refresh_token(token))).first()
    if row is None:
        return False
    return _revoke(session, RefreshToken.family_id == row.family_id, reason="logout", now=now or _now()) > 0


def _revoke(session: Session, condition: object, *, reason: str, now: datetime) -> int:
    result = session.execute(
        update(RefreshToken)
        .where(condition, RefreshToken.revoked_at.is_(None))  # type: ignore[arg-type]
        .values(revoked_at=now, revoked_reason=reason)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def prune_expired_refresh_tokens(session: Session, now: datetime) -> int:
    """Delete refresh tokens past their expiry (they can no longer be used). Returns how many."""
    result = session.execute(delete(RefreshToken).where(RefreshToken.expires_at < now))
    return int(getattr(result, "rowcount", 0) or 0)


# --- TOTP ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TotpEnrolment:
    secret: str
    provisioning_uri: str


def start_totp_enrolment(session: Session, settings: Settings, user_id: uuid.UUID) -> TotpEnrolment:
    """Generate a new secret for the user. It is not in force until confirmed with a code.

    Enrolling again before confirming replaces the pending secret.
    """
    user = get_user(session, user_id)
    if user.totp_enabled:
        raise TotpAlreadyEnabled("Two-factor authentication is already on; disable it first")
    secret = totp.new_secret()
    user.totp_secret_encrypted = totp.encrypt_secret(settings, secret)
    user.totp_last_step = None
    session.flush()
    return TotpEnrolment(secret=secret, provisioning_uri=totp.provisioning_uri(secret, user.email))


def confirm_totp(
    session: Session, settings: Settings, user_id: uuid.UUID, code: str, *, now: datetime | None = None
) -> None:
    """Turn the second factor on, proving the authenticator app has the secret."""
    user = get_user(session, user_id)
    if user.totp_enabled:
        raise TotpAlreadyEnabled("Two-factor authentication is already on")
    if user.totp_secret_encrypted is None:
        raise TotpNotEnrolled("Start enrolment first")
    now = now or _now()
    _accept_totp_code(session, settings, user, code, now)
    user.totp_confirmed_at = now
    session.flush()
    log.info("totp_enabled", user_id=str(user.id))


def disable_totp(
    session: Session, settings: Settings, user_id: uuid.UUID, code: str, *, now: datetime | None = None
) -> None:
    """Turn the second factor off; needs a current code, so a stolen token cannot."""
    user = get_user(session, user_id)
    if not user.totp_enabled:
        raise TotpNotEnrolled("Two-factor authentication is not on")
    _accept_totp_code(session, settings, user, code, now or _now())
    user.totp_secret_encrypted = None
    user.totp_confirmed_at = None
    user.totp_last_step = None
    session.flush()
    log.info("totp_disabled", user_id=str(user.id))


def verify_totp_if_enrolled(
    session: Session, user_id: uuid.UUID, code: str | None, *, settings: Settings, now: datetime | None = None
) -> bool:
    """For sensitive operations (withdrawals): require a valid code if the user has TOTP on.

    Returns whether a code was required (and accepted). Raises ``totp_required`` or
    ``invalid_totp_code`` otherwise.
    """
    user = get_user(session, user_id)
    if not user.totp_enabled:
        return False
    _accept_totp_code(session, settings, user, code, now or _now())
    return True


def _accept_totp_code(session: Session, settings: Settings, user: User, code: str | None, now: datetime) -> None:
    """Accept a code once: its time step must be newer than the last accepted one.

    The step is recorded with a conditional UPDATE, so the same code sent twice at
    once is accepted only once.
    """
    if not code:
        raise TotpRequired
    if user.totp_secret_encrypted is None:
        raise TotpNotEnrolled("Two-factor authentication is not set up")
    step = totp.matching_step(totp.decrypt_secret(settings, user.totp_secret_encrypted), code, now)
    if step is None:
        raise InvalidTotpCode
    claimed = session.execute(
        update(User)
        .where(User.id == user.id, (User.totp_last_step.is_(None)) | (User.totp_last_step < step))
        .values(totp_last_step=step)
        .execution_options(synchronize_session=False)
    )
    if not getattr(claimed, "rowcount", 0):
        raise InvalidTotpCode
    session.refresh(user, attribute_names=["totp_last_step"])
