"""The password policy and argon2id hashing."""

from __future__ import annotations

import pytest
from argon2 import PasswordHasher

from bourse.errors import BourseError
from bourse.identity.passwords import (
    check_password_policy,
    hash_password,
    hasher_for,
    needs_rehash,
    verify_password,
)
from bourse.identity.service import normalise_email
from bourse.settings import load_settings


@pytest.mark.parametrize(
    ("password", "email", "code"),
    [
        ("elevenchars", "ann@example.com", "password_too_short"),
        ("x" * 1025, "ann@example.com", "password_too_long"),
        ("prefix-ANN@EXAMPLE.COM-suffix", "ann@example.com", "password_contains_email"),
        ("my name is Margaret, hi", "margaret@example.com", "password_contains_email"),
        ("xx bob xx yy zz", "bob@example.com", "password_contains_email"),
    ],
)
def test_policy_refusals(password: str, email: str, code: str) -> None:
    with pytest.raises(BourseError) as refused:
        check_password_policy(password, email)
    assert refused.value.code == code
    assert password not in refused.value.detail


@pytest.mark.parametrize(
    ("password", "email"),
    [
        ("twelve chars", "ann@example.com"),
        ("x" * 1024, "ann@example.com"),
        ("jo and more text", "jo@example.com"),  # a two-letter local part is not a disclosure
        ("pässwörd mit ümläuten", "ann@example.com"),
    ],
)
def test_policy_accepts(password: str, email: str) -> None:
    check_password_policy(password, email)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("  Ann@Example.COM ", "ann@example.com"),
        ("\uff21\uff2e\uff2e@example.com", "ann@example.com"),  # fullwidth "ANN", folded by NFKC
    ],
)
def test_email_normalisation(raw: str, normalised: str) -> None:
    assert normalise_email(raw) == normalised


@pytest.mark.parametrize(
    "raw", ["", "ann", "ann@", "@example.com", "a@b@example.com", "ann@example", "ann@ex..com", "a" * 250 + "@x.com"]
)
def test_invalid_emails(raw: str) -> None:
    with pytest.raises(BourseError) as refused:
        normalise_email(raw)
    assert refused.value.code == "invalid_email"


def test_configured_hasher_is_argon2id_with_the_settings_parameters() -> None:
    settings = load_settings(password_hash_time_cost=2, password_hash_memory_kib=2048, password_hash_parallelism=2)
    hasher = hasher_for(settings)
    stored = hash_password("a password of some length", hasher)
    assert stored.startswith("$argon2id$v=19$m=2048,t=2,p=2$")
    assert verify_password(stored, "a password of some length", hasher)
    assert not verify_password(stored, "another password entirely", hasher)
    assert not verify_password("not a hash", "a password of some length", hasher)
    assert not needs_rehash(stored, hasher)
    assert needs_rehash(stored, hasher_for(load_settings()))
    # The defaults are argon2-cffi's (RFC 9106 low-memory profile).
    assert hasher_for(load_settings()).memory_cost == PasswordHasher().memory_cost == 65536
