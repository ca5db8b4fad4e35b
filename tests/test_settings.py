"""Unit tests of bourse.settings: sources, precedence, validation, secrecy, describe()."""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from bourse.settings import (
    Settings,
    SettingsError,
    describe,
    env_name,
    is_secret_field,
    load_settings,
    mask_database_url,
    mask_redis_url,
)
from bourse.settings.keyvalue import FileValue, parse_key_value_file
from bourse.settings.model import KNOWN_DEFAULT_SECRETS, MIN_JWT_SECRET_LENGTH
from bourse.settings.names import NON_SETTING_VARIABLES
from bourse.settings.secrets_dirs import read_secrets_dirs
from bourse.settings.urls import normalise_database_url
from tests.support.processes import clean_env, run_bourse
from tests.support.services import TEST_ENV_KEEP

KNOWN = frozenset(env_name(name) for name in Settings.model_fields)
JWT = "jwt-Q7vX2mP9kL4nR8tW1yZ5aB3cD6eF0gH"  # 35 characters, not a known default
PSP_KEY = "psp-key-Hn4Jk8Lm2Pq6Rs0Tv"
PSP_SECRET = "psp-secret-Wx3Yz7Ab1Cd5Ef9Gh"
DB_PASSWORD = "db-pw-Zq8Xw2Ev6Rt4"
REDIS_PASSWORD = "redis-pw-Ui9Op3As7Df1"
TOTP_KEY = "totp-key-Mk5Nb8Vc2Xz6Lq9Wj3Hg7Fd1"  # 33 characters
PG_URL = "postgresql://bourse@db.internal:5432/bourse"
ALL_SECRETS = (JWT, PSP_KEY, PSP_SECRET, DB_PASSWORD, REDIS_PASSWORD, TOTP_KEY)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def use_dirs(monkeypatch: pytest.MonkeyPatch, *dirs: Path) -> None:
    monkeypatch.setenv("BOURSE_SECRETS_DIRS", ",".join(str(d) for d in dirs))


def set_production(monkeypatch: pytest.MonkeyPatch, **overrides: str | None) -> None:
    """A complete, valid production environment; ``None`` removes a variable."""
    values: dict[str, str | None] = {
        "BOURSE_ENV": "production",
        "BOURSE_DATABASE_URL": PG_URL,
        "BOURSE_JWT_SECRET": JWT,
        "BOURSE_PSP_API_KEY": PSP_KEY,
        "BOURSE_PSP_SECRET": PSP_SECRET,
        "BOURSE_TOTP_KEY": TOTP_KEY,
    }
    values.update(overrides)
    for key, value in values.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)


def problems_of(excinfo: pytest.ExceptionInfo[SettingsError]) -> str:
    return "\n".join(excinfo.value.problems)


def full_text(exc: BaseException) -> str:
    """Everything a crash report would show: message, traceback and chained causes."""
    return "".join(traceback.format_exception(exc)) + str(exc) + repr(exc)


# --- Defaults and the environment --------------------------------------------------------


def test_defaults_without_any_configuration() -> None:
    settings = load_settings()
    assert settings.env == "development"
    assert settings.host == "127.0.0.1"
    assert settings.port == 8000
    assert settings.metrics_port is None
    assert settings.redis_url is None
    assert settings.secrets_dirs == ()
    assert settings.is_sqlite
    assert settings.jwt_secret.get_secret_value() == "dev-only-insecure-jwt-secret-change-me"


def test_settings_are_read_with_the_bourse_prefix_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("HOST", "10.0.0.1")
    assert load_settings().port == 8000
    monkeypatch.setenv("BOURSE_PORT", "9002")
    monkeypatch.setenv("BOURSE_HOST", "10.1.2.3")
    settings = load_settings()
    assert settings.port == 9002
    assert settings.host == "10.1.2.3"


