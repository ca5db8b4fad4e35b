"""Fuzzing the settings parsers: secrets files, secrets directories, environment values.

Whatever a secrets file holds, whatever ``BOURSE_SECRETS_DIRS`` names and whatever
value a setting gets, loading either succeeds or raises :class:`SettingsError`
(which the command prints and exits 2 on): never a traceback. Crashes found are
kept as explicit examples.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from hypothesis import example, given
from hypothesis import strategies as st

from bourse.settings import Settings, SettingsError, describe, env_name, load_settings
from bourse.settings.keyvalue import parse_key_value_file
from bourse.settings.names import unknown_name_problem
from bourse.settings.secrets_dirs import read_secrets_dirs
from tests.support.fuzz import FUZZ
from tests.support.services import TEST_ENV_KEEP

T = TypeVar("T")
KNOWN = frozenset(env_name(name) for name in Settings.model_fields)
SETTING_NAMES = sorted(KNOWN - {"BOURSE_SECRETS_DIRS"})

# What an environment variable can hold: no NUL, no lone surrogate.
env_text = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=60)
names = st.one_of(
    st.sampled_from(SETTING_NAMES),
    st.sampled_from(["BOURSE_", "BOURSE_JWT_SECRETT", "BOURSE_API_PORT", "bourse_log_level", "OTHER_KEY"]),
    # Any name an environment can hold: ASCII, no NUL, no "=".
    st.text(st.characters(max_codepoint=0x7F, blacklist_characters="\x00="), max_size=20).map("BOURSE_".__add__),
)
# KEY=VALUE lines: mostly almost right, the way hand-written files go wrong.
lines = st.one_of(
    st.builds(
        lambda export, key, sep, quote, value: f"{export}{key}{sep}{quote}{value}{quote}",
        st.sampled_from(["", "export ", "export\t", "  "]),
        names,
        st.sampled_from(["=", " = ", "==", ":", ""]),
        st.sampled_from(["", '"', "'"]),
        env_text,
    ),
    st.sampled_from(["", "#", "# comment", "export", "=", "\r", "\ufeffBOURSE_PORT=1"]),
    st.text(max_size=40),
)


@contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Exactly ``values`` as BOURSE_ variables (the suite's own kept), for one example."""
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.upper().startswith("BOURSE_") and k not in TEST_ENV_KEEP]:
        del os.environ[key]
    os.environ.update(values)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def attempt(action: Callable[[], T]) -> T | SettingsError:
    """The result, or the refusal; anything else raised fails the property."""
    try:
        return action()
    except SettingsError as exc:
        return exc


def load_or_refuse() -> Settings | SettingsError:
    """Load; a refusal names problems, and what loads can be used as it is."""
    result = attempt(load_settings)
    if isinstance(result, SettingsError):
        assert result.problems
        return result
    # Everything the processes derive from the settings at start-up.
    assert result.database.get_backend_name() in {"sqlite", "postgresql"}
    for url in (result.psp_sim_url, result.public_url, result.stripe_api_base):
        urlsplit(url).port  # noqa: B018 - `bourse up` reads the simulator's port this way
    assert isinstance(result.previous_jwt_keys, dict)
    assert describe(result)
    return result


# --- KEY=VALUE files ---------------------------------------------------------------------------


@FUZZ
@given(content=st.lists(lines, max_size=8).map("\n".join))
def test_key_value_file_lines(content: str) -> None:
    with scratch_dir() as directory:
        path = directory / "bourse.env"
        path.write_text(content, encoding="utf-8", newline="")
        values = attempt(lambda: parse_key_value_file(path, KNOWN))
    if isinstance(values, SettingsError):
        assert values.problems
        assert all(problem.startswith(str(path)) for problem in values.problems)
        return
    assert set(values) <= KNOWN
    for value in values.values():
        assert "\n" not in value.value
        assert value.origin.startswith(f"{path}:")


@FUZZ
@given(content=st.binary(max_size=200))
@example(content=b"BOURSE_PORT=\xff\n")
@example(content=b"\xef\xbb\xbfBOURSE_PORT=1\n")  # a byte-order mark
def test_key_value_file_bytes(content: bytes) -> None:
    with scratch_dir() as directory:
        path = directory / "bourse.env"
        path.write_bytes(content)
        result = attempt(lambda: parse_key_value_file(path, KNOWN))
    if isinstance(result, SettingsError):
        assert result.problems


# --- Secrets directories ----------------------------------------------------------------------


@FUZZ
@given(
    files=st.dictionaries(
        st.one_of(names, st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)),
        st.one_of(st.binary(max_size=60), st.lists(lines, max_size=4).map("\n".join).map(str.encode)),
        max_size=5,
    )
)
def test_a_secrets_directory_of_anything(files: dict[str, bytes]) -> None:
    with scratch_dir() as directory:
        for name, content in files.items():
            if "/" in name or name in {".", ".."}:
                continue
            (directory / name).write_bytes(content)
        found = attempt(lambda: read_secrets_dirs([directory], KNOWN))
    if isinstance(found, SettingsError):
        assert found.problems
        return
    assert set(found) <= KNOWN


@FUZZ
@given(raw=env_text)
@example(raw="a" * 5000)  # Path.is_dir() raises "File name too long" instead of answering False
@example(raw="/" + "b" * 300 + "/x")
def test_any_secrets_dirs_value(raw: str) -> None:
    with environment({"BOURSE_SECRETS_DIRS": raw}):
        load_or_refuse()


# --- Every setting's value, from the environment and from a file ------------------------------------


@FUZZ
@given(values=st.dictionaries(names, env_text, min_size=1, max_size=3))
@example(values={"BOURSE_STRIPE_API_BASE": "http://[::1"})  # urlsplit: "Invalid IPv6 URL"
@example(values={"BOURSE_STRIPE_API_BASE": "http://h:0x1"})
@example(values={"BOURSE_DATABASE_URL": "postgresql://u@h:99999999999999999999/db"})
@example(values={"BOURSE_TRADING_FEE_TIERS": "00"})  # pydantic-settings' own JSON decoding raised its SettingsError
@example(values={"BOURSE_WITHDRAWAL_DAILY_LIMITS": "[" * 5000})
@example(values={"BOURSE_PSP_SIM_URL": "http://127.0.0.1:99999"})  # accepted, then `bourse up` crashed on .port
def test_any_environment_loads_or_is_refused(values: dict[str, str]) -> None:
    with environment(values):
        load_or_refuse()


@FUZZ
@given(values=st.dictionaries(st.sampled_from(SETTING_NAMES), env_text, min_size=1, max_size=3))
def test_any_file_values_load_or_are_refused(values: dict[str, str]) -> None:
    with scratch_dir() as directory:
        (directory / "bourse.env").write_text(
            "".join(f"{key}={value}\n" for key, value in values.items() if "\n" not in value and "\r" not in value),
            encoding="utf-8",
        )
        for key, value in values.items():
            (directory / key).write_text(value, encoding="utf-8")
        with environment({"BOURSE_SECRETS_DIRS": str(directory)}):
            load_or_refuse()


@FUZZ
@given(name=names, value=env_text)
def test_unknown_name_problems_never_quote_the_value(name: str, value: str) -> None:
    problem = unknown_name_problem(name, value, KNOWN)
    if problem is not None and len(value) > 8 and value not in name:
        assert value not in problem
