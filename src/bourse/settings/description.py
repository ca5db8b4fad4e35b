"""The effective settings as ``bourse config show`` prints them: secrets masked, each with its source."""

from __future__ import annotations

import os
from dataclasses import dataclass

from pydantic import SecretStr

from bourse.settings.model import Settings
from bourse.settings.names import env_name
from bourse.settings.secrets_dirs import SecretsDirsSource
from bourse.settings.urls import MASK, mask_database_url, mask_redis_url


def is_secret_field(name: str) -> bool:
    annotation = Settings.model_fields[name].annotation
    return annotation is SecretStr or annotation == SecretStr | None


@dataclass(frozen=True)
class SettingRow:
    name: str
    value: str
    source: str
    secret: bool


def _display(value: object, *, secret: bool) -> str:
    if value is None:
        return ""
    if secret:
        return MASK
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def describe(settings: Settings) -> list[SettingRow]:
    """Effective settings, secrets masked, each with where its value came from."""
    file_values = SecretsDirsSource(Settings).values
    # Environment variable names are matched case-insensitively, as Settings does.
    environ = {key.upper() for key in os.environ}
    rows: list[SettingRow] = []
    for name in Settings.model_fields:
        key = env_name(name)
        secret = is_secret_field(name)
        value: object = getattr(settings, name)
        if name == "database_url":
            value = mask_database_url(settings.database_url)
        elif name == "database_direct_url" and settings.database_direct_url:
            value = mask_database_url(settings.database_direct_url)
        elif name == "redis_url" and settings.redis_url:
            value = mask_redis_url(settings.redis_url)
        if key in environ:
            source = "env"
        elif key in file_values:
            source = f"file {file_values[key].origin}"
        elif name in settings.model_fields_set:
            source = "argument"
        else:
            source = "default"
        rows.append(SettingRow(key, _display(value, secret=secret), source, secret))
    return rows