@pytest.mark.parametrize("env", ["development", "test"])
def test_non_production_environments_accept_defaults(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("BOURSE_ENV", env)
    assert load_settings().env == env


@pytest.mark.parametrize("env", ["staging", "prod", "Production", ""])
def test_unknown_environment_is_refused(monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    monkeypatch.setenv("BOURSE_ENV", env)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert problems_of(excinfo).startswith("BOURSE_ENV:")


def test_secret_fields_are_secret_str(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_JWT_SECRET", JWT)
    monkeypatch.setenv("BOURSE_DATABASE_PASSWORD", DB_PASSWORD)
    monkeypatch.setenv("BOURSE_REDIS_PASSWORD", REDIS_PASSWORD)
    settings = load_settings()
    assert isinstance(settings.jwt_secret, SecretStr)
    assert isinstance(settings.database_password, SecretStr)
    assert isinstance(settings.redis_password, SecretStr)
    assert settings.jwt_secret.get_secret_value() == JWT
    assert settings.redis_password.get_secret_value() == REDIS_PASSWORD
    secret_fields = {name for name in Settings.model_fields if is_secret_field(name)}
    assert secret_fields == {
        "jwt_secret",
        "jwt_previous_keys",
        "psp_api_key",
        "psp_secret",
        "totp_key",
        "database_password",
        "redis_password",
        "stripe_api_key",
        "stripe_webhook_secret",
    }


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValidationError):
        settings.port = 1  # type: ignore[misc]


def test_secrets_dirs_setting_is_split_on_commas(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    monkeypatch.setenv("BOURSE_SECRETS_DIRS", f" {one} ,, {two},")
    assert load_settings().secrets_dirs == (one, two)


# --- parse_key_value_file -----------------------------------------------------------------


def test_key_value_file_syntax(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bourse.env",
        "\n".join(
            [
                "# rendered by vault agent",  # 1
                "",  # 2
                "BOURSE_JWT_SECRET=plain-value",  # 3
                "   ",  # 4
                "export BOURSE_PSP_API_KEY = 'single quoted'",  # 5
                '  BOURSE_PSP_SECRET="double # not a comment"  ',  # 6
                "BOURSE_DATABASE_PASSWORD=a=b=c",  # 7
                "    # indented comment",  # 8
                "BOURSE_REDIS_PASSWORD=\"unbalanced'",  # 9
                "BOURSE_HOST=",  # 10
                "BOURSE_LOG_LEVEL='it''s'",  # 11
            ]
        ),
    )
    values = parse_key_value_file(path, KNOWN)
    assert values == {
        "BOURSE_JWT_SECRET": FileValue("plain-value", f"{path}:3"),
        "BOURSE_PSP_API_KEY": FileValue("single quoted", f"{path}:5"),
        "BOURSE_PSP_SECRET": FileValue("double # not a comment", f"{path}:6"),
        "BOURSE_DATABASE_PASSWORD": FileValue("a=b=c", f"{path}:7"),
        "BOURSE_REDIS_PASSWORD": FileValue("\"unbalanced'", f"{path}:9"),
        "BOURSE_HOST": FileValue("", f"{path}:10"),
        "BOURSE_LOG_LEVEL": FileValue("it''s", f"{path}:11"),
    }


def test_key_value_file_with_crlf_line_endings(tmp_path: Path) -> None:
    path = tmp_path / "bourse.env"
    path.write_bytes(b"# comment\r\nBOURSE_JWT_SECRET=crlf-value\r\nBOURSE_PSP_SECRET='quoted'\r\n")
    values = parse_key_value_file(path, KNOWN)
    assert values["BOURSE_JWT_SECRET"] == FileValue("crlf-value", f"{path}:2")
    assert values["BOURSE_PSP_SECRET"] == FileValue("quoted", f"{path}:3")


@pytest.mark.parametrize("separator", ["\x0c", "\x1c", "\x85", "\u2028"])
def test_only_newlines_end_a_line(tmp_path: Path, separator: str) -> None:
    """str.splitlines() would cut a secret containing these characters in two."""
    secret = f"left{separator}right"
    path = write(tmp_path / "bourse.env", f"BOURSE_JWT_SECRET={secret}\nBOURSE_PSP_SECRET=next\n")
    values = parse_key_value_file(path, KNOWN)
    assert values["BOURSE_JWT_SECRET"] == FileValue(secret, f"{path}:1")
    assert values["BOURSE_PSP_SECRET"] == FileValue("next", f"{path}:2")


def test_keys_without_the_bourse_prefix_are_ignored(tmp_path: Path) -> None:
    path = write(
        tmp_path / "shared.env",
        "DATABASE_URL=postgresql://other\nOTHER_APP_TOKEN=abc\nexport PATH=/bin\nBOURSE_JWT_SECRET=x\n",
    )
    assert parse_key_value_file(path, KNOWN) == {"BOURSE_JWT_SECRET": FileValue("x", f"{path}:4")}


@pytest.mark.parametrize(
    "line",
    [
        "BOURSE_JWT_SECRET hunter2-Vq9",
        "hunter2-Vq9",
        "=hunter2-Vq9",
        "BOURSE JWT=hunter2-Vq9",
        "1BOURSE_JWT_SECRET=hunter2-Vq9",
        "BOURSE-JWT-SECRET=hunter2-Vq9",
        "export",
    ],
)
def test_malformed_line_names_file_and_line_but_not_value(tmp_path: Path, line: str) -> None:
    path = write(tmp_path / "bourse.env", f"# header\nBOURSE_PSP_SECRET=fine\n{line}\n")
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(path, KNOWN)
    assert excinfo.value.problems == [f"{path}:3: malformed line, expected KEY=VALUE"]
    assert "hunter2-Vq9" not in full_text(excinfo.value)


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bourse.env", "garbage-one-Xy\nBOURSE_JWT_SECRET=ok\nBOURSE_NOPE=value-Zz\ngarbage-two-Xy\n"
    )
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(path, KNOWN)
    assert excinfo.value.problems == [
        f"{path}:1: malformed line, expected KEY=VALUE",
        f"{path}:3: unknown setting BOURSE_NOPE",
        f"{path}:4: malformed line, expected KEY=VALUE",
    ]
    text = full_text(excinfo.value)
    assert "garbage" not in text
    assert "value-Zz" not in text


def test_unknown_bourse_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bourse.env", "BOURSE_JWT_SECRETS=typo-value-Kk3\n")
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(path, KNOWN)
    assert excinfo.value.problems == [f"{path}:1: unknown setting BOURSE_JWT_SECRETS (did you mean BOURSE_JWT_SECRET?)"]
    assert "typo-value-Kk3" not in full_text(excinfo.value)


def test_duplicate_key_in_one_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "bourse.env", "BOURSE_JWT_SECRET=first-Aa1\n\nBOURSE_JWT_SECRET=second-Bb2\n")
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(path, KNOWN)
    assert excinfo.value.problems == [f"{path}:3: BOURSE_JWT_SECRET is set twice (first at {path}:1)"]
    text = full_text(excinfo.value)
    assert "first-Aa1" not in text
    assert "second-Bb2" not in text


def test_non_utf8_file_is_an_error_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "bourse.env"
    path.write_bytes(b"BOURSE_JWT_SECRET=latin1-\xe9t\xe9-Qq7\n")
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(path, KNOWN)
    assert excinfo.value.problems == [f"{path}: not valid UTF-8 text"]
    assert "latin1" not in full_text(excinfo.value)
    assert "Qq7" not in full_text(excinfo.value)


def test_unreadable_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(tmp_path / "missing.env", KNOWN)
    assert excinfo.value.problems[0].startswith(f"{tmp_path / 'missing.env'}: cannot be read")
    a_directory = tmp_path / "a-directory"
    a_directory.mkdir()
    with pytest.raises(SettingsError) as excinfo:
        parse_key_value_file(a_directory, KNOWN)
    assert excinfo.value.problems[0].startswith(f"{a_directory}: cannot be read")


# --- read_secrets_dirs --------------------------------------------------------------------


def test_per_key_files_kubernetes_style(tmp_path: Path) -> None:
    write(tmp_path / "BOURSE_JWT_SECRET", f"{JWT}\n")
    write(tmp_path / "BOURSE_PSP_SECRET", f"  {PSP_SECRET}  \r\n")
    values = read_secrets_dirs([tmp_path], KNOWN)
    # Only the trailing newline is removed; the origin is the file, without a line.
    assert values == {
        "BOURSE_JWT_SECRET": FileValue(JWT, str(tmp_path / "BOURSE_JWT_SECRET")),
        "BOURSE_PSP_SECRET": FileValue(f"  {PSP_SECRET}  ", str(tmp_path / "BOURSE_PSP_SECRET")),
    }


def test_kubernetes_secret_volume_layout(tmp_path: Path) -> None:
    """Files are symlinks into a timestamped "..data" directory, which is never parsed itself."""
    real = tmp_path / "..2024_05_01_10_00_00.123"
    write(real / "BOURSE_JWT_SECRET", JWT)
    write(real / "README", "this is not KEY=VALUE text at all")
    (tmp_path / "..data").symlink_to(real.name)
    (tmp_path / "BOURSE_JWT_SECRET").symlink_to("..data/BOURSE_JWT_SECRET")
    write(tmp_path / ".hidden", "not key value")
    (tmp_path / "subdirectory").mkdir()
    write(tmp_path / "subdirectory" / "junk", "not key value")
    values = read_secrets_dirs([tmp_path], KNOWN)
    assert values == {"BOURSE_JWT_SECRET": FileValue(JWT, str(tmp_path / "BOURSE_JWT_SECRET"))}


@pytest.mark.parametrize("kv_name", ["00-first.env", "zz-last.env"])
def test_per_key_file_wins_over_key_value_line_in_the_same_dir(tmp_path: Path, kv_name: str) -> None:
    write(tmp_path / kv_name, "BOURSE_JWT_SECRET=from-key-value\nBOURSE_PSP_SECRET=only-in-key-value\n")
    write(tmp_path / "BOURSE_JWT_SECRET", "from-per-key-file\n")
    values = read_secrets_dirs([tmp_path], KNOWN)
    assert values["BOURSE_JWT_SECRET"] == FileValue("from-per-key-file", str(tmp_path / "BOURSE_JWT_SECRET"))
    assert values["BOURSE_PSP_SECRET"] == FileValue("only-in-key-value", f"{tmp_path / kv_name}:2")


def test_first_dir_wins_for_key_value_files(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "a.env", "BOURSE_JWT_SECRET=from-first\n")
    write(second / "a.env", "BOURSE_JWT_SECRET=from-second\nBOURSE_PSP_SECRET=second-only\n")
    values = read_secrets_dirs([first, second], KNOWN)
    assert values["BOURSE_JWT_SECRET"] == FileValue("from-first", f"{first / 'a.env'}:1")
    assert values["BOURSE_PSP_SECRET"] == FileValue("second-only", f"{second / 'a.env'}:2")
    assert read_secrets_dirs([second, first], KNOWN)["BOURSE_JWT_SECRET"].value == "from-second"


def test_first_dir_wins_for_per_key_files(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "BOURSE_JWT_SECRET", "from-first")
    write(second / "BOURSE_JWT_SECRET", "from-second")
    assert read_secrets_dirs([first, second], KNOWN)["BOURSE_JWT_SECRET"].value == "from-first"
    assert read_secrets_dirs([second, first], KNOWN)["BOURSE_JWT_SECRET"].value == "from-second"


def test_first_dir_wins_across_layouts(tmp_path: Path) -> None:
    """Directory order comes first; the per-key rule applies inside one directory."""
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "vault.env", "BOURSE_JWT_SECRET=first-key-value\n")
    write(second / "BOURSE_JWT_SECRET", "second-per-key")
    assert read_secrets_dirs([first, second], KNOWN)["BOURSE_JWT_SECRET"] == FileValue(
        "first-key-value", f"{first / 'vault.env'}:1"
    )
    assert read_secrets_dirs([second, first], KNOWN)["BOURSE_JWT_SECRET"] == FileValue(
        "second-per-key", str(second / "BOURSE_JWT_SECRET")
    )


