"""Which ``BOURSE_`` names are settings, and why any other one is refused.

The same judgement serves the environment and the secrets files
(docs/decisions/0015-unknown-environment-variables.md).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

ENV_PREFIX = "BOURSE_"
SECRETS_DIRS_ENV = "BOURSE_SECRETS_DIRS"


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


# ``BOURSE_`` names that are not settings but legitimately appear where settings are
# read, each with who sets it. Any other unknown ``BOURSE_`` name stops start-up,
# from the environment as from a secrets file (docs/decisions/0015).
NON_SETTING_VARIABLES: Mapping[str, str] = {
    "BOURSE_REQUIRE_SERVICES": "the test suite: unreachable PostgreSQL or Redis fails instead of skipping (CI)",
    "BOURSE_TEST_POSTGRES_URL": "the test suite: the PostgreSQL server its databases are created on",
    "BOURSE_TEST_REDIS_URL": "the test suite: the Redis server it uses",
}

# Kubernetes' service links: for every Service in the namespace the kubelet sets
# <NAME>_SERVICE_HOST, <NAME>_PORT=tcp://ip:port and the like, so a Service named
# "bourse-api" puts BOURSE_API_* variables into every pod. Such a name is recognised
# by its suffix together with the shape of its value, so that a typo whose value is
# an ordinary setting value (BOURSE_API_PORT=8000) is still refused.
_IP = r"[0-9A-Fa-f.:]+"
_PROTO = r"(?:TCP|UDP|SCTP)"
_SERVICE_LINKS: tuple[tuple[re.Pattern[str], re.Pattern[str]], ...] = tuple(
    (re.compile(name), re.compile(value))
    for name, value in (
        (r"_SERVICE_HOST$", rf"^{_IP}$"),
        (r"_SERVICE_PORT(?:_[A-Z0-9_]+)?$", r"^[0-9]{1,5}$"),
        (rf"_PORT(?:_[0-9]{{1,5}}_{_PROTO})?$", rf"^(?:tcp|udp|sctp)://(?:{_IP}|\[{_IP}\]):[0-9]{{1,5}}$"),
        (rf"_PORT_[0-9]{{1,5}}_{_PROTO}_PROTO$", r"^(?:tcp|udp|sctp)$"),
        (rf"_PORT_[0-9]{{1,5}}_{_PROTO}_PORT$", r"^[0-9]{1,5}$"),
        (rf"_PORT_[0-9]{{1,5}}_{_PROTO}_ADDR$", rf"^{_IP}$"),
    )
)


def is_kubernetes_service_link(name: str, value: str) -> bool:
    """Whether ``name=value`` is a variable the kubelet injects for a Service."""
    upper = name.upper()
    return any(suffix.search(upper) and shape.match(value) for suffix, shape in _SERVICE_LINKS)


def unknown_name_problem(name: str, value: str, known: frozenset[str]) -> str | None:
    """Why ``name`` (a ``BOURSE_`` name that is not a setting) is refused, or None to ignore it.

    The same judgement for the environment and for secrets files. The message names
    the setting probably meant when one is close, and never contains the value.
    """
    upper = name.upper()
    if upper in NON_SETTING_VARIABLES or is_kubernetes_service_link(name, value):
        return None
    suffixes = {key.removeprefix(ENV_PREFIX): key for key in known}
    close = difflib.get_close_matches(upper.removeprefix(ENV_PREFIX), list(suffixes), n=1, cutoff=0.75)
    hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
    return f"unknown setting {name}{hint}"


def unknown_environment_problems(environ: Mapping[str, str], known: frozenset[str]) -> list[str]:
    """Every ``BOURSE_`` variable in ``environ`` that is neither a setting nor allowed.

    Names are matched ignoring case, as the settings themselves are.
    """
    problems: list[str] = []
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX) or name.upper() in known:
            continue
        problem = unknown_name_problem(name, environ[name], known)
        if problem is not None:
            problems.append(f"environment: {problem}")
    return problems
