"""The ``bourse`` command imports a domain's command group only when it is invoked."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from bourse.cli import LAZY_COMMANDS, LazyGroup, main


def test_every_lazy_command_resolves_to_the_command_of_that_name() -> None:
    context = click.Context(main)
    for name in LAZY_COMMANDS:
        command = main.get_command(context, name)
        assert command is not None
        assert command.name == name


def test_help_lists_the_lazy_commands_with_the_others() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    listed = {line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()}
    assert set(LAZY_COMMANDS) <= listed
    assert {"serve", "migrate", "healthcheck", "up", "config", "version"} <= listed


def test_a_lazy_entry_naming_the_wrong_command_is_refused() -> None:
    group = LazyGroup(name="demo", lazy={"wrong": "bourse.ledger.cli:assets"})
    with pytest.raises(TypeError, match="is not the click command 'wrong'"):
        group.get_command(click.Context(group), "wrong")


def test_an_unknown_command_is_still_an_error() -> None:
    result = CliRunner().invoke(main, ["no-such-command"])
    assert result.exit_code == 2
    assert "No such command 'no-such-command'" in result.output


@pytest.mark.process
def test_importing_the_command_imports_no_domain_command_group_and_no_benchmark() -> None:
    # A fresh interpreter: this test process has imported everything already.
    probe = (
        "import sys, bourse.cli; "
        "print(sorted(m for m in sys.modules "
        "if m.startswith('bourse.bench') or (m.endswith('.cli') and m != 'bourse.cli')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stdout