def test_missing_secrets_dir_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    a_file = write(tmp_path / "a-file", "BOURSE_JWT_SECRET=x\n")
    with pytest.raises(SettingsError) as excinfo:
        read_secrets_dirs([missing, a_file], KNOWN)
    assert excinfo.value.problems == [
        f"BOURSE_SECRETS_DIRS: {missing} is not a directory",
        f"BOURSE_SECRETS_DIRS: {a_file} is not a directory",
    ]


def test_unknown_per_key_file_is_an_error(tmp_path: Path) -> None:
    write(tmp_path / "BOURSE_JWT_SECRETT", "typo-value-Rr5")
    with pytest.raises(SettingsError) as excinfo:
        read_secrets_dirs([tmp_path], KNOWN)
    assert excinfo.value.problems == [
        f"{tmp_path / 'BOURSE_JWT_SECRETT'}: unknown setting BOURSE_JWT_SECRETT (did you mean BOURSE_JWT_SECRET?)"
    ]
    assert "typo-value-Rr5" not in full_text(excinfo.value)


def test_non_utf8_per_key_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "BOURSE_JWT_SECRET").write_bytes(b"bin-\xff\xfe-Ww4")
    with pytest.raises(SettingsError) as excinfo:
        read_secrets_dirs([tmp_path], KNOWN)
    assert excinfo.value.problems == [f"{tmp_path / 'BOURSE_JWT_SECRET'}: cannot be read as UTF-8 text"]
    assert "Ww4" not in full_text(excinfo.value)


def test_problems_from_every_dir_and_file_are_collected(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    write(first / "a.env", "oops-Aa\nBOURSE_PORT=1\n")
    write(first / "b.env", "BOURSE_JWT_SECRET=ok\nBOURSE_UNKNOWN=x\n")
    write(second / "BOURSE_WHAT", "x")
    with pytest.raises(SettingsError) as excinfo:
        read_secrets_dirs([first, tmp_path / "missing", second], KNOWN)
    assert excinfo.value.problems == [
        f"{first / 'a.env'}:1: malformed line, expected KEY=VALUE",
        f"{first / 'b.env'}:2: unknown setting BOURSE_UNKNOWN",
        f"BOURSE_SECRETS_DIRS: {tmp_path / 'missing'} is not a directory",
        f"{second / 'BOURSE_WHAT'}: unknown setting BOURSE_WHAT",
    ]


def test_no_dirs_no_values() -> None:
    assert read_secrets_dirs([], KNOWN) == {}


# --- load_settings: precedence --------------------------------------------------------------


def test_secrets_dir_values_are_loaded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "vault.env", f"BOURSE_JWT_SECRET={JWT}\nBOURSE_PORT=9100\nBOURSE_LOG_LEVEL=debug\n")
    write(tmp_path / "BOURSE_PSP_SECRET", PSP_SECRET)
    use_dirs(monkeypatch, tmp_path)
    settings = load_settings()
    assert settings.jwt_secret.get_secret_value() == JWT
    assert settings.psp_secret.get_secret_value() == PSP_SECRET
    assert settings.port == 9100
    assert settings.log_level == "debug"


def test_env_wins_over_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "vault.env", "BOURSE_PSP_API_KEY=from-key-value\nBOURSE_PORT=9100\n")
    write(tmp_path / "BOURSE_JWT_SECRET", "from-per-key-file")
    use_dirs(monkeypatch, tmp_path)
    monkeypatch.setenv("BOURSE_JWT_SECRET", "from-env-1")
    monkeypatch.setenv("BOURSE_PSP_API_KEY", "from-env-2")
    monkeypatch.setenv("BOURSE_PORT", "9200")
    settings = load_settings()
    assert settings.jwt_secret.get_secret_value() == "from-env-1"
    assert settings.psp_api_key.get_secret_value() == "from-env-2"
    assert settings.port == 9200


def test_full_precedence_chain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """argument > env > per-key file > KEY=VALUE file > default, one setting at each level."""
    write(
        tmp_path / "vault.env",
        "BOURSE_HOST=kv-host\nBOURSE_LOG_FORMAT=console\nBOURSE_LOG_LEVEL=debug\nBOURSE_PORT=9001\n",
    )
    write(tmp_path / "BOURSE_LOG_FORMAT", "json")  # per-key beats key-value
    write(tmp_path / "BOURSE_LOG_LEVEL", "warning")  # per-key, but env beats it
    use_dirs(monkeypatch, tmp_path)
    monkeypatch.setenv("BOURSE_LOG_LEVEL", "error")
    monkeypatch.setenv("BOURSE_PORT", "9002")
    settings = load_settings(port=9003)
    assert settings.port == 9003  # argument
    assert settings.log_level == "error"  # env
    assert settings.log_format == "json"  # per-key file
    assert settings.host == "kv-host"  # key-value file
    assert settings.max_body_bytes == 1024 * 1024  # default


def test_invalid_value_from_a_file_names_the_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "vault.env", "BOURSE_PORT=not-a-port-Mm\n")
    use_dirs(monkeypatch, tmp_path)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert problems_of(excinfo).startswith("BOURSE_PORT:")
    assert "not-a-port-Mm" not in full_text(excinfo.value)


def test_bad_secrets_file_stops_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "vault.env", f"BOURSE_JWT_SECRET {JWT}\n")
    use_dirs(monkeypatch, tmp_path)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"{tmp_path / 'vault.env'}:1: malformed line, expected KEY=VALUE"]
    assert JWT not in full_text(excinfo.value)


