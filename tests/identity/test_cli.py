"""``bourse users``, run as a real process; the password comes from stdin or a terminal."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select as sql_select

from bourse.db import Database, unit_of_work
from bourse.identity.models import Role, User, UserStatus
from tests.identity.helpers import PASSWORD, login, unique_email
from tests.support.processes import ROOT, clean_env
from tests.support.waiting import wait_until

pytestmark = pytest.mark.process

LOGIN = "/api/v1/auth/login"


def run_users(database_url: str, *args: str, stdin: str | None) -> subprocess.CompletedProcess[str]:
    """``bourse users ...`` as a real process, with ``stdin`` piped (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "bourse", "users", *args],
        env=clean_env(BOURSE_DATABASE_URL=database_url),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_create_an_admin_with_the_password_on_stdin(database_url: str, client: TestClient) -> None:
    email = unique_email("Admin")
    result = run_users(database_url, "create", "--role", "admin", "--email", email.upper(), stdin=f"{PASSWORD}\n")
    assert result.returncode == 0, result.stderr
    assert f"created admin {email.lower()} with id " in result.stdout
    assert PASSWORD not in result.stdout + result.stderr

    tokens = login(client, email.lower())
    me = client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}).json()
    assert me["role"] == "admin"
    assert me["id"] in result.stdout


def test_refusals_exit_1_and_write_nothing(database_url: str, database: Database) -> None:
    email = unique_email()
    assert run_users(database_url, "create", "--email", email, stdin=f"{PASSWORD}\n").returncode == 0
    cases = [
        (["create", "--role", "admin", "--email", email], f"{PASSWORD}\n", "email_taken"),
        (["create", "--email", unique_email()], "too short\n", "password_too_short"),
        (["create", "--email", "nobody"], f"{PASSWORD}\n", "invalid_email"),
        (["lock", "--email", unique_email()], None, "user_not_found"),
    ]
    for args, stdin, message in cases:
        result = run_users(database_url, *args, stdin=stdin)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
    with unit_of_work(database) as session:
        assert session.scalars(sql_select(User).where(User.email == email)).one().role == Role.client


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_usage_errors_exit_2(database_url: str) -> None:
    cases = [
        (["create", "--email", unique_email()], "", "no password on standard input"),
        (["create", "--email", unique_email(), "--role", "root"], f"{PASSWORD}\n", "Invalid value for '--role'"),
        # There is no way to pass the password in argv.
        (["create", "--email", unique_email(), "--password", PASSWORD], "", "No such option '--password'"),
        (["create"], f"{PASSWORD}\n", "Missing option '--email'"),
    ]
    for args, stdin, message in cases:
        result = run_users(database_url, *args, stdin=stdin)
        assert result.returncode == 2, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)


def test_lock_and_unlock(database_url: str, database: Database, client: TestClient) -> None:
    email = unique_email()
    assert run_users(database_url, "create", "--email", email, stdin=f"{PASSWORD}\n").returncode == 0
    locked = run_users(database_url, "lock", "--email", email, stdin=None)
    assert locked.returncode == 0, locked.stderr
    with unit_of_work(database) as session:
        assert session.scalars(sql_select(User.status).where(User.email == email)).one() == UserStatus.locked
    refused = client.post(LOGIN, json={"email": email, "password": PASSWORD})
    assert (refused.status_code, refused.json()["error"]) == (403, "account_locked")
    assert run_users(database_url, "unlock", "--email", email, stdin=None).returncode == 0
    assert login(client, email)["access_token"]


class Terminal:
    """The parent side of a pseudo-terminal: wait for text after a position, type lines."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = bytearray()
        self.position = 0

    def expect(self, text: str, timeout: float = 30.0) -> None:
        """Wait until ``text`` appears after everything matched so far."""

        def shown() -> bool:
            if self.seen.find(text.encode(), self.position) >= 0:
                return True
            ready, _, _ = select.select([self.fd], [], [], 0.05)  # waits briefly for output itself
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{text!r} not shown before exit; got {self.shown()!r}")
                self.seen += chunk
            return self.seen.find(text.encode(), self.position) >= 0

        wait_until(shown, lambda: f"{text!r} to be shown; got {self.shown()!r}", timeout=timeout, interval=0)
        self.position = self.seen.find(text.encode(), self.position) + len(text)

    def shown(self) -> str:
        return self.seen.decode(errors="replace")

    def type(self, line: str) -> None:
        os.write(self.fd, f"{line}\n".encode())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_interactive_prompt_is_hidden_and_confirmed(database_url: str, database: Database) -> None:
    email = unique_email()
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child becomes bourse on a real terminal
        os.chdir(ROOT)
        os.execve(  # noqa: S606 - our own interpreter, fixed argv
            sys.executable,
            [sys.executable, "-m", "bourse", "users", "create", "--role", "operator", "--email", email],
            clean_env(BOURSE_DATABASE_URL=database_url, BOURSE_LOG_LEVEL="warning"),
        )
    terminal = Terminal(fd)
    exited: list[int] = []  # the child's wait status, once reaped

    def reaped() -> bool:
        finished, status = os.waitpid(pid, os.WNOHANG)
        if finished:
            exited.append(status)
        return bool(exited)

    try:
        terminal.expect("Password: ")
        terminal.type(PASSWORD)
        terminal.expect("Repeat for confirmation: ")
        terminal.type("a different password")
        terminal.expect("do not match")
        terminal.expect("Password: ")
        terminal.type(PASSWORD)
        terminal.expect("Repeat for confirmation: ")
        terminal.type(PASSWORD)
        terminal.expect("created operator")
        wait_until(reaped, lambda: f"bourse users to exit after creating the user; got {terminal.shown()!r}")
    finally:
        if not exited:  # the test failed while the child still ran: end it
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    output = terminal.shown()
    assert os.waitstatus_to_exitcode(exited[0]) == 0, output
    assert PASSWORD not in output  # hidden input: never echoed
    with unit_of_work(database) as session:
        assert session.scalars(sql_select(User.role).where(User.email == email)).one() == Role.operator
