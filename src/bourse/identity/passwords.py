"""argon2id password hashing (argon2-cffi) and the password policy.

The cost parameters come from the settings. A stored hash made with other
parameters still verifies, and is replaced at the next successful login
(:func:`needs_rehash`), so raising the cost needs no migration.
"""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError

from bourse.identity.errors import PasswordContainsEmail, PasswordTooLong, PasswordTooShort
from bourse.settings import Settings

MIN_PASSWORD_LENGTH = 12
# Long enough for any passphrase, short enough that hashing cannot be used as a DoS.
MAX_PASSWORD_LENGTH = 1024
# A local part shorter than this is a common substring ("jo"), not a disclosure.
MIN_LOCAL_PART_CHECKED = 3

_DEFAULT_HASHER = PasswordHasher(type=Type.ID)


@lru_cache(maxsize=8)
def _hasher(time_cost: int, memory_kib: int, parallelism: int) -> PasswordHasher:
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, type=Type.ID)


def hasher_for(settings: Settings | None) -> PasswordHasher:
    """The configured argon2id hasher (argon2-cffi's defaults without settings)."""
    if settings is None:
        return _DEFAULT_HASHER
    return _hasher(
        settings.password_hash_time_cost, settings.password_hash_memory_kib, settings.password_hash_parallelism
    )


def check_password_policy(password: str, email: str) -> None:
    """Refuse a password that is too short, too long, or contains the email.

    ``email`` must already be normalised. The check is case-insensitive and looks
    for the whole address and, when it is at least three characters, its local part.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordTooShort(f"The password must be at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise PasswordTooLong(f"The password must be at most {MAX_PASSWORD_LENGTH} characters")
    lowered = password.casefold()
    local = email.split("@", 1)[0].casefold()
    if email.casefold() in lowered or (len(local) >= MIN_LOCAL_PART_CHECKED and local in lowered):
        raise PasswordContainsEmail("The password must not contain the email address")


def hash_password(password: str, hasher: PasswordHasher) -> str:
    return hasher.hash(password)


def verify_password(password_hash: str, password: str, hasher: PasswordHasher) -> bool:
    """Whether ``password`` matches. Never raises for a wrong password or a bad hash."""
    try:
        return hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, hasher: PasswordHasher) -> bool:
    try:
        return hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


# Verified against when the email matches no user, so that a login for an unknown
# account takes as long as one for a known account with a wrong password.
@lru_cache(maxsize=8)
def dummy_hash(hasher: PasswordHasher) -> str:
    return hasher.hash("not a real password, only used to equalise timing")