def test_missing_secrets_dir_stops_loading(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_dirs(monkeypatch, tmp_path / "nope")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"BOURSE_SECRETS_DIRS: {tmp_path / 'nope'} is not a directory"]
    assert (
        str(excinfo.value) == f"invalid configuration:\n  - BOURSE_SECRETS_DIRS: {tmp_path / 'nope'} is not a directory"
    )


# --- Database URL ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "driver"),
    [
        ("postgresql://u@h:5432/db", "postgresql+psycopg"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg"),
        ("postgresql+asyncpg://u@h/db", "postgresql+psycopg"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg"),
        ("sqlite:///./var/bourse.db", "sqlite+pysqlite"),
        ("sqlite://", "sqlite+pysqlite"),
        ("sqlite+pysqlite:////abs/path.db", "sqlite+pysqlite"),
    ],
)
def test_database_url_driver_is_pinned(monkeypatch: pytest.MonkeyPatch, raw: str, driver: str) -> None:
    assert normalise_database_url(raw).drivername == driver
    monkeypatch.setenv("BOURSE_DATABASE_URL", raw)
    settings = load_settings()
    assert settings.database_url == raw
    assert settings.database.drivername == driver
    assert settings.is_sqlite == driver.startswith("sqlite")


def test_database_url_keeps_its_other_parts() -> None:
    url = normalise_database_url("postgresql://alice:pw@db.example:6543/trading?sslmode=require")
    assert (url.username, url.password, url.host, url.port, url.database) == (
        "alice",
        "pw",
        "db.example",
        6543,
        "trading",
    )
    assert dict(url.query) == {"sslmode": "require"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("mysql://u:pw@h/db", "must be a sqlite:// or postgresql:// URL"),
        ("mysql+pymysql://u@h/db", "must be a sqlite:// or postgresql:// URL"),
        ("postgres://u@h/db", "must be a sqlite:// or postgresql:// URL"),
        ("oracle://u@h/db", "must be a sqlite:// or postgresql:// URL"),
        ("notaurl", "is not a valid database URL"),
        ("", "is not a valid database URL"),
        ("postgresql://u@h:notaport/db", "is not a valid database URL"),
    ],
)
def test_unsupported_database_url_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalise_database_url(raw)
    monkeypatch.setenv("BOURSE_DATABASE_URL", raw)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"BOURSE_DATABASE_URL: {message}"]


def test_database_password_is_applied_to_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_DATABASE_URL", "postgresql://bourse@db:5432/bourse")
    monkeypatch.setenv("BOURSE_DATABASE_PASSWORD", DB_PASSWORD)
    settings = load_settings()
    assert settings.database.password == DB_PASSWORD
    assert settings.database.username == "bourse"
    assert settings.database.drivername == "postgresql+psycopg"
    assert DB_PASSWORD not in settings.database_url


def test_database_password_replaces_a_password_in_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_DATABASE_URL", "postgresql://bourse:old-password@db/bourse")
    monkeypatch.setenv("BOURSE_DATABASE_PASSWORD", DB_PASSWORD)
    assert load_settings().database.password == DB_PASSWORD


def test_database_password_from_a_secrets_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "BOURSE_DATABASE_PASSWORD", f"{DB_PASSWORD}\n")
    use_dirs(monkeypatch, tmp_path)
    monkeypatch.setenv("BOURSE_DATABASE_URL", "postgresql://bourse@db/bourse")
    assert load_settings().database.password == DB_PASSWORD


def test_without_database_password_the_url_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_DATABASE_URL", "postgresql://bourse:in-url@db/bourse")
    assert load_settings().database.password == "in-url"


# --- Other validation -----------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["redis://localhost:6379/0", "rediss://:pw@cache:6380/1", "unix:///run/redis.sock"])
def test_redis_url_accepted(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BOURSE_REDIS_URL", raw)
    assert load_settings().redis_url == raw


def test_empty_redis_url_means_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_REDIS_URL", "")
    assert load_settings().redis_url is None


@pytest.mark.parametrize("raw", ["http://cache:6379", "localhost:6379", "redis:/cache", "memcached://x"])
def test_bad_redis_url_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BOURSE_REDIS_URL", raw)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["BOURSE_REDIS_URL: must be a redis://, rediss:// or unix:// URL"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BOURSE_PORT", "abc"),
        ("BOURSE_PORT", "0"),
        ("BOURSE_PORT", "65536"),
        ("BOURSE_PORT", "-80"),
        ("BOURSE_PORT", "80.5"),
        ("BOURSE_METRICS_PORT", "70000"),
        ("BOURSE_HOST", ""),
        ("BOURSE_DATABASE_POOL_SIZE", "0"),
        ("BOURSE_DATABASE_MAX_OVERFLOW", "-1"),
        ("BOURSE_DATABASE_CONNECT_TIMEOUT_SECONDS", "-1"),
        ("BOURSE_DATABASE_CONNECT_TIMEOUT_SECONDS", "inf"),
        ("BOURSE_DATABASE_LOCK_TIMEOUT_MS", "0"),
        ("BOURSE_SQLITE_BUSY_TIMEOUT_MS", "-5"),
        ("BOURSE_READINESS_TIMEOUT_SECONDS", "0"),
        ("BOURSE_READINESS_TIMEOUT_SECONDS", "nan"),
        ("BOURSE_SHUTDOWN_DRAIN_SECONDS", "-0.5"),
        ("BOURSE_SHUTDOWN_DRAIN_SECONDS", "inf"),
        ("BOURSE_SHUTDOWN_TIMEOUT_SECONDS", "-1"),
        ("BOURSE_SHUTDOWN_TIMEOUT_SECONDS", "0"),
        ("BOURSE_MAX_BODY_BYTES", "lots"),
        ("BOURSE_LOG_LEVEL", "verbose"),
        ("BOURSE_LOG_FORMAT", "xml"),
    ],
)
def test_invalid_value_names_the_setting(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert len(excinfo.value.problems) == 1
    assert excinfo.value.problems[0].startswith(f"{key}: ")
    assert str(excinfo.value).startswith("invalid configuration:\n  - ")


def test_boundary_values_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_PORT", "65535")
    monkeypatch.setenv("BOURSE_METRICS_PORT", "1")
    monkeypatch.setenv("BOURSE_SHUTDOWN_DRAIN_SECONDS", "0")
    monkeypatch.setenv("BOURSE_DATABASE_MAX_OVERFLOW", "0")
    monkeypatch.setenv("BOURSE_READINESS_TIMEOUT_SECONDS", "0.25")
    settings = load_settings()
    assert (settings.port, settings.metrics_port) == (65535, 1)
    assert settings.shutdown_drain_seconds == 0
    assert settings.database_max_overflow == 0
    assert settings.readiness_timeout_seconds == 0.25


def test_every_invalid_setting_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_PORT", "abc")
    monkeypatch.setenv("BOURSE_SHUTDOWN_TIMEOUT_SECONDS", "-1")
    monkeypatch.setenv("BOURSE_DATABASE_URL", "notaurl")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    names = sorted(problem.split(":")[0] for problem in excinfo.value.problems)
    assert names == ["BOURSE_DATABASE_URL", "BOURSE_PORT", "BOURSE_SHUTDOWN_TIMEOUT_SECONDS"]


# --- Production checks ----------------------------------------------------------------------


def test_complete_production_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch)
    settings = load_settings()
    assert settings.env == "production"
    assert settings.jwt_secret.get_secret_value() == JWT


