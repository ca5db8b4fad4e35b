"""Identity settings: key rotation, lifetimes, throttle limits, production checks."""

from __future__ import annotations

import pytest

from bourse.settings import SettingsError, load_settings

STRONG = "a-real-secret-that-is-long-enough-000"
PRODUCTION = {
    "env": "production",
    "database_url": "postgresql://bourse@db/bourse",
    "jwt_secret": STRONG,
    "psp_api_key": STRONG + "1",
    "psp_secret": STRONG + "2",
    "totp_key": STRONG + "3",
}


def _problems(**overrides: object) -> list[str]:
    with pytest.raises(SettingsError) as refused:
        load_settings(**overrides)
    return refused.value.problems


def test_defaults() -> None:
    settings = load_settings()
    assert settings.access_token_ttl_seconds == 900
    assert (settings.jwt_issuer, settings.jwt_audience, settings.jwt_key_id) == ("bourse", "bourse-api", "k1")
    assert settings.previous_jwt_keys == {}
    assert settings.auth_cache_seconds == 1.0
    assert load_settings(auth_cache_seconds="0").auth_cache_seconds == 0.0  # off


def test_previous_keys_are_parsed_and_validated() -> None:
    settings = load_settings(jwt_previous_keys=" 2025-12:old-secret , 2025-11:older:with:colons ")
    assert settings.previous_jwt_keys == {"2025-12": "old-secret", "2025-11": "older:with:colons"}
    for raw, message in [
        ("no-colon", "entry 1 must be kid:secret"),
        ("a:x,:y", "entry 2 must be kid:secret"),
        ("bad kid!:x", "entry 1 must be kid:secret"),
        ("a:x,a:y", "appears twice"),
        ("k1:x", "names the current BOURSE_JWT_KEY_ID"),
    ]:
        problems = _problems(jwt_previous_keys=raw)
        assert any(message in problem for problem in problems), (raw, problems)


def test_secrets_never_appear_in_errors() -> None:
    problems = _problems(jwt_previous_keys="k1:super-secret-value")
    assert not any("super-secret-value" in problem for problem in problems)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"access_token_ttl_seconds": 30}, "BOURSE_ACCESS_TOKEN_TTL_SECONDS"),
        ({"refresh_token_ttl_seconds": 10}, "BOURSE_REFRESH_TOKEN_TTL_SECONDS"),
        ({"login_max_failures_per_account": 0}, "BOURSE_LOGIN_MAX_FAILURES_PER_ACCOUNT"),
        ({"login_throttle_window_seconds": 0}, "BOURSE_LOGIN_THROTTLE_WINDOW_SECONDS"),
        ({"jwt_key_id": "has space"}, "BOURSE_JWT_KEY_ID"),
        ({"jwt_issuer": ""}, "BOURSE_JWT_ISSUER"),
        ({"password_hash_memory_kib": 8}, "BOURSE_PASSWORD_HASH_MEMORY_KIB"),
        ({"auth_cache_seconds": 1.5}, "BOURSE_AUTH_CACHE_SECONDS"),
        ({"auth_cache_seconds": -0.1}, "BOURSE_AUTH_CACHE_SECONDS"),
    ],
)
def test_invalid_values(overrides: dict[str, object], message: str) -> None:
    assert any(problem.startswith(message) for problem in _problems(**overrides))


def test_production_requires_real_identity_secrets() -> None:
    assert load_settings(**PRODUCTION).env == "production"
    assert any(
        p.startswith("BOURSE_TOTP_KEY: is a known default")
        for p in _problems(**{**PRODUCTION, "totp_key": "dev-only-insecure-totp-key-change-me"})
    )
    assert any(
        p.startswith("BOURSE_TOTP_KEY: must be at least 32") for p in _problems(**{**PRODUCTION, "totp_key": "short"})
    )
    problems = _problems(**{**PRODUCTION, "jwt_previous_keys": "old:tooshort"})
    assert any(p.startswith("BOURSE_JWT_PREVIOUS_KEYS: the key 'old'") for p in problems)
    assert not any("tooshort" in p for p in problems)
