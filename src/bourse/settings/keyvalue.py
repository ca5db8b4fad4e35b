"""The parser of ``KEY=VALUE`` files (the Vault agent template layout)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bourse.settings.errors import SettingsError
from bourse.settings.names import ENV_PREFIX, unknown_name_problem

if TYPE_CHECKING:
    from pathlib import Path

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class FileValue:
    value: str
    origin: str  # "path" or "path:line"


def _unquote(raw: str) -> str:
    if len(raw) >= len('""') and raw[0] == raw[-1] and raw[0] in {'"', "'"}:
        return raw[1:-1]
    return raw


def parse_key_value_file(path: Path, known: frozenset[str]) -> dict[str, FileValue]:
    """Parse a Vault-agent style file of ``KEY=VALUE`` lines.

    Blank lines and ``#`` comments are skipped and ``export`` prefixes are allowed.
    Keys that do not start with ``BOURSE_`` belong to somebody else and are ignored;
    an unknown ``BOURSE_`` key is an error, since it is almost always a typo.
    Errors name the file and line, never the value.
    """
    values: dict[str, FileValue] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError([f"{path}: not valid UTF-8 text"]) from exc
    except OSError as exc:
        raise SettingsError([f"{path}: cannot be read ({exc.strerror})"]) from exc
    problems: list[str] = []
    # Only "\n" ends a line: str.splitlines() would also split on form feeds, U+2028
    # and the like, which can legitimately occur inside a secret.
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.startswith("export "):
            stripped = stripped[len("export ") :].lstrip()
        key, sep, raw_value = stripped.partition("=")
        key = key.strip()
        if not sep or not _KEY_RE.match(key):
            problems.append(f"{path}:{number}: malformed line, expected KEY=VALUE")
            continue
        if not key.startswith(ENV_PREFIX):
            continue
        value = _unquote(raw_value.strip())
        if key not in known:
            problem = unknown_name_problem(key, value, known)
            if problem is not None:
                problems.append(f"{path}:{number}: {problem}")
            continue
        if key in values:
            problems.append(f"{path}:{number}: {key} is set twice (first at {values[key].origin})")
            continue
        values[key] = FileValue(value, f"{path}:{number}")
    if problems:
        raise SettingsError(problems)
    return values