def test_production_from_a_vault_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(
        tmp_path / "bourse.env",
        f"BOURSE_JWT_SECRET={JWT}\nBOURSE_PSP_API_KEY={PSP_KEY}\nBOURSE_PSP_SECRET={PSP_SECRET}\n",
    )
    set_production(monkeypatch, BOURSE_JWT_SECRET=None, BOURSE_PSP_API_KEY=None, BOURSE_PSP_SECRET=None)
    use_dirs(monkeypatch, tmp_path)
    assert load_settings().psp_secret.get_secret_value() == PSP_SECRET


@pytest.mark.parametrize("key", ["BOURSE_JWT_SECRET", "BOURSE_PSP_API_KEY", "BOURSE_PSP_SECRET"])
def test_production_refuses_a_missing_secret(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    set_production(monkeypatch, **{key: None})
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"{key}: is a known default value, set a real secret in production"]


@pytest.mark.parametrize("key", ["BOURSE_JWT_SECRET", "BOURSE_PSP_API_KEY", "BOURSE_PSP_SECRET"])
@pytest.mark.parametrize("empty", ["", "   ", "\t"])
def test_production_refuses_an_empty_secret(monkeypatch: pytest.MonkeyPatch, key: str, empty: str) -> None:
    set_production(monkeypatch, **{key: empty})
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"{key}: is missing or empty, required in production"]


def test_production_refuses_an_empty_secret_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "BOURSE_PSP_SECRET", "\n")
    set_production(monkeypatch, BOURSE_PSP_SECRET=None)
    use_dirs(monkeypatch, tmp_path)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["BOURSE_PSP_SECRET: is missing or empty, required in production"]


@pytest.mark.parametrize("default", sorted(KNOWN_DEFAULT_SECRETS))
@pytest.mark.parametrize("key", ["BOURSE_PSP_API_KEY", "BOURSE_PSP_SECRET"])
def test_production_refuses_known_defaults(monkeypatch: pytest.MonkeyPatch, key: str, default: str) -> None:
    set_production(monkeypatch, **{key: default})
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"{key}: is a known default value, set a real secret in production"]


@pytest.mark.parametrize("variant", ["ChangeMe", " password ", "SECRET", "Dev-Only-Psp-Sim-Api-Key"])
def test_known_defaults_are_matched_ignoring_case_and_spaces(monkeypatch: pytest.MonkeyPatch, variant: str) -> None:
    set_production(monkeypatch, BOURSE_PSP_API_KEY=variant)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["BOURSE_PSP_API_KEY: is a known default value, set a real secret in production"]


def test_production_refuses_the_default_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch, BOURSE_JWT_SECRET="dev-only-insecure-jwt-secret-change-me")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert "BOURSE_JWT_SECRET: is a known default value, set a real secret in production" in excinfo.value.problems
    assert "dev-only-insecure" not in full_text(excinfo.value)


def test_production_refuses_a_short_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    short = "Yq" + "s" * (MIN_JWT_SECRET_LENGTH - 3)  # one character too short
    set_production(monkeypatch, BOURSE_JWT_SECRET=short)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [
        f"BOURSE_JWT_SECRET: must be at least {MIN_JWT_SECRET_LENGTH} characters in production"
    ]
    assert short not in full_text(excinfo.value)
    set_production(monkeypatch, BOURSE_JWT_SECRET=short + "Z")
    assert len(load_settings().jwt_secret.get_secret_value()) == MIN_JWT_SECRET_LENGTH


def test_short_jwt_secret_is_fine_outside_production(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_JWT_SECRET", "short")
    assert load_settings().jwt_secret.get_secret_value() == "short"


@pytest.mark.parametrize("url", ["sqlite:///./var/bourse.db", "sqlite://", None])
def test_production_refuses_sqlite(monkeypatch: pytest.MonkeyPatch, url: str | None) -> None:
    set_production(monkeypatch, BOURSE_DATABASE_URL=url)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["BOURSE_DATABASE_URL: production requires PostgreSQL"]


def test_production_reports_every_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_ENV", "production")
    monkeypatch.setenv("BOURSE_PSP_SECRET", "")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [
        "BOURSE_JWT_SECRET: is a known default value, set a real secret in production",
        "BOURSE_PSP_API_KEY: is a known default value, set a real secret in production",
        "BOURSE_PSP_SECRET: is missing or empty, required in production",
        "BOURSE_TOTP_KEY: is a known default value, set a real secret in production",
        "BOURSE_DATABASE_URL: production requires PostgreSQL",
    ]


# --- Secrets never leak ---------------------------------------------------------------------


def test_repr_and_str_never_contain_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch)
    monkeypatch.setenv("BOURSE_DATABASE_URL", f"postgresql://bourse:{DB_PASSWORD}@db/bourse")
    monkeypatch.setenv("BOURSE_REDIS_URL", f"redis://:{REDIS_PASSWORD}@cache:6379/0")
    monkeypatch.setenv("BOURSE_DATABASE_PASSWORD", DB_PASSWORD)
    monkeypatch.setenv("BOURSE_REDIS_PASSWORD", REDIS_PASSWORD)
    settings = load_settings()
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        for secret in ALL_SECRETS:
            assert secret not in text
        assert "jwt_secret=SecretStr('**********')" in text
        assert "cache:6379" in text  # the URLs are still shown, only their passwords hidden
    for name in ("jwt_secret", "psp_api_key", "psp_secret", "database_password", "redis_password"):
        value = getattr(settings, name)
        assert str(value) == "**********"
        assert all(secret not in repr(value) for secret in ALL_SECRETS)


def test_repr_masks_passwords_in_url_query(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_DATABASE_URL", f"postgresql://bourse@db/bourse?password={DB_PASSWORD}")
    monkeypatch.setenv("BOURSE_REDIS_URL", f"unix:///run/redis.sock?db=0&password={REDIS_PASSWORD}")
    text = repr(load_settings())
    assert DB_PASSWORD not in text
    assert REDIS_PASSWORD not in text
    assert "unix:///run/redis.sock?db=0&password=" in text


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("BOURSE_DATABASE_URL", f"mysql://bourse:{DB_PASSWORD}@db/bourse"),
        ("BOURSE_DATABASE_URL", f"postgresql://bourse:x@db:{DB_PASSWORD}/bourse"),
        ("BOURSE_DATABASE_URL", f"not a url {DB_PASSWORD}"),
        ("BOURSE_REDIS_URL", f"http://:{REDIS_PASSWORD}@cache:6379"),
        ("BOURSE_PORT", f"{JWT}"),
        ("BOURSE_ENV", f"{JWT}"),
        ("BOURSE_LOG_LEVEL", f"{JWT}"),
        ("BOURSE_SHUTDOWN_DRAIN_SECONDS", f"{JWT}"),
    ],
)
def test_validation_errors_never_contain_the_input(monkeypatch: pytest.MonkeyPatch, key: str, value: str) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems[0].startswith(f"{key}: ")
    text = full_text(excinfo.value)
    for secret in ALL_SECRETS:
        assert secret not in text


