"""The settings source over the directories named by ``BOURSE_SECRETS_DIRS``.

Inside a directory, a file named exactly like a setting (``BOURSE_JWT_SECRET``, the
Kubernetes Secret volume layout) wins over a ``KEY=VALUE`` line in any other file
(the Vault agent template layout); an earlier directory wins over a later one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from bourse.settings.errors import SettingsError
from bourse.settings.keyvalue import FileValue, parse_key_value_file
from bourse.settings.names import ENV_PREFIX, SECRETS_DIRS_ENV, env_name, unknown_name_problem

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo


_BOURSE_ASSIGNMENT = re.compile(rf"^[ \t]*(?:export[ \t]+)?{ENV_PREFIX}", re.MULTILINE)


def _holds_bourse_settings(path: Path) -> bool:
    """Whether a non-``BOURSE_*``-named file is a KEY=VALUE file meant for Bourse.

    A file counts as ours once any line starts with a ``BOURSE_`` key; from then
    on every malformed line in it is an error. Files that cannot be read at all
    are reported by the parser; undecodable (binary) files are not ours.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return False
    except OSError:
        return True
    return _BOURSE_ASSIGNMENT.search(text) is not None


def _read_per_key_file(entry: Path, known: frozenset[str]) -> FileValue | None:
    """A per-key file's value; None for an allowed name that is not a setting."""
    try:
        content: str | None = entry.read_text(encoding="utf-8").strip("\r\n")
    except (OSError, UnicodeDecodeError):
        content = None
    if entry.name not in known:
        problem = unknown_name_problem(entry.name, content or "", known)
        if problem is not None:
            raise SettingsError([f"{entry}: {problem}"])
        return None
    if content is None:
        raise SettingsError([f"{entry}: cannot be read as UTF-8 text"])
    return FileValue(content, str(entry))


def _list_dir(directory: Path) -> list[Path] | str:
    """The directory's entries, sorted, or the problem with it."""
    try:
        # is_dir() raises for some paths (a name too long) instead of answering False.
        if not directory.is_dir():
            return f"{SECRETS_DIRS_ENV}: {directory} is not a directory"
        return sorted(directory.iterdir())
    except OSError as exc:
        return f"{SECRETS_DIRS_ENV}: {directory} cannot be read ({exc.strerror})"


def read_secrets_dirs(dirs: list[Path], known: frozenset[str]) -> dict[str, FileValue]:
    """Collect setting values from secrets directories, earliest directory first.

    An earlier directory wins over a later one whatever the layout; inside one
    directory a per-key file wins over a ``KEY=VALUE`` line.
    """
    found: dict[str, FileValue] = {}
    problems: list[str] = []
    for directory in dirs:
        entries = _list_dir(directory)
        if isinstance(entries, str):
            problems.append(entries)
            continue
        per_key: dict[str, FileValue] = {}
        key_value: dict[str, FileValue] = {}
        for entry in entries:
            # Kubernetes Secret volumes keep their real files behind "..data" links.
            if entry.name.startswith(".") or not entry.is_file():
                continue
            if entry.name.startswith(ENV_PREFIX):
                try:
                    file_value = _read_per_key_file(entry, known)
                except SettingsError as exc:
                    problems.extend(exc.problems)
                    continue
                if file_value is not None:
                    per_key.setdefault(entry.name, file_value)
                continue
            if not _holds_bourse_settings(entry):
                # Another consumer's file mounted alongside (a certificate, a keystore,
                # the database template's DB_* lines): not ours to read or judge.
                continue
            try:
                parsed = parse_key_value_file(entry, known)
            except SettingsError as exc:
                problems.extend(exc.problems)
                continue
            for key, file_value in parsed.items():
                key_value.setdefault(key, file_value)
        for key, file_value in {**key_value, **per_key}.items():
            found.setdefault(key, file_value)
    if problems:
        raise SettingsError(problems)
    return found


def split_dirs(raw: str) -> list[Path]:
    return [Path(part.strip()) for part in raw.split(",") if part.strip()]


class SecretsDirsSource(PydanticBaseSettingsSource):
    """Settings source over the directories named by ``BOURSE_SECRETS_DIRS``."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        known = frozenset(env_name(name) for name in settings_cls.model_fields)
        dirs = split_dirs(os.environ.get(SECRETS_DIRS_ENV, ""))
        self.values = read_secrets_dirs(dirs, known)

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # noqa: ARG002 - base signature
        found = self.values.get(env_name(field_name))
        return (found.value if found else None), field_name, False

    def __call__(self) -> dict[str, Any]:
        return {
            name: self.values[env_name(name)].value
            for name in self.settings_cls.model_fields
            if env_name(name) in self.values
        }
