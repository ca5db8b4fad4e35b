"""The one error configuration raises: every problem found, and never a value."""

from __future__ import annotations


class SettingsError(Exception):
    """Configuration is missing or invalid. The message never contains a value."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