def test_production_errors_never_contain_secret_values(monkeypatch: pytest.MonkeyPatch) -> None:
    short_jwt = "short-jwt-Pp0Oo9"
    set_production(
        monkeypatch,
        BOURSE_JWT_SECRET=short_jwt,
        BOURSE_DATABASE_URL=f"sqlite:///{DB_PASSWORD}.db",
        BOURSE_DATABASE_PASSWORD=DB_PASSWORD,
        BOURSE_REDIS_PASSWORD=REDIS_PASSWORD,
    )
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    text = full_text(excinfo.value)
    assert "BOURSE_JWT_SECRET" in text
    assert "BOURSE_DATABASE_URL" in text
    for secret in (short_jwt, *ALL_SECRETS):
        assert secret not in text


def test_settings_constructor_errors_hide_inputs() -> None:
    """Settings(...) called directly (not through load_settings) must not quote inputs either."""
    with pytest.raises(ValidationError) as excinfo:
        Settings(
            env="production",
            jwt_secret="short-jwt-Pp0Oo9",
            psp_api_key=PSP_KEY,
            psp_secret=PSP_SECRET,
            database_url=f"postgresql://bourse:{DB_PASSWORD}@db/bourse",
        )
    text = str(excinfo.value) + repr(excinfo.value)
    for secret in ("short-jwt-Pp0Oo9", PSP_KEY, PSP_SECRET, DB_PASSWORD):
        assert secret not in text
    with pytest.raises(ValidationError) as excinfo:
        Settings(database_url=f"mysql://bourse:{DB_PASSWORD}@db/bourse")
    assert DB_PASSWORD not in str(excinfo.value)


def test_file_errors_never_contain_secret_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(
        tmp_path / "vault.env",
        f"BOURSE_JWT_SECRET={JWT}\n{PSP_KEY}\nBOURSE_JWT_SECRET={JWT}\nBOURSE_PSP_SECRETS={PSP_SECRET}\n",
    )
    (tmp_path / "BOURSE_REDIS_PASSWORD").write_bytes(REDIS_PASSWORD.encode() + b"\xff")
    use_dirs(monkeypatch, tmp_path)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert len(excinfo.value.problems) == 4
    text = full_text(excinfo.value)
    for secret in ALL_SECRETS:
        assert secret not in text


# --- describe -------------------------------------------------------------------------------


def rows_by_name(settings: Settings) -> dict[str, tuple[str, str, bool]]:
    return {row.name: (row.value, row.source, row.secret) for row in describe(settings)}


def test_describe_lists_every_setting_once() -> None:
    rows = describe(load_settings())
    assert [row.name for row in rows] == [env_name(name) for name in Settings.model_fields]
    assert {row.name for row in rows if row.secret} == {
        "BOURSE_JWT_SECRET",
        "BOURSE_PSP_API_KEY",
        "BOURSE_PSP_SECRET",
        "BOURSE_DATABASE_PASSWORD",
        "BOURSE_REDIS_PASSWORD",
        "BOURSE_JWT_PREVIOUS_KEYS",
        "BOURSE_TOTP_KEY",
        "BOURSE_STRIPE_API_KEY",
        "BOURSE_STRIPE_WEBHOOK_SECRET",
    }


def test_describe_defaults() -> None:
    rows = rows_by_name(load_settings())
    assert rows["BOURSE_PORT"] == ("8000", "default", False)
    assert rows["BOURSE_DATABASE_URL"] == ("sqlite:///./var/bourse.db", "default", False)
    assert rows["BOURSE_METRICS_PORT"] == ("", "default", False)
    assert rows["BOURSE_REDIS_URL"] == ("", "default", False)
    assert rows["BOURSE_DATABASE_PASSWORD"] == ("", "default", True)
    # Even a default secret is masked.
    assert rows["BOURSE_JWT_SECRET"] == ("********", "default", True)


def test_describe_sources_and_masking(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    vault = write(first / "vault.env", f"# vault\nBOURSE_PSP_API_KEY={PSP_KEY}\nBOURSE_LOG_LEVEL=debug\n")
    write(first / "BOURSE_PSP_SECRET", PSP_SECRET)
    write(second / "BOURSE_REDIS_PASSWORD", REDIS_PASSWORD)
    write(second / "other.env", "BOURSE_PSP_API_KEY=shadowed-by-first-dir\n")
    use_dirs(monkeypatch, first, second)
    monkeypatch.setenv("BOURSE_JWT_SECRET", JWT)
    monkeypatch.setenv("BOURSE_PORT", "9100")
    settings = load_settings()
    rows = rows_by_name(settings)
    assert rows["BOURSE_JWT_SECRET"] == ("********", "env", True)
    assert rows["BOURSE_PORT"] == ("9100", "env", False)
    assert rows["BOURSE_PSP_API_KEY"] == ("********", f"file {vault}:2", True)
    assert rows["BOURSE_LOG_LEVEL"] == ("debug", f"file {vault}:3", False)
    assert rows["BOURSE_PSP_SECRET"] == ("********", f"file {first / 'BOURSE_PSP_SECRET'}", True)
    assert rows["BOURSE_REDIS_PASSWORD"] == ("********", f"file {second / 'BOURSE_REDIS_PASSWORD'}", True)
    assert rows["BOURSE_SECRETS_DIRS"] == (f"{first},{second}", "env", False)
    assert rows["BOURSE_HOST"] == ("127.0.0.1", "default", False)
    dump = repr(describe(settings))
    for secret in ALL_SECRETS:
        assert secret not in dump


def test_describe_masks_passwords_inside_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_DATABASE_URL", f"postgresql://bourse:{DB_PASSWORD}@db:5432/bourse")
    monkeypatch.setenv("BOURSE_REDIS_URL", f"redis://default:{REDIS_PASSWORD}@cache:6379/0")
    rows = rows_by_name(load_settings())
    assert rows["BOURSE_DATABASE_URL"] == ("postgresql://bourse:***@db:5432/bourse", "env", False)
    assert rows["BOURSE_REDIS_URL"] == ("redis://default:********@cache:6379/0", "env", False)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("redis://cache:6379/0", "redis://cache:6379/0"),
        ("redis://:p@ss-Ee4@cache:6379", "redis://:********@cache:6379"),
        ("rediss://user:pw-Ee4@cache?ssl_cert_reqs=none", "rediss://user:********@cache?ssl_cert_reqs=none"),
        ("unix:///run/redis.sock?db=1&password=pw-Ee4", "unix:///run/redis.sock?db=1&password=********"),
        ("redis://cache?PASSWORD=pw-Ee4&db=2", "redis://cache?PASSWORD=********&db=2"),
    ],
)
def test_mask_redis_url(raw: str, shown: str) -> None:
    assert mask_redis_url(raw) == shown


def test_mask_database_url() -> None:
    assert mask_database_url("sqlite:///./var/bourse.db") == "sqlite:///./var/bourse.db"
    shown = mask_database_url("postgresql://u:pw-Ee4@h/db?password=pw-Ff5&sslmode=require")
    assert "pw-Ee4" not in shown
    assert "pw-Ff5" not in shown
    assert shown.startswith("postgresql://u:***@h/db?")
    assert "sslmode=require" in shown


