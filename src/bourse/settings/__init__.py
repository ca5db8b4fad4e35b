"""Typed, validated configuration.

Every setting is read with the prefix ``BOURSE_``. Values come from, in order of
precedence (the first that has a value wins):

1. keyword arguments given to :class:`Settings` (tests, the CLI);
2. environment variables;
3. the directories named by ``BOURSE_SECRETS_DIRS`` (comma-separated, earlier
   directories win). Inside a directory, a file named exactly like a setting
   (``BOURSE_JWT_SECRET``, the Kubernetes Secret volume layout) wins over a
   ``KEY=VALUE`` line in any other file (the Vault agent template layout);
4. the defaults below.

Secrets are :class:`pydantic.SecretStr`: their ``repr`` and ``str`` are masked and
no error message built here ever contains a value.

One module per purpose: ``names`` (which ``BOURSE_`` names are settings),
``keyvalue`` (the ``KEY=VALUE`` file parser), ``secrets_dirs`` (the secrets
source), ``urls`` (database and Redis URLs, masked for display), ``model`` (the
settings and their checks) and ``description`` (what ``bourse config show``
prints). The names below are the package's interface.
"""

from bourse.settings.description import SettingRow, describe, is_secret_field
from bourse.settings.errors import SettingsError
from bourse.settings.model import Settings, load_settings
from bourse.settings.names import ENV_PREFIX, env_name
from bourse.settings.urls import mask_database_url, mask_redis_url

__all__ = [
    "ENV_PREFIX",
    "SettingRow",
    "Settings",
    "SettingsError",
    "describe",
    "env_name",
    "is_secret_field",
    "load_settings",
    "mask_database_url",
    "mask_redis_url",
]
