"""``bourse users``: create staff accounts and lock or unlock users.

Passwords are read from a hidden, confirmed prompt, or from standard input when it
is not a terminal (``printf '%s\\n' "$PW" | bourse users create ...``). Never from
the command line: argv is visible to every user of the machine and lands in shell
history.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from bourse.cli_support import load_cli_settings, open_cli_database

EXIT_REFUSED = 1
EXIT_USAGE = 2


def _fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    click.echo(f"bourse: {message}", err=True)
    sys.exit(code)


def _read_password() -> str:
    if sys.stdin.isatty():
        password: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    line = sys.stdin.readline()
    if not line:
        _fail("no password on standard input", EXIT_USAGE)
    # Only the line break is removed: spaces are legitimate password characters.
    return line.removesuffix("\n").removesuffix("\r")


@click.group()
def users() -> None:
    """Manage users (staff accounts, locking)."""


@users.command("create")
@click.option("--email", required=True, help="The user's email address.")
@click.option(
    "--role",
    type=click.Choice(["client", "ib", "operator", "admin"]),
    default="client",
    show_default=True,
    help="The user's role.",
)
def create(email: str, role: str) -> None:
    """Create a user. The password is prompted for, or read from stdin when piped."""
    from bourse.db import unit_of_work
    from bourse.errors import BourseError
    from bourse.identity.models import Role
    from bourse.identity.passwords import hasher_for
    from bourse.identity.service import create_user

    settings = load_cli_settings()
    # The database first: nobody should type a password twice only to learn it is down.
    db = open_cli_database(settings)
    try:
        password = _read_password()
    except BaseException:
        db.dispose()
        raise
    try:
        with unit_of_work(db) as session:
            user = create_user(session, email=email, password=password, role=Role(role), hasher=hasher_for(settings))
            user_id, normalised = user.id, user.email
    except BourseError as exc:
        _fail(f"{exc.code}: {exc.detail}")
    finally:
        db.dispose()
    click.echo(f"created {role} {normalised} with id {user_id}")


def _set_status(email: str, status: str) -> None:
    from bourse.db import unit_of_work
    from bourse.identity.models import UserStatus
    from bourse.identity.service import get_user_by_email, set_user_status

    db = open_cli_database(load_cli_settings())
    try:
        with unit_of_work(db) as session:
            user = get_user_by_email(session, email)
            if user is None:
                _fail(f"user_not_found: no user with the email {email!r}")
            set_user_status(session, user.id, UserStatus(status))
    finally:
        db.dispose()
    click.echo(f"{email.strip().lower()} is now {status}")


@users.command("lock")
@click.option("--email", required=True, help="The user's email address.")
def lock(email: str) -> None:
    """Lock a user: sign-in, refresh and every access token are refused from now on."""
    _set_status(email, "locked")


@users.command("unlock")
@click.option("--email", required=True, help="The user's email address.")
def unlock(email: str) -> None:
    """Unlock a user."""
    _set_status(email, "active")