def test_describe_names_an_argument_source() -> None:
    rows = rows_by_name(load_settings(port=9300))
    assert rows["BOURSE_PORT"] == ("9300", "argument", False)


def test_describe_matches_env_names_case_insensitively(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("bourse_port", "9400")
    settings = load_settings()
    assert settings.port == 9400
    assert rows_by_name(settings)["BOURSE_PORT"] == ("9400", "env", False)


def test_describe_fails_cleanly_when_files_turn_bad(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "vault.env", f"BOURSE_JWT_SECRET={JWT}\n")
    use_dirs(monkeypatch, tmp_path)
    settings = load_settings()
    path.write_text(f"export BOURSE_JWT_SECRET {JWT}\n", encoding="utf-8")
    with pytest.raises(SettingsError) as excinfo:
        describe(settings)
    assert excinfo.value.problems == [f"{path}:1: malformed line, expected KEY=VALUE"]
    assert JWT not in full_text(excinfo.value)


def test_other_consumers_files_in_a_secrets_dir_are_left_alone(tmp_path: Path) -> None:
    """A Secret volume may also hold a certificate, a keystore or another app's env file."""
    write(tmp_path / "tls.crt", "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n")
    (tmp_path / "keystore.p12").write_bytes(b"\x30\x82\xff\xfe\x00\x01binary")
    write(tmp_path / "db", "DB_HOST=db.internal\nDB_PASSWORD=other-apps-secret\n")
    write(tmp_path / "bourse.env", f"# rendered by the Vault agent\nexport BOURSE_JWT_SECRET={JWT}\n")
    found = read_secrets_dirs([tmp_path], KNOWN)
    assert set(found) == {"BOURSE_JWT_SECRET"}
    assert found["BOURSE_JWT_SECRET"].value == JWT
    assert found["BOURSE_JWT_SECRET"].origin == f"{tmp_path / 'bourse.env'}:2"


def test_the_readme_documents_every_setting() -> None:
    """The configuration table in README.md names every setting, so it cannot fall behind."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    documented = set(re.findall(r"^\| `(BOURSE_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert {env_name(name) for name in Settings.model_fields} - documented == set()


# --- Unknown BOURSE_ names in the environment (docs/decisions/0015) -------------------------


def test_an_unknown_bourse_variable_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_JWT_SECRETT", "typo-value-Qq7")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [
        "environment: unknown setting BOURSE_JWT_SECRETT (did you mean BOURSE_JWT_SECRET?)"
    ]
    assert "typo-value-Qq7" not in full_text(excinfo.value)


def test_every_unknown_variable_is_named_with_a_hint_only_where_one_is_close(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOURSE_ZZZ_QQQ", "1")
    monkeypatch.setenv("BOURSE_LOG_LEVL", "debug")
    monkeypatch.setenv("BOURSE_DATABASE_UR", "sqlite:///x.db")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [
        "environment: unknown setting BOURSE_DATABASE_UR (did you mean BOURSE_DATABASE_URL?)",
        "environment: unknown setting BOURSE_LOG_LEVL (did you mean BOURSE_LOG_LEVEL?)",
        "environment: unknown setting BOURSE_ZZZ_QQQ",
    ]


def test_environment_names_are_matched_case_insensitively_like_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("bourse_log_level", "debug")
    assert load_settings().log_level == "debug"
    monkeypatch.setenv("Bourse_Log_Levl", "debug")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["environment: unknown setting Bourse_Log_Levl (did you mean BOURSE_LOG_LEVEL?)"]


def test_the_test_suites_own_variables_are_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # What the suite keeps in the environment of every test must never stop a Settings().
    assert set(NON_SETTING_VARIABLES) >= TEST_ENV_KEEP
    for name in NON_SETTING_VARIABLES:
        monkeypatch.setenv(name, "1")
    assert load_settings().port == 8000


def test_the_allow_list_is_documented() -> None:
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    [record] = (root / "docs" / "decisions").glob("0015-*.md")
    for name in NON_SETTING_VARIABLES:
        assert f"`{name}`" in readme
        assert f"`{name}`" in record.read_text()
    assert not set(NON_SETTING_VARIABLES) & KNOWN


KUBERNETES_SERVICE_LINKS = {
    # What the kubelet injects for a Service "bourse-api" with a port named "http" on 8000.
    "BOURSE_API_SERVICE_HOST": "10.96.14.2",
    "BOURSE_API_SERVICE_PORT": "8000",
    "BOURSE_API_SERVICE_PORT_HTTP": "8000",
    "BOURSE_API_PORT": "tcp://10.96.14.2:8000",
    "BOURSE_API_PORT_8000_TCP": "tcp://10.96.14.2:8000",
    "BOURSE_API_PORT_8000_TCP_PROTO": "tcp",
    "BOURSE_API_PORT_8000_TCP_PORT": "8000",
    "BOURSE_API_PORT_8000_TCP_ADDR": "10.96.14.2",
    # An IPv6 cluster, and a Service named "bourse-redis".
    "BOURSE_REDIS_SERVICE_HOST": "fd00:10:96::a",
    "BOURSE_REDIS_PORT": "tcp://[fd00:10:96::a]:6379",
}


def test_kubernetes_service_links_are_not_mistaken_for_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in KUBERNETES_SERVICE_LINKS.items():
        monkeypatch.setenv(name, value)
    assert load_settings().port == 8000


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOURSE_API_PORT", "8000"),  # a service link's name, but a plain number: somebody's setting
        ("BOURSE_API_SERVICE_HOST", "api.internal"),
        ("BOURSE_METRIC_PORT", "9100"),
        ("BOURSE_API_PORT_8000_TCP_PROTO", "http"),
    ],
)
def test_a_service_link_name_with_another_value_is_still_unknown(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = excinfo.value.problems
    assert problem.startswith(f"environment: unknown setting {name}")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BOURSE_JWT_SECRETT", "typo-value-Qq7"),
        ("BOURSE_ZZZ_QQQ", "1"),
        ("BOURSE_REQUIRE_SERVICES", "1"),
        ("BOURSE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        ("BOURSE_API_SERVICE_HOST", "10.96.14.2"),
        ("BOURSE_API_PORT", "8000"),
        ("BOURSE_LOG_LEVEL", "debug"),
    ],
)
@pytest.mark.parametrize("layout", ["key-value file", "per-key file"])
def test_the_environment_and_secrets_files_judge_a_name_alike(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str, layout: str
) -> None:
    """A name is a setting, a known non-setting (ignored) or a refused unknown, wherever it is set."""

    def outcome() -> tuple[str, str]:
        try:
            settings = load_settings()
        except SettingsError as exc:
            [problem] = exc.problems
            return "refused", problem.partition(": ")[2] + (
                " (value shown)" if len(value) > 4 and value in full_text(exc) else ""
            )
        return "loaded", settings.log_level

    monkeypatch.setenv(name, value)
    from_env = outcome()
    monkeypatch.delenv(name)
    path = write(tmp_path / name, value) if layout == "per-key file" else write(tmp_path / "a.env", f"{name}={value}\n")
    use_dirs(monkeypatch, tmp_path)
    from_file = outcome()
    assert from_env == from_file
    if from_env[0] == "refused":
        assert from_env[1].startswith(f"unknown setting {name}")
        assert "(value shown)" not in from_env[1]
        assert path.exists()


def test_unknown_names_in_the_environment_and_in_files_are_reported_together(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path / "vault.env", "BOURSE_PSP_SECRETS=typo-value-Ff4\n")
    use_dirs(monkeypatch, tmp_path)
    monkeypatch.setenv("BOURSE_JWT_SECRETT", "typo-value-Qq7")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [
        "environment: unknown setting BOURSE_JWT_SECRETT (did you mean BOURSE_JWT_SECRET?)",
        f"{path}:1: unknown setting BOURSE_PSP_SECRETS (did you mean BOURSE_PSP_SECRET?)",
    ]


@pytest.mark.process
def test_config_show_exits_2_naming_an_unknown_variable(tmp_path: Path) -> None:
    env = clean_env(BOURSE_JWT_SECRETT="typo-value-Qq7", BOURSE_REQUIRE_SERVICES="1")
    result = run_bourse("config", "show", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "unknown setting BOURSE_JWT_SECRETT (did you mean BOURSE_JWT_SECRET?)" in result.stderr
    assert "BOURSE_REQUIRE_SERVICES" not in result.stderr
    assert "typo-value-Qq7" not in result.stderr
    assert result.stdout == ""


# --- BOURSE_STRIPE_API_BASE -----------------------------------------------------------------------


def test_the_stripe_api_base_defaults_to_stripe() -> None:
    assert load_settings().stripe_api_base == "https://api.stripe.com"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://127.0.0.1:12111", "http://127.0.0.1:12111"),
        ("http://stripe-mock:12111/", "http://stripe-mock:12111"),
        ("https://stripe-proxy.internal/eu", "https://stripe-proxy.internal/eu"),
    ],
)
def test_the_stripe_api_base_can_point_elsewhere(monkeypatch: pytest.MonkeyPatch, raw: str, expected: str) -> None:
    monkeypatch.setenv("BOURSE_STRIPE_API_BASE", raw)
    assert load_settings().stripe_api_base == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "api.stripe.com",
        "ftp://api.stripe.com",
        "https://",
        "https:///v1",
        "https://api.stripe.com?x=1",
        "https://api.stripe.com/#frag",
        "https://user:pw-Kk3@api.stripe.com",
        "https://api .stripe.com",
        "https://api.stripe.com:99999",
    ],
)
def test_a_bad_stripe_api_base_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BOURSE_STRIPE_API_BASE", raw)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = excinfo.value.problems
    assert problem.startswith("BOURSE_STRIPE_API_BASE: ")
    assert "pw-Kk3" not in full_text(excinfo.value)


def test_production_requires_an_https_stripe_api_base(monkeypatch: pytest.MonkeyPatch) -> None:
    set_production(monkeypatch, BOURSE_STRIPE_API_BASE="http://stripe-mock:12111")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["BOURSE_STRIPE_API_BASE: must be an https:// URL in production"]
    set_production(monkeypatch, BOURSE_STRIPE_API_BASE="https://stripe-proxy.internal")
    assert load_settings().stripe_api_base == "https://stripe-proxy.internal"


# --- JSON settings, from the environment and from files ----------------------------------------------


@pytest.mark.parametrize(
    "key", ["BOURSE_TRADING_FEE_TIERS", "BOURSE_WITHDRAWAL_DAILY_LIMITS", "BOURSE_WITHDRAWAL_REVIEW_ABOVE"]
)
@pytest.mark.parametrize("raw", ["00", "{not json", "", "[" * 5000])
def test_bad_json_in_the_environment_names_the_setting(monkeypatch: pytest.MonkeyPatch, key: str, raw: str) -> None:
    monkeypatch.setenv(key, raw)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == [f"{key}: is not valid JSON"]


def test_json_settings_can_come_from_a_secrets_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "bourse.env", 'BOURSE_WITHDRAWAL_DAILY_LIMITS={"USD": "10"}\n')
    write(tmp_path / "BOURSE_TRADING_FEE_TIERS", '{"vip": {"maker_bps": 0, "taker_bps": 5}}')
    use_dirs(monkeypatch, tmp_path)
    monkeypatch.setenv("BOURSE_TRADING_DEFAULT_FEE_TIER", "vip")
    settings = load_settings()
    assert settings.withdrawal_daily_limits == {"USD": "10"}
    assert settings.trading_fee_tiers == {"vip": {"maker_bps": 0, "taker_bps": 5}}
    write(tmp_path / "bourse.env", "BOURSE_WITHDRAWAL_DAILY_LIMITS={oops\n")
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    assert excinfo.value.problems == ["BOURSE_WITHDRAWAL_DAILY_LIMITS: is not valid JSON"]


def test_a_secrets_dir_that_cannot_be_read_is_a_problem_not_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    use_dirs(monkeypatch, Path("x" * 5000))
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = excinfo.value.problems
    assert problem.startswith("BOURSE_SECRETS_DIRS: xxx")
    assert problem.endswith("cannot be read (File name too long)")


@pytest.mark.parametrize("key", ["BOURSE_PSP_SIM_URL", "BOURSE_PUBLIC_URL"])
@pytest.mark.parametrize("raw", ["http://127.0.0.1:99999", "http://[::1", "https://host:port"])
def test_an_url_with_a_bad_port_is_refused(monkeypatch: pytest.MonkeyPatch, key: str, raw: str) -> None:
    monkeypatch.setenv(key, raw)
    with pytest.raises(SettingsError) as excinfo:
        load_settings()
    [problem] = excinfo.value.problems
    assert problem.startswith(f"{key}: ")


def test_session_features_use_the_direct_url_and_never_a_transaction_pooler() -> None:
    pooled = {"database_url": "postgresql://bourse@pooler:5432/bourse", "database_transaction_pooling": True}
    # Behind a pooler without a direct URL there is none (`bourse serve` then refuses an
    # in-process matcher, and `bourse matcher` refuses to start: tests/trading/test_matcher_process.py).
    assert Settings(**pooled).direct_database is None  # type: ignore[arg-type]
    direct = Settings(**pooled, database_direct_url="postgresql://bourse@primary:5432/bourse")  # type: ignore[arg-type]
    assert direct.direct_database is not None
    assert direct.direct_database.host == "primary"
    # Without a pooler the database URL is the direct one.
    plain = Settings(database_url="postgresql://bourse@primary:5432/bourse")
    assert plain.direct_database == plain.database


def test_the_direct_url_takes_the_database_password_and_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        database_url="postgresql://bourse@pooler:5432/bourse",
        database_transaction_pooling=True,
        database_direct_url="postgresql://bourse@primary:5432/bourse",
        database_password=SecretStr("s3cret-pw"),
    )
    assert settings.direct_database is not None
    assert settings.direct_database.password == "s3cret-pw"
    assert "s3cret-pw" not in repr(settings)
    with_password = Settings(database_direct_url="postgresql://bourse:inline-pw@primary:5432/bourse")
    assert "inline-pw" not in repr(with_password)
